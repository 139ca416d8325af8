//! `config.json` of a DINOv2 checkpoint: every field of transformers' `Dinov2Config` and
//! `Dinov2WithRegistersConfig` (5.17.0), with its defaults and its rules for
//! `out_features` / `out_indices`. Invalid values are errors that name the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{CheckpointError, Result};

/// Which transformers model family a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `model_type: "dinov2"`.
    Dinov2,
    /// `model_type: "dinov2_with_registers"`.
    Dinov2WithRegisters,
}

impl ModelType {
    /// The `model_type` string of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Dinov2 => "dinov2",
            ModelType::Dinov2WithRegisters => "dinov2_with_registers",
        }
    }

    /// The attribute name transformers gives the base model inside task heads, which is also the
    /// prefix of its tensors in a classifier checkpoint (`dinov2.` / `dinov2_with_registers.`).
    pub fn base_prefix(self) -> &'static str {
        self.as_str()
    }
}

/// The MLP activation named by `hidden_act` (transformers' `ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`, `gelu_python`: exact `0.5·x·(1 + erf(x/√2))`.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x·σ(1.702·x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `relu6`.
    Relu6,
    /// `selu`.
    Selu,
    /// `silu`, `swish`: `x·σ(x)`.
    Silu,
    /// `tanh`.
    Tanh,
    /// `sigmoid`.
    Sigmoid,
    /// `linear`: the identity.
    Identity,
}

impl Activation {
    /// Parses a transformers activation name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" | "gelu_fast" => {
                Activation::GeluTanh
            }
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu6" => Activation::Relu6,
            "selu" => Activation::Selu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "linear" => Activation::Identity,
            _ => return None,
        })
    }
}

/// How the classifier's loss is chosen (`problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// Mean squared error.
    Regression,
    /// Cross-entropy over integer labels.
    SingleLabelClassification,
    /// Binary cross-entropy with logits over float targets.
    MultiLabelClassification,
}

impl ProblemType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "regression" => ProblemType::Regression,
            "single_label_classification" => ProblemType::SingleLabelClassification,
            "multi_label_classification" => ProblemType::MultiLabelClassification,
            _ => return None,
        })
    }
}

/// A DINOv2 configuration as transformers 5.17.0 reads it from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    pub model_type: ModelType,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `head_dim` when the file sets it, else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub mlp_ratio: f64,
    pub hidden_act: Activation,
    /// `hidden_act` as written in the file.
    pub hidden_act_name: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    /// Pretraining image side: defines the position-embedding grid (`image_size / patch_size`).
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub layerscale_value: f64,
    pub drop_path_rate: f64,
    pub use_swiglu_ffn: bool,
    /// Always true for the registers family (its mask token always exists).
    pub use_mask_token: bool,
    /// 0 for `dinov2`.
    pub num_register_tokens: usize,
    /// `["stem", "stage1", ..., "stage{L}"]`.
    pub stage_names: Vec<String>,
    pub out_features: Vec<String>,
    /// Non-negative indices into `stage_names`, aligned with `out_features`.
    pub out_indices: Vec<usize>,
    pub apply_layernorm: bool,
    pub reshape_hidden_states: bool,
    pub architectures: Vec<String>,
    pub id2label: BTreeMap<usize, String>,
    pub label2id: BTreeMap<String, usize>,
    pub problem_type: Option<ProblemType>,
    /// `dtype` (or the older `torch_dtype`) as written, e.g. `"float32"`.
    pub dtype: Option<String>,
}

impl Dinov2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// Parses and validates a config from its JSON value.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            CheckpointError::config("<root>", "config.json must hold a JSON object")
        })?;
        let f = Fields(map);

        let model_type = match f.opt_str("model_type")? {
            Some("dinov2") => ModelType::Dinov2,
            Some("dinov2_with_registers") => ModelType::Dinov2WithRegisters,
            Some(other) => {
                return Err(CheckpointError::config(
                    "model_type",
                    format!("expected \"dinov2\" or \"dinov2_with_registers\", found {other:?}"),
                ))
            }
            None => return Err(CheckpointError::config("model_type", "missing")),
        };
        let registers = model_type == ModelType::Dinov2WithRegisters;

        let hidden_size = f.bounded("hidden_size", 768, 1 << 16)?;
        let num_hidden_layers = f.bounded("num_hidden_layers", 12, 1024)?;
        let num_attention_heads = f.bounded("num_attention_heads", 12, 1 << 16)?;
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(CheckpointError::config(
                        "num_attention_heads",
                        format!("{num_attention_heads} does not divide hidden_size {hidden_size}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim.checked_mul(num_attention_heads) != Some(hidden_size) {
            return Err(CheckpointError::config(
                "head_dim",
                format!(
                    "head_dim {head_dim} × num_attention_heads {num_attention_heads} must equal hidden_size {hidden_size}"
                ),
            ));
        }
        let mlp_ratio = f.number("mlp_ratio", 4.0)?;
        if mlp_ratio.is_nan() || mlp_ratio <= 0.0 || !mlp_ratio.is_finite() {
            return Err(CheckpointError::config(
                "mlp_ratio",
                format!("must be positive, found {mlp_ratio}"),
            ));
        }
        let use_swiglu_ffn = f.bool("use_swiglu_ffn", false)?;
        let unrounded_ffn = hidden_size as f64 * mlp_ratio;
        if unrounded_ffn >= (MAX_FFN_HIDDEN_SIZE + 1) as f64 {
            return Err(CheckpointError::config(
                "mlp_ratio",
                format!(
                    "hidden_size {hidden_size} × mlp_ratio {mlp_ratio} = {unrounded_ffn}: {}",
                    beyond(unrounded_ffn as usize, MAX_FFN_HIDDEN_SIZE)
                ),
            ));
        }
        if ffn_width(hidden_size, mlp_ratio, use_swiglu_ffn) == 0 {
            return Err(CheckpointError::config(
                "mlp_ratio",
                format!(
                    "hidden_size {hidden_size} × mlp_ratio {mlp_ratio} gives a feed-forward layer of width 0"
                ),
            ));
        }
        let hidden_act_name = f.opt_str("hidden_act")?.unwrap_or("gelu").to_owned();
        let hidden_act = Activation::from_name(&hidden_act_name).ok_or_else(|| {
            CheckpointError::config(
                "hidden_act",
                format!(
                    "unknown activation {hidden_act_name:?}; expected one of gelu, gelu_python, gelu_new, \
                     gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, quick_gelu, relu, relu6, selu, silu, swish, tanh, sigmoid, linear"
                ),
            )
        })?;
        let layer_norm_eps = f.number("layer_norm_eps", 1e-6)?;
        if layer_norm_eps.is_nan() || layer_norm_eps < 0.0 {
            return Err(CheckpointError::config(
                "layer_norm_eps",
                format!("must be >= 0, found {layer_norm_eps}"),
            ));
        }
        let patch_size = f.square_size("patch_size", if registers { 16 } else { 14 })?;
        let image_size = f.square_size("image_size", 224)?;
        for (name, size, max) in [
            ("patch_size", patch_size, 1 << 12),
            ("image_size", image_size, 1 << 16),
        ] {
            if size > max {
                return Err(CheckpointError::config(name, beyond(size, max)));
            }
        }
        if patch_size == 0 {
            return Err(CheckpointError::config("patch_size", "must be positive"));
        }
        if image_size < patch_size {
            return Err(CheckpointError::config(
                "image_size",
                format!("{image_size} is smaller than patch_size {patch_size}"),
            ));
        }
        let num_register_tokens = if registers {
            let n = f.usize("num_register_tokens", 4)?;
            if n > 1 << 12 {
                return Err(CheckpointError::config(
                    "num_register_tokens",
                    beyond(n, 1 << 12),
                ));
            }
            n
        } else {
            0
        };
        let use_mask_token = if registers {
            true
        } else {
            f.bool("use_mask_token", true)?
        };

        let stage_names: Vec<String> = std::iter::once("stem".to_owned())
            .chain((1..=num_hidden_layers).map(|i| format!("stage{i}")))
            .collect();
        let (out_features, out_indices) = align_out_features(
            &stage_names,
            f.opt_string_list("out_features")?,
            f.opt_int_list("out_indices")?,
        )?;

        let (id2label, label2id) = labels(&f)?;
        let problem_type = match f.opt_str("problem_type")? {
            None => None,
            Some(name) => Some(ProblemType::from_name(name).ok_or_else(|| {
                CheckpointError::config(
                    "problem_type",
                    format!(
                        "expected regression, single_label_classification or multi_label_classification, found {name:?}"
                    ),
                )
            })?),
        };
        if problem_type == Some(ProblemType::SingleLabelClassification) && id2label.len() == 1 {
            return Err(CheckpointError::config(
                "problem_type",
                "single_label_classification requires num_labels > 1",
            ));
        }
        let dtype = match f.opt_str("dtype")? {
            Some(d) => Some(d.to_owned()),
            None => f.opt_str("torch_dtype")?.map(str::to_owned),
        };

        Ok(Dinov2Config {
            model_type,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            head_dim,
            mlp_ratio,
            hidden_act,
            hidden_act_name,
            hidden_dropout_prob: f.probability("hidden_dropout_prob", 0.0)?,
            attention_probs_dropout_prob: f.probability("attention_probs_dropout_prob", 0.0)?,
            initializer_range: f.number("initializer_range", 0.02)?,
            layer_norm_eps,
            image_size,
            patch_size,
            num_channels: f.bounded("num_channels", 3, 1 << 16)?,
            qkv_bias: f.bool("qkv_bias", true)?,
            layerscale_value: f.number("layerscale_value", 1.0)?,
            drop_path_rate: f.probability("drop_path_rate", 0.0)?,
            use_swiglu_ffn,
            use_mask_token,
            num_register_tokens,
            stage_names,
            out_features,
            out_indices,
            apply_layernorm: f.bool("apply_layernorm", true)?,
            reshape_hidden_states: f.bool("reshape_hidden_states", true)?,
            architectures: f.opt_string_list("architectures")?.unwrap_or_default(),
            id2label,
            label2id,
            problem_type,
            dtype,
        })
    }

    /// Selects the backbone stages by index (negative counts from the end), by transformers' rules.
    pub fn set_out_indices(&mut self, indices: &[i64]) -> Result<()> {
        let (features, indices) =
            align_out_features(&self.stage_names, None, Some(indices.to_vec()))?;
        self.out_features = features;
        self.out_indices = indices;
        Ok(())
    }

    /// Side of the pretraining position-embedding grid (`image_size / patch_size`, 37 for 518/14).
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of position embeddings, CLS included.
    pub fn num_positions(&self) -> usize {
        self.grid_side() * self.grid_side() + 1
    }

    /// Width of the feed-forward hidden layer: `int(h·mlp_ratio)`, then for SwiGLU
    /// `(int(F·2/3) + 7) // 8 · 8`.
    pub fn ffn_hidden_size(&self) -> usize {
        ffn_width(self.hidden_size, self.mlp_ratio, self.use_swiglu_ffn)
    }

    /// Number of labels of the classification head (`len(id2label)`).
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Tokens before the patch tokens: CLS and the registers.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }
}

/// transformers' `set_output_features_output_indices` plus `verify_out_features_out_indices`.
fn align_out_features(
    stage_names: &[String],
    out_features: Option<Vec<String>>,
    out_indices: Option<Vec<i64>>,
) -> Result<(Vec<String>, Vec<usize>)> {
    let n = stage_names.len() as i64;
    let positive = |indices: &[i64]| -> Result<Vec<usize>> {
        indices
            .iter()
            .map(|&i| {
                if i >= n || i < -n {
                    Err(CheckpointError::config(
                        "out_indices",
                        format!(
                            "index {i} is out of range for {n} stages (stem + {} layers)",
                            n - 1
                        ),
                    ))
                } else {
                    Ok(i.rem_euclid(n) as usize)
                }
            })
            .collect()
    };
    if let Some(features) = &out_features {
        for feat in features {
            if !stage_names.contains(feat) {
                return Err(CheckpointError::config(
                    "out_features",
                    format!(
                        "{feat:?} is not a stage; stages are stem, stage1 .. stage{}",
                        n - 1
                    ),
                ));
            }
        }
        let sorted: Vec<&String> = stage_names
            .iter()
            .filter(|s| features.contains(s))
            .collect();
        if sorted.len() != features.len() {
            return Err(CheckpointError::config(
                "out_features",
                format!("duplicates in {features:?}"),
            ));
        }
        if !sorted.iter().zip(features).all(|(a, b)| *a == b) {
            return Err(CheckpointError::config(
                "out_features",
                format!(
                    "must follow the order of the stages, expected {sorted:?}, found {features:?}"
                ),
            ));
        }
    }
    let indices = match &out_indices {
        Some(raw) => {
            let pos = positive(raw)?;
            let mut sorted = pos.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != pos.len() {
                return Err(CheckpointError::config(
                    "out_indices",
                    format!("duplicates in {raw:?}"),
                ));
            }
            if sorted != pos {
                return Err(CheckpointError::config(
                    "out_indices",
                    format!("must follow the order of the stages, found {raw:?}"),
                ));
            }
            Some(pos)
        }
        None => None,
    };
    match (out_features, indices) {
        (None, None) => Ok((
            vec![stage_names[stage_names.len() - 1].clone()],
            vec![stage_names.len() - 1],
        )),
        (Some(features), None) => {
            let idx = features
                .iter()
                .map(|f| stage_names.iter().position(|s| s == f).unwrap_or(0))
                .collect();
            Ok((features, idx))
        }
        (None, Some(idx)) => Ok((idx.iter().map(|&i| stage_names[i].clone()).collect(), idx)),
        (Some(features), Some(idx)) => {
            let from_idx: Vec<String> = idx.iter().map(|&i| stage_names[i].clone()).collect();
            if from_idx != features {
                return Err(CheckpointError::config(
                    "out_indices",
                    format!(
                        "out_features {features:?} and out_indices {idx:?} name different stages"
                    ),
                ));
            }
            Ok((features, idx))
        }
    }
}

/// The message for a size past any real checkpoint's.
/// The widest feed-forward layer a config may ask for (ViT-g/14's is 6144, 4096 with SwiGLU).
const MAX_FFN_HIDDEN_SIZE: usize = 1 << 20;

/// [`Dinov2Config::ffn_hidden_size`] of a config being read.
pub(crate) fn ffn_width(hidden_size: usize, mlp_ratio: f64, swiglu: bool) -> usize {
    let f = (hidden_size as f64 * mlp_ratio) as usize;
    if swiglu {
        ((f as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
    } else {
        f
    }
}

fn beyond(n: usize, max: usize) -> String {
    format!(
        "{n} is more than any checkpoint holds (at most {max} here): the config is likely garbled"
    )
}

/// `id2label` / `label2id` / `num_labels` as `PretrainedConfig` resolves them.
fn labels(f: &Fields) -> Result<(BTreeMap<usize, String>, BTreeMap<String, usize>)> {
    let id2label = match f.0.get("id2label") {
        None | Some(Value::Null) => {
            let n = f.usize("num_labels", 2)?;
            if n > 1 << 20 {
                return Err(CheckpointError::config("num_labels", beyond(n, 1 << 20)));
            }
            (0..n).map(|i| (i, format!("LABEL_{i}"))).collect()
        }
        Some(Value::Object(map)) => {
            let mut out = BTreeMap::new();
            for (key, label) in map {
                let id: usize = key.parse().map_err(|_| {
                    CheckpointError::config(
                        "id2label",
                        format!("key {key:?} is not a non-negative integer"),
                    )
                })?;
                let label = label.as_str().ok_or_else(|| {
                    CheckpointError::config("id2label", format!("label of {key} is not a string"))
                })?;
                out.insert(id, label.to_owned());
            }
            if let Some((&last, _)) = out.iter().next_back() {
                if last + 1 != out.len() {
                    return Err(CheckpointError::config(
                        "id2label",
                        format!("ids must be 0..{}, found a largest id of {last}", out.len()),
                    ));
                }
            }
            if let Some(n) = f.opt_usize("num_labels")? {
                if n != out.len() {
                    return Err(CheckpointError::config(
                        "num_labels",
                        format!("{n} disagrees with the {} entries of id2label", out.len()),
                    ));
                }
            }
            out
        }
        Some(other) => {
            return Err(CheckpointError::config(
                "id2label",
                format!("expected an object, found {other}"),
            ))
        }
    };
    let label2id = match f.0.get("label2id") {
        Some(Value::Object(map)) => {
            let mut out = BTreeMap::new();
            for (label, id) in map {
                let id = id.as_u64().ok_or_else(|| {
                    CheckpointError::config(
                        "label2id",
                        format!("id of {label:?} is not a non-negative integer"),
                    )
                })?;
                out.insert(label.clone(), id as usize);
            }
            out
        }
        None | Some(Value::Null) => id2label.iter().map(|(&i, l)| (l.clone(), i)).collect(),
        Some(other) => {
            return Err(CheckpointError::config(
                "label2id",
                format!("expected an object, found {other}"),
            ))
        }
    };
    Ok((id2label, label2id))
}

/// Typed access to the fields of a JSON object; a wrong type is an error naming the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn wrong(name: &str, expected: &str, found: &Value) -> CheckpointError {
        CheckpointError::config(name, format!("expected {expected}, found {found}"))
    }

    fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        self.get(name)
            .map(|v| v.as_str().ok_or_else(|| Self::wrong(name, "a string", v)))
            .transpose()
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| Self::wrong(name, "a non-negative integer", v))
            })
            .transpose()
    }

    fn usize(&self, name: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(name)?.unwrap_or(default))
    }

    /// [`Fields::positive`], and at most `max`.
    fn bounded(&self, name: &str, default: usize, max: usize) -> Result<usize> {
        let n = self.positive(name, default)?;
        if n > max {
            return Err(CheckpointError::config(name, beyond(n, max)));
        }
        Ok(n)
    }

    fn positive(&self, name: &str, default: usize) -> Result<usize> {
        let n = self.usize(name, default)?;
        if n == 0 {
            return Err(CheckpointError::config(name, "must be positive, found 0"));
        }
        Ok(n)
    }

    /// An int or a `[n, n]` pair (transformers accepts both for image_size and patch_size).
    fn square_size(&self, name: &str, default: usize) -> Result<usize> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Array(items)) => {
                let sides: Vec<u64> = items.iter().filter_map(Value::as_u64).collect();
                match sides.as_slice() {
                    [a, b] if items.len() == 2 && a == b => Ok(*a as usize),
                    [_, _] if items.len() == 2 => Err(CheckpointError::config(
                        name,
                        format!("non-square sizes are not supported, found {sides:?}"),
                    )),
                    _ => Err(Self::wrong(
                        name,
                        "an integer or a pair of integers",
                        &Value::Array(items.clone()),
                    )),
                }
            }
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| Self::wrong(name, "an integer or a pair of integers", v)),
        }
    }

    fn number(&self, name: &str, default: f64) -> Result<f64> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| Self::wrong(name, "a number", v)))
            .transpose()
            .map(|n| n.unwrap_or(default))
    }

    fn probability(&self, name: &str, default: f64) -> Result<f64> {
        let p = self.number(name, default)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(CheckpointError::config(
                name,
                format!("must lie in [0, 1], found {p}"),
            ));
        }
        Ok(p)
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Self::wrong(name, "true or false", v))
            })
            .transpose()
            .map(|b| b.unwrap_or(default))
    }

    fn opt_string_list(&self, name: &str) -> Result<Option<Vec<String>>> {
        self.get(name)
            .map(|v| {
                v.as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .map(|i| i.as_str().map(str::to_owned))
                            .collect()
                    })
                    .ok_or_else(|| Self::wrong(name, "a list of strings", v))
            })
            .transpose()
    }

    fn opt_int_list(&self, name: &str) -> Result<Option<Vec<i64>>> {
        self.get(name)
            .map(|v| {
                v.as_array()
                    .and_then(|items| items.iter().map(Value::as_i64).collect())
                    .ok_or_else(|| Self::wrong(name, "a list of integers", v))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Dinov2Config> {
        Dinov2Config::from_json(&v)
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = parse(json!({"model_type": "dinov2"})).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.head_dim
            ),
            (768, 12, 12, 64)
        );
        assert_eq!((c.patch_size, c.image_size), (14, 224));
        assert_eq!(c.layer_norm_eps, 1e-6);
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.out_features, vec!["stage12"]);
        assert_eq!(c.out_indices, vec![12]);
        assert_eq!(c.num_labels(), 2);
        assert!(c.use_mask_token);
        assert_eq!(c.num_register_tokens, 0);
        assert_eq!(c.ffn_hidden_size(), 3072);
        let r = parse(json!({"model_type": "dinov2_with_registers"})).unwrap();
        assert_eq!((r.patch_size, r.num_register_tokens), (16, 4));
    }

    /// Sizes no checkpoint has are refused before anything is built from them (a config
    /// claiming a billion layers made a billion stage names).
    #[test]
    fn garbled_sizes_are_refused() {
        for (field, value) in [
            ("num_hidden_layers", json!(1_000_000_000u64)),
            ("hidden_size", json!(1u64 << 40)),
            ("num_attention_heads", json!(1u64 << 30)),
            ("num_labels", json!(1_000_000_000_000u64)),
            ("image_size", json!(1u64 << 20)),
            ("patch_size", json!(1u64 << 20)),
            ("num_channels", json!(u64::MAX)),
        ] {
            let mut v = json!({"model_type": "dinov2"});
            v[field] = value;
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("garbled"), "{field}: {e}");
        }
        let e = parse(
            json!({"model_type": "dinov2_with_registers", "num_register_tokens": 1u64 << 40}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_register_tokens"), "{e}");
        // head_dim x heads wrapping around to hidden_size.
        let e = parse(
            json!({"model_type": "dinov2", "hidden_size": 48, "num_attention_heads": 2,
                             "head_dim": (1u64 << 63) + 24}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("head_dim"), "{e}");
    }

    /// An `mlp_ratio` whose feed-forward layer would be empty or beyond any checkpoint is
    /// refused by name (an empty one made the CPU's GEMM panic on a chunk size of 0).
    #[test]
    fn feed_forward_widths_out_of_range_are_refused() {
        for (ratio, swiglu, found) in [
            (1e-30, false, "width 0"),
            (0.01, true, "width 0"),
            (1e30, false, "garbled"),
            (1e30, true, "garbled"),
            (f64::MAX, false, "garbled"),
        ] {
            let e = parse(json!({"model_type": "dinov2", "hidden_size": 48,
                                 "num_attention_heads": 3, "mlp_ratio": ratio,
                                 "use_swiglu_ffn": swiglu}))
            .unwrap_err()
            .to_string();
            assert!(e.contains("mlp_ratio") && e.contains(found), "{ratio}: {e}");
        }
        // The narrowest width that is not empty still loads.
        let c = parse(
            json!({"model_type": "dinov2", "hidden_size": 48, "num_attention_heads": 3,
                             "mlp_ratio": 1.0 / 48.0}),
        )
        .unwrap();
        assert_eq!(c.ffn_hidden_size(), 1);
    }

    #[test]
    fn giant_swiglu_width() {
        let c = parse(
            json!({"model_type": "dinov2", "hidden_size": 1536, "num_attention_heads": 24,
                             "use_swiglu_ffn": true}),
        )
        .unwrap();
        assert_eq!(c.ffn_hidden_size(), 4096);
    }

    #[test]
    fn out_indices_rules() {
        let c =
            parse(json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_indices": [-3, -1]}))
                .unwrap();
        assert_eq!(c.out_indices, vec![2, 4]);
        assert_eq!(c.out_features, vec!["stage2", "stage4"]);
        let c = parse(json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_features": ["stem", "stage3"]}))
            .unwrap();
        assert_eq!(c.out_indices, vec![0, 3]);
        for bad in [
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_indices": [5]}),
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_indices": [2, 1]}),
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_indices": [1, 1]}),
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_features": ["stage9"]}),
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_features": ["stage2", "stem"]}),
            json!({"model_type": "dinov2", "num_hidden_layers": 4, "out_features": ["stage2"], "out_indices": [3]}),
        ] {
            let err = parse(bad.clone()).unwrap_err().to_string();
            assert!(err.contains("out_"), "{bad}: {err}");
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (json!({"model_type": "vit"}), "model_type"),
            (json!({}), "model_type"),
            (
                json!({"model_type": "dinov2", "hidden_size": "big"}),
                "hidden_size",
            ),
            (
                json!({"model_type": "dinov2", "hidden_size": 100, "num_attention_heads": 3}),
                "num_attention_heads",
            ),
            (
                json!({"model_type": "dinov2", "hidden_act": "gelu_magic"}),
                "hidden_act",
            ),
            (
                json!({"model_type": "dinov2", "patch_size": [14, 16]}),
                "patch_size",
            ),
            (
                json!({"model_type": "dinov2", "num_hidden_layers": 0}),
                "num_hidden_layers",
            ),
            (
                json!({"model_type": "dinov2", "hidden_dropout_prob": 2.0}),
                "hidden_dropout_prob",
            ),
            (
                json!({"model_type": "dinov2", "id2label": {"a": "cat"}}),
                "id2label",
            ),
            (
                json!({"model_type": "dinov2", "id2label": {"0": "cat", "1": "dog"}, "num_labels": 3}),
                "num_labels",
            ),
            (
                json!({"model_type": "dinov2", "problem_type": "ranking"}),
                "problem_type",
            ),
            (json!({"model_type": "dinov2", "qkv_bias": 1}), "qkv_bias"),
        ];
        for (value, field) in cases {
            let err = parse(value.clone()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{value}: {err}");
        }
    }

    #[test]
    fn labels_and_dtype() {
        let c = parse(json!({"model_type": "dinov2", "id2label": {"1": "dog", "0": "cat"},
                             "torch_dtype": "float16", "problem_type": "multi_label_classification"}))
        .unwrap();
        assert_eq!(c.num_labels(), 2);
        assert_eq!(c.id2label[&1], "dog");
        assert_eq!(c.label2id["cat"], 0);
        assert_eq!(c.dtype.as_deref(), Some("float16"));
        assert_eq!(c.problem_type, Some(ProblemType::MultiLabelClassification));
    }
}
