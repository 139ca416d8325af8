//! What the CLI's test files share: where the repository and its sample model are.

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped sample checkpoint, as a command-line argument.
pub fn model() -> String {
    root()
        .join("assets/models/dinov2-tiny-random")
        .display()
        .to_string()
}
