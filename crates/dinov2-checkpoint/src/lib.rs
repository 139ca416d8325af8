//! Everything read from a DINOv2 model directory laid out as Hugging Face saves it:
//! `config.json` ([`Dinov2Config`]) and safetensors or PyTorch weights ([`Weights`]), validated
//! against each other so that a missing, unexpected or mis-shaped tensor is reported by name before
//! any compute. A weights file alone (an original facebookresearch `.pth`, a timm checkpoint) is
//! read too, its config told from its tensors.

mod config;
mod error;
mod header;
mod hub;
mod infer;
mod names;
mod pickle;
mod presets;
mod save;
mod torch_file;
mod weights;

use std::path::{Path, PathBuf};

pub use config::{Activation, Dinov2Config, ModelType, ProblemType};
pub use error::{CheckpointError, Result};
pub use hub::{find_in_cache, hub_cache_dir, HubId};
pub use names::{expected_tensors, ExpectedTensor};
pub use presets::{released, released_json, RELEASED};
pub use weights::{StorageDtype, TensorRef, Weights};

/// A model: its config and its memory-mapped weights.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model directory, or the weights file given alone.
    pub path: PathBuf,
    pub config: Dinov2Config,
    pub weights: Weights,
    /// Where the config came from.
    pub config_source: ConfigSource,
}

/// Where a checkpoint's config came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource {
    /// The model directory's `config.json`.
    File(PathBuf),
    /// Told from the tensors of a weights file given alone, as this `config.json` would say it.
    Inferred(serde_json::Value),
}

impl Checkpoint {
    /// Opens a model: a directory (`config.json` and the weights beside it), or a weights file
    /// alone (safetensors or `torch.save`, in transformers', facebookresearch's or timm's names),
    /// whose config is then told from its tensors (see [`Checkpoint::open_file`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_file() {
            return Self::open_file(path);
        }
        if !path.is_dir() {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such directory or weights file",
                ),
            });
        }
        let config_path = path.join("config.json");
        if !config_path.exists() {
            // A folder holding only a weights file (a downloaded `.pth`): name the way to it.
            let mut weights: Vec<String> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    [".pth", ".pt", ".bin", ".safetensors"]
                        .iter()
                        .any(|ext| n.ends_with(ext))
                })
                .collect();
            weights.sort();
            if let Some(first) = weights.first() {
                return Err(CheckpointError::NoConfig {
                    dir: path.to_owned(),
                    example: path.join(first),
                });
            }
        }
        let config = Dinov2Config::from_file(&config_path)?;
        let weights = Weights::from_dir(path, &config)?;
        Ok(Checkpoint {
            path: path.to_owned(),
            config,
            weights,
            config_source: ConfigSource::File(config_path),
        })
    }

    /// Opens a weights file given without a `config.json`: the architecture is told from the
    /// tensors (sizes, layers, registers, SwiGLU, patch size, the position grid), and the number of
    /// heads taken as `hidden_size / 64`, as in every released DINOv2. The model is then
    /// transformers' class for the family (`Dinov2Model` without registers,
    /// `Dinov2WithRegistersModel` with them), position-embedding resize included: the original
    /// code's resize differs for models without registers (its `+ 0.1` offset, which transformers
    /// dropped after 4.44).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let weights = Weights::read(&[path.to_owned()], None)?;
        let (config, json) = infer::config(&weights).map_err(|reason| CheckpointError::Infer {
            path: path.to_owned(),
            reason,
        })?;
        weights.validate(&config)?;
        Ok(Checkpoint {
            path: path.to_owned(),
            config,
            weights,
            config_source: ConfigSource::Inferred(json),
        })
    }
}
