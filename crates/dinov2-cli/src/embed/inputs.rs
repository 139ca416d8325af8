//! The embed verb's inputs: files, directories walked recursively for image files (sorted by
//! path), and `@list.txt` files naming one path per line.

use std::path::{Path, PathBuf};

use crate::error::{CliError, Result};

/// File extensions taken from directories (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff",
];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError(format!("cannot list {}: {e}", dir.display())))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError(format!("cannot list {}: {e}", dir.display())))?;
        let path = entry.path();
        // Follow symlinks to files and folders alike.
        if path.is_dir() {
            let mut sub = Vec::new();
            walk(&path, &mut sub)?;
            found.extend(sub);
        } else if is_image(&path) {
            found.push(path);
        }
    }
    found.sort();
    out.extend(found);
    Ok(())
}

/// Expands the command line's inputs into the ordered list of images to embed.
///
/// Files are taken as given (whatever their extension, so a bad file is reported, not skipped);
/// directories contribute their image files, recursively, sorted by path; `@FILE` contributes
/// the paths listed in FILE, one per line (blank lines and lines starting with `#` ignored).
pub fn expand(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if let Some(list) = input.strip_prefix('@') {
            let text = std::fs::read_to_string(list)
                .map_err(|e| CliError(format!("cannot read list {list}: {e}")))?;
            out.extend(
                text.lines()
                    .map(str::trim_end)
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(PathBuf::from),
            );
        } else {
            let path = PathBuf::from(input);
            if path.is_dir() {
                walk(&path, &mut out)?;
            } else {
                out.push(path);
            }
        }
    }
    if out.is_empty() {
        return Err(CliError(format!(
            "no images found in {}",
            inputs.join(", ")
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_lists_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        for f in ["a.JPG", "b/z.png", "b/c/y.webp", "b/notes.txt", "b/a.gif"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("list.txt"), "one.jpg\n\n# comment\ntwo.png\n").unwrap();
        let got = expand(&[
            d.to_string_lossy().into_owned(),
            format!("@{}", d.join("list.txt").display()),
            "file.bin".into(),
        ])
        .unwrap();
        let rel: Vec<String> = got
            .iter()
            .map(|p| {
                p.strip_prefix(d)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            rel,
            [
                "a.JPG",
                "b/a.gif",
                "b/c/y.webp",
                "b/z.png",
                "one.jpg",
                "two.png",
                "file.bin"
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(expand(&[empty.path().to_string_lossy().into_owned()])
            .unwrap_err()
            .0
            .contains("no images"));
    }
}
