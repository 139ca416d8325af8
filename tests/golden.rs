//! Parity with transformers: every golden fixture run through the CPU backend, each output within
//! relative L2 1e-5 of transformers computed in float64 (design.md's bar for f32 on the CPU).

mod common;

use std::path::{Path, PathBuf};

use common::{compare, golden_dir, read_f64, runs};
use dinov2::io::read_forward_inputs;
use dinov2::{Checkpoint, CpuBackend, Dinov2};

const TOLERANCE: f64 = 1e-5;

/// The model of a case: its folder, or, where it has no config.json, its weights file alone
/// (`model.pth`, `model.safetensors`), whose config the reader tells from the tensors.
fn model_path(dir: &Path) -> PathBuf {
    if dir.join("config.json").is_file() {
        return dir.to_owned();
    }
    ["model.pth", "model.safetensors"]
        .map(|f| dir.join(f))
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{}: no config.json and no model file", dir.display()))
}

fn check_case(case: &str) {
    let dir = golden_dir().join(case);
    let checkpoint = Checkpoint::open(model_path(&dir)).unwrap_or_else(|e| panic!("{case}: {e}"));
    let model = Dinov2::load(CpuBackend, &checkpoint).unwrap_or_else(|e| panic!("{case}: {e}"));
    for run in runs(&dir) {
        let context = format!(
            "{case}/{} (transformers {})",
            run.name, run.transformers_version
        );
        let inputs =
            read_forward_inputs(&dir.join(format!("{}.inputs.safetensors", run.name))).unwrap();
        let head = run.head();
        let opts = run.options();
        let out = model
            .run(
                head,
                &inputs.pixel_values,
                inputs.bool_masked_pos.as_deref(),
                inputs.labels.as_ref(),
                &opts,
            )
            .unwrap_or_else(|e| panic!("{context}: {e}"))
            .into_named();
        let expected = read_f64(&dir.join(format!("{}.expected.safetensors", run.name)));
        let worst = compare(&context, &out, &expected, TOLERANCE);
        eprintln!("{context}: worst relative L2 {worst:.2e}");
    }
}

macro_rules! golden_cases {
    ($($case:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                check_case(stringify!($case));
            }
        )*
    };
}

golden_cases!(
    dinov2_mlp,
    dinov2_swiglu,
    dinov2_act_gelu_new,
    dinov2_act_quick_gelu,
    dinov2_act_relu,
    dinov2_act_selu,
    dinov2_act_silu,
    dinov2_no_mask_token,
    dinov2_no_qkv_bias,
    dinov2_f16,
    dinov2_bf16,
    dinov2_sharded,
    dinov2_original_names,
    registers_mlp,
    classifier_single,
    classifier_multi,
    classifier_regression,
    registers_classifier,
    backbone,
    backbone_flat,
    registers_backbone,
    legacy_444,
    original_pth,
    registers_timm,
    dinov2_pytorch_bin,
);

/// A fixture folder without a test above would silently go unchecked.
#[test]
fn every_fixture_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    assert!(Path::new(&golden_dir()).join("README.md").is_file());
}
