//! The CLI's error: one line for the user, built from the library errors.

use std::fmt;

/// A failure reported as one line on stderr.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<dinov2::ModelError> for CliError {
    fn from(e: dinov2::ModelError) -> Self {
        CliError(e.to_string())
    }
}

impl From<dinov2::CheckpointError> for CliError {
    fn from(e: dinov2::CheckpointError) -> Self {
        CliError(e.to_string())
    }
}

/// Result alias of the CLI.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl From<dinov2::Error> for CliError {
    fn from(e: dinov2::Error) -> Self {
        CliError(e.to_string())
    }
}
