//! `cargo xtask gpu-bundle`: everything the GPU machine runs, built here (it has no Rust
//! toolchain): the release binaries of the GPU tests (`dinov2-kernels`' `gpu`, the `dinov2`
//! package's `cuda`), of the `dinov2` program (whose `bench` verb times ours against the PyTorch peer it
//! carries) and of the criterion kernel benches (`benches/cuda_kernels.rs`), `run.sh` and the table scripts (from `scripts/gpu/`), the PyTorch kernel peer
//! (`benches/peer_kernels.py`) and the Python module (`python/dinov2_rs.abi3.so`), gathered into
//! `bundle/`; the programs (`bin/`, `python/`) go into `payload.tar.xz`, which `run.sh` unpacks
//! first. The golden fixtures are not copied: they travel as tracked files, and the run reads
//! them from `tests/fixtures/golden`.
//!
//! On the GPU machine, from the repository root: `bash bundle/run.sh` (writes its log under $OUT).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries: (cargo arguments, file-name prefix of the executable, name in `bundle/bin`).
/// All are release builds (`cargo bench` builds with the release-based bench profile).
const BINARIES: &[(&[&str], &str, &str)] = &[
    (
        &[
            "test",
            "--release",
            "--no-run",
            "-p",
            "dinov2-kernels",
            "--test",
            "gpu",
        ],
        "gpu-",
        "kernels-gpu",
    ),
    (
        &[
            "test",
            "--release",
            "--no-run",
            "-p",
            "dinov2",
            "--test",
            "cuda",
        ],
        "cuda-",
        "model-cuda",
    ),
    (
        &["build", "--release", "-p", "dinov2-cli", "--bin", "dinov2"],
        "dinov2",
        "dinov2",
    ),
    (
        &[
            "bench",
            "--no-run",
            "-p",
            "dinov2",
            "--bench",
            "cuda_kernels",
        ],
        "cuda_kernels-",
        "kernel-bench",
    ),
];

/// The scripts: (path in the repository, path in the bundle).
const SCRIPTS: &[(&str, &str)] = &[
    ("scripts/gpu/run.sh", "run.sh"),
    ("scripts/gpu/table.py", "scripts/table.py"),
    ("scripts/gpu/kernel_table.py", "scripts/kernel_table.py"),
    ("scripts/gpu/pipeline.py", "scripts/pipeline.py"),
    ("benches/peer_kernels.py", "scripts/peer_kernels.py"),
    (
        "scripts/transformers_reference.py",
        "scripts/transformers_reference.py",
    ),
];

/// Runs the `gpu-bundle` command.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let mut out = root.join("bundle");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--out" => out = root.join(iter.next().ok_or("option --out needs a value")?),
            other => return Err(format!("gpu-bundle: unknown option {other:?}")),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut built = Vec::new();
    for (cargo_args, prefix, name) in BINARIES {
        let exe = build(&cargo, root, cargo_args, prefix)?;
        built.push((exe, *name));
    }

    if out.exists() {
        fs::remove_dir_all(&out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    let bin = out.join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
    for (exe, name) in &built {
        let dst = bin.join(name);
        fs::copy(exe, &dst).map_err(|e| format!("cannot copy {}: {e}", exe.display()))?;
        // Debug info is most of the size; the bundle travels with a size limit.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&dst)
            .status();
    }
    // The Python module, as Python loads it: `python/dinov2_rs.abi3.so`.
    let module = build_module(&cargo, root)?;
    let python = out.join("python");
    fs::create_dir_all(&python).map_err(|e| format!("cannot create {}: {e}", python.display()))?;
    let dst = python.join("dinov2_rs.abi3.so");
    fs::copy(&module, &dst).map_err(|e| format!("cannot copy {}: {e}", module.display()))?;
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(&dst)
        .status();
    for (file, target) in SCRIPTS {
        let dst = out.join(target);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::copy(root.join(file), &dst).map_err(|e| format!("cannot copy {file}: {e}"))?;
    }
    // The programs travel compressed (xz: a quarter of their size), unpacked by run.sh.
    pack(&out, &["bin", "python"])?;
    let size = dir_size(&out);
    let tracked = tracked_size(root)?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "xtask: wrote {} ({:.1} MiB; with the {:.1} MiB of tracked files that travel beside it, {:.1} of {} MiB). On the GPU machine, from the repository root: bash bundle/run.sh",
        out.display(),
        mib(size),
        mib(tracked),
        mib(size + tracked),
        TRAVEL_LIMIT >> 20
    );
    if size + tracked > TRAVEL_LIMIT {
        return Err(format!(
            "the working tree and the bundle come to {:.1} MiB, over the device tool's {} MiB",
            mib(size + tracked),
            TRAVEL_LIMIT >> 20
        ));
    }
    Ok(())
}

/// Runs `cargo ARGS --message-format=json` in `root`: its messages (stdout), or its errors.
fn cargo_messages(cargo: &str, root: &Path, args: &[&str]) -> Result<String, String> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let output = Command::new(cargo)
        .args(args)
        .arg("--message-format=json")
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Builds one target (release: the arguments say so) and returns its executable.
fn build(cargo: &str, root: &Path, args: &[&str], prefix: &str) -> Result<PathBuf, String> {
    cargo_messages(cargo, root, args)?
        .lines()
        .filter_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = line[start..].find('"')? + start;
            Some(PathBuf::from(&line[start..end]))
        })
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .ok_or_else(|| {
            format!(
                "`cargo {}` reported no executable {prefix}*",
                args.join(" ")
            )
        })
}

/// Builds the Python extension module (`dinov2-python`, release) and returns its shared library.
fn build_module(cargo: &str, root: &Path) -> Result<PathBuf, String> {
    let args = ["build", "--release", "-p", "dinov2-python", "--lib"];
    // The compiler-artifact message of the cdylib lists the library among its "filenames".
    cargo_messages(cargo, root, &args)?
        .lines()
        .filter(|line| line.contains("\"compiler-artifact\"") && line.contains("dinov2_rs"))
        .flat_map(|line| line.split('"'))
        .find(|s| s.ends_with("libdinov2_rs.so"))
        .map(PathBuf::from)
        .ok_or_else(|| format!("`cargo {}` reported no libdinov2_rs.so", args.join(" ")))
}

/// Replaces the folders `dirs` of `out` by `out/payload.tar.xz` (`tar -cJf`: needs tar and xz).
fn pack(out: &Path, dirs: &[&str]) -> Result<(), String> {
    let status = Command::new("tar")
        .arg("-cJf")
        .arg("payload.tar.xz")
        .args(dirs)
        .env("XZ_OPT", "-6 -T0")
        .current_dir(out)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!(
            "tar -cJf payload.tar.xz failed ({status}); is xz installed?"
        ));
    }
    for dir in dirs {
        let path = out.join(dir);
        fs::remove_dir_all(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What the device tool sends at most: the tracked files and the carried bundle together.
const TRAVEL_LIMIT: u64 = 64 << 20;

/// The bytes of the files git tracks (they travel with every device call; the golden fixtures
/// among them are read there from `tests/fixtures/golden`, not copied into the bundle).
fn tracked_size(root: &Path) -> Result<u64, String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run git ls-files: {e}"))?;
    if !output.status.success() {
        return Err("git ls-files failed".into());
    }
    Ok(output
        .stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .filter_map(|name| fs::metadata(root.join(String::from_utf8_lossy(name).as_ref())).ok())
        .map(|m| m.len())
        .sum())
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
