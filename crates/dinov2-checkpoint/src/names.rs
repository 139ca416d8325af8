//! Tensor names: the transformers names we target, the prefixes task checkpoints add, and the
//! conversion of the original facebookresearch and timm names (`blocks.N.attn.qkv`, `ls1.gamma`,
//! ...), and where the backbone lies in a larger saved object.

use crate::config::{Dinov2Config, ModelType};

/// One tensor the model reads, with the shape the config implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// Only the classification head reads it; other heads accept its absence.
    pub classifier_only: bool,
}

/// Every tensor of the model described by `config`, in transformers' names (no prefix).
pub fn expected_tensors(config: &Dinov2Config) -> Vec<ExpectedTensor> {
    let h = config.hidden_size;
    let p = config.patch_size;
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        out.push(ExpectedTensor {
            name,
            shape,
            classifier_only: false,
        })
    };
    add("embeddings.cls_token".into(), vec![1, 1, h]);
    if config.use_mask_token {
        add("embeddings.mask_token".into(), vec![1, h]);
    }
    if config.num_register_tokens > 0 {
        add(
            "embeddings.register_tokens".into(),
            vec![1, config.num_register_tokens, h],
        );
    }
    add(
        "embeddings.position_embeddings".into(),
        vec![1, config.num_positions(), h],
    );
    add(
        "embeddings.patch_embeddings.projection.weight".into(),
        vec![h, config.num_channels, p, p],
    );
    add(
        "embeddings.patch_embeddings.projection.bias".into(),
        vec![h],
    );
    let f = config.ffn_hidden_size();
    for i in 0..config.num_hidden_layers {
        let l = format!("encoder.layer.{i}");
        add(format!("{l}.norm1.weight"), vec![h]);
        add(format!("{l}.norm1.bias"), vec![h]);
        for qkv in ["query", "key", "value"] {
            add(format!("{l}.attention.attention.{qkv}.weight"), vec![h, h]);
            if config.qkv_bias {
                add(format!("{l}.attention.attention.{qkv}.bias"), vec![h]);
            }
        }
        add(format!("{l}.attention.output.dense.weight"), vec![h, h]);
        add(format!("{l}.attention.output.dense.bias"), vec![h]);
        add(format!("{l}.layer_scale1.lambda1"), vec![h]);
        add(format!("{l}.norm2.weight"), vec![h]);
        add(format!("{l}.norm2.bias"), vec![h]);
        if config.use_swiglu_ffn {
            add(format!("{l}.mlp.weights_in.weight"), vec![2 * f, h]);
            add(format!("{l}.mlp.weights_in.bias"), vec![2 * f]);
            add(format!("{l}.mlp.weights_out.weight"), vec![h, f]);
            add(format!("{l}.mlp.weights_out.bias"), vec![h]);
        } else {
            add(format!("{l}.mlp.fc1.weight"), vec![f, h]);
            add(format!("{l}.mlp.fc1.bias"), vec![f]);
            add(format!("{l}.mlp.fc2.weight"), vec![h, f]);
            add(format!("{l}.mlp.fc2.bias"), vec![h]);
        }
        add(format!("{l}.layer_scale2.lambda1"), vec![h]);
    }
    add("layernorm.weight".into(), vec![h]);
    add("layernorm.bias".into(), vec![h]);
    if config.num_labels() > 0 {
        for (name, shape) in [
            ("classifier.weight", vec![config.num_labels(), 2 * h]),
            ("classifier.bias", vec![config.num_labels()]),
        ] {
            out.push(ExpectedTensor {
                name: name.into(),
                shape,
                classifier_only: true,
            });
        }
    }
    out
}

/// What a stored name becomes in transformers' naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renamed {
    /// One tensor, renamed.
    One(String),
    /// The original fused `qkv` (weight or bias): rows `[q | k | v]`, split into three tensors.
    SplitQkv([String; 3]),
}

/// True when the names look like the original facebookresearch checkpoint (or timm's), possibly
/// under a prefix (`teacher.backbone.blocks.0...`).
pub fn is_original_naming<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| {
        ["pos_embed", "blocks.", "patch_embed."]
            .iter()
            .any(|m| n.starts_with(m) || n.contains(&format!(".{m}")))
    })
}

/// The prefix of the backbone among original-named tensors: what comes before `pos_embed` (empty
/// for a plain state dict, `teacher.backbone.` in a DINOv2 training checkpoint), and how many
/// tensors lie outside it. Where several backbones are saved (teacher and student), the teacher's
/// is taken, as DINOv2's evaluation does; `Err` lists the prefixes when that does not decide.
pub fn backbone_prefix<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
) -> std::result::Result<(String, usize), Vec<String>> {
    let candidates: Vec<String> = names
        .clone()
        .filter_map(|n| n.strip_suffix("pos_embed"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .map(str::to_owned)
        .collect();
    let prefix = match candidates.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            // `teacher.` as any component: `teacher.backbone.`, `model.teacher.backbone.`.
            let teachers: Vec<&String> = candidates
                .iter()
                .filter(|p| p.starts_with("teacher.") || p.contains(".teacher."))
                .collect();
            match teachers.as_slice() {
                [one] => (*one).clone(),
                _ => return Err(candidates),
            }
        }
    };
    let ignored = names.filter(|n| !n.starts_with(&prefix)).count();
    Ok((prefix, ignored))
}

/// The model type transformers-named tensors belong to: with registers when they hold
/// `embeddings.register_tokens` (under any prefix).
pub fn hf_model_type<'a>(mut names: impl Iterator<Item = &'a str>) -> ModelType {
    if names.any(|n| n.ends_with("embeddings.register_tokens")) {
        ModelType::Dinov2WithRegisters
    } else {
        ModelType::Dinov2
    }
}

/// Maps an original facebookresearch name to transformers' name(s); `None` for names it does not know.
/// Handles `blocks.{i}.` and the chunked `blocks.{chunk}.{i}.` layouts.
pub fn from_original(name: &str) -> Option<Renamed> {
    let simple = match name {
        "cls_token" => Some("embeddings.cls_token"),
        "mask_token" => Some("embeddings.mask_token"),
        "pos_embed" => Some("embeddings.position_embeddings"),
        // timm names the register tokens `reg_token`.
        "register_tokens" | "reg_token" => Some("embeddings.register_tokens"),
        "patch_embed.proj.weight" => Some("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias" => Some("embeddings.patch_embeddings.projection.bias"),
        "norm.weight" => Some("layernorm.weight"),
        "norm.bias" => Some("layernorm.bias"),
        "head.weight" | "linear_head.weight" => Some("classifier.weight"),
        "head.bias" | "linear_head.bias" => Some("classifier.bias"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(Renamed::One(s.to_owned()));
    }
    let rest = name.strip_prefix("blocks.")?;
    let (first, rest) = rest.split_once('.')?;
    let mut index: usize = first.parse().ok()?;
    // Chunked checkpoints: blocks.{chunk}.{global index}.
    let rest = match rest.split_once('.') {
        Some((second, tail)) if second.parse::<usize>().is_ok() => {
            index = second.parse().ok()?;
            tail
        }
        _ => rest,
    };
    let l = format!("encoder.layer.{index}");
    let (module, param) = rest.rsplit_once('.')?;
    if module == "attn.qkv" {
        return Some(Renamed::SplitQkv(
            ["query", "key", "value"].map(|p| format!("{l}.attention.attention.{p}.{param}")),
        ));
    }
    let hf = match (module, param) {
        ("norm1", _) | ("norm2", _) | ("mlp.fc1", _) | ("mlp.fc2", _) => {
            format!("{l}.{module}.{param}")
        }
        ("attn.proj", _) => format!("{l}.attention.output.dense.{param}"),
        ("ls1", "gamma") => format!("{l}.layer_scale1.lambda1"),
        ("ls2", "gamma") => format!("{l}.layer_scale2.lambda1"),
        ("mlp.w12", _) => format!("{l}.mlp.weights_in.{param}"),
        ("mlp.w3", _) => format!("{l}.mlp.weights_out.{param}"),
        _ => return None,
    };
    Some(Renamed::One(hf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names() {
        assert_eq!(
            from_original("blocks.3.ls1.gamma"),
            Some(Renamed::One("encoder.layer.3.layer_scale1.lambda1".into()))
        );
        assert_eq!(
            from_original("blocks.1.5.mlp.w12.bias"),
            Some(Renamed::One("encoder.layer.5.mlp.weights_in.bias".into()))
        );
        assert_eq!(
            from_original("blocks.0.attn.qkv.weight"),
            Some(Renamed::SplitQkv([
                "encoder.layer.0.attention.attention.query.weight".into(),
                "encoder.layer.0.attention.attention.key.weight".into(),
                "encoder.layer.0.attention.attention.value.weight".into(),
            ]))
        );
        assert_eq!(
            from_original("pos_embed"),
            Some(Renamed::One("embeddings.position_embeddings".into()))
        );
        assert_eq!(from_original("blocks.0.attn.rope"), None);
        assert_eq!(from_original("something"), None);
    }
}
