//! The one error type of this crate: every message names the file, field or tensor at fault.

use std::path::PathBuf;

/// Everything that can go wrong while reading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config field has the wrong type or an invalid value.
    #[error("config field `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// A safetensors file is malformed.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// A `model.safetensors.index.json` that does not describe its shards.
    #[error("shard index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    /// The directory holds no weights in a format we read.
    #[error(
        "no weights found in {dir}: expected model.safetensors, model.safetensors.index.json or \
         pytorch_model.bin (or give the weights file itself as the model)"
    )]
    NoWeights { dir: PathBuf },
    /// A folder of weights without its `config.json`.
    #[error(
        "{dir} has no config.json: a weights file is read alone when it is given as the model, \
         e.g. {example}"
    )]
    NoConfig { dir: PathBuf, example: PathBuf },
    /// A PyTorch checkpoint file that cannot be read.
    #[error("{path} is not a PyTorch checkpoint we can read: {reason}")]
    Torch { path: PathBuf, reason: String },
    /// Several backbones are saved in one file, and none is the teacher's.
    #[error(
        "{path} holds several backbones, under {candidates:?}: save the one to use as a state dict \
         of its own"
    )]
    Backbone {
        path: PathBuf,
        candidates: Vec<String>,
    },
    /// A weights file given without a config.json, whose architecture cannot be told from its
    /// tensors.
    #[error("{path}: the architecture cannot be told from the tensors: {reason}")]
    Infer { path: PathBuf, reason: String },
    /// A tensor the model needs is absent.
    #[error("missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    /// A tensor is present that the model does not know.
    #[error("unexpected tensor `{name}` with shape {shape:?} in the checkpoint")]
    UnexpectedTensor { name: String, shape: Vec<usize> },
    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A fused `attn.qkv` tensor that does not hold three equal parts.
    #[error(
        "fused tensor `{name}` has shape {shape:?}: its first dimension must be 3 x hidden_size \
         (query, key and value)"
    )]
    FusedQkv { name: String, shape: Vec<usize> },
    /// A tensor is stored in a dtype we do not read.
    #[error("tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype { name: String, dtype: String },
    /// The same tensor name appears twice (for instance in two shards).
    #[error("tensor `{name}` appears twice in the checkpoint")]
    DuplicateTensor { name: String },
}

impl CheckpointError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CheckpointError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
