//! Every way a model directory can be wrong gives an error whose message names the file, field or
//! tensor at fault. Each test copies a golden fixture into a temporary directory and breaks it.

use std::path::{Path, PathBuf};

use dinov2_checkpoint::{Checkpoint, CheckpointError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;
use tempfile::TempDir;

/// One tensor of a safetensors file, owned.
#[derive(Debug, Clone)]
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

/// A copy of a golden model directory (config and weights, not the run files).
fn copy_case(case: &str) -> TempDir {
    let tmp = TempDir::new().unwrap();
    for entry in std::fs::read_dir(golden(case)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "config.json" || name.starts_with("model") {
            std::fs::copy(&path, tmp.path().join(&name)).unwrap();
        }
    }
    tmp
}

fn read_tensors(path: &Path) -> Vec<Stored> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| Stored {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            bytes: view.data().to_vec(),
        })
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

/// Rewrites `dir/file` through `edit`.
fn edit_tensors(dir: &Path, file: &str, edit: impl FnOnce(&mut Vec<Stored>)) {
    let path = dir.join(file);
    let mut tensors = read_tensors(&path);
    edit(&mut tensors);
    write_tensors(&path, &tensors);
}

fn f32_tensor(name: &str, shape: Vec<usize>) -> Stored {
    let n: usize = shape.iter().product();
    Stored {
        name: name.to_owned(),
        dtype: Dtype::F32,
        shape,
        bytes: vec![0; 4 * n],
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Opens `dir`, which must fail, and returns the error and its message.
fn open_err(dir: &Path) -> (CheckpointError, String) {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened, expected an error", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            // Shown with --nocapture: the list of messages the note quotes.
            println!("{msg}");
            assert!(!msg.contains('\n'), "message spans several lines: {msg}");
            (e, msg)
        }
    }
}

fn assert_names(msg: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            msg.contains(needle),
            "message does not name {needle:?}: {msg}"
        );
    }
}

#[test]
fn missing_directory() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("no-such-model");
    let (e, msg) = open_err(&dir);
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    assert_names(
        &msg,
        &["no-such-model", "no such directory or weights file"],
    );
}

#[test]
fn a_weights_file_alone_needs_heads_64_wide() {
    // Given alone, the weights' config is told from them, the heads taken 64 wide: this tiny
    // model's hidden size of 32 cannot be.
    let tmp = copy_case("dinov2_mlp");
    let (e, msg) = open_err(&tmp.path().join("model.safetensors"));
    assert!(matches!(e, CheckpointError::Infer { .. }), "{e:?}");
    assert_names(
        &msg,
        &["model.safetensors", "hidden size 32", "config.json"],
    );
}

#[test]
fn no_config_json() {
    let tmp = copy_case("dinov2_mlp");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    // Beside weights: the way to read them alone is named.
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::NoConfig { .. }), "{e:?}");
    assert_names(&msg, &["no config.json", "model.safetensors"]);
    // Without: the missing file.
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    assert_names(&msg, &["config.json"]);
}

#[test]
fn config_not_json() {
    let tmp = copy_case("dinov2_mlp");
    std::fs::write(
        tmp.path().join("config.json"),
        "{\"model_type\": \"dinov2\",",
    )
    .unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Json { .. }), "{e:?}");
    assert_names(&msg, &["config.json", "not valid JSON"]);
}

#[test]
fn config_not_an_object() {
    let tmp = copy_case("dinov2_mlp");
    std::fs::write(tmp.path().join("config.json"), "[1, 2]").unwrap();
    let (_, msg) = open_err(tmp.path());
    assert_names(&msg, &["config.json must hold a JSON object"]);
}

#[test]
fn config_field_with_the_wrong_type() {
    for (field, value) in [
        ("hidden_size", serde_json::json!("32")),
        ("use_swiglu_ffn", serde_json::json!("no")),
        ("layer_norm_eps", serde_json::json!([1e-6])),
        ("out_indices", serde_json::json!(3)),
        ("model_type", serde_json::json!(2)),
    ] {
        let tmp = copy_case("dinov2_mlp");
        edit_config(tmp.path(), |c| {
            c.insert(field.to_owned(), value.clone());
        });
        let (e, msg) = open_err(tmp.path());
        assert!(matches!(e, CheckpointError::Config { .. }), "{e:?}");
        assert_names(&msg, &[&format!("`{field}`"), &value.to_string()]);
    }
}

#[test]
fn config_that_disagrees_with_the_weights() {
    // A valid config for another size: every weight is then mis-shaped; the first is named.
    let tmp = copy_case("dinov2_mlp");
    edit_config(tmp.path(), |c| {
        c.insert("hidden_size".into(), 64.into());
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::ShapeMismatch { .. }), "{e:?}");
    assert_names(&msg, &["embeddings.cls_token", "[1, 1, 32]", "[1, 1, 64]"]);
}

#[test]
fn missing_tensor() {
    let tmp = copy_case("dinov2_mlp");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.retain(|t| t.name != "encoder.layer.1.mlp.fc1.weight")
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::MissingTensor { .. }), "{e:?}");
    assert_names(&msg, &["`encoder.layer.1.mlp.fc1.weight`", "[128, 32]"]);
}

#[test]
fn missing_tensor_under_a_prefix() {
    let tmp = copy_case("classifier_single");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.retain(|t| t.name != "dinov2.layernorm.bias")
    });
    let (_, msg) = open_err(tmp.path());
    assert_names(&msg, &["missing tensor `layernorm.bias`", "[32]"]);
}

#[test]
fn unexpected_extra_tensor() {
    let tmp = copy_case("dinov2_mlp");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.push(f32_tensor("encoder.layer.3.norm1.weight", vec![32]))
    });
    let (e, msg) = open_err(tmp.path());
    assert!(
        matches!(e, CheckpointError::UnexpectedTensor { .. }),
        "{e:?}"
    );
    assert_names(&msg, &["`encoder.layer.3.norm1.weight`", "[32]"]);
}

#[test]
fn registers_in_a_plain_dinov2_checkpoint_are_unexpected() {
    let tmp = copy_case("dinov2_mlp");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.push(f32_tensor("embeddings.register_tokens", vec![1, 4, 32]))
    });
    let (_, msg) = open_err(tmp.path());
    assert_names(&msg, &["`embeddings.register_tokens`", "[1, 4, 32]"]);
}

#[test]
fn tensor_with_a_wrong_shape() {
    let tmp = copy_case("dinov2_mlp");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        let pos = t
            .iter_mut()
            .find(|t| t.name == "embeddings.position_embeddings")
            .unwrap();
        *pos = f32_tensor(&pos.name, vec![1, 50, 32]);
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::ShapeMismatch { .. }), "{e:?}");
    assert_names(
        &msg,
        &[
            "`embeddings.position_embeddings`",
            "[1, 50, 32]",
            "[1, 65, 32]",
        ],
    );
}

#[test]
fn transposed_weight() {
    let tmp = copy_case("dinov2_mlp");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        let w = t
            .iter_mut()
            .find(|t| t.name == "encoder.layer.2.mlp.fc2.weight")
            .unwrap();
        w.shape.reverse();
    });
    let (_, msg) = open_err(tmp.path());
    assert_names(
        &msg,
        &["`encoder.layer.2.mlp.fc2.weight`", "[128, 32]", "[32, 128]"],
    );
}

#[test]
fn tensor_stored_as_an_unsupported_dtype() {
    for (dtype, width, shown) in [
        (Dtype::I64, 8, "I64"),
        (Dtype::F64, 8, "F64"),
        (Dtype::U8, 1, "U8"),
    ] {
        let tmp = copy_case("dinov2_mlp");
        edit_tensors(tmp.path(), "model.safetensors", |t| {
            let w = t.iter_mut().find(|t| t.name == "layernorm.weight").unwrap();
            w.dtype = dtype;
            w.bytes = vec![0; width * 32];
        });
        let (e, msg) = open_err(tmp.path());
        assert!(
            matches!(e, CheckpointError::UnsupportedDtype { .. }),
            "{e:?}"
        );
        assert_names(&msg, &["`layernorm.weight`", shown]);
    }
}

#[test]
fn truncated_safetensors() {
    let tmp = copy_case("dinov2_mlp");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e:?}");
    assert_names(&msg, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn corrupt_safetensors() {
    for bytes in [
        b"".to_vec(),
        b"abc".to_vec(),
        b"not a safetensors file at all, just text".to_vec(),
        // A plausible header length followed by a header that is not JSON.
        [16u64.to_le_bytes().to_vec(), b"{{{{{{{{{{{{{{{{".to_vec()].concat(),
    ] {
        let tmp = copy_case("dinov2_mlp");
        std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
        let (e, msg) = open_err(tmp.path());
        assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e:?}");
        assert_names(&msg, &["model.safetensors", "not a valid safetensors file"]);
    }
}

/// A header whose shape, dtype and byte range disagree for one tensor: the `safetensors` crate
/// refuses it without naming the tensor, so the message names it from the header.
#[test]
fn safetensors_header_with_an_inconsistent_tensor_names_it() {
    let tmp = copy_case("dinov2_mlp");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (shape, needles) in [
        (
            json!([7]),
            &["`layernorm.weight`", "[7]", "takes 28 bytes"][..],
        ),
        (
            json!([1u64 << 62, 4]),
            &["`layernorm.weight`", "overflows"][..],
        ),
    ] {
        header["layernorm.weight"]["shape"] = shape;
        let text = serde_json::to_vec(&header).unwrap();
        let edited = [
            (text.len() as u64).to_le_bytes().to_vec(),
            text,
            bytes[8 + n..].to_vec(),
        ]
        .concat();
        std::fs::write(&path, edited).unwrap();
        let (e, msg) = open_err(tmp.path());
        assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e:?}");
        assert_names(&msg, &[&["model.safetensors"][..], needles].concat());
    }
}

#[test]
fn only_config_json() {
    let tmp = copy_case("dinov2_mlp");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::NoWeights { .. }), "{e:?}");
    assert_names(
        &msg,
        &[
            "no weights found",
            &tmp.path().display().to_string(),
            "model.safetensors",
            "pytorch_model.bin",
        ],
    );
}

#[test]
fn a_truncated_pytorch_model_bin() {
    let tmp = copy_case("dinov2_mlp");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"PK\x03\x04 pickle").unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Torch { .. }), "{e:?}");
    assert_names(&msg, &["pytorch_model.bin", "zip archive is truncated"]);
}

#[test]
fn index_names_a_missing_shard() {
    let tmp = copy_case("dinov2_sharded");
    std::fs::remove_file(tmp.path().join("model-00003-of-00004.safetensors")).unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    assert_names(&msg, &["model-00003-of-00004.safetensors"]);
}

#[test]
fn index_not_json() {
    let tmp = copy_case("dinov2_sharded");
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "weight_map",
    )
    .unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Json { .. }), "{e:?}");
    assert_names(&msg, &["model.safetensors.index.json", "not valid JSON"]);
}

#[test]
fn index_without_weight_map() {
    let tmp = copy_case("dinov2_sharded");
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}}"#,
    )
    .unwrap();
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Index { .. }), "{e:?}");
    assert_names(&msg, &["model.safetensors.index.json", "`weight_map`"]);
}

fn edit_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("model.safetensors.index.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value["weight_map"].as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

#[test]
fn index_entry_that_is_not_a_file_name() {
    let tmp = copy_case("dinov2_sharded");
    edit_index(tmp.path(), |map| {
        map.insert("layernorm.weight".into(), 3.into());
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Index { .. }), "{e:?}");
    assert_names(
        &msg,
        &["model.safetensors.index.json", "`layernorm.weight`"],
    );
}

#[test]
fn index_with_an_empty_weight_map() {
    let tmp = copy_case("dinov2_sharded");
    edit_index(tmp.path(), |map| map.clear());
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::MissingTensor { .. }), "{e:?}");
    assert_names(&msg, &["missing tensor `embeddings.cls_token`"]);
}

#[test]
fn index_places_a_tensor_in_the_wrong_shard() {
    let tmp = copy_case("dinov2_sharded");
    let name = "embeddings.cls_token";
    let shard = "model-00001-of-00004.safetensors";
    assert!(read_tensors(&tmp.path().join(shard))
        .iter()
        .any(|t| t.name == name));
    edit_index(tmp.path(), |map| {
        map.insert(name.into(), "model-00004-of-00004.safetensors".into());
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Index { .. }), "{e:?}");
    assert_names(
        &msg,
        &[
            "model.safetensors.index.json",
            "`embeddings.cls_token`",
            "model-00004-of-00004.safetensors",
        ],
    );
}

#[test]
fn index_names_a_tensor_no_shard_holds() {
    let tmp = copy_case("dinov2_sharded");
    edit_index(tmp.path(), |map| {
        map.insert(
            "encoder.layer.9.norm1.weight".into(),
            "model-00002-of-00004.safetensors".into(),
        );
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::Index { .. }), "{e:?}");
    assert_names(
        &msg,
        &[
            "`encoder.layer.9.norm1.weight`",
            "model-00002-of-00004.safetensors",
        ],
    );
}

#[test]
fn tensor_missing_from_its_shard() {
    let tmp = copy_case("dinov2_sharded");
    let shard = "model-00001-of-00004.safetensors";
    edit_tensors(tmp.path(), shard, |t| {
        t.retain(|t| t.name != "embeddings.patch_embeddings.projection.weight")
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::MissingTensor { .. }), "{e:?}");
    assert_names(
        &msg,
        &[
            "`embeddings.patch_embeddings.projection.weight`",
            "[32, 3, 4, 4]",
        ],
    );
}

#[test]
fn duplicate_tensor_across_shards() {
    let tmp = copy_case("dinov2_sharded");
    let first = read_tensors(&tmp.path().join("model-00001-of-00004.safetensors"));
    let cls = first
        .iter()
        .find(|t| t.name == "embeddings.cls_token")
        .unwrap()
        .clone();
    edit_tensors(tmp.path(), "model-00002-of-00004.safetensors", |t| {
        t.push(cls)
    });
    let (e, msg) = open_err(tmp.path());
    assert!(
        matches!(e, CheckpointError::DuplicateTensor { .. }),
        "{e:?}"
    );
    assert_names(&msg, &["`embeddings.cls_token`", "twice"]);
}

#[test]
fn duplicate_tensor_with_and_without_prefix() {
    // `dinov2.layernorm.weight` and `layernorm.weight` are the same tensor once the prefix goes.
    let tmp = copy_case("classifier_single");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.push(f32_tensor("layernorm.weight", vec![32]))
    });
    let (e, msg) = open_err(tmp.path());
    assert!(
        matches!(e, CheckpointError::DuplicateTensor { .. }),
        "{e:?}"
    );
    assert_names(&msg, &["`layernorm.weight`"]);
}

#[test]
fn original_names_with_a_bad_fused_qkv() {
    let tmp = copy_case("dinov2_original_names");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        let qkv = t
            .iter_mut()
            .find(|t| t.name == "blocks.1.attn.qkv.weight")
            .unwrap();
        *qkv = f32_tensor(&qkv.name, vec![95, 32]);
    });
    let (e, msg) = open_err(tmp.path());
    assert!(matches!(e, CheckpointError::FusedQkv { .. }), "{e:?}");
    assert_names(
        &msg,
        &["`blocks.1.attn.qkv.weight`", "[95, 32]", "3 x hidden_size"],
    );
}

#[test]
fn original_names_with_an_unknown_tensor() {
    let tmp = copy_case("dinov2_original_names");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.push(f32_tensor("blocks.0.attn.rope.freqs", vec![8]))
    });
    let (e, msg) = open_err(tmp.path());
    assert!(
        matches!(e, CheckpointError::UnexpectedTensor { .. }),
        "{e:?}"
    );
    assert_names(&msg, &["`blocks.0.attn.rope.freqs`", "[8]"]);
}

#[test]
fn dinov2_prefix_loads() {
    let tmp = copy_case("dinov2_mlp");
    let plain = read_tensors(&tmp.path().join("model.safetensors"));
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        for t in t.iter_mut() {
            t.name = format!("dinov2.{}", t.name);
        }
    });
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let names: Vec<&str> = ckpt.weights.names().collect();
    let expected: Vec<&str> = plain.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, expected);
    for t in &plain {
        assert_eq!(ckpt.weights.get(&t.name).unwrap().bytes, &t.bytes[..]);
    }
    assert!(!ckpt.weights.has_classifier());
    assert!(!ckpt.weights.original_naming());

    // The classifier fixture stores its base model under the prefix, its head without.
    let ckpt = Checkpoint::open(golden("classifier_single")).unwrap();
    assert!(ckpt.weights.has_classifier());
    assert_eq!(
        ckpt.weights.get("classifier.weight").unwrap().shape,
        [5, 64]
    );
    assert!(ckpt.weights.get("embeddings.cls_token").is_some());
}

#[test]
fn original_facebookresearch_names_load() {
    let dir = golden("dinov2_original_names");
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(ckpt.weights.original_naming());
    let stored = read_tensors(&dir.join("model.safetensors"));
    let qkv = stored
        .iter()
        .find(|t| t.name == "blocks.0.attn.qkv.weight")
        .unwrap();
    let third = qkv.bytes.len() / 3;
    for (i, part) in ["query", "key", "value"].iter().enumerate() {
        let t = ckpt
            .weights
            .get(&format!(
                "encoder.layer.0.attention.attention.{part}.weight"
            ))
            .unwrap();
        assert_eq!(t.shape, [32, 32]);
        assert_eq!(t.bytes, &qkv.bytes[i * third..(i + 1) * third]);
    }
    let pos = ckpt.weights.get("embeddings.position_embeddings").unwrap();
    assert_eq!(pos.shape, [1, 65, 32]);
    assert!(ckpt
        .weights
        .get("encoder.layer.2.mlp.weights_in.weight")
        .is_some());
    assert!(ckpt
        .weights
        .get("encoder.layer.2.layer_scale2.lambda1")
        .is_some());
}

#[test]
fn original_names_without_a_mask_token_under_a_config_without_one() {
    // timm drops the mask token; a config that has none takes the weights as they are.
    let tmp = copy_case("dinov2_original_names");
    edit_tensors(tmp.path(), "model.safetensors", |t| {
        t.retain(|t| t.name != "mask_token")
    });
    edit_config(tmp.path(), |c| {
        c.insert("use_mask_token".into(), serde_json::json!(false));
    });
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert!(!ckpt.config.use_mask_token && !ckpt.weights.zero_mask_token());
    assert!(ckpt.weights.get("embeddings.mask_token").is_none());
    // With the config's default (a mask token), a zero one stands in.
    edit_config(tmp.path(), |c| {
        c.remove("use_mask_token");
    });
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert!(ckpt.config.use_mask_token && ckpt.weights.zero_mask_token());
}
