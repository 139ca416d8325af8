//! Project tasks, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! Std only, on purpose: the tasks shell out to the tools that do the work.
//!
//! * `golden`: regenerate the golden parity fixtures in `tests/fixtures/golden/` by running
//!   `xtask/golden/make_golden.py` under the pinned transformers 5.17.0 environment, then (for the
//!   `legacy_444` case) with `--legacy` under transformers 4.44.2; also the preprocessing
//!   fixtures in `tests/fixtures/preprocess/` (`xtask/golden/make_preprocess.py`, 5.17.0) and the
//!   sample checkpoint `assets/models/dinov2-tiny-random` (`xtask/golden/make_sample_model.py`).
//! * `kernels [--check]`: compile `kernels/*.cu` into the embedded artifacts of `dinov2-kernels`
//!   (see `kernels.rs`); `--check` only compares source hashes with the manifest.
//! * `gpu-bundle`: build the GPU test and bench binaries and gather them with the fixtures and the
//!   device script into `bundle/` (see `bundle.rs`).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bundle;
mod kernels;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  golden [--python PATH] [--legacy-python PATH] [--out DIR]
      Regenerate tests/fixtures/golden/ with xtask/golden/make_golden.py, then (without --out)
      tests/fixtures/preprocess/ with xtask/golden/make_preprocess.py under the same --python.
      --python         interpreter with xtask/golden/requirements-5.17.txt
                       (default: $DINOV2_REF_PYTHON, else python3)
      --legacy-python  interpreter with xtask/golden/requirements-4.44.txt, for legacy_444
                       (default: $DINOV2_REF444_PYTHON; skipped when neither is given)
      --out DIR        output folder (default: tests/fixtures/golden)
  kernels [--check] [--nvcc PATH]
      Compile kernels/*.cu with nvcc 13.0 (default: $NVCC, else nvcc on PATH) into
      crates/dinov2-kernels/artifacts/ (compute_80 PTX, sm_90 cubins, ptxas report, manifest).
      --check   compare the sources with the manifest's hashes only (no nvcc needed)
  gpu-bundle [--out DIR]
      Build the GPU test and bench binaries (release) and gather them with the fixtures and
      run.sh into bundle/ (default), for `bash bundle/run.sh` on the GPU machine.
  help
      Print this message.
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("golden") => golden(&args[1..]),
        Some("kernels") => kernels::run(&repo_root(), &args[1..]),
        Some("gpu-bundle") => bundle::run(&repo_root(), &args[1..]),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(format!("no command given\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's manifest directory).
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Parses `--name VALUE` / `--name=VALUE` options; every option must be one of `known`.
fn parse_options(args: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = iter
                    .next()
                    .ok_or_else(|| format!("option {arg} needs a value\n\n{USAGE}"))?;
                (arg.clone(), value.clone())
            }
        };
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown option {name:?}\n\n{USAGE}"));
        }
        options.push((name, value));
    }
    Ok(options)
}

fn option(options: &[(String, String)], name: &str) -> Option<String> {
    options
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn env_nonempty(name: &str) -> Option<OsString> {
    env::var_os(name).filter(|v| !v.is_empty())
}

fn golden(args: &[String]) -> Result<(), String> {
    let options = parse_options(args, &["--python", "--legacy-python", "--out"])?;
    let python: OsString = option(&options, "--python")
        .map(OsString::from)
        .or_else(|| env_nonempty("DINOV2_REF_PYTHON"))
        .unwrap_or_else(|| OsString::from("python3"));
    let legacy_python: Option<OsString> = option(&options, "--legacy-python")
        .map(OsString::from)
        .or_else(|| env_nonempty("DINOV2_REF444_PYTHON"));

    let root = repo_root();
    let script = root.join("xtask").join("golden").join("make_golden.py");
    if !script.is_file() {
        return Err(format!(
            "generator script not found at {}",
            script.display()
        ));
    }
    let mut extra: Vec<OsString> = Vec::new();
    if let Some(out) = option(&options, "--out") {
        // Relative to where the user ran the command, not to the repository root.
        let out = env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?
            .join(out);
        extra.push("--out".into());
        extra.push(out.into_os_string());
    }

    run_python(&python, &script, &root, &extra)?;

    // The preprocessing fixtures (tests/fixtures/preprocess/) come from the same environment;
    // `--out` only redirects the model fixtures, so they are left alone then.
    if option(&options, "--out").is_none() {
        let preprocess = root.join("xtask").join("golden").join("make_preprocess.py");
        run_python(&python, &preprocess, &root, &[])?;
        let sample = root
            .join("xtask")
            .join("golden")
            .join("make_sample_model.py");
        run_python(&python, &sample, &root, &[])?;
    }

    match legacy_python {
        Some(legacy_python) => {
            extra.push("--legacy".into());
            run_python(&legacy_python, &script, &root, &extra)?;
        }
        None => eprintln!(
            "xtask: skipping legacy_444 (transformers 4.44.2): pass --legacy-python PATH or set \
             DINOV2_REF444_PYTHON to regenerate it"
        ),
    }
    Ok(())
}

fn run_python(
    python: &OsString,
    script: &Path,
    root: &Path,
    extra: &[OsString],
) -> Result<(), String> {
    let shown = format!(
        "{} {} {}",
        python.to_string_lossy(),
        script.display(),
        extra
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("xtask: running {}", shown.trim_end());
    let status = Command::new(python)
        .arg(script)
        .args(extra)
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot start {:?}: {e}", python.to_string_lossy()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", shown.trim_end()))
    }
}
