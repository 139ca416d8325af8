//! Patch extraction for the patch-embedding convolution (kernel = stride = patch, no padding).

use rayon::prelude::*;

/// Unfolds `[B, C, H, W]` pixels into `[B·gh·gw, C·p·p]` rows (`gh = H / p`, `gw = W / p`, the
/// remainder rows and columns dropped as a stride-p convolution drops them). Row `b·gh·gw + i·gw + j`
/// holds patch `(i, j)` of image `b`, columns in `(c, dy, dx)` order: the flattened layout of a
/// Conv2d weight `[out, C, p, p]`, so the convolution is `im2col(x) · Wᵀ`.
pub fn im2col(
    x: &[f32],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    p: usize,
) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * channels * height * width,
        "im2col: pixels are not [B, C, H, W]"
    );
    let (gh, gw) = (height / p, width / p);
    let cols = channels * p * p;
    let mut out = vec![0.0f32; batch * gh * gw * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(row, o)| {
        let b = row / (gh * gw);
        let (i, j) = ((row / gw) % gh, row % gw);
        for c in 0..channels {
            for dy in 0..p {
                let src = ((b * channels + c) * height + i * p + dy) * width + j * p;
                o[(c * p + dy) * p..(c * p + dy + 1) * p].copy_from_slice(&x[src..src + p]);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_remainder() {
        // 1 image, 1 channel, 3x5 pixels, patch 2 -> a 1x2 grid.
        let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
        assert_eq!(
            im2col(&x, 1, 1, 3, 5, 2),
            vec![0.0, 1.0, 5.0, 6.0, 2.0, 3.0, 7.0, 8.0]
        );
    }
}
