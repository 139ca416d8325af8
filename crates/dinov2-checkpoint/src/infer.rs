//! The config of a weights file given without a `config.json` (an original facebookresearch
//! `.pth`, a timm checkpoint), told from its tensors' names and shapes.
//!
//! Everything but the number of attention heads is in the shapes. The heads are taken as
//! `hidden_size / 64`: every released DINOv2 (ViT-S/B/L/g, with and without registers) has heads
//! 64 wide. A checkpoint of another width needs its `config.json`.

use serde_json::{json, Value};

use crate::config::{ffn_width, Dinov2Config};
use crate::weights::Weights;

/// The head width of every released DINOv2 model.
pub const HEAD_DIM: usize = 64;

/// The config (and its `config.json` form) of the architecture the tensors hold, or why it cannot
/// be told.
pub fn config(w: &Weights) -> Result<(Dinov2Config, Value), String> {
    let shape = |name: &str| -> Result<&[usize], String> {
        w.shape(name)
            .ok_or_else(|| format!("there is no `{name}` (nor its original or timm name)"))
    };
    let h = match shape("embeddings.cls_token")? {
        [1, 1, h] => sane("hidden size", *h)?,
        other => {
            return Err(format!(
                "the CLS token has shape {other:?}, expected [1, 1, hidden]"
            ))
        }
    };
    let (channels, patch) = match shape("embeddings.patch_embeddings.projection.weight")? {
        [o, c, p, q] if *o == h && p == q => (sane("channel count", *c)?, sane("patch size", *p)?),
        other => {
            return Err(format!(
                "the patch embedding has shape {other:?}, expected [{h}, channels, patch, patch]"
            ))
        }
    };
    let positions = match shape("embeddings.position_embeddings")? {
        [1, n, d] if *d == h && *n > 1 => sane("position count", n - 1)?,
        other => {
            return Err(format!(
                "the position embedding has shape {other:?}, expected [1, 1 + grid², {h}]"
            ))
        }
    };
    let grid = positions.isqrt();
    if grid * grid != positions {
        return Err(format!(
            "the position embedding holds {positions} patch positions, not a square grid"
        ));
    }
    let layers = (0..)
        .take_while(|i| {
            w.shape(&format!("encoder.layer.{i}.norm1.weight"))
                .is_some()
        })
        .count();
    if layers == 0 {
        return Err("there are no blocks (`blocks.0.norm1.weight`)".into());
    }
    if !h.is_multiple_of(HEAD_DIM) {
        return Err(format!(
            "the hidden size {h} is not a multiple of {HEAD_DIM}, the head width of every released \
             DINOv2, so the number of heads is unknown: put a config.json beside the weights"
        ));
    }
    let l0 = "encoder.layer.0";
    let swiglu = w.shape(&format!("{l0}.mlp.weights_in.weight")).is_some();
    let ffn = match shape(&format!(
        "{l0}.mlp.{}.weight",
        if swiglu { "weights_out" } else { "fc2" }
    ))? {
        [o, f] if *o == h => sane("feed-forward width", *f)?,
        other => return Err(format!("the first block's MLP output has shape {other:?}")),
    };
    let mlp_ratio = mlp_ratio(h, ffn, swiglu).ok_or_else(|| {
        format!("no mlp_ratio gives a feed-forward width of {ffn} for hidden size {h}")
    })?;
    let registers = match w.shape("embeddings.register_tokens") {
        None => 0,
        Some([1, r, d]) if *d == h => sane("register count", *r)?,
        Some(other) => {
            return Err(format!(
                "the register tokens have shape {other:?}, expected [1, registers, {h}]"
            ))
        }
    };
    let labels = match w.shape("classifier.weight") {
        None => 0,
        Some([n, _]) => sane("label count", *n)?,
        Some(other) => return Err(format!("the classifier has shape {other:?}")),
    };
    let model_type = if registers > 0 {
        "dinov2_with_registers"
    } else {
        "dinov2"
    };
    let class = match (registers > 0, labels > 0) {
        (false, false) => "Dinov2Model",
        (false, true) => "Dinov2ForImageClassification",
        (true, false) => "Dinov2WithRegistersModel",
        (true, true) => "Dinov2WithRegistersForImageClassification",
    };
    let mut value = json!({
        "model_type": model_type,
        "architectures": [class],
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": h / HEAD_DIM,
        "mlp_ratio": ratio_json(mlp_ratio),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": grid * patch,
        "patch_size": patch,
        "num_channels": channels,
        "qkv_bias": w.shape(&format!("{l0}.attention.attention.query.bias")).is_some(),
        "use_swiglu_ffn": swiglu,
        "layerscale_value": 1.0,
    });
    if registers > 0 {
        // The registers family always has a mask token (a zero one where timm dropped it).
        value["num_register_tokens"] = json!(registers);
    } else {
        value["use_mask_token"] = json!(w.shape("embeddings.mask_token").is_some());
    }
    if labels > 0 {
        let id2label: serde_json::Map<String, Value> = (0..labels)
            .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
            .collect();
        value["id2label"] = Value::Object(id2label);
    }
    let config = Dinov2Config::from_json(&value).map_err(|e| e.to_string())?;
    Ok((config, value))
}

/// `n` when it is a size a DINOv2 model can have (1 to 2^20), else the error naming `what`.
fn sane(what: &str, n: usize) -> Result<usize, String> {
    if (1..=1 << 20).contains(&n) {
        Ok(n)
    } else {
        Err(format!("the {what} is {n}: not a size a DINOv2 model has"))
    }
}

/// An `mlp_ratio` that gives the feed-forward width `ffn`: a whole one where there is one (4 for
/// every released model, ViT-g's SwiGLU included; transformers 5.17's `Dinov2Config` takes only
/// whole ratios), else the first fraction that does.
fn mlp_ratio(h: usize, ffn: usize, swiglu: bool) -> Option<f64> {
    let whole = [4, 1, 2, 3, 5, 6, 8, 16].into_iter().map(f64::from);
    let widths = if swiglu {
        // int(F·2/3) rounded up to 8 is `ffn` for F about 3/2 of it.
        (ffn * 3 / 2).saturating_sub(16)..ffn * 3 / 2 + 16
    } else {
        ffn..ffn + 1
    };
    whole
        .chain(widths.map(|f| f as f64 / h as f64))
        .find(|&r| ffn_width(h, r, swiglu) == ffn)
}

/// `mlp_ratio` as config.json holds it: an integer when it is whole.
fn ratio_json(r: f64) -> Value {
    if r.fract() == 0.0 {
        json!(r as u64)
    } else {
        json!(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(mlp_ratio(384, 1536, false), Some(4.0));
        assert_eq!(mlp_ratio(1536, 4096, true), Some(4.0));
        assert_eq!(mlp_ratio(64, 128, false), Some(2.0));
        let r = mlp_ratio(1024, 2736, true).unwrap();
        assert_eq!(ffn_width(1024, r, true), 2736);
        assert_eq!(mlp_ratio(1024, 2737, true), None);
        assert_eq!(ratio_json(4.0).to_string(), "4");
        assert_eq!(ratio_json(2.5).to_string(), "2.5");
    }
}
