//! The `dinov2` binary end to end: its outputs against transformers' float64 truth (the golden
//! fixtures), and one `error:` line naming the culprit for every input a user can get wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

/// Largest relative L2 error accepted against the float64 truth.
const TOLERANCE: f64 = 1e-5;

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

fn dinov2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("the dinov2 binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One tensor of a safetensors file, owned.
#[derive(Debug, Clone)]
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Stored {
    fn new(name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        Stored {
            name: name.to_owned(),
            dtype,
            shape,
            bytes,
        }
    }

    fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self::new(
            name,
            Dtype::F32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    fn values(&self) -> Vec<f64> {
        let b = &self.bytes;
        match self.dtype {
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("`{}` is {other:?}, not a float tensor", self.name),
        }
    }
}

fn read_tensors(path: &Path) -> Vec<Stored> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Stored::new(&name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_tensors(path: &Path, tensors: &[Stored]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn rel_l2(found: &[f64], expected: &[f64]) -> f64 {
    let diff: f64 = found
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

/// Compares every tensor of `output` with `expected`: same names, same shapes, and each within
/// [`TOLERANCE`] (relative L2). `rename` maps an output name to the expected one it must match.
fn compare(output: &Path, expected: &[Stored], rename: &dyn Fn(&str) -> String) {
    let found = read_tensors(output);
    let mut found_names: Vec<String> = found.iter().map(|t| rename(&t.name)).collect();
    found_names.sort();
    let expected_names: Vec<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(found_names, expected_names, "{}", output.display());
    for t in &found {
        assert_eq!(t.dtype, Dtype::F32, "`{}`", t.name);
        let e = expected.iter().find(|e| e.name == rename(&t.name)).unwrap();
        assert_eq!(t.shape, e.shape, "shape of `{}`", t.name);
        let err = rel_l2(&t.values(), &e.values());
        assert!(
            err <= TOLERANCE,
            "`{}`: relative L2 error {err:e} > {TOLERANCE:e}",
            t.name
        );
    }
}

/// Runs `dinov2 forward` on a golden run and checks every output against its expected file.
fn forward_matches(case: &str, run: &str, extra: &[&str]) {
    forward_of_matches(&golden(case), case, run, extra);
}

/// [`forward_matches`] with `--model MODEL`, the case's folder or a weights file of it.
fn forward_of_matches(model: &Path, case: &str, run: &str, extra: &[&str]) {
    let dir = golden(case);
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("out.safetensors");
    let input = dir.join(format!("{run}.inputs.safetensors"));
    let mut args = vec![
        "forward",
        "--model",
        s(model),
        "--input",
        s(&input),
        "--output",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let result = dinov2(&args);
    assert!(
        result.status.success(),
        "{case}/{run}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(result.stderr.is_empty(), "{case}/{run}: stderr not empty");
    let expected = read_tensors(&dir.join(format!("{run}.expected.safetensors")));
    compare(&out, &expected, &|n| n.to_owned());
}

#[test]
fn model_with_mask_hidden_states_and_attentions() {
    forward_matches(
        "dinov2_mlp",
        "rect24x40_mask",
        &["--hidden-states", "--attentions"],
    );
}

#[test]
fn model_at_the_pretraining_size() {
    forward_matches("dinov2_mlp", "sq32", &["--hidden-states", "--attentions"]);
}

#[test]
fn weights_files_alone_original_timm_and_a_training_checkpoint() {
    let original = golden("original_pth");
    for file in ["model.pth", "teacher_checkpoint.pth"] {
        forward_of_matches(
            &original.join(file),
            "original_pth",
            "rect24x40",
            &["--hidden-states"],
        );
    }
    let timm = golden("registers_timm").join("model.safetensors");
    forward_of_matches(&timm, "registers_timm", "sq32", &["--hidden-states"]);
    forward_matches("dinov2_pytorch_bin", "logits", &[]);
}

#[test]
fn convert_writes_a_transformers_directory_that_computes_the_same() {
    let tmp = TempDir::new().unwrap();
    for (case, file, run) in [
        ("original_pth", "teacher_checkpoint.pth", "rect24x40"),
        ("registers_timm", "model.safetensors", "sq32"),
        ("dinov2_pytorch_bin", "", "logits"),
    ] {
        let out = tmp.path().join(case);
        let source = golden(case).join(file);
        let r = dinov2(&["convert", "--model", s(&source), "--output", s(&out)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for want in [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        ] {
            assert!(names.iter().any(|n| n == want), "{case}: {names:?}");
        }
        let tensors = read_tensors(&out.join("model.safetensors"));
        // transformers' names: the registers model gets the mask token its class always holds.
        assert!(
            tensors.iter().all(|t| !t.name.contains("blocks.")),
            "{case}"
        );
        if case == "registers_timm" {
            let mask = tensors
                .iter()
                .find(|t| t.name == "embeddings.mask_token")
                .unwrap();
            assert!(mask.values().iter().all(|&v| v == 0.0));
        }
        let extra: &[&str] = if case == "dinov2_pytorch_bin" {
            &[]
        } else {
            &["--hidden-states"]
        };
        forward_of_matches(&out, case, run, extra);
        // A second time into the same folder is refused.
        let r = dinov2(&["convert", "--model", s(&source), "--output", s(&out)]);
        assert_one_line_error(&r, &[s(&out), "not an empty folder"]);
    }
}

#[test]
fn classifier_with_labels_writes_the_loss() {
    forward_matches("classifier_single", "loss", &[]);
    forward_matches("classifier_multi", "loss", &[]);
}

#[test]
fn classifier_checkpoint_run_as_the_bare_model() {
    forward_matches("classifier_single", "as_model", &["--head", "model"]);
}

#[test]
fn backbone() {
    forward_matches("backbone", "rect24x40", &[]);
    forward_matches("backbone", "up44x36_hidden", &["--hidden-states"]);
}

#[test]
fn backbone_out_indices_select_stages() {
    // The fixture's backbone outputs stages 1 and 3; pick one at a time, by positive and negative
    // index, and check each against the matching expected feature map.
    let dir = golden("backbone");
    let expected = read_tensors(&dir.join("rect24x40.expected.safetensors"));
    for (indices, stage_map) in [
        ("1", "feature_maps.0"),
        ("-1", "feature_maps.1"),
        ("3", "feature_maps.1"),
    ] {
        let tmp = TempDir::new().unwrap();
        let out = tmp.path().join("out.safetensors");
        let result = dinov2(&[
            "forward",
            "--model",
            s(&dir),
            "--input",
            s(&dir.join("rect24x40.inputs.safetensors")),
            "--output",
            s(&out),
            "--out-indices",
            indices,
        ]);
        assert!(
            result.status.success(),
            "--out-indices {indices}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let wanted: Vec<Stored> = expected
            .iter()
            .filter(|t| t.name == stage_map)
            .cloned()
            .collect();
        compare(&out, &wanted, &|n| {
            assert_eq!(n, "feature_maps.0");
            stage_map.to_owned()
        });
    }
    // Both stages, as a comma list: the full expected file.
    forward_matches("backbone", "rect24x40", &["--out-indices", "1,-1"]);
}

#[test]
fn legacy_interpolation() {
    for run in ["rect24x40", "sq30", "up44x36"] {
        forward_matches(
            "legacy_444",
            run,
            &["--legacy-interpolation", "--hidden-states"],
        );
    }
    // Without the flag the positions are resized by the current rule: the outputs differ.
    let dir = golden("legacy_444");
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("out.safetensors");
    let result = dinov2(&[
        "forward",
        "--model",
        s(&dir),
        "--input",
        s(&dir.join("rect24x40.inputs.safetensors")),
        "--output",
        s(&out),
    ]);
    assert!(result.status.success());
    let expected = read_tensors(&dir.join("rect24x40.expected.safetensors"));
    let last = |t: &[Stored]| {
        t.iter()
            .find(|t| t.name == "last_hidden_state")
            .unwrap()
            .values()
    };
    assert!(rel_l2(&last(&read_tensors(&out)), &last(&expected)) > 1e-3);
}

#[test]
fn info_describes_the_checkpoint() {
    let cases = [
        (
            "dinov2_mlp",
            "DINOv2 (model_type dinov2)",
            "MLP (gelu), hidden 128",
        ),
        (
            "registers_mlp",
            "DINOv2 with 4 register tokens (model_type dinov2_with_registers)",
            "MLP (gelu), hidden 128",
        ),
        (
            "dinov2_original_names",
            "DINOv2 (model_type dinov2)",
            "SwiGLU, hidden 88",
        ),
    ];
    for (case, variant, ffn) in cases {
        let dir = golden(case);
        let result = dinov2(&["info", "--model", s(&dir)]);
        let stdout = String::from_utf8(result.stdout).unwrap();
        assert!(
            result.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let line = |key: &str| {
            stdout
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{case}: no `{key}` line in\n{stdout}"))
                .to_owned()
        };
        assert!(line("variant:").contains(variant), "{stdout}");
        let sizes = line("sizes:");
        assert!(
            sizes.contains("hidden 32, 3 layers, 2 heads of 16"),
            "{sizes}"
        );
        assert!(sizes.contains(ffn), "{sizes}");
        assert!(line("patches:").contains("4x4 pixels"), "{stdout}");
        // The golden checkpoints have no preprocessor config: facebook/dinov2's, 224 px.
        let pre = line("preprocess:");
        assert!(
            pre.contains("shortest edge 256 (bicubic), center crop 224x224, rescale 1/255"),
            "{pre}"
        );
        let embedding = line("embedding:");
        assert!(
            embedding.contains("cls 32, mean 32, cls+mean 64, patch 56x56x32 at 224x224 px"),
            "{embedding}"
        );
        assert_eq!(
            embedding.contains("registers 4x32"),
            case == "registers_mlp",
            "{embedding}"
        );
        // The parameter count is that of the stored tensors (the fused qkv counts once).
        let stored: usize = read_tensors(&dir.join("model.safetensors"))
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        let params = line("parameters:");
        assert_eq!(
            params.split_whitespace().nth(1),
            Some(stored.to_string().as_str()),
            "{params}"
        );
    }
    let result = dinov2(&["info", "--model", s(&golden("classifier_single"))]);
    let stdout = String::from_utf8(result.stdout).unwrap();
    assert!(stdout.contains("classifier weights present"), "{stdout}");
    assert!(
        stdout.contains("labels:       5 (cat, dog, bird, fish, horse)"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: each gives one `error:` line on stderr that names the culprit, and a failure status.

/// Checks a failure: status 1 (not a panic's 101), stderr exactly one line `error: ...` holding
/// every needle, nothing on stdout. Returns the line.
fn assert_one_line_error(result: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert_eq!(result.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, found: {stderr}");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for needle in needles {
        assert!(line.contains(needle), "does not name {needle:?}: {line}");
    }
    assert!(result.stdout.is_empty(), "stdout: {:?}", result.stdout);
    // Shown with --nocapture: the list of messages the note quotes.
    println!("{line}");
    line.to_owned()
}

/// A usage error from clap: failure status 2, the bad value named, no panic.
fn assert_usage_error(result: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert_eq!(result.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "does not name {needle:?}: {stderr}"
        );
    }
    println!("{}", stderr.lines().next().unwrap());
}

/// A scratch directory for one bad-input case.
struct Case {
    tmp: TempDir,
}

impl Case {
    fn new() -> Self {
        Case {
            tmp: TempDir::new().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn out(&self) -> PathBuf {
        self.path("out.safetensors")
    }

    /// A copy of a golden model directory (config and weights).
    fn model(&self, case: &str) -> PathBuf {
        let dir = self.path(case);
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(golden(case)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name == "config.json" || name.starts_with("model") {
                std::fs::copy(&path, dir.join(&name)).unwrap();
            }
        }
        dir
    }

    /// A golden run's inputs passed through `edit`, written under `name`.
    fn input(&self, case: &str, run: &str, edit: impl FnOnce(&mut Vec<Stored>)) -> PathBuf {
        let mut tensors = read_tensors(&golden(case).join(format!("{run}.inputs.safetensors")));
        edit(&mut tensors);
        let path = self.path("input.safetensors");
        write_tensors(&path, &tensors);
        path
    }

    /// `dinov2 forward --model <model> --input <input> --output <self.out()> <extra>`; the output
    /// file must not be written.
    fn forward(&self, model: &Path, input: &Path, extra: &[&str]) -> Output {
        let out = self.out();
        let mut args = vec![
            "forward",
            "--model",
            s(model),
            "--input",
            s(input),
            "--output",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let result = dinov2(&args);
        assert!(!out.exists(), "an output was written despite the error");
        let partial = self.path("out.safetensors.partial");
        assert!(!partial.exists(), "a partial output was left behind");
        result
    }
}

fn mlp_input() -> PathBuf {
    golden("dinov2_mlp").join("rect24x40_mask.inputs.safetensors")
}

fn find<'a>(tensors: &'a mut [Stored], name: &str) -> &'a mut Stored {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn model_directory_missing() {
    let c = Case::new();
    let model = c.path("no-such-model");
    let r = c.forward(&model, &mlp_input(), &[]);
    assert_one_line_error(&r, &["no-such-model", "no such directory or weights file"]);
    let r = dinov2(&["info", "--model", s(&model)]);
    assert_one_line_error(&r, &["no-such-model", "no such directory or weights file"]);
}

#[test]
fn bad_config() {
    let c = Case::new();
    let model = c.model("dinov2_mlp");
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"hidden_size\": 32", "\"hidden_size\": \"32\"");
    std::fs::write(&config, text).unwrap();
    let r = c.forward(&model, &mlp_input(), &[]);
    assert_one_line_error(&r, &["`hidden_size`", "\"32\""]);

    std::fs::write(&config, "{ not json").unwrap();
    let r = c.forward(&model, &mlp_input(), &[]);
    assert_one_line_error(&r, &["config.json", "not valid JSON"]);
    let r = dinov2(&["info", "--model", s(&model)]);
    assert_one_line_error(&r, &["config.json", "not valid JSON"]);
}

#[test]
fn missing_tensor() {
    let c = Case::new();
    let model = c.model("dinov2_mlp");
    let weights = model.join("model.safetensors");
    let mut tensors = read_tensors(&weights);
    tensors.retain(|t| t.name != "encoder.layer.2.norm1.bias");
    write_tensors(&weights, &tensors);
    let r = c.forward(&model, &mlp_input(), &[]);
    assert_one_line_error(&r, &["`encoder.layer.2.norm1.bias`", "[32]"]);
    let r = dinov2(&["info", "--model", s(&model)]);
    assert_one_line_error(&r, &["`encoder.layer.2.norm1.bias`", "[32]"]);
}

#[test]
fn input_file_missing() {
    let c = Case::new();
    let input = c.path("no-such-input.safetensors");
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["no-such-input.safetensors", "No such file"]);
}

#[test]
fn input_not_safetensors() {
    let c = Case::new();
    let input = c.path("pixels.npy");
    std::fs::write(&input, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', ...}").unwrap();
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["pixels.npy", "not a valid safetensors file"]);
    // A directory instead of a file.
    let r = c.forward(&golden("dinov2_mlp"), c.tmp.path(), &[]);
    assert_one_line_error(&r, &[s(c.tmp.path())]);
}

#[test]
fn input_without_pixel_values() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "rect24x40_mask", |t| {
        t.retain(|t| t.name != "pixel_values")
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["input.safetensors", "`pixel_values`"]);
}

#[test]
fn input_with_an_unknown_tensor() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "rect24x40_mask", |t| {
        t.push(Stored::new(
            "pixel_mask",
            Dtype::U8,
            vec![2, 60],
            vec![1; 120],
        ))
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["input.safetensors", "`pixel_mask`"]);
}

#[test]
fn pixel_values_with_three_dimensions() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "sq32", |t| {
        find(t, "pixel_values").shape = vec![6, 32, 32];
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`pixel_values`", "4 dimensions", "[6, 32, 32]"]);
}

#[test]
fn pixel_values_of_an_integer_dtype() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "sq32", |t| {
        let p = find(t, "pixel_values");
        p.dtype = Dtype::U8;
        p.bytes = vec![128; 2 * 3 * 32 * 32];
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`pixel_values`", "U8"]);
}

#[test]
fn wrong_channel_count() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "sq32", |t| {
        let p = find(t, "pixel_values");
        p.shape = vec![6, 1, 32, 32];
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`pixel_values`", "1 channel", "expects 3"]);
}

#[test]
fn image_smaller_than_one_patch() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "sq32", |t| {
        *find(t, "pixel_values") = Stored::f32("pixel_values", vec![1, 3, 3, 40], &[0.5; 360]);
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`pixel_values`", "3x40", "4x4 patch"]);
}

#[test]
fn empty_batch() {
    let c = Case::new();
    let input = c.input("dinov2_mlp", "sq32", |t| {
        *find(t, "pixel_values") = Stored::f32("pixel_values", vec![0, 3, 32, 32], &[]);
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`pixel_values`", "empty"]);
}

#[test]
fn bool_masked_pos_with_a_wrong_shape() {
    let c = Case::new();
    // 59 patches where the 6x10 grid has 60.
    let input = c.input("dinov2_mlp", "rect24x40_mask", |t| {
        *find(t, "bool_masked_pos") =
            Stored::new("bool_masked_pos", Dtype::U8, vec![2, 59], vec![0; 118]);
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`bool_masked_pos`", "num_patches=60"]);
    // Flat instead of [B, num_patches].
    let input = c.input("dinov2_mlp", "rect24x40_mask", |t| {
        find(t, "bool_masked_pos").shape = vec![120];
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`bool_masked_pos`", "[120]"]);
    // A float mask.
    let input = c.input("dinov2_mlp", "rect24x40_mask", |t| {
        *find(t, "bool_masked_pos") = Stored::f32("bool_masked_pos", vec![2, 60], &[0.0; 120]);
    });
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`bool_masked_pos`", "F32"]);
}

#[test]
fn bool_masked_pos_with_the_classifier_head() {
    let c = Case::new();
    let r = c.forward(&golden("classifier_single"), &mlp_input(), &[]);
    assert_one_line_error(&r, &["`bool_masked_pos`", "classifier head"]);
    let r = c.forward(
        &golden("classifier_single"),
        &mlp_input(),
        &["--head", "classifier"],
    );
    assert_one_line_error(&r, &["`bool_masked_pos`", "classifier head"]);
}

#[test]
fn labels_with_the_model_head() {
    let c = Case::new();
    let input = golden("classifier_single").join("loss.inputs.safetensors");
    let r = c.forward(&golden("classifier_single"), &input, &["--head", "model"]);
    assert_one_line_error(&r, &["`labels`", "model head"]);
    let r = c.forward(&golden("dinov2_mlp"), &input, &[]);
    assert_one_line_error(&r, &["`labels`", "model head"]);
}

#[test]
fn labels_out_of_range() {
    let c = Case::new();
    for ids in [[1i64, 5], [-2, 0]] {
        let input = c.input("classifier_single", "loss", |t| {
            find(t, "labels").bytes = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        });
        let r = c.forward(&golden("classifier_single"), &input, &[]);
        let bad = if ids[0] == 1 { ids[1] } else { ids[0] };
        assert_one_line_error(&r, &["`labels`", &format!("class id {bad}"), "0..5"]);
    }
}

#[test]
fn labels_of_the_wrong_count() {
    let c = Case::new();
    let input = c.input("classifier_single", "loss", |t| {
        *find(t, "labels") = Stored::new("labels", Dtype::I64, vec![3], vec![0; 24]);
    });
    let r = c.forward(&golden("classifier_single"), &input, &[]);
    assert_one_line_error(&r, &["`labels`", "expected 2 class ids, found 3"]);
}

#[test]
fn device_cuda_without_a_driver_is_one_clear_error() {
    let c = Case::new();
    for (device, name) in [("cuda", "cuda:0"), ("cuda:1", "cuda:1")] {
        let r = c.forward(&golden("dinov2_mlp"), &mlp_input(), &["--device", device]);
        if r.status.success() {
            continue; // a machine with a GPU: the GPU tests cover it
        }
        assert_one_line_error(&r, &[name]);
    }
}

#[test]
fn unknown_device() {
    let c = Case::new();
    for device in ["tpu", "cuda:x"] {
        let r = c.forward(&golden("dinov2_mlp"), &mlp_input(), &["--device", device]);
        assert_usage_error(&r, &[device, "--device"]);
    }
}

#[test]
fn half_precision_on_the_cpu() {
    let c = Case::new();
    for dtype in ["f16", "bf16"] {
        let r = c.forward(&golden("dinov2_mlp"), &mlp_input(), &["--dtype", dtype]);
        assert_one_line_error(&r, &[&format!("--dtype {dtype}"), "CPU"]);
    }
    let r = c.forward(&golden("dinov2_mlp"), &mlp_input(), &["--dtype", "f8"]);
    assert_usage_error(&r, &["f8", "--dtype"]);
}

#[test]
fn legacy_interpolation_on_a_registers_model() {
    let c = Case::new();
    let model = golden("registers_mlp");
    let input = model.join("rect24x40_mask.inputs.safetensors");
    let r = c.forward(&model, &input, &["--legacy-interpolation"]);
    assert_one_line_error(&r, &["legacy", "dinov2_with_registers"]);
}

#[test]
fn classifier_head_without_classifier_weights() {
    let c = Case::new();
    let input = golden("dinov2_mlp").join("sq32.inputs.safetensors");
    let r = c.forward(&golden("dinov2_mlp"), &input, &["--head", "classifier"]);
    assert_one_line_error(&r, &["classification head", "classifier.weight"]);
}

#[test]
fn unknown_head() {
    let c = Case::new();
    let r = c.forward(&golden("dinov2_mlp"), &mlp_input(), &["--head", "nonsense"]);
    assert_usage_error(&r, &["nonsense", "--head"]);
}

#[test]
fn out_indices_out_of_range() {
    let c = Case::new();
    let model = golden("backbone");
    let input = model.join("rect24x40.inputs.safetensors");
    for (indices, needle) in [
        ("99", "index 99 is out of range"),
        ("-5", "index -5 is out of range"),
        ("3,1", "order"),
        ("2,2", "duplicates"),
    ] {
        let r = c.forward(&model, &input, &["--out-indices", indices]);
        assert_one_line_error(&r, &["--out-indices", needle]);
    }
    let r = c.forward(&model, &input, &["--out-indices", "one"]);
    assert_usage_error(&r, &["one", "--out-indices"]);
}

#[test]
fn output_in_a_missing_directory() {
    let c = Case::new();
    let out = c.path("no-such-dir").join("out.safetensors");
    let r = dinov2(&[
        "forward",
        "--model",
        s(&golden("dinov2_mlp")),
        "--input",
        s(&mlp_input()),
        "--output",
        s(&out),
    ]);
    assert_one_line_error(&r, &[s(&out), "No such file or directory"]);
    assert!(!c.path("no-such-dir").exists());
}

#[test]
fn missing_required_arguments() {
    let r = dinov2(&["forward", "--model", s(&golden("dinov2_mlp"))]);
    assert_usage_error(&r, &["--input", "--output"]);
    let r = dinov2(&["embed"]);
    assert_usage_error(&r, &["embed"]);
}

/// `forward --expect`: a golden case's inputs and transformers' outputs in one file pass, with
/// hidden states and attentions turned on by the file; a perturbed output fails, named.
#[test]
fn forward_checks_outputs_against_an_expected_file() {
    let dir = TempDir::new().unwrap();
    let case = golden("dinov2_mlp");
    let merged = |name: &str, perturb: Option<&str>| -> PathBuf {
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for file in ["rect24x40_mask.inputs", "rect24x40_mask.expected"] {
            let bytes = std::fs::read(case.join(format!("{file}.safetensors"))).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (n, view) in st.tensors() {
                let mut data = view.data().to_vec();
                if Some(n.as_str()) == perturb {
                    // Scale the first f64 value by 2.
                    let v = f64::from_le_bytes(data[..8].try_into().unwrap()) * 2.0 + 1.0;
                    data[..8].copy_from_slice(&v.to_le_bytes());
                }
                tensors.push((n, view.dtype(), view.shape().to_vec(), data));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let path = dir.path().join(name);
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        path
    };
    let good = merged("good.safetensors", None);
    let r = dinov2(&["forward", "--model", s(&case), "--expect", s(&good)]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    for name in [
        "last_hidden_state",
        "pooler_output",
        "hidden_states.3",
        "attentions.2",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.ends_with("ok")),
            "{name}: {stdout}"
        );
    }
    let bad = merged("bad.safetensors", Some("hidden_states.2"));
    let r = dinov2(&["forward", "--model", s(&case), "--expect", s(&bad)]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 of ") && stderr.contains("hidden_states.2"),
        "{stderr}"
    );
    // Neither --output nor --expect, or a tolerance that is no number: usage errors.
    let r = dinov2(&["forward", "--model", s(&case), "--input", s(&good)]);
    assert_eq!(r.status.code(), Some(2));
    for bad in ["nan", "-1", "inf"] {
        let tolerance = format!("--tolerance={bad}");
        let r = dinov2(&[
            "forward",
            "--model",
            s(&case),
            "--expect",
            s(&good),
            &tolerance,
        ]);
        assert_eq!(r.status.code(), Some(2), "{bad}");
    }
}

/// `dinov2 info MODEL | head -1`: the reader leaves before the output is written. The process
/// ends without a panic's message (as `cat` would, by SIGPIPE).
#[cfg(unix)]
#[test]
fn a_reader_that_leaves_early_is_no_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let model = tiny_model();
    // The read end is closed before the program starts, so its first write finds no reader
    // (closing it after the start would race with a program that writes its few lines first).
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills in two new descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(["info", "--model", s(&model)])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

/// The tiny random model that ships in the repository.
fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/dinov2-tiny-random")
}

/// `dinov2 bench` of the tiny model with `extra` arguments and `--json` into `dir`, which must
/// succeed: its table (stdout) and its JSON report.
fn bench_tiny(dir: &Path, extra: &[&str]) -> (String, serde_json::Value) {
    let json = dir.join("bench.json");
    let model = tiny_model();
    let mut args = vec!["bench", "--model", s(&model), "--json", s(&json)];
    args.extend_from_slice(extra);
    let out = dinov2(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), report)
}

/// `bench --streams 2` also times two copies of the model at once and reports their throughput
/// together, on the table and in the JSON (on the CPU the copies share the thread pool).
#[test]
fn bench_times_several_copies_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, report) = bench_tiny(
        dir.path(),
        &["--batch-size", "1,2", "--streams", "2", "--repeats", "2"],
    );
    assert_eq!(stdout.matches("2 streams at once:").count(), 2, "{stdout}");
    for r in report["results"].as_array().unwrap() {
        assert_eq!(r["streams_together"]["streams"], 2, "{r}");
        assert!(
            r["streams_together"]["images_per_s"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
}

/// On the CPU, `bench` measures the cores' f32 FMA ceiling first and reports each pass's
/// share of it, where the vector unit has FMA (all but the baseline x86-64).
#[test]
fn bench_reports_the_share_of_the_measured_cpu_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, report) = bench_tiny(dir.path(), &["--batch-size", "1", "--repeats", "1"]);
    let r = &report["results"][0];
    if stdout.contains("vector_unit baseline") {
        assert!(r["peak_tflop_per_s"].is_null(), "{r}");
        return;
    }
    assert!(stdout.contains("f32 FMA ceiling"), "{stdout}");
    assert_eq!(r["peak_source"], "measured f32 FMA loop", "{r}");
    assert!(r["peak_tflop_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ours"]["percent_of_peak"].as_f64().unwrap() > 0.0, "{r}");
}

/// A stand-in for the peer's Python (`--peer`): a shell script that ignores the peer script it
/// is given and answers the `--alternate` protocol with `body` (its requests come on stdin).
fn fake_peer(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-python");
    let script = format!(
        "#!/bin/sh\n\
         case \" $* \" in *\" --alternate \"*) ;; *) echo 'not alternating' >&2; exit 3;; esac\n\
         echo '{{\"peer\": \"torch\", \"torch\": \"fake\", \"transformers\": \"fake\", \
         \"device\": \"cpu\", \"attn\": \"sdpa\", \"compile\": false}}'\n{body}"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `bench --peer P --alternate` asks the peer for one pass after each of ours, and reports the
/// peer's times from those passes, per batch size.
#[test]
fn bench_alternates_passes_with_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let peer = fake_peer(
        dir.path(),
        "while read -r word arg; do\n\
           case \"$word\" in\n\
             batch) echo \"{\\\"batch\\\": $arg, \\\"ready\\\": true}\";;\n\
             pass) echo '{\"s\": 0.5}';;\n\
             *) echo '{\"error\": \"unknown request\"}';;\n\
           esac\n\
         done\n",
    );
    let (stdout, report) = bench_tiny(
        dir.path(),
        &[
            "--batch-size",
            "1,2",
            "--repeats",
            "3",
            "--peer",
            s(&peer),
            "--alternate",
        ],
    );
    assert!(
        stdout.contains("peer: torch fake + transformers fake"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("500.00").count(), 2, "{stdout}");
    for (r, batch) in report["results"].as_array().unwrap().iter().zip([1, 2]) {
        assert_eq!(
            r["torch"]["times_s"],
            serde_json::json!([0.5, 0.5, 0.5]),
            "{r}"
        );
        assert_eq!(r["torch"]["images_per_s"], f64::from(batch) / 0.5, "{r}");
        assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    }
    for (row, batch) in report["peer"].as_array().unwrap().iter().zip([1, 2]) {
        assert_eq!(row["batch"], batch, "{row}");
        assert_eq!(row["alternated"], true, "{row}");
    }
}

/// A peer that dies mid-way ends `bench --alternate` with its last message, not a hang.
#[test]
fn bench_reports_an_alternating_peer_that_dies() {
    let dir = tempfile::tempdir().unwrap();
    let peer = fake_peer(
        dir.path(),
        "read -r line\necho 'RuntimeError: out of patience' >&2\nexit 1\n",
    );
    let model = tiny_model();
    let out = dinov2(&[
        "bench",
        "--model",
        s(&model),
        "--peer",
        s(&peer),
        "--alternate",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the PyTorch peer failed: RuntimeError: out of patience"),
        "{stderr}"
    );
}
