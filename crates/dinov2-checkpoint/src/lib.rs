//! Everything read from a DINOv2 model directory laid out as Hugging Face saves it:
//! `config.json` ([`Dinov2Config`]) and safetensors weights ([`Weights`]), validated against each
//! other so that a missing, unexpected or mis-shaped tensor is reported by name before any compute.

mod config;
mod error;
mod header;
mod hub;
mod names;
mod presets;
mod weights;

use std::path::{Path, PathBuf};

pub use config::{Activation, Dinov2Config, ModelType, ProblemType};
pub use error::{CheckpointError, Result};
pub use hub::{find_in_cache, hub_cache_dir, HubId};
pub use names::{expected_tensors, ExpectedTensor};
pub use presets::{released, released_json, RELEASED};
pub use weights::{StorageDtype, TensorRef, Weights};

/// A model directory: its config and its memory-mapped weights.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Dinov2Config,
    pub weights: Weights,
}

impl Checkpoint {
    /// Opens `dir/config.json` and the weights beside it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let (kind, reason) = if dir.exists() {
                (std::io::ErrorKind::InvalidInput, "not a directory")
            } else {
                (std::io::ErrorKind::NotFound, "the directory does not exist")
            };
            return Err(CheckpointError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(kind, reason),
            });
        }
        let config = Dinov2Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir, &config)?;
        Ok(Checkpoint {
            dir: dir.to_owned(),
            config,
            weights,
        })
    }
}
