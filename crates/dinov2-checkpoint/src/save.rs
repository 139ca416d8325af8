//! Writing a checkpoint back out as transformers saves one: `config.json` and `model.safetensors`
//! under transformers' names, so that any checkpoint read here (an original `.pth`, a timm file, a
//! training checkpoint) loads in transformers with `from_pretrained(dir)` and nothing else.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::{CheckpointError, Result};
use crate::weights::StorageDtype;
use crate::{Checkpoint, ConfigSource};

impl Checkpoint {
    /// Writes `dir/config.json` and `dir/model.safetensors` as transformers' `save_pretrained`
    /// lays them out: names without prefix, or under `dinov2.` (`dinov2_with_registers.`) beside
    /// `classifier.*` for a classifier. The values are stored in `dtype` (rounded to nearest even),
    /// or as they are stored now.
    pub fn save_transformers(&self, dir: &Path, dtype: Option<StorageDtype>) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let config_text = match &self.config_source {
            ConfigSource::File(path) => std::fs::read_to_string(path).map_err(io(path))?,
            ConfigSource::Inferred(json) => {
                let mut text = serde_json::to_string_pretty(json).unwrap_or_default();
                text.push('\n');
                text
            }
        };
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config_text).map_err(io(&config_path))?;

        let classifier = self.weights.has_classifier();
        let base = self.config.model_type.base_prefix();
        let mut tensors: Vec<(String, StorageDtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for name in self.weights.names() {
            let Some(t) = self.weights.get(name) else {
                continue;
            };
            let saved = if classifier && !name.starts_with("classifier.") {
                format!("{base}.{name}")
            } else {
                name.to_owned()
            };
            let (dtype, bytes) = match dtype {
                Some(d) if d != t.dtype => (d, cast(&t.to_f32(), d)),
                _ => (t.dtype, t.bytes.to_vec()),
            };
            tensors.push((saved, dtype, t.shape.to_vec(), bytes));
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                let dtype = match dtype {
                    StorageDtype::F32 => Dtype::F32,
                    StorageDtype::F16 => Dtype::F16,
                    StorageDtype::BF16 => Dtype::BF16,
                };
                TensorView::new(dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| CheckpointError::Safetensors {
                        path: dir.join("model.safetensors"),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
            CheckpointError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            }
        })
    }
}

/// Little-endian bytes of `values` in `dtype`, rounded to nearest even.
fn cast(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        StorageDtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}
