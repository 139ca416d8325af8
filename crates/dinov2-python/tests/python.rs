//! Loads the built extension module into Python and runs `tests/test_binding.py` against vectors
//! the Rust library computes for the same images.
//!
//! The interpreter is `$DINOV2_PYTHON`, else `python3` (3.11 or later: the module uses the stable
//! ABI of 3.11). The script's NumPy, pyarrow and Pillow checks run where those packages are
//! installed; the rest needs only the standard library.

use std::path::{Path, PathBuf};
use std::process::Command;

use dinov2::{CpuBackend, Dtype, Embedder, Pooling};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The extension module (`libdinov2_rs.so`) cargo built with this test.
fn extension() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps folder");
    let name = format!(
        "{}dinov2_rs{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps.join(&name), deps.join("..").join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} was not built next to {}", deps.display()))
}

/// The interpreter, or `None` (with a note) where there is none recent enough.
fn python() -> Option<String> {
    let python = std::env::var("DINOV2_PYTHON").unwrap_or_else(|_| "python3".into());
    let version = Command::new(&python)
        .args(["-c", "import sys; print(sys.version_info >= (3, 11))"])
        .output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "True" => Some(python),
        _ => {
            eprintln!("skipped: {python} is missing or older than 3.11 (set DINOV2_PYTHON)");
            None
        }
    }
}

#[test]
fn the_python_module_gives_the_library_s_vectors() {
    let Some(python) = python() else { return };
    let model = root().join("assets/models/dinov2-tiny-random");
    let images: Vec<PathBuf> = ["astronaut.jpg", "chelsea.png", "coffee.jpg", "rocket.jpg"]
        .iter()
        .map(|n| root().join("assets/images").join(n))
        .collect();

    // The library's vectors for the same images: CLS, and the patch grids (224 px crops).
    let backend = || CpuBackend::new(Dtype::F32).unwrap();
    let cls = Embedder::from_dir(&model, backend()).unwrap();
    let patch = Embedder::from_dir(&model, backend())
        .unwrap()
        .with_pooling(Pooling::Patch);
    let values = |e: &Embedder<CpuBackend>| -> Vec<Vec<f32>> {
        e.embed_paths(&images)
            .into_iter()
            .map(|r| r.unwrap().values)
            .collect()
    };
    let expected = serde_json::json!({
        "model": model,
        "images": images,
        "cls": values(&cls),
        "patch": values(&patch),
    });

    let dir = tempfile::tempdir().unwrap();
    // Python finds an extension module by its file name: `dinov2_rs.abi3.so`.
    std::fs::copy(extension(), dir.path().join("dinov2_rs.abi3.so")).unwrap();
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();

    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/test_binding.py"))
        .env("PYTHONPATH", dir.path())
        .env("DINOV2_EXPECTED", &expected_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "test_binding.py failed:\n{stderr}");
}
