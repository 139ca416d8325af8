//! The facade's error: the library errors plus file input and output.

use std::path::{Path, PathBuf};

/// Anything the `dinov2` library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] dinov2_checkpoint::CheckpointError),
    #[error(transparent)]
    Model(#[from] dinov2_model::ModelError),
    #[error(transparent)]
    Image(#[from] dinov2_image::ImageError),
    /// The batch an item belonged to failed as a whole.
    #[error("the batch failed: {0}")]
    Batch(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what was expected.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
