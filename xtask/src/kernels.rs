//! `cargo xtask kernels`: compiles `kernels/*.cu` with nvcc 13.0 into the artifacts that
//! `dinov2-kernels` embeds (compute_80 PTX, ISA <= 9.0, and sm_90 cubins; a `*_sm90a.cu` unit,
//! which uses Hopper-only instructions, into an sm_90a cubin alone), saves the `ptxas -v`
//! resource report, and writes `manifest.json` with the SHA-256 of every source and artifact.
//! `--check` needs no nvcc: it recomputes the hashes and lists the files that disagree.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the artifacts live, relative to the repository root.
pub const ARTIFACTS: &str = "crates/dinov2-kernels/artifacts";
/// Flags shared by both outputs.
const COMMON_FLAGS: &[&str] = &["-O3", "-std=c++17"];
/// The stem suffix of the units built for Hopper alone (wgmma): an sm_90a cubin, no PTX.
const HOPPER_SUFFIX: &str = "_sm90a";
/// Newest PTX ISA a CUDA 13.0 driver JIT-compiles.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

/// Runs the `kernels` command.
pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let mut check = false;
    let mut nvcc: Option<String> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--nvcc" => {
                nvcc = Some(iter.next().ok_or("option --nvcc needs a value")?.clone());
            }
            other if other.starts_with("--nvcc=") => nvcc = Some(other[7..].to_string()),
            other => return Err(format!("kernels: unknown option {other:?}")),
        }
    }
    if check {
        return self::check(root);
    }
    let nvcc = nvcc
        .or_else(|| std::env::var("NVCC").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "nvcc".to_string());
    build(root, &nvcc)
}

/// The kernel sources (`.cu`) and headers (`.cuh`, `.h`) under `kernels/`, sorted, as paths
/// relative to the repository root with `/` separators.
fn sources(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("kernels");
    let entries = fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if [".cu", ".cuh", ".h"].iter().any(|ext| name.ends_with(ext)) {
            out.push(format!("kernels/{name}"));
        }
    }
    out.sort();
    Ok(out)
}

fn hash_file(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

fn build(root: &Path, nvcc: &str) -> Result<(), String> {
    let version = Command::new(nvcc).arg("--version").output().map_err(|e| {
        format!(
            "cannot run {nvcc:?} ({e}). Install nvcc 13.0 (pip install nvidia-cuda-nvcc==13.0.88 \
             nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
             nvidia-cuda-cccl==13.0.85 into a venv, then put its site-packages/nvidia/cu13/bin on \
             PATH) or pass --nvcc PATH / set NVCC"
        )
    })?;
    let version_text = String::from_utf8_lossy(&version.stdout).into_owned();
    let release = version_text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    if !release.contains("release 13.0") {
        return Err(format!(
            "{nvcc} reports {release:?}: the artifacts need nvcc 13.0 (newer nvcc writes PTX that \
             a CUDA 13.0 driver rejects)"
        ));
    }
    let out_dir = root.join(ARTIFACTS);
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let sources = sources(root)?;
    let units: Vec<&String> = sources.iter().filter(|s| s.ends_with(".cu")).collect();
    if units.is_empty() {
        return Err("no kernels/*.cu found".into());
    }
    let mut artifacts = Vec::new();
    let mut report = String::new();
    for unit in units {
        let stem = Path::new(unit)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| format!("bad source name {unit}"))?;
        let src = root.join(unit);
        // Portable units: compute_80 PTX (embedded, JIT-compiled on any sm_80+ GPU) and an sm_90
        // cubin. Hopper-only units: an sm_90a cubin; their PTX is not embedded (the cubin is
        // the only code) but kept for review and for the test that checks the kernels'
        // signatures against the launchers.
        let hopper = stem.ends_with(HOPPER_SUFFIX);
        let (ptx, ptx_arch, cubin, cubin_arch) = if hopper {
            (
                format!("{stem}.sm_90a.ptx"),
                "-arch=sm_90a",
                format!("{stem}.sm_90a.cubin"),
                "-arch=sm_90a",
            )
        } else {
            (
                format!("{stem}.ptx"),
                "-arch=compute_80",
                format!("{stem}.sm_90.cubin"),
                "-arch=sm_90",
            )
        };
        eprintln!("xtask: nvcc {unit} -> {ptx}, {cubin}");
        nvcc_run(nvcc, root, &["-ptx", ptx_arch], &src, &out_dir.join(&ptx))?;
        if !hopper {
            check_ptx(&out_dir.join(&ptx))?;
        }
        let log = nvcc_run(
            nvcc,
            root,
            &["-cubin", cubin_arch, "-Xptxas", "-v"],
            &src,
            &out_dir.join(&cubin),
        )?;
        report.push_str(&resource_table(unit, &log));
        artifacts.push(ptx);
        artifacts.push(cubin);
    }
    let header = format!(
        "# ptxas -v resource usage of the sm_90 and sm_90a cubins ({release})\n\
         # kernel | registers | spill stores/loads (bytes) | static smem (bytes) | stack (bytes)\n\
         # The flash kernels attention_{{f16,bf16}}_dP also take 320·(P + 8)·2 bytes of dynamic smem, _dP_r128 384·(P + 8)·2.\n\
         # The gemm_*_n128 kernels take 3·(128 + 128)·64·2 + 1024 bytes of dynamic smem, _n256 4·(128 + 256)·64·2 + 1024.\n"
    );
    fs::write(out_dir.join("resources.txt"), header + &report)
        .map_err(|e| format!("cannot write resources.txt: {e}"))?;
    artifacts.push("resources.txt".into());
    write_manifest(root, &release, &sources, &artifacts)?;
    eprintln!("xtask: wrote {} and manifest.json", ARTIFACTS);
    Ok(())
}

/// Runs nvcc on one unit; returns its stderr (the ptxas report when asked for).
fn nvcc_run(
    nvcc: &str,
    root: &Path,
    mode: &[&str],
    src: &Path,
    out: &Path,
) -> Result<String, String> {
    let output = Command::new(nvcc)
        .args(mode)
        .args(COMMON_FLAGS)
        .arg("-o")
        .arg(out)
        .arg(src)
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run {nvcc}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("nvcc failed on {}:\n{stderr}", src.display()));
    }
    if stderr.contains("warning") {
        eprint!("{stderr}");
    }
    Ok(stderr)
}

/// The PTX must target sm_80 and use an ISA a CUDA 13.0 driver accepts.
fn check_ptx(path: &Path) -> Result<(), String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .ok_or_else(|| format!("{}: no .version line", path.display()))?;
    let (major, minor) = version
        .trim()
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("{}: bad .version {version:?}", path.display()))?;
    if (major, minor) > MAX_PTX_ISA {
        return Err(format!(
            "{}: PTX ISA {major}.{minor} is newer than 9.0, which a CUDA 13.0 driver cannot load",
            path.display()
        ));
    }
    if !text.lines().any(|l| l.trim() == ".target sm_80") {
        return Err(format!("{}: expected `.target sm_80`", path.display()));
    }
    Ok(())
}

/// One line per kernel from a `ptxas -v` log.
fn resource_table(unit: &str, log: &str) -> String {
    let mut out = format!("\n## {unit}\n");
    let mut rows: BTreeMap<String, [String; 4]> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            rows.insert(name.clone(), Default::default());
            current = Some(name);
        } else if let Some(name) = &current {
            let row = rows.get_mut(name).expect("inserted above");
            if line.contains("bytes stack frame") {
                let n: Vec<&str> = line.split_whitespace().collect();
                // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
                row[3] = n.first().copied().unwrap_or("?").to_string();
                row[1] = format!(
                    "{}/{}",
                    n.get(4).copied().unwrap_or("?"),
                    n.get(8).copied().unwrap_or("?")
                );
            } else if let Some(rest) = line.split("Used ").nth(1) {
                row[0] = rest.split_whitespace().next().unwrap_or("?").to_string();
                row[2] = rest
                    .split(", ")
                    .find(|p| p.ends_with("bytes smem"))
                    .and_then(|p| p.split_whitespace().next())
                    .unwrap_or("0")
                    .to_string();
            }
        }
    }
    for (name, [regs, spills, smem, stack]) in rows {
        out.push_str(&format!(
            "{name:<36} regs {regs:>3}  spills {spills:>7}  smem {smem:>6}  stack {stack:>4}\n"
        ));
    }
    out
}

fn write_manifest(
    root: &Path,
    release: &str,
    sources: &[String],
    artifacts: &[String],
) -> Result<(), String> {
    let mut json = String::from("{\n");
    json.push_str(&format!("  \"nvcc\": \"{release}\",\n"));
    json.push_str(&format!(
        "  \"ptx_flags\": \"-ptx -arch=compute_80 {}\",\n",
        COMMON_FLAGS.join(" ")
    ));
    json.push_str(&format!(
        "  \"cubin_flags\": \"-cubin -arch=sm_90 -Xptxas -v {}\",\n",
        COMMON_FLAGS.join(" ")
    ));
    json.push_str(&format!(
        "  \"sm90a_cubin_flags\": \"-cubin -arch=sm_90a -Xptxas -v {} (units *{HOPPER_SUFFIX}.cu)\",\n",
        COMMON_FLAGS.join(" ")
    ));
    let entries = |paths: &[(String, PathBuf)]| -> Result<String, String> {
        let lines: Result<Vec<String>, String> = paths
            .iter()
            .map(|(name, path)| Ok(format!("    \"{name}\": \"{}\"", hash_file(path)?)))
            .collect();
        Ok(lines?.join(",\n"))
    };
    let src: Vec<(String, PathBuf)> = sources.iter().map(|s| (s.clone(), root.join(s))).collect();
    let art: Vec<(String, PathBuf)> = artifacts
        .iter()
        .map(|a| (a.clone(), root.join(ARTIFACTS).join(a)))
        .collect();
    json.push_str(&format!("  \"sources\": {{\n{}\n  }},\n", entries(&src)?));
    json.push_str(&format!(
        "  \"artifacts\": {{\n{}\n  }}\n}}\n",
        entries(&art)?
    ));
    let path = root.join(ARTIFACTS).join("manifest.json");
    fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The `"name": "hash"` pairs of one object of the manifest (the format `write_manifest` writes).
fn manifest_section(text: &str, section: &str) -> Result<BTreeMap<String, String>, String> {
    let start = text
        .find(&format!("\"{section}\": {{"))
        .ok_or_else(|| format!("manifest.json has no \"{section}\" object"))?;
    let body = &text[start..];
    let end = body.find('}').ok_or("manifest.json is truncated")?;
    let mut out = BTreeMap::new();
    for line in body[..end].lines().skip(1) {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() >= 4 {
            out.insert(parts[1].to_string(), parts[3].to_string());
        }
    }
    Ok(out)
}

fn check(root: &Path) -> Result<(), String> {
    let path = root.join(ARTIFACTS).join("manifest.json");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {} ({e}): run `cargo xtask kernels`",
            path.display()
        )
    })?;
    let recorded = manifest_section(&text, "sources")?;
    let mut problems = Vec::new();
    let on_disk = sources(root)?;
    for source in &on_disk {
        match recorded.get(source) {
            None => problems.push(format!("{source}: new, not in the manifest")),
            Some(hash) if *hash != hash_file(&root.join(source))? => {
                problems.push(format!("{source}: changed since the artifacts were built"))
            }
            Some(_) => {}
        }
    }
    for source in recorded.keys() {
        if !on_disk.contains(source) {
            problems.push(format!("{source}: in the manifest but no longer on disk"));
        }
    }
    for (artifact, hash) in manifest_section(&text, "artifacts")? {
        let file = root.join(ARTIFACTS).join(&artifact);
        match hash_file(&file) {
            Ok(h) if h == hash => {}
            Ok(_) => problems.push(format!("{ARTIFACTS}/{artifact}: differs from the manifest")),
            Err(_) => problems.push(format!("{ARTIFACTS}/{artifact}: missing")),
        }
    }
    if problems.is_empty() {
        eprintln!(
            "xtask: kernel artifacts are up to date ({} sources)",
            on_disk.len()
        );
        Ok(())
    } else {
        Err(format!(
            "kernel artifacts are stale; run `cargo xtask kernels` (needs nvcc 13.0):\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// SHA-256 (FIPS 180-4) of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            sha256_hex(&long),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }

    #[test]
    fn parses_ptxas_reports() {
        let log = "ptxas info    : Compiling entry function 'k_f16' for 'sm_90'\n\
                   ptxas info    : Function properties for k_f16\n    \
                   0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 124 registers, used 1 barriers, 640 bytes smem\n";
        let table = resource_table("kernels/k.cu", log);
        assert!(table.contains("k_f16"), "{table}");
        assert!(table.contains("regs 124"), "{table}");
        assert!(table.contains("spills     8/4"), "{table}");
        assert!(table.contains("smem    640"), "{table}");
    }
}
