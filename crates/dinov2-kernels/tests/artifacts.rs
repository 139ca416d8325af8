//! Checks that need no GPU: the embedded artifacts match the kernel sources and the manifest,
//! the PTX loads on a CUDA 13.0 driver (ISA <= 9.0, sm_80), every kernel the launchers name is
//! present, no hot kernel spills, and opening a device fails with an error (not a panic) where
//! there is no driver.

use std::path::{Path, PathBuf};

use dinov2_kernels::artifacts::{ARTIFACTS, MANIFEST, RESOURCES};
use sha2::{Digest, Sha256};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(MANIFEST).expect("manifest.json is JSON")
}

#[test]
fn manifest_matches_the_sources() {
    let m = manifest();
    let recorded = m["sources"].as_object().expect("sources");
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_root().join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu") || n.ends_with(".cuh") || n.ends_with(".h"))
        .map(|n| format!("kernels/{n}"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = recorded.keys().cloned().collect();
    assert_eq!(
        on_disk, listed,
        "kernel sources differ from the manifest: run `cargo xtask kernels`"
    );
    for (path, hash) in recorded {
        let bytes = std::fs::read(repo_root().join(path)).unwrap();
        assert_eq!(
            sha256(&bytes),
            hash.as_str().unwrap(),
            "{path} changed since the artifacts were built: run `cargo xtask kernels`"
        );
    }
    assert!(m["nvcc"].as_str().unwrap().contains("release 13.0"));
}

#[test]
fn embedded_artifacts_are_the_manifests() {
    let m = manifest();
    let hashes = m["artifacts"].as_object().expect("artifacts");
    let units = m["sources"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.ends_with(".cu"))
        .count();
    assert_eq!(
        ARTIFACTS.len(),
        units,
        "one embedded artifact per kernels/*.cu"
    );
    for a in ARTIFACTS {
        let cubin = match a.ptx {
            Some(ptx) => {
                assert_eq!(
                    hashes[&format!("{}.ptx", a.name)].as_str(),
                    Some(sha256(ptx.as_bytes()).as_str()),
                    "{}.ptx",
                    a.name
                );
                format!("{}.sm_90.cubin", a.name)
            }
            None => format!("{}.sm_90a.cubin", a.name),
        };
        assert_eq!(
            hashes[&cubin].as_str(),
            Some(sha256(a.cubin_sm90).as_str()),
            "{cubin}"
        );
    }
    assert_eq!(
        hashes["resources.txt"].as_str(),
        Some(sha256(RESOURCES.as_bytes()).as_str())
    );
}

#[test]
fn ptx_loads_on_a_cuda_13_0_driver() {
    for a in ARTIFACTS {
        assert_eq!(
            &a.cubin_sm90[..4],
            b"\x7fELF",
            "{}'s cubin is not an ELF",
            a.name
        );
        let Some(ptx) = a.ptx else {
            assert!(a.name.ends_with("_sm90a"), "{} has no PTX", a.name);
            continue;
        };
        let version = ptx
            .lines()
            .find_map(|l| l.trim().strip_prefix(".version "))
            .unwrap_or_else(|| panic!("{}.ptx has no .version", a.name));
        let (major, minor) = version.trim().split_once('.').unwrap();
        let v = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
        assert!(
            v <= (9, 0),
            "{}.ptx is PTX ISA {version}, newer than 9.0",
            a.name
        );
        assert!(
            ptx.lines().any(|l| l.trim() == ".target sm_80"),
            "{}.ptx does not target sm_80",
            a.name
        );
    }
}

/// Every kernel name the launchers build.
fn launched_kernels() -> Vec<String> {
    let mut names = Vec::new();
    for t in ["f32", "f16", "bf16"] {
        for op in [
            "bias_act",
            "bias_act_v8",
            "swiglu",
            "swiglu_v8",
            "add_scaled",
            "add_scaled_layer_norm_wide",
            "softmax_rows",
            "im2col",
            "embed_tokens",
            "pool_tokens",
            "layer_norm_wide",
        ] {
            names.push(format!("{op}_{t}"));
        }
        for g in [2, 4, 8, 16] {
            names.push(format!("layer_norm_g{g}_{t}"));
            names.push(format!("add_scaled_layer_norm_g{g}_{t}"));
        }
    }
    for t in ["f16", "bf16"] {
        names.push(format!("layer_norm_wide_f32_{t}"));
        names.push(format!("im2col_f32_{t}"));
        for g in [2, 4, 8, 16] {
            names.push(format!("layer_norm_g{g}_f32_{t}"));
        }
        names.push(format!("cast_f32_{t}"));
        names.push(format!("cast_{t}_f32"));
        // A residual stream in the compute type (DINOV2_RESIDUAL=compute).
        for op in ["add_scaled", "add_scaled_layer_norm_wide", "embed_tokens"] {
            names.push(format!("{op}_{t}_rx"));
        }
        for g in [2, 4, 8, 16] {
            names.push(format!("add_scaled_layer_norm_g{g}_{t}_rx"));
            // The statistics of a LayerNorm folded into the next GEMM.
            names.push(format!("row_stats_g{g}_{t}"));
            names.push(format!("add_scaled_stats_g{g}_{t}_rx"));
        }
        for pad in [16, 32, 64, 96, 128] {
            names.push(format!("attention_{t}_d{pad}"));
        }
        for pad in [16, 32, 64] {
            names.push(format!("attention_{t}_d{pad}_r128"));
        }
    }
    names.push("attention_f32".into());
    names
}

/// The Hopper kernels the launchers name (in the sm_90a cubins only): the GEMMs of
/// `hopper_gemm.rs` and the warpgroup-MMA attention.
fn hopper_kernels() -> Vec<String> {
    let mut names = Vec::new();
    for t in ["f16", "bf16"] {
        for act in ["id", "gelu", "gelu_tanh"] {
            for tile in ["n128", "n256", "tma", "tma2", "pp", "pp2"] {
                names.push(format!("gemm_{t}_{act}_{tile}"));
            }
        }
        // The persistent kernels updating a residual stream (f32, or in t: _rx), and with a
        // LayerNorm folded in.
        for tile in ["pp", "pp2"] {
            for kind in ["res", "res_rx"] {
                names.push(format!("gemm_{t}_{kind}_{tile}"));
            }
            for act in ["id", "gelu", "gelu_tanh"] {
                names.push(format!("gemm_{t}_{act}_ln_{tile}"));
            }
        }
        names.push(format!("attention_wg_{t}_d64"));
        names.push(format!("attention_wg2_{t}_d64"));
    }
    names
}

/// The PTX of the Hopper-only families, kept beside the artifacts for review (not embedded),
/// one text after the other.
fn hopper_ptx() -> String {
    ARTIFACTS
        .iter()
        .filter(|a| a.ptx.is_none())
        .map(|a| {
            let path = repo_root().join(format!(
                "crates/dinov2-kernels/artifacts/{}.sm_90a.ptx",
                a.name
            ));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn every_launched_kernel_is_embedded() {
    for name in launched_kernels() {
        let entry = format!(".entry {name}(");
        let found: Vec<&str> = ARTIFACTS
            .iter()
            .filter(|a| a.ptx.is_some_and(|p| p.contains(&entry)))
            .map(|a| a.name)
            .collect();
        assert_eq!(found.len(), 1, "kernel {name} found in {found:?}");
        let in_report = RESOURCES
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str()));
        assert!(in_report, "{name} missing from resources.txt");
    }
    let ptx = hopper_ptx();
    for name in hopper_kernels() {
        // The cubin's symbol table holds the name, NUL-terminated.
        let symbol = format!("{name}\0");
        let cubins: Vec<&str> = ARTIFACTS
            .iter()
            .filter(|a| a.ptx.is_none())
            .filter(|a| {
                a.cubin_sm90
                    .windows(symbol.len())
                    .any(|w| w == symbol.as_bytes())
            })
            .map(|a| a.name)
            .collect();
        assert_eq!(cubins.len(), 1, "{name} in the sm_90a cubins {cubins:?}");
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "{name} not in the PTX"
        );
        let in_report = RESOURCES
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str()));
        assert!(in_report, "{name} missing from resources.txt");
    }
}

#[test]
fn no_kernel_spills_registers() {
    let mut rows = 0;
    for line in RESOURCES.lines().filter(|l| l.contains(" regs ")) {
        rows += 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let spills = fields[fields.iter().position(|f| *f == "spills").unwrap() + 1];
        assert_eq!(spills, "0/0", "register spills: {line}");
        let stack = fields[fields.iter().position(|f| *f == "stack").unwrap() + 1];
        assert_eq!(stack, "0", "stack frame: {line}");
    }
    assert!(rows >= launched_kernels().len() + hopper_kernels().len());
}

#[test]
fn opening_a_device_without_a_driver_is_an_error() {
    // On a GPU machine this opens the device; here (no libcuda) it must be an Err, not a panic.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    match dinov2_kernels::Device::new(0) {
        Ok(dev) => assert!(present, "opened {:?} without a driver?", dev.info()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if !present {
                assert!(msg.contains("driver"), "{msg}");
            }
        }
    }
}

/// The parameter types of a kernel as the PTX declares them.
fn ptx_params(name: &str) -> Vec<String> {
    let entry = format!(".entry {name}(");
    let ptx = ARTIFACTS
        .iter()
        .filter_map(|a| a.ptx)
        .find(|p| p.contains(&entry))
        .unwrap_or_else(|| panic!("{name} not embedded"));
    params_of(ptx, &entry)
}

/// The parameter types of the kernel whose `.entry NAME(` is `entry` in `ptx`: `.u64`, `.u32`,
/// `.f32`, or for a parameter passed by value as bytes its alignment and size (`.align 128
/// .b8[128]`).
fn params_of(ptx: &str, entry: &str) -> Vec<String> {
    let start = ptx.find(entry).unwrap() + entry.len();
    let end = start + ptx[start..].find(')').unwrap();
    ptx[start..end]
        .split(',')
        .filter_map(|p| {
            let tokens: Vec<&str> = p.split_whitespace().collect();
            match tokens[..] {
                [_, ty, _] => Some(ty.to_string()),
                [_, ".align", align, ty, name] => {
                    let size = &name[name.find('[')?..];
                    Some(format!(".align {align} {ty}{size}"))
                }
                _ => None,
            }
        })
        .collect()
}

/// The launchers in `ops/` pass pointers as u64, `long` as i64, `int` as i32, `float` as f32:
/// the kernels' signatures must stay what they push, in this order.
#[test]
fn kernel_signatures_match_the_launchers() {
    const P: &str = ".u64"; // pointer or long
    const I: &str = ".u32";
    const F: &str = ".f32";
    const MAP: &str = ".align 128 .b8[128]"; // a TMA tensor map (TmaMap, CUDA 13's CUtensorMap)
    let table: &[(&str, &[&str])] = &[
        ("bias_act", &[P, P, P, I, I]),
        ("bias_act_v8", &[P, P, P, I, I]),
        ("swiglu", &[P, P, P, I]),
        ("swiglu_v8", &[P, P, P, I]),
        ("layer_norm_wide", &[P, P, P, P, I, F]),
        ("add_scaled", &[P, P, P, P, I]),
        ("add_scaled_layer_norm_wide", &[P, P, P, P, P, P, I, F]),
        ("softmax_rows", &[P, P, I, P]),
        ("im2col", &[P, P, I, I, I, I, I, I]),
        ("embed_tokens", &[P, P, P, P, P, P, P, I, I, I, I]),
        ("pool_tokens", &[P, P, I, I, I, I, I, I]),
    ];
    for (op, want) in table {
        for t in ["f32", "f16", "bf16"] {
            assert_eq!(ptx_params(&format!("{op}_{t}")), *want, "{op}_{t}");
        }
    }
    for t in ["f32_f16", "f32_bf16"] {
        let name = format!("im2col_{t}");
        assert_eq!(ptx_params(&name), [P, P, I, I, I, I, I, I], "{name}");
    }
    for g in [2, 4, 8, 16] {
        for t in ["f32", "f16", "bf16", "f32_f16", "f32_bf16"] {
            let name = format!("layer_norm_g{g}_{t}");
            assert_eq!(ptx_params(&name), [P, P, P, P, I, I, F], "{name}");
        }
        for t in ["f32", "f16", "bf16"] {
            let name = format!("add_scaled_layer_norm_g{g}_{t}");
            assert_eq!(ptx_params(&name), [P, P, P, P, P, P, I, I, F], "{name}");
        }
    }
    for t in ["f16", "bf16"] {
        for pad in [16, 32, 64, 96, 128] {
            assert_eq!(
                ptx_params(&format!("attention_{t}_d{pad}")),
                [P, P, I, I, I, F],
                "attention_{t}_d{pad}"
            );
        }
        for pad in [16, 32, 64] {
            let name = format!("attention_{t}_d{pad}_r128");
            assert_eq!(ptx_params(&name), [P, P, I, I, I, F], "{name}");
        }
        assert_eq!(
            ptx_params(&format!("layer_norm_wide_f32_{t}")),
            [P, P, P, P, I, F]
        );
        assert_eq!(ptx_params(&format!("add_scaled_{t}_rx")), [P, P, P, P, I]);
        assert_eq!(
            ptx_params(&format!("add_scaled_layer_norm_wide_{t}_rx")),
            [P, P, P, P, P, P, I, F]
        );
        for g in [2, 4, 8, 16] {
            let name = format!("add_scaled_layer_norm_g{g}_{t}_rx");
            assert_eq!(ptx_params(&name), [P, P, P, P, P, P, I, I, F], "{name}");
            // x, stats, rows, h; x, branch, gamma, stats, rows, h.
            let name = format!("row_stats_g{g}_{t}");
            assert_eq!(ptx_params(&name), [P, P, I, I], "{name}");
            let name = format!("add_scaled_stats_g{g}_{t}_rx");
            assert_eq!(ptx_params(&name), [P, P, P, P, I, I], "{name}");
        }
        assert_eq!(
            ptx_params(&format!("embed_tokens_{t}_rx")),
            [P, P, P, P, P, P, P, I, I, I, I]
        );
        assert_eq!(ptx_params(&format!("cast_f32_{t}")), [P, P, P]);
        assert_eq!(ptx_params(&format!("cast_{t}_f32")), [P, P, P]);
    }
    assert_eq!(ptx_params("attention_f32"), [P, P, I, I, I, F]);
    let hopper = hopper_ptx();
    for name in hopper_kernels() {
        let params = params_of(&hopper, &format!(".entry {name}("));
        let by_tma = ["_tma", "_tma2", "_pp", "_pp2"]
            .iter()
            .any(|s| name.ends_with(s));
        if name.starts_with("gemm_") && name.contains("_res") {
            // x's and w's tensor maps, bias, bias_f32, the stream, gamma, stats, m, n, k
            assert_eq!(params, [MAP, MAP, P, I, P, P, P, I, I, I], "{name}");
        } else if name.starts_with("gemm_") && name.contains("_ln_") {
            // the stream's and w's tensor maps, bias, y, stats, parts, colsum, eps, m, n, k
            assert_eq!(params, [MAP, MAP, P, P, P, I, P, F, I, I, I], "{name}");
        } else if name.starts_with("gemm_") && by_tma {
            // x's and w's tensor maps, bias, bias_f32, y, m, n, k
            assert_eq!(params, [MAP, MAP, P, I, P, I, I, I], "{name}");
        } else if name.starts_with("gemm_") {
            // x, w, bias, bias_f32, y, m, n, k
            assert_eq!(params, [P, P, P, I, P, I, I, I], "{name}");
        } else if name.starts_with("attention_wg_") {
            // As the flash kernels (qkv, out, n, heads, d, scale_log2), and q_first.
            assert_eq!(params, [P, P, I, I, I, F, I], "{name}");
        } else {
            // As the flash kernels: qkv, out, n, heads, d, scale_log2.
            assert_eq!(params, [P, P, I, I, I, F], "{name}");
        }
    }
}
