//! Floating-point operations of one forward pass, counted as 2 per multiply-add of the GEMMs,
//! attention products and patch convolution (the element-wise work is not counted).

use dinov2_checkpoint::Dinov2Config;

/// FLOPs of one image of `height × width` pixels through the encoder and final norm.
pub fn flops_per_image(config: &Dinov2Config, height: usize, width: usize) -> f64 {
    let p = config.patch_size;
    let patches = ((height / p) * (width / p)) as f64;
    let n = patches + config.num_prefix_tokens() as f64;
    let h = config.hidden_size as f64;
    let f = config.ffn_hidden_size() as f64;
    let ffn = if config.use_swiglu_ffn {
        3.0 * h * f
    } else {
        2.0 * h * f
    };
    let per_layer = 2.0 * n * (4.0 * h * h + ffn) + 4.0 * n * n * h;
    let patch_embed = 2.0 * patches * h * (config.num_channels * p * p) as f64;
    patch_embed + config.num_hidden_layers as f64 * per_layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vitb14_at_224() {
        let c = dinov2_checkpoint::released("vitb14").unwrap();
        let g = flops_per_image(&c, 224, 224) / 1e9;
        // 257 tokens: about 2 x 11.2 GMAC.
        assert!((g - 46.4).abs() < 1.0, "{g}");
    }
}
