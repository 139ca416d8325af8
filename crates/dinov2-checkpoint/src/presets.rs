//! The released DINOv2 architectures (facebook/dinov2-{small,base,large,giant} and their
//! with-registers twins), as configs: for benchmarks and tests that need no checkpoint.

use serde_json::json;

use crate::config::Dinov2Config;

/// Names accepted by [`released`]: `vits14`, `vitb14`, `vitl14`, `vitg14`, each optionally `-reg`.
pub const RELEASED: &[&str] = &[
    "vits14",
    "vitb14",
    "vitl14",
    "vitg14",
    "vits14-reg",
    "vitb14-reg",
    "vitl14-reg",
    "vitg14-reg",
];

/// The config of a released architecture, as its Hub `config.json` has it.
pub fn released(name: &str) -> Option<Dinov2Config> {
    Dinov2Config::from_json(&released_json(name)?).ok()
}

/// The `config.json` content of a released architecture.
pub fn released_json(name: &str) -> Option<serde_json::Value> {
    let (base, registers) = match name.strip_suffix("-reg") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (hidden, layers, heads, swiglu) = match base {
        "vits14" => (384, 12, 6, false),
        "vitb14" => (768, 12, 12, false),
        "vitl14" => (1024, 24, 16, false),
        "vitg14" => (1536, 40, 24, true),
        _ => return None,
    };
    let mut value = json!({
        "model_type": if registers { "dinov2_with_registers" } else { "dinov2" },
        "architectures": [if registers { "Dinov2WithRegistersModel" } else { "Dinov2Model" }],
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 518, "patch_size": 14,
        "use_swiglu_ffn": swiglu, "layerscale_value": 1.0, "qkv_bias": true,
    });
    if registers {
        value["num_register_tokens"] = json!(4);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_presets_parse() {
        for name in RELEASED {
            let c = released(name).unwrap();
            assert_eq!(
                (c.patch_size, c.grid_side(), c.head_dim),
                (14, 37, 64),
                "{name}"
            );
            assert_eq!(
                c.num_register_tokens,
                if name.ends_with("-reg") { 4 } else { 0 }
            );
        }
        assert_eq!(released("vitg14").unwrap().ffn_hidden_size(), 4096);
        assert!(released("vitx14").is_none());
    }
}
