//! The one error type of the model crate.

use dinov2_checkpoint::CheckpointError;

/// What can go wrong when building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The checkpoint could not be read or does not fit its config.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An input has the wrong shape or value.
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    /// A head or option the checkpoint cannot serve.
    #[error("{0}")]
    Unsupported(String),
    /// The backend failed (device errors).
    #[error("{backend} backend: {reason}")]
    Backend { backend: String, reason: String },
    /// The device ran out of memory: the same pass may fit with fewer images.
    #[error("{backend} backend: out of device memory: {reason}")]
    OutOfMemory { backend: String, reason: String },
}

impl ModelError {
    /// An [`ModelError::Input`] naming the input and the reason.
    pub fn input(name: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Input {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
