//! Weights files given alone, and PyTorch `torch.save` files: the golden fixtures written by torch
//! itself read as their transformers twins, and each way such a file can be wrong named in its
//! error (files built here, byte by byte).

use std::path::{Path, PathBuf};

use dinov2_checkpoint::{Checkpoint, CheckpointError, ConfigSource};
use tempfile::TempDir;

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(case)
}

/// Every tensor of a checkpoint, by transformers' name, with its shape and values.
fn contents(c: &Checkpoint) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    c.weights
        .names()
        .map(|n| {
            let t = c.weights.get(n).unwrap();
            (n.to_owned(), t.shape.to_vec(), t.to_f32())
        })
        .collect()
}

#[test]
fn an_original_pth_alone_gets_its_config_from_the_tensors() {
    let c = Checkpoint::open(golden("original_pth").join("model.pth")).unwrap();
    let k = &c.config;
    assert_eq!(
        (
            k.hidden_size,
            k.num_attention_heads,
            k.num_hidden_layers,
            k.patch_size,
            k.image_size
        ),
        (64, 1, 3, 4, 32)
    );
    assert!(k.qkv_bias && k.use_mask_token && !k.use_swiglu_ffn);
    assert_eq!((k.num_register_tokens, k.ffn_hidden_size()), (0, 256));
    assert!(c.weights.original_naming());
    assert!(c.weights.backbone_prefix().is_none());
    let ConfigSource::Inferred(json) = &c.config_source else {
        panic!("{:?}", c.config_source)
    };
    assert_eq!(json["architectures"][0], "Dinov2Model");
}

#[test]
fn a_training_checkpoint_gives_the_teachers_backbone() {
    let dir = golden("original_pth");
    let plain = Checkpoint::open(dir.join("model.pth")).unwrap();
    let training = Checkpoint::open(dir.join("teacher_checkpoint.pth")).unwrap();
    // Left out: the student's two tensors, two head tensors each, and a step counter (int64).
    assert_eq!(
        training.weights.backbone_prefix(),
        Some(("teacher.backbone.", 7))
    );
    assert_eq!(training.config, plain.config);
    assert_eq!(contents(&training), contents(&plain));
}

#[test]
fn timm_registers_and_swiglu_are_read_as_transformers_names() {
    let c = Checkpoint::open(golden("registers_timm").join("model.safetensors")).unwrap();
    assert!(c.weights.timm_no_embed_class());
    let k = &c.config;
    assert_eq!((k.num_register_tokens, k.ffn_hidden_size()), (4, 176));
    // timm drops the mask token: a zero one stands in, as transformers would fill it.
    assert!(k.use_swiglu_ffn && k.use_mask_token && c.weights.zero_mask_token());
    let mask = c.weights.get("embeddings.mask_token").unwrap();
    assert!(mask.to_f32().iter().all(|&v| v == 0.0));
    // The CLS position a timm checkpoint folds into its CLS token comes back as a zero row.
    let pos = c.weights.get("embeddings.position_embeddings").unwrap();
    assert_eq!(pos.shape, [1, 65, 64]);
    assert!(pos.to_f32()[..64].iter().all(|&v| v == 0.0));
    assert!(c
        .weights
        .get("encoder.layer.2.mlp.weights_in.bias")
        .is_some());
}

#[test]
fn a_pytorch_model_bin_beside_its_config() {
    let c = Checkpoint::open(golden("dinov2_pytorch_bin")).unwrap();
    assert!(matches!(c.config_source, ConfigSource::File(_)));
    assert_eq!(
        c.weights.dtype_counts().into_keys().collect::<Vec<_>>(),
        ["bfloat16"]
    );
    assert!(c.weights.has_classifier());
    assert!(c.weights.paths()[0].ends_with("pytorch_model.bin"));
}

// ------------------------------------------------------------------------------------------------
// Broken files, built here: a stored zip archive holding a protocol-2 pickle.

/// A zip archive of stored members (no compression, no ZIP64).
fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend([0u8; 2]); // flags
            h.extend([0u8; 2]); // method: stored
            h.extend([0u8; 4]); // time, date
            h.extend([0u8; 4]); // crc (not checked)
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend([0u8; 2]); // extra length
            if central {
                h.extend([0u8; 6]); // comment length, disk, internal attributes
                h.extend([0u8; 4]); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x0201_4b50, true));
    }
    let dir_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_offset.to_le_bytes());
    out.extend([0u8; 2]);
    out
}

fn short_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn tuple_of_ints(out: &mut Vec<u8>, values: &[usize]) {
    out.push(b'(');
    for &v in values {
        out.push(b'J');
        out.extend((v as i32).to_le_bytes());
    }
    out.push(b't');
}

/// A tensor as torch pickles it: `_rebuild_tensor_v2(storage, offset, shape, stride, False, {})`.
struct Spec<'a> {
    name: &'a str,
    kind: &'a str,
    key: &'a str,
    offset: usize,
    shape: &'a [usize],
    stride: &'a [usize],
}

fn pickle_of(tensors: &[Spec]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    for t in tensors {
        short_str(&mut p, t.name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        short_str(&mut p, "storage");
        p.extend(format!("ctorch\n{}\n", t.kind).as_bytes());
        short_str(&mut p, t.key);
        short_str(&mut p, "cpu");
        p.extend(b"K\x01tQ");
        p.extend(b"J");
        p.extend((t.offset as i32).to_le_bytes());
        tuple_of_ints(&mut p, t.shape);
        tuple_of_ints(&mut p, t.stride);
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

/// A `torch.save` archive of one pickle and its storages.
fn torch_file(pickle: &[u8], storages: &[(&str, Vec<u8>)], byteorder: &str) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(k, _)| format!("m/data/{k}"))
        .collect();
    let mut members: Vec<(&str, &[u8])> = vec![
        ("m/data.pkl", pickle),
        ("m/byteorder", byteorder.as_bytes()),
    ];
    for (name, (_, bytes)) in names.iter().zip(storages) {
        members.push((name, bytes));
    }
    zip(&members)
}

fn open_bytes(bytes: &[u8]) -> (CheckpointError, String) {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("broken.pth");
    std::fs::write(&path, bytes).unwrap();
    let e = Checkpoint::open(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("broken.pth"),
        "the message names no file: {msg}"
    );
    (e, msg)
}

fn assert_says(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

/// The CLS token of a ViT-S/14 in storage `0` of the given class (`FloatStorage`).
fn cls(kind: &'static str) -> Spec<'static> {
    Spec {
        name: "cls_token",
        kind,
        key: "0",
        offset: 0,
        shape: &[1, 1, 64],
        stride: &[64, 64, 1],
    }
}

#[test]
fn broken_torch_files_are_named_with_their_fault() {
    let floats = vec![0u8; 256];
    // Cut in half: the zip directory is gone.
    let whole = std::fs::read(golden("original_pth").join("model.pth")).unwrap();
    let (e, msg) = open_bytes(&whole[..whole.len() / 2]);
    assert!(matches!(e, CheckpointError::Torch { .. }), "{e:?}");
    assert_says(&msg, &["truncated"]);

    // The pre-1.6 format.
    let (_, msg) = open_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19 rest");
    assert_says(&msg, &["legacy", "torch before 1.6"]);

    // A whole pickled module rather than its state dict.
    let (_, msg) = open_bytes(&torch_file(
        b"\x80\x02cmymodels\nNet\n)\x81}b.",
        &[],
        "little",
    ));
    assert_says(&msg, &["mymodels.Net", "state_dict()"]);

    // A storage record missing.
    let (_, msg) = open_bytes(&torch_file(
        &pickle_of(&[cls("FloatStorage")]),
        &[],
        "little",
    ));
    assert_says(&msg, &["cls_token", "m/data/0", "missing"]);

    // A storage shorter than its tensor.
    let short = vec![0u8; 100];
    let (_, msg) = open_bytes(&torch_file(
        &pickle_of(&[cls("FloatStorage")]),
        &[("0", short)],
        "little",
    ));
    assert_says(&msg, &["cls_token", "runs past its storage of 100 bytes"]);

    // A strided view (a transposed matrix).
    let view = Spec {
        name: "pos_embed",
        kind: "FloatStorage",
        key: "0",
        offset: 0,
        shape: &[8, 8],
        stride: &[1, 8],
    };
    let (_, msg) = open_bytes(&torch_file(
        &pickle_of(&[view]),
        &[("0", floats.clone())],
        "little",
    ));
    assert_says(&msg, &["pos_embed", "strided view", ".contiguous()"]);

    // Big-endian values.
    let (_, msg) = open_bytes(&torch_file(
        &pickle_of(&[cls("FloatStorage")]),
        &[("0", floats.clone())],
        "big",
    ));
    assert_says(&msg, &["big-endian"]);

    // A tensor the model needs, stored as integers.
    let (e, msg) = open_bytes(&torch_file(
        &pickle_of(&[cls("LongStorage")]),
        &[("0", vec![0u8; 512])],
        "little",
    ));
    assert!(matches!(e, CheckpointError::Torch { .. }), "{e:?}");
    assert_says(&msg, &["cls_token", "LongStorage", "not float32"]);

    // A shape whose element count overflows.
    let huge = Spec {
        name: "cls_token",
        kind: "FloatStorage",
        key: "0",
        offset: 0,
        shape: &[1 << 20, 1 << 20, 1 << 20, 1 << 20],
        stride: &[1, 1, 1, 1],
    };
    let (_, msg) = open_bytes(&torch_file(
        &pickle_of(&[huge]),
        &[("0", floats.clone())],
        "little",
    ));
    assert_says(&msg, &["cls_token", "impossible shape"]);

    // A garbled pickle.
    let (_, msg) = open_bytes(&torch_file(b"\x80\x02}(X\x05\x00\x00", &[], "little"));
    assert_says(&msg, &["data.pkl", "ends early"]);
}

#[test]
fn two_backbones_and_no_teacher_are_refused() {
    let pos = |name| Spec {
        name,
        kind: "FloatStorage",
        key: "0",
        offset: 0,
        shape: &[1, 1, 64],
        stride: &[64, 64, 1],
    };
    let file = torch_file(
        &pickle_of(&[pos("model_a.pos_embed"), pos("model_b.pos_embed")]),
        &[("0", vec![0u8; 256])],
        "little",
    );
    let (e, msg) = open_bytes(&file);
    assert!(matches!(e, CheckpointError::Backbone { .. }), "{e:?}");
    assert_says(&msg, &["model_a.", "model_b.", "several backbones"]);
}

#[test]
fn a_file_without_blocks_says_what_it_lacks() {
    let file = torch_file(
        &pickle_of(&[cls("FloatStorage")]),
        &[("0", vec![0u8; 256])],
        "little",
    );
    // Only a CLS token, under a name of neither family: transformers' CLS token is missing.
    let (e, msg) = open_bytes(&file);
    assert!(matches!(e, CheckpointError::Infer { .. }), "{e:?}");
    assert_says(
        &msg,
        &["architecture cannot be told", "no `embeddings.cls_token`"],
    );
}

#[test]
fn a_wrapped_training_checkpoint_and_a_bad_tensor_outside_the_backbone() {
    // `{"model": {"teacher.backbone.*", "student.backbone.*"}}`, and a strided view in the
    // student, which is never read.
    let spec = |name, shape: &'static [usize], stride: &'static [usize]| Spec {
        name,
        kind: "FloatStorage",
        key: "0",
        offset: 0,
        shape,
        stride,
    };
    let file = torch_file(
        &pickle_of(&[
            spec(
                "model.teacher.backbone.pos_embed",
                &[1, 1, 64],
                &[64, 64, 1],
            ),
            spec("model.student.backbone.pos_embed", &[8, 8], &[1, 8]),
        ]),
        &[("0", vec![0u8; 256])],
        "little",
    );
    // The teacher is chosen, the student's view left alone: what fails is the teacher's missing
    // CLS token.
    let (e, msg) = open_bytes(&file);
    assert!(matches!(e, CheckpointError::Infer { .. }), "{e:?}");
    assert_says(&msg, &["no `embeddings.cls_token`"]);
}

/// Writes safetensors `tensors` (name, shape; all values zero, f32) to `dir/name`.
fn safetensors_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| vec![0u8; 4 * shape.iter().product::<usize>()])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap();
            (n.to_string(), view)
        })
        .collect();
    let path = dir.join(name);
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn impossible_sizes_are_told_not_computed() {
    let tmp = TempDir::new().unwrap();
    let base = |extra: (&'static str, Vec<usize>)| {
        vec![
            ("cls_token", vec![1, 1, 64]),
            ("pos_embed", vec![1, 17, 64]),
            ("patch_embed.proj.weight", vec![64, 3, 4, 4]),
            ("blocks.0.norm1.weight", vec![64]),
            ("blocks.0.mlp.fc2.weight", vec![64, 256]),
            extra,
        ]
    };
    for (extra, says) in [
        (
            ("head.weight", vec![1 << 40, 0]),
            "label count is 1099511627776",
        ),
        (
            ("patch_embed.proj.bias", vec![0]),
            "has shape [0], expected [64]",
        ),
        (
            ("blocks.0.attn.qkv.weight", vec![1, 1 << 62, 0]),
            "must be 3 x hidden_size",
        ),
    ] {
        let path = safetensors_file(tmp.path(), "w.safetensors", &base(extra));
        let msg = Checkpoint::open(&path).unwrap_err().to_string();
        assert_says(&msg, &[says]);
    }
    let zero = vec![
        ("cls_token", vec![1, 1, 0]),
        ("pos_embed", vec![1, 17, 0]),
        ("patch_embed.proj.weight", vec![0, 0, 1 << 31, 1 << 31]),
    ];
    let path = safetensors_file(tmp.path(), "z.safetensors", &zero);
    let msg = Checkpoint::open(&path).unwrap_err().to_string();
    assert_says(&msg, &["hidden size is 0"]);
}

#[test]
fn sharded_timm_checkpoint_with_its_config() {
    // The timm registers model split into two shards with an index, beside a config.json: the
    // index names timm's tensors, found under their transformers names (packed SwiGLU and the
    // position embedding completed with its CLS row included).
    let file = golden("registers_timm").join("model.safetensors");
    let source = Checkpoint::open(&file).unwrap();
    let ConfigSource::Inferred(json) = &source.config_source else {
        panic!("{:?}", source.config_source)
    };
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tmp = TempDir::new().unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [("model-1.safetensors", a), ("model-2.safetensors", b)] {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &tmp.path().join(shard)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::json!(shard));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("config.json"), json.to_string()).unwrap();
    let sharded = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(contents(&sharded), contents(&source));
    assert!(sharded.weights.timm_no_embed_class() && sharded.weights.zero_mask_token());
}
