//! `dinov2 embed` end to end, on the sample checkpoint and images that ship with the repository:
//! parity with transformers (PIL processor + float64 model), bad files skipped and named, every
//! output format, pooling choices, and an interrupted job resumed into the same rows.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;
use tempfile::TempDir;

mod common;

use common::{file_host, model, root};

fn dinov2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(args)
        .output()
        .expect("dinov2 runs")
}

/// `dinov2 embed --model MODEL ARGS... --output OUT INPUTS...`, which must succeed; returns OUT.
fn embed_ok(model: &str, out: PathBuf, args: &[&str], inputs: &[&str]) -> PathBuf {
    let out_arg = out.to_str().unwrap().to_owned();
    let mut all = vec!["embed", "--model", model];
    all.extend_from_slice(args);
    all.extend(["--output", &out_arg]);
    all.extend_from_slice(inputs);
    let r = dinov2(&all);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// The sample photos, copied into `dir` (sorted names).
fn sample_images(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("assets/images")).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jpg" | "png")
        ) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&path, dir.join(&name)).unwrap();
            names.push(name);
        }
    }
    names.sort();
    names
}

/// A folder `images` in `dir` holding the sample photos and `copies` copies of each
/// (`copy{i}_{name}`); returns it and the sample names.
fn copied_images(dir: &Path, copies: usize) -> (PathBuf, Vec<String>) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    for copy in 0..copies {
        for n in &names {
            std::fs::copy(images.join(n), images.join(format!("copy{copy}_{n}"))).unwrap();
        }
    }
    (images, names)
}

/// An `.npy` file of f32: shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "header is 64-byte aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let dims = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = dims
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

fn expected(name: &str) -> Vec<f64> {
    let bytes = std::fs::read(root().join("tests/fixtures/embed/expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn folder_with_bad_files_matches_transformers() {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    let names = sample_images(&images);
    std::fs::write(images.join("garbage.jpg"), b"this is not an image").unwrap();
    std::fs::write(images.join("empty.png"), b"").unwrap();
    let jpeg = std::fs::read(images.join("chelsea.jpg")).unwrap();
    std::fs::write(images.join("nested/truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    let out = dir.path().join("emb.npy");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--batch-size",
        "3",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    for bad in ["garbage.jpg", "empty.png", "truncated.jpg"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("skipped") && l.contains(bad)),
            "{bad}: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 3, "{errors:?}");
    // Each report says which step failed: all three here are undecodable data.
    for line in &errors {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["stage"], "decode", "{line}");
        assert!(v["path"].is_string() && v["error"].is_string(), "{line}");
    }
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    let got: Vec<String> = paths
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(got, names, "every good image, in path order");
    let (shape, values) = read_npy(&out);
    assert_eq!(shape, vec![names.len(), 48]);
    for (i, name) in names.iter().enumerate() {
        let err = rel_l2(
            &values[i * 48..(i + 1) * 48],
            &expected(&format!("{name}.cls")),
        );
        assert!(
            err <= 1e-5,
            "{name}: relative L2 {err:.2e} against transformers (float64)"
        );
    }
    assert!(!PathBuf::from(format!("{}.partial", out.display())).exists());
}

#[test]
fn embed_equals_forward_on_preprocessed_images() {
    let dir = TempDir::new().unwrap();
    let names = sample_images(dir.path());
    let images: Vec<String> = names
        .iter()
        .map(|n| dir.path().join(n).display().to_string())
        .collect();
    let pre = dir.path().join("pixels.safetensors");
    let model = model();
    let mut args = vec![
        "preprocess",
        "--model",
        &model,
        "--output",
        pre.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    assert!(dinov2(&args).status.success());
    let emb = dir.path().join("emb.safetensors");
    let mut args = vec![
        "embed",
        "--model",
        &model,
        "--pooling",
        "cls+mean",
        "--output",
        emb.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let r = dinov2(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let emb_bytes = std::fs::read(&emb).unwrap();
    let st = SafeTensors::deserialize(&emb_bytes).unwrap();
    let e = st.tensor("embeddings").unwrap();
    assert_eq!(e.shape(), [names.len(), 96]);
    let e: Vec<f32> = e
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let pre_bytes = std::fs::read(&pre).unwrap();
    let pre_st = SafeTensors::deserialize(&pre_bytes).unwrap();
    for (i, image) in images.iter().enumerate() {
        // forward on the preprocessed image alone.
        let t = pre_st.tensor(image).unwrap();
        assert_eq!(t.shape(), [3, 224, 224]);
        let input = dir.path().join(format!("in{i}.safetensors"));
        let mut shape = vec![1];
        shape.extend(t.shape());
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, t.data()).unwrap();
        safetensors::serialize_to_file([("pixel_values", view)], None, &input).unwrap();
        let output = dir.path().join(format!("out{i}.safetensors"));
        assert!(dinov2(&[
            "forward",
            "--model",
            &model,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap()
        ])
        .status
        .success());
        let out_bytes = std::fs::read(&output).unwrap();
        let out = SafeTensors::deserialize(&out_bytes).unwrap();
        let pooled: Vec<f32> = out
            .tensor("pooler_output")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let row = &e[i * 96..(i + 1) * 96];
        let diff = row[..48]
            .iter()
            .zip(&pooled)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{image}: embed and forward differ by {diff}");
        let mean_err = rel_l2(&row[48..], &expected(&format!("{}.mean", names[i])));
        assert!(mean_err <= 1e-5, "{image}: patch mean {mean_err:.2e}");
    }
}

#[test]
fn parquet_patch_and_normalize() {
    let dir = TempDir::new().unwrap();
    sample_images(dir.path());
    let images = dir.path().display().to_string();
    let pq = dir.path().join("emb.parquet");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--normalize",
        "--output",
        pq.to_str().unwrap(),
        &images,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let reader =
        parquet::file::reader::SerializedFileReader::new(File::open(&pq).unwrap()).unwrap();
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 7);
    let columns: Vec<String> = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    assert_eq!(columns, ["path", "width", "height", "embedding.list.item"]);

    let npy = dir.path().join("patch.npy");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--pooling",
        "patch",
        "--normalize",
        "--output",
        npy.to_str().unwrap(),
        &images,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (shape, values) = read_npy(&npy);
    assert_eq!(shape, vec![7, 16, 16, 48]);
    for v in values.chunks_exact(48) {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
}

#[test]
fn existing_output_is_never_silently_replaced() {
    let dir = TempDir::new().unwrap();
    sample_images(dir.path());
    let images = dir.path().display().to_string();
    let out = dir.path().join("emb.npy");
    std::fs::write(&out, b"precious").unwrap();
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--output",
        out.to_str().unwrap(),
        &images,
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--overwrite"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--resume",
        "--output",
        out.to_str().unwrap(),
        &images,
    ]);
    assert!(
        r.status.success(),
        "a complete output has nothing to resume"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--overwrite",
        "--output",
        out.to_str().unwrap(),
        &images,
    ]);
    assert!(r.status.success());
    assert_eq!(read_npy(&out).0, vec![7, 48]);

    // The finished output's manifest: its counts, and the fingerprint --resume checks.
    let manifest = dir.path().join("emb.npy.done.json");
    let done: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(
        (&done["inputs"], &done["embedded"], &done["failed"]),
        (&7.into(), &7.into(), &0.into()),
        "{done}"
    );
    assert_eq!(done["poolings"], serde_json::json!(["cls"]));
    let resume = |pooling: &str| {
        let out = out.to_str().unwrap();
        let args = [
            "embed",
            "--model",
            &model(),
            "--pooling",
            pooling,
            "--resume",
        ];
        dinov2(&[&args[..], &["--output", out, &images]].concat())
    };
    let r = resume("cls");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success() && stderr.contains("says so"), "{stderr}");
    let r = resume("mean");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("other inputs or options"), "{stderr}");
    assert_eq!(read_npy(&out).0, vec![7, 48]);
    // Another output type is another output.
    let out_arg = out.to_str().unwrap();
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--output-dtype",
        "f16",
        "--resume",
        "--output",
        out_arg,
        &images,
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("other inputs or options"));
    // A manifest that cannot be read is not taken as a yes.
    std::fs::write(&manifest, b"{ truncated").unwrap();
    let r = resume("cls");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not valid JSON"), "{stderr}");

    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--output",
        dir.path().join("x.csv").to_str().unwrap(),
        &images,
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains(".parquet, .npy or .safetensors"));
}

#[test]
fn on_error_fail_stops_at_the_first_bad_input() {
    let dir = TempDir::new().unwrap();
    sample_images(dir.path());
    std::fs::write(dir.path().join("b_bad.png"), b"nope").unwrap();
    let out = dir.path().join("emb.npy");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--on-error",
        "fail",
        "--output",
        out.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("b_bad.png"));
    assert!(!out.exists());

    // Skipped, the job finishes and exits 1; resuming the finished job says so again.
    for extra in [&["--overwrite"][..], &["--resume"][..]] {
        let r = dinov2(
            &[
                &["embed", "--model", &model()][..],
                extra,
                &[
                    "--output",
                    out.to_str().unwrap(),
                    dir.path().to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("could not be embedded"),
            "{extra:?}: {stderr}"
        );
    }
}

/// `--max-failures`: a finished job whose bad inputs are within the budget (a count or a share of
/// the inputs) exits 0 with a note, past it 1, writing its output either way; `--resume` of the
/// finished job judges again with the budget it is given.
#[test]
fn max_failures_sets_the_exit_status_of_a_job_with_bad_inputs() {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let good = sample_images(&images).len();
    std::fs::write(images.join("bad1.png"), b"nope").unwrap();
    std::fs::write(images.join("bad2.jpg"), b"").unwrap();
    let inputs = good + 2;
    let out = dir.path().join("emb.npy");
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", "--model"];
        let model = model();
        args.push(&model);
        args.extend_from_slice(extra);
        args.extend(["--output", out.to_str().unwrap(), images.to_str().unwrap()]);
        let r = dinov2(&args);
        (
            r.status.code(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    // 2 of 9 inputs fail: 22.2%.
    let within = |budget: &str| {
        format!("2 of {inputs} inputs could not be embedded (within --max-failures {budget})")
    };
    let past = |budget: &str| {
        format!(
            "2 of {inputs} inputs could not be embedded, more than --max-failures {budget} allows"
        )
    };
    for (budget, ok) in [("2", true), ("1", false), ("22.3%", true), ("22.2%", false)] {
        let (code, stderr) = embed(&["--overwrite", "--max-failures", budget]);
        if ok {
            assert_eq!(code, Some(0), "{budget}: {stderr}");
            assert!(stderr.contains(&within(budget)), "{budget}: {stderr}");
        } else {
            assert_eq!(code, Some(1), "{budget}: {stderr}");
            assert!(stderr.contains(&past(budget)), "{budget}: {stderr}");
        }
        assert_eq!(read_npy(&out).0[0], good, "{budget}");
        let errors = PathBuf::from(format!("{}.errors.jsonl", out.display()));
        assert_eq!(lines(&errors).len(), 2, "{budget}");
    }
    // Without a budget any bad input is an exit status of 1, as before.
    let (code, stderr) = embed(&["--resume"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("2 of {inputs} inputs could not be embedded; see")),
        "{stderr}"
    );
    let (code, stderr) = embed(&["--resume", "--max-failures", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("is complete") && stderr.contains(&within("2")),
        "{stderr}"
    );
    // --on-error fail stops at the first bad input: a budget there is refused.
    let (code, stderr) = embed(&["--overwrite", "--on-error", "fail", "--max-failures", "2"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--max-failures applies to --on-error skip"),
        "{stderr}"
    );
    let (code, stderr) = embed(&["--overwrite", "--max-failures", "150%"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("a percentage from 0 to 100"), "{stderr}");
    // A job that embedded nothing is broken whatever the budget.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("bad.png"), b"nope").unwrap();
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--max-failures",
        "100%",
        "--output",
        dir.path().join("none.npy").to_str().unwrap(),
        broken.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("none of the 1 inputs could be embedded"),
        "{stderr}"
    );
}

/// Starts `embed` (a job writing `out`) and kills it (SIGKILL) once it has committed some rows,
/// before it finishes.
fn kill_after_first_commit(mut embed: Command, out: &Path) {
    let state = PathBuf::from(format!("{}.partial/state.json", out.display()));
    let mut child = embed.spawn().unwrap();
    let started = Instant::now();
    let mut killed_mid_job = false;
    while started.elapsed() < Duration::from_secs(60) {
        let done = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["done"].as_u64())
            .unwrap_or(0);
        if done > 0 {
            child.kill().unwrap();
            killed_mid_job = !out.exists();
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    assert!(
        killed_mid_job,
        "the job was not caught mid-way; the test needs a slower job"
    );
}

/// Kills a job (SIGKILL) after it committed some rows, resumes it, and compares with a clean run:
/// over a folder, and over a tar stream, read again past what the job did (a stream that now gives
/// other images is refused).
#[test]
fn killed_job_resumes_into_the_same_rows() {
    let dir = TempDir::new().unwrap();
    let (images, _) = copied_images(dir.path(), 5);
    let mut files: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let members = members_of(&images, &files);
    let shard = dir.path().join("shard.tar");
    std::fs::write(&shard, tar_of(&members)).unwrap();
    let mut inputs = vec![("folder", images.display().to_string())];
    if cfg!(unix) {
        inputs.push(("stream", format!("pipe:cat '{}'", shard.display())));
    }
    for (kind, input) in inputs {
        let run = |out: &Path, extra: &[&str]| -> Command {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dinov2"));
            c.args(["embed", "--model", &model(), "--batch-size", "2"])
                .args(["--chunk-rows", "2", "--workers", "1", "--output"])
                .arg(out)
                .args(extra)
                .arg(&input)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let clean = dir.path().join(format!("{kind}_clean.npy"));
        assert!(run(&clean, &[]).status().unwrap().success());

        let out = dir.path().join(format!("{kind}_resumed.npy"));
        kill_after_first_commit(run(&out, &[]), &out);
        let resume = || {
            run(&out, &["--resume"])
                .stderr(Stdio::piped())
                .output()
                .unwrap()
        };
        if kind == "stream" {
            // The same command now gives the members in another order.
            let reversed: Vec<_> = members.iter().rev().cloned().collect();
            std::fs::write(&shard, tar_of(&reversed)).unwrap();
            let r = resume();
            let stderr = String::from_utf8_lossy(&r.stderr);
            assert!(
                !r.status.success()
                    && stderr.contains("the inputs changed since the interrupted job"),
                "{stderr}"
            );
            std::fs::write(&shard, tar_of(&members)).unwrap();
        }
        let r = resume();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&clean).unwrap(),
            "{kind}: resumed rows differ from a clean run"
        );
        assert_eq!(
            std::fs::read(format!("{}.paths.txt", out.display())).unwrap(),
            std::fs::read(format!("{}.paths.txt", clean.display())).unwrap()
        );
    }
}

/// `--model org/name` is found in a Hugging Face cache laid out in a temporary folder (no network).
#[test]
fn hub_id_from_the_local_cache() {
    let cache = TempDir::new().unwrap();
    let repo = cache.path().join("models--example--dinov2-tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(Path::new(&model()).join(f), snapshot.join(f)).unwrap();
    }
    let info = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(["info", "--model", "example/dinov2-tiny"])
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(
        stdout.contains("0123abcd") && stdout.contains("hidden 48"),
        "{stdout}"
    );
    let out = cache.path().join("one.npy");
    let r = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args([
            "embed",
            "--model",
            "example/dinov2-tiny@0123abcd",
            "--output",
            out.to_str().unwrap(),
        ])
        .arg(root().join("assets/images/chelsea.jpg"))
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(read_npy(&out).0, vec![1, 48]);
}

/// `dinov2 classify` prints the top labels of a classification checkpoint, probabilities summing
/// to at most 1 and sorted; a checkpoint without a head is one clear error.
#[test]
fn classify_prints_top_labels() {
    let classifier = root().join("tests/fixtures/golden/classifier_single");
    let image = root().join("assets/images/chelsea.jpg");
    let r = dinov2(&[
        "classify",
        "--model",
        classifier.to_str().unwrap(),
        "--top-k",
        "3",
        image.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let probs: Vec<f64> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(
        probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-9,
        "{stdout}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(classifier.join("config.json")).unwrap())
            .unwrap();
    let labels: Vec<&str> = config["id2label"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        lines[1..]
            .iter()
            .all(|l| labels.iter().any(|lab| l.ends_with(lab))),
        "{stdout}"
    );
    let r = dinov2(&["classify", "--model", &model(), image.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no classification head"));
}

/// Without a center crop images keep their aspect ratio: patch grids differ, which Parquet holds
/// (with grid_h, grid_w) and a dense npy refuses as soon as it sees the second shape.
#[test]
fn patch_grids_of_different_sizes() {
    let dir = TempDir::new().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(&model()).join(f), model_dir.join(f)).unwrap();
    }
    let config = r#"{"do_center_crop": false, "do_resize": true, "size": {"shortest_edge": 56},
        "resample": 3, "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": true}"#;
    std::fs::write(model_dir.join("preprocessor_config.json"), config).unwrap();
    // astronaut is square, coffee is 600 x 400: different grids.
    let images: Vec<String> = ["astronaut.jpg", "coffee.jpg"]
        .iter()
        .map(|n| root().join("assets/images").join(n).display().to_string())
        .collect();
    let m = model_dir.display().to_string();
    let pq = dir.path().join("p.parquet");
    let mut args = vec![
        "embed",
        "--model",
        &m,
        "--pooling",
        "patch",
        "--output",
        pq.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let r = dinov2(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    use parquet::file::reader::FileReader;
    let reader =
        parquet::file::reader::SerializedFileReader::new(File::open(&pq).unwrap()).unwrap();
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    assert_eq!(
        columns,
        [
            "path",
            "width",
            "height",
            "embedding.list.item",
            "grid_h",
            "grid_w",
            "region.list.item"
        ]
    );

    let npy = dir.path().join("p.npy");
    let mut args = vec![
        "embed",
        "--model",
        &m,
        "--pooling",
        "patch",
        "--batch-size",
        "1",
        "--chunk-rows",
        "1",
    ];
    args.extend(["--output", npy.to_str().unwrap()]);
    args.extend(images.iter().map(String::as_str));
    let r = dinov2(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("rows differ in the shape of their patch output ([4, 4, 48] and [4, 6, 48])"),
        "{stderr}"
    );
    assert!(!npy.exists());
}

/// Several model copies (`--streams`) give the same rows, errors and order as one.
/// Model copies on streams, and windows decoded at once (`--decoders`, hidden; 2 by default),
/// change when batches run, never the rows, their order or the failures reported.
#[test]
fn several_streams_and_decoders_give_the_same_output_as_one() {
    let dir = TempDir::new().unwrap();
    let (images, names) = copied_images(dir.path(), 3);
    std::fs::write(images.join("copy1_bad.png"), b"not a png").unwrap();
    let images = images.display().to_string();
    let run = |streams: &str, decoders: &str| {
        let out = dir.path().join(format!("s{streams}d{decoders}.npy"));
        let r = dinov2(&[
            "embed",
            "--model",
            &model(),
            "--batch-size",
            "3",
            "--chunk-rows",
            "4",
            "--streams",
            streams,
            "--decoders",
            decoders,
            "--output",
            out.to_str().unwrap(),
            &images,
        ]);
        // The bad file: exit status 1, everything else embedded.
        assert_eq!(
            r.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        let errors = std::fs::read_to_string(
            dir.path()
                .join(format!("s{streams}d{decoders}.npy.errors.jsonl")),
        )
        .unwrap();
        let paths = std::fs::read_to_string(
            dir.path()
                .join(format!("s{streams}d{decoders}.npy.paths.txt")),
        )
        .unwrap();
        (read_npy(&out), paths, errors)
    };
    let one = run("1", "1");
    assert_eq!(one.0 .0[0], 4 * names.len());
    assert!(one.2.contains("copy1_bad.png"));
    assert_eq!(run("3", "2"), one);
    assert_eq!(run("1", "3"), one);
}

/// `--layers`: hidden states pooled and concatenated in the order given (each through the final
/// LayerNorm unless `--no-layer-norm`); the last layer with the norm is the default output; a
/// layer the model lacks is one error before any work.
#[test]
fn intermediate_layers_are_concatenated() {
    let dir = TempDir::new().unwrap();
    let image = root().join("assets/images/chelsea.jpg");
    let image = image.to_str().unwrap();
    let model_path = model();
    let embed = |name: &str, extra: &[&str]| {
        read_npy(&embed_ok(
            &model_path,
            dir.path().join(name),
            extra,
            &[image],
        ))
    };
    let depth: usize = {
        let text = std::fs::read_to_string(Path::new(&model_path).join("config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["num_hidden_layers"].as_u64().unwrap() as usize
    };
    let last = depth.to_string();
    let default = embed("default.npy", &[]);
    assert_eq!(embed("last.npy", &["--layers", &last]), default);
    let (shape, values) = embed("two.npy", &["--layers", &format!("1,{last}")]);
    let h = default.0[1];
    assert_eq!(shape, vec![1, 2 * h]);
    let (_, first) = embed("first.npy", &["--layers", "1"]);
    assert_eq!(&values[..h], &first[..]);
    assert_eq!(&values[h..], &default.1[..]);
    let (_, raw) = embed("raw.npy", &["--layers", "1", "--no-layer-norm"]);
    assert_ne!(raw, first);
    let (patch_shape, _) = embed("patch.npy", &["--layers", "0,1", "--pooling", "patch"]);
    assert_eq!(patch_shape[3], 2 * h, "{patch_shape:?}");
    let r = dinov2(&[
        "embed",
        "--model",
        &model_path,
        "--layers",
        &(depth + 1).to_string(),
        "--output",
        dir.path().join("bad.npy").to_str().unwrap(),
        image,
    ]);
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("--layers"), "{stderr}");
    assert!(!dir.path().join("bad.npy.partial").exists());
}

/// `--output-dtype f16`: the f32 values rounded to nearest even, in npy (`<f2`), safetensors
/// (`F16`) and Parquet (a list of float16).
#[test]
fn half_precision_outputs_round_the_f32_values() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float16Type;
    use half::f16;
    let dir = TempDir::new().unwrap();
    sample_images(dir.path());
    let images = dir.path().display().to_string();
    let model_str = model();
    let run =
        |name: &str, extra: &[&str]| embed_ok(&model_str, dir.path().join(name), extra, &[&images]);
    let (shape, full) = read_npy(&run("f32.npy", &[]));
    let want: Vec<f16> = full.iter().map(|&v| f16::from_f32(v)).collect();

    let bytes = std::fs::read(run("f16.npy", &["--output-dtype", "f16"])).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f2'"), "{header}");
    assert!(
        header.contains(&format!("'shape': ({}, {})", shape[0], shape[1])),
        "{header}"
    );
    let got: Vec<f16> = bytes[10 + len..]
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(got, want);

    let st = std::fs::read(run("f16.safetensors", &["--output-dtype", "f16"])).unwrap();
    let st = SafeTensors::deserialize(&st).unwrap();
    let t = st.tensor("embeddings").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F16);
    let got: Vec<f16> = t
        .data()
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(got, want);

    let pq = run("f16.parquet", &["--output-dtype", "f16"]);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(&pq).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut got = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let list = batch
            .column_by_name("embedding")
            .unwrap()
            .as_fixed_size_list();
        got.extend(
            list.values()
                .as_primitive::<Float16Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    assert_eq!(got, want);
}

/// `--resize`, `--crop` and `--no-crop` override the checkpoint's preprocessor config: the same
/// output as a checkpoint whose `preprocessor_config.json` says so, patch grids of the new size,
/// and one error for a crop smaller than a patch.
#[test]
fn resolution_overrides_act_as_the_preprocessor_config() {
    let dir = TempDir::new().unwrap();
    sample_images(dir.path());
    let images = dir.path().display().to_string();
    // The tiny checkpoint, its preprocessing set to 300 / 280 px.
    let custom = dir.path().join("custom-model");
    std::fs::create_dir_all(&custom).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(Path::new(&model()).join(f), custom.join(f)).unwrap();
    }
    let pre = custom.join("preprocessor_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pre).unwrap()).unwrap();
    v["size"] = serde_json::json!({"shortest_edge": 300});
    v["crop_size"] = serde_json::json!({"height": 280, "width": 280});
    std::fs::write(&pre, v.to_string()).unwrap();
    let embed = |model: &str, name: &str, extra: &[&str]| {
        let args = [&["--pooling", "patch"], extra].concat();
        embed_ok(model, dir.path().join(name), &args, &[&images])
    };
    let flags = read_npy(&embed(
        &model(),
        "flags.npy",
        &["--resize", "300", "--crop", "280"],
    ));
    let config = read_npy(&embed(custom.to_str().unwrap(), "config.npy", &[]));
    assert_eq!(flags.0, vec![7, 20, 20, 48]);
    assert_eq!(flags, config);

    // No crop: each image keeps its aspect ratio (chelsea.jpg is 451 x 300: 384 x 256 after
    // the resize, an 18 x 27 grid).
    let pq = embed(&model(), "nocrop.parquet", &["--no-crop"]);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(&pq).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut grids = Vec::new();
    for batch in reader {
        use arrow_array::cast::AsArray;
        use arrow_array::types::UInt32Type;
        let batch = batch.unwrap();
        let paths = batch
            .column_by_name("path")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let gh = batch
            .column_by_name("grid_h")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        let gw = batch
            .column_by_name("grid_w")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        let region = batch
            .column_by_name("region")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for i in 0..batch.num_rows() {
            let corners = region.value(i);
            let corners = corners.as_primitive::<arrow_array::types::Float32Type>();
            grids.push((
                paths.value(i).to_string(),
                gh.value(i),
                gw.value(i),
                corners.values().to_vec(),
            ));
        }
    }
    // Images of several sizes run grouped by size, and still come out in input order.
    let order: Vec<&String> = grids.iter().map(|g| &g.0).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    assert!(
        grids.iter().any(|g| (g.1, g.2) != (grids[0].1, grids[0].2)),
        "{grids:?}"
    );
    let chelsea = grids.iter().find(|g| g.0.ends_with("chelsea.jpg")).unwrap();
    assert_eq!((chelsea.1, chelsea.2), (18, 27), "{grids:?}");
    // The grid covers 27 x 14 = 378 of the 384 resized columns and 252 of the 256 rows: in the
    // photo's pixels, up to 378 * 451 / 384 across and 252 * 300 / 256 down.
    let want = [0.0, 0.0, 378.0 * 451.0 / 384.0, 252.0 * 300.0 / 256.0];
    for (got, want) in chelsea.3.iter().zip(want) {
        assert!((got - want).abs() < 1e-3, "{:?}", chelsea.3);
    }

    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--crop",
        "10",
        "--output",
        dir.path().join("bad.npy").to_str().unwrap(),
        &images,
    ]);
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("smaller than one 14x14 patch"), "{stderr}");
    assert!(!dir.path().join("bad.npy.partial").exists());
    // Sizes that cannot work are refused before any work: a crop of 10^10 pixels (it would
    // need 120 GB per image), a resize to 0.
    for (flag, value, code, says) in [
        ("--crop", "100000x100000", 1, "more pixels than the limit"),
        ("--resize", "0", 2, "--resize"),
    ] {
        let r = dinov2(&[
            "embed",
            "--model",
            &model(),
            flag,
            value,
            "--output",
            dir.path().join("bad.npy").to_str().unwrap(),
            &images,
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(!dir.path().join("bad.npy.partial").exists());
    }

    // The preprocess verb takes the same overrides.
    let st = dir.path().join("pixels.safetensors");
    let chelsea = dir.path().join("chelsea.jpg");
    let r = dinov2(&[
        "preprocess",
        "--model",
        &model(),
        "--resize",
        "300",
        "--crop",
        "280x252",
        "--output",
        st.to_str().unwrap(),
        chelsea.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = std::fs::read(&st).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let (_, t) = tensors.tensors().into_iter().next().unwrap();
    assert_eq!(t.shape(), &[3, 280, 252]);
}

#[test]
fn draft_decoding_matches_pillows_draft_and_keeps_the_file_size() {
    let dir = TempDir::new().unwrap();
    let fixtures = root().join("tests/fixtures/preprocess");
    // 301 x 283, drafted to 1/2 for a 64-pixel resize (the fixture case
    // jpeg_draft_sub420_draft_64: Pillow's draft, then transformers' processor).
    let jpeg = fixtures.join("images/jpeg_draft_sub420.jpg");
    let png = root().join("assets/images/camera.png");
    let st = dir.path().join("pixels.safetensors");
    let r = dinov2(&[
        "preprocess",
        "--model",
        &model(),
        "--resize",
        "64",
        "--crop",
        "56",
        "--draft",
        "--output",
        st.to_str().unwrap(),
        jpeg.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let f32s = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let ours = std::fs::read(&st).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let (_, ours) = ours.tensors().into_iter().next().unwrap();
    let pillow =
        std::fs::read(fixtures.join("expected/jpeg_draft_sub420_draft_64.safetensors")).unwrap();
    let pillow = SafeTensors::deserialize(&pillow).unwrap();
    let pillow = pillow.tensor("pixel_values").unwrap();
    assert_eq!(ours.shape(), pillow.shape());
    let worst = f32s(ours.data())
        .iter()
        .zip(f32s(pillow.data()))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "max |diff| {worst} against Pillow's draft");

    // Embedding: the recorded size is the file's; the JPEG's vector changes, the PNG's does not.
    let model = model();
    let embed = |name: &str, extra: &[&str]| {
        let args = [&["--resize", "64", "--crop", "56"], extra].concat();
        let inputs = [jpeg.to_str().unwrap(), png.to_str().unwrap()];
        embed_ok(&model, dir.path().join(name), &args, &inputs)
    };
    let rows = |path: PathBuf| -> Vec<(u32, u32, Vec<f32>)> {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut out = Vec::new();
        for batch in reader {
            use arrow_array::cast::AsArray;
            use arrow_array::types::{Float32Type, UInt32Type};
            let batch = batch.unwrap();
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .unwrap()
                    .as_primitive::<UInt32Type>()
                    .clone()
            };
            let (w, h) = (col("width"), col("height"));
            let emb = batch
                .column_by_name("embedding")
                .unwrap()
                .as_fixed_size_list()
                .clone();
            for i in 0..batch.num_rows() {
                let v = emb.value(i);
                let v = v.as_primitive::<Float32Type>();
                out.push((w.value(i), h.value(i), v.values().to_vec()));
                assert!(!v.is_empty());
            }
        }
        out
    };
    let full = rows(embed("full.parquet", &[]));
    let drafted = rows(embed("draft.parquet", &["--draft"]));
    assert_eq!(full.len(), 2);
    assert_eq!((drafted[0].0, drafted[0].1), (301, 283), "the file's size");
    assert_eq!((full[0].0, full[0].1), (301, 283));
    assert_ne!(drafted[0].2, full[0].2, "the JPEG was decoded at 1/2");
    assert_eq!(drafted[1], full[1], "the PNG is decoded in full either way");
}

#[test]
fn shards_split_the_inputs_without_overlap() {
    let dir = TempDir::new().unwrap();
    let (images, _) = copied_images(dir.path(), 1);
    let images = images.display().to_string();
    let model = model();
    let run = |name: &str, extra: &[&str]| -> (Vec<String>, Vec<usize>, Vec<f32>) {
        let out = embed_ok(&model, dir.path().join(name), extra, &[&images]);
        let (shape, values) = read_npy(&out);
        (
            lines(&PathBuf::from(format!("{}.paths.txt", out.display()))),
            shape,
            values,
        )
    };
    let (all, shape, values) = run("all.npy", &[]);
    let dim = shape[1];
    let mut seen = 0;
    for shard in 0..3 {
        let (paths, _, got) = run(
            &format!("shard{shard}.npy"),
            &["--shard", &format!("{shard}/3")],
        );
        // Shard i holds the i-th third of the sorted list, in one piece (archives and tables
        // are read in order by one job), with the values of the whole run.
        let n = all.len();
        let want: Vec<&String> = all[shard * n / 3..(shard + 1) * n / 3].iter().collect();
        assert_eq!(paths.iter().collect::<Vec<_>>(), want, "shard {shard}");
        for (j, path) in paths.iter().enumerate() {
            let at = all.iter().position(|p| p == path).unwrap();
            assert_eq!(
                &got[j * dim..(j + 1) * dim],
                &values[at * dim..(at + 1) * dim]
            );
        }
        seen += paths.len();
    }
    assert_eq!(seen, all.len());
    for bad in ["3/3", "1/0", "x"] {
        let r = dinov2(&[
            "embed",
            "--model",
            &model,
            "--shard",
            bad,
            "--output",
            dir.path().join("bad.npy").to_str().unwrap(),
            &images,
        ]);
        assert_eq!(r.status.code(), Some(2), "--shard {bad}");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(stderr.contains("expected I/N"), "{stderr}");
    }
}

#[test]
fn gpus_are_checked_before_any_work() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("g.npy");
    let images = root().join("assets/images");
    let run = |gpus: &str| {
        let r = dinov2(&[
            "embed",
            "--model",
            &model(),
            "--gpus",
            gpus,
            "--output",
            out.to_str().unwrap(),
            images.to_str().unwrap(),
        ]);
        (
            r.status.code(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    let (code, stderr) = run("0,1,0");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("GPU 0 is given twice"), "{stderr}");
    // --gpus means CUDA: with --device it is a usage error.
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--device",
        "cpu",
        "--gpus",
        "0",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Without a GPU (CI), a clear error and no output; with one, the job runs on it.
    let (code, stderr) = run("0");
    if code != Some(0) {
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("cuda:0"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists());
    }
}

/// The files `names` in `dir` as tar members: (name, bytes).
fn members_of(dir: &Path, names: &[String]) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|n| (n.clone(), std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

/// A tar archive of `members` (name, bytes), in that order.
fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn tar_shards_are_read_in_place() {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    // A webdataset-style shard: each image with a sidecar, one bad image, a long member name
    // (a GNU long-name entry), then a second shard.
    let long = format!("{}/chelsea.jpg", "deep/".repeat(30));
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let bytes = std::fs::read(images.join(name)).unwrap();
        let ext = name.rsplit('.').next().unwrap();
        members.push((format!("{i:05}.{ext}"), bytes));
        members.push((format!("{i:05}.json"), b"{}".to_vec()));
    }
    members.push(("bad.jpg".into(), b"not a jpeg".to_vec()));
    members.push((
        long.clone(),
        std::fs::read(images.join("chelsea.jpg")).unwrap(),
    ));
    let shards = dir.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    std::fs::write(shards.join("00000.tar"), tar_of(&members)).unwrap();
    let astronaut = std::fs::read(images.join("astronaut.jpg")).unwrap();
    std::fs::write(
        shards.join("00001.tar"),
        tar_of(&[("a.jpg".into(), astronaut)]),
    )
    .unwrap();

    let embed = |out: &Path, input: &Path| {
        dinov2(&[
            "embed",
            "--model",
            &model(),
            "--batch-size",
            "3",
            "--output",
            out.to_str().unwrap(),
            input.to_str().unwrap(),
        ])
    };
    let files = dir.path().join("files.npy");
    let r = embed(&files, &images);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, want) = read_npy(&files);
    // The folder of shards: both archives, in order, members in archive order.
    let out = dir.path().join("tar.npy");
    let r = embed(&out, &shards);
    assert_eq!(r.status.code(), Some(1), "bad.jpg fails");
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    let shard0 = shards.join("00000.tar").display().to_string();
    let mut expect: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{shard0}/{i:05}.{}", n.rsplit('.').next().unwrap()))
        .collect();
    expect.push(format!("{shard0}/{long}"));
    expect.push(format!("{}/a.jpg", shards.join("00001.tar").display()));
    assert_eq!(paths, expect);
    let (shape, got) = read_npy(&out);
    let d = shape[1];
    assert_eq!(
        &got[..names.len() * d],
        &want[..],
        "the same values as the files"
    );
    let chelsea = names.iter().position(|n| n == "chelsea.jpg").unwrap();
    let astronaut = names.iter().position(|n| n == "astronaut.jpg").unwrap();
    assert_eq!(
        &got[names.len() * d..(names.len() + 1) * d],
        &want[chelsea * d..(chelsea + 1) * d]
    );
    assert_eq!(
        &got[(names.len() + 1) * d..],
        &want[astronaut * d..(astronaut + 1) * d]
    );
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let v: serde_json::Value = serde_json::from_str(&errors[0]).unwrap();
    assert_eq!(v["path"], format!("{shard0}/bad.jpg"));
    assert_eq!(v["stage"], "decode");

    // Shards cut short, inside a member and right after one (on a block boundary, where the
    // tar reader sees a clean end): the members before the cut are embedded, the cut one is
    // reported unreadable, and the archive is reported as cut.
    let whole = std::fs::read(shards.join("00000.tar")).unwrap();
    let boundary = 512 + data_blocks(&whole[..512]) * 512; // the end of the first member
    for (name, len) in [("cut.tar", whole.len() / 2), ("cut_boundary.tar", boundary)] {
        let cut = dir.path().join(name);
        std::fs::write(&cut, &whole[..len]).unwrap();
        let out = dir.path().join(format!("{name}.npy"));
        let r = embed(&out, &cut);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
        assert!(
            errors.iter().all(|l| l.contains("\"read\"")),
            "{name}: {errors:?}"
        );
        let whole_archive = format!("\"path\":\"{}\"", cut.display());
        assert!(
            errors
                .iter()
                .any(|l| l.contains(&whole_archive) && l.contains("cut short")),
            "{name}: {errors:?}"
        );
        if name == "cut.tar" {
            assert!(
                errors.iter().any(|l| l.contains("ends inside this member")),
                "{errors:?}"
            );
        }
        let good = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
        assert!(!good.is_empty(), "{name}");
        let cut_name = cut.display().to_string();
        for (got, want) in good.iter().zip(&expect) {
            assert_eq!(
                got.strip_prefix(&cut_name),
                want.strip_prefix(&shard0),
                "{name}: the members before the cut, in order"
            );
        }
    }

    // A compressed archive cut at its start, and an HTML page saved as a shard: each is one
    // failed input; the job goes on with the rest.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("a.tar"), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    std::fs::write(bad.join("b.tar"), "<html>404 Not Found</html>".repeat(40)).unwrap();
    std::fs::copy(images.join("chelsea.jpg"), bad.join("c.jpg")).unwrap();
    let out = dir.path().join("bad.npy");
    let r = embed(&out, &bad);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("a.tar")
            && errors[0].contains("gzip-compressed")
            && errors[0].contains("\"read\""),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("b.tar") && errors[1].contains("\"read\""),
        "{errors:?}"
    );
    assert_eq!(
        lines(&PathBuf::from(format!("{}.paths.txt", out.display()))).len(),
        1
    );
}

/// `pipe:COMMAND`, `-` (standard input) and compressed archives are read front to back as the
/// job runs: the rows of the archive read in place, named `STREAM/MEMBER`. A command that fails
/// is one failed input after the members it gave; a stream without images is an error; brace
/// patterns name several streams, which `--shard` shares out whole.
#[cfg(unix)]
#[test]
fn tar_streams_are_read_as_they_come() {
    use std::io::Write;
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    let mut members = members_of(&images, &names);
    members.insert(1, ("0.json".into(), b"{}".to_vec()));
    let tar = tar_of(&members);
    let shard = dir.path().join("shard.tar");
    std::fs::write(&shard, &tar).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz_path = dir.path().join("shard.tar.gz");
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let zst_path = dir.path().join("shard.tar.zst");
    std::fs::write(&zst_path, zstd::stream::encode_all(&tar[..], 3).unwrap()).unwrap();

    let embed = |out: &Path, extra: &[&str], inputs: &[&str], stdin: Option<&Path>| {
        Command::new(env!("CARGO_BIN_EXE_dinov2"))
            .args(["embed", "--model", &model(), "--batch-size", "3"])
            .args(extra)
            .arg("--output")
            .arg(out)
            .args(inputs)
            .stdin(stdin.map_or(Stdio::null(), |p| Stdio::from(File::open(p).unwrap())))
            .output()
            .unwrap()
    };
    let in_place = dir.path().join("in_place.npy");
    let r = embed(&in_place, &[], &[shard.to_str().unwrap()], None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, want) = read_npy(&in_place);

    let pipe = format!("pipe:cat '{}'", shard.display());
    let (gz_name, zst_name) = (
        gz_path.display().to_string(),
        zst_path.display().to_string(),
    );
    for (i, (input, stdin)) in [
        (pipe.as_str(), None),
        ("-", Some(shard.as_path())),
        (gz_name.as_str(), None),
        (zst_name.as_str(), None),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("stream{i}.npy"));
        let r = embed(&out, &[], &[input], stdin);
        assert!(
            r.status.success(),
            "{input}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(read_npy(&out).1, want, "{input}: the rows read in place");
        let expect: Vec<String> = names.iter().map(|n| format!("{input}/{n}")).collect();
        assert_eq!(
            lines(&PathBuf::from(format!("{}.paths.txt", out.display()))),
            expect
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}.done.json", out.display())).unwrap())
                .unwrap();
        assert_eq!(manifest["inputs"], names.len(), "{input}: counted as read");
        // A finished stream job resumes at once, judged by its manifest.
        let r = embed(&out, &["--resume"], &[input], stdin);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            r.status.success() && stderr.contains("nothing to resume"),
            "{stderr}"
        );
    }

    // A command that fails after some members: they are kept, its failure follows them; a
    // command that cannot run is one failed input, and the job goes on with the next.
    let failing = format!("pipe:cat '{}'; exit 3", shard.display());
    let out = dir.path().join("failing.npy");
    let r = embed(
        &out,
        &[],
        &[&failing, "pipe:no-such-command-here", &pipe],
        None,
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_eq!(read_npy(&out).1, [want.clone(), want.clone()].concat());
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let n = names.len();
    for (error, what) in errors.iter().zip([
        format!("failed (exit status: 3) after {n} images"),
        "failed (exit status: 127) after 0 images".into(),
    ]) {
        assert!(error.contains(&what), "{error}");
    }
    assert!(
        stderr.contains(&format!("2 of {} inputs", 2 * n + 2)),
        "{stderr}"
    );
    // The command's own message, named by its stream, and in its failure's report.
    let said = stderr
        .lines()
        .find(|l| l.starts_with("pipe:no-such-command-here: "));
    assert!(said.is_some_and(|l| l.contains("not found")), "{stderr}");
    assert!(errors[1].contains("after 0 images: ") && errors[1].contains("not found"));

    // No image in the stream: an error, and nothing written.
    let empty = dir.path().join("empty.tar");
    std::fs::write(&empty, tar_of(&[("a.json".into(), b"{}".to_vec())])).unwrap();
    let out = dir.path().join("empty.npy");
    let r = embed(
        &out,
        &[],
        &[&format!("pipe:cat '{}'", empty.display())],
        None,
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no images found in pipe:cat"), "{stderr}");
    assert!(!out.exists() && !dir.path().join("empty.npy.partial").exists());

    // A brace pattern names several streams, which --shard shares out, a stream to a unit.
    let other = dir.path().join("other.tar");
    let astronaut = std::fs::read(images.join("astronaut.jpg")).unwrap();
    std::fs::write(&other, tar_of(&[("a.jpg".into(), astronaut)])).unwrap();
    let pattern = format!("pipe:cat '{}/{{shard,other}}.tar'", dir.path().display());
    for (k, expect) in [(0, names.len()), (1, 1)] {
        let out = dir.path().join(format!("part{k}.npy"));
        let r = embed(&out, &["--shard", &format!("{k}/2")], &[&pattern], None);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
        assert_eq!(paths.len(), expect, "{paths:?}");
        let tar = if k == 0 { &shard } else { &other };
        assert!(paths[0].starts_with(&format!("pipe:cat '{}'/", tar.display())));
    }

    // Standard input twice: refused before the model loads.
    let out = dir.path().join("refused.npy");
    let r = embed(&out, &[], &["-", "-"], None);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("more than once"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// A tmpfs of `size` mounted on a new folder, unmounted when dropped; `None` where this process
/// may not mount (not root, no CAP_SYS_ADMIN).
struct SmallDisk {
    at: PathBuf,
    /// Holds the mount point's parent until after the unmount.
    _parent: TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = TempDir::new().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { at, _parent: dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.at)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[test]
fn a_full_disk_is_one_clear_error_and_the_job_resumes() {
    let dir = TempDir::new().unwrap();
    let (images, _) = copied_images(dir.path(), 1);
    let embed = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "embed".to_string(),
            "--model".into(),
            model(),
            "--pooling".into(),
            "patch".into(),
            "--chunk-rows".into(),
            "2".into(),
            "--batch-size".into(),
            "2".into(),
            "--output".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(images.display().to_string());
        Command::new(env!("CARGO_BIN_EXE_dinov2"))
            .args(&args)
            .output()
            .unwrap()
    };
    let clean = dir.path().join("clean.npy");
    let r = embed(&clean, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // 14 patch grids of 256 x 48 floats, 49 KiB each: 160 KiB fills up while committing
    // chunks; 1 MiB holds the chunks (686 KiB) but not the final file beside them.
    for size in ["160k", "1m"] {
        let Some(disk) = SmallDisk::mount(size) else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        };
        let out = disk.at.join("grids.npy");
        let r = embed(&out, &[]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{size}: {stderr}");
        assert!(
            stderr.contains("No space left on device"),
            "{size}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{size}: {stderr}");
        let files = walk_files(&disk.at);
        // No half-written file is left taking the space; the committed chunks stay.
        assert!(
            !files.iter().any(|p| p.ends_with(".tmp")),
            "{size}: {files:?}"
        );
        assert!(
            files.iter().any(|p| p.contains("chunk-")),
            "{size}: {files:?}"
        );
        assert!(!out.exists(), "{size}");
        // With room again, the job resumes into the rows of a clean run.
        disk.resize("8m");
        let r = embed(&out, &["--resume"]);
        assert!(
            r.status.success(),
            "{size}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(read_npy(&out), read_npy(&clean), "{size}");
        assert_eq!(
            std::fs::read(format!("{}.paths.txt", out.display())).unwrap(),
            std::fs::read(format!("{}.paths.txt", clean.display())).unwrap(),
            "{size}"
        );
    }
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn progress_is_logged_in_lines_when_stderr_is_not_a_terminal() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("p.npy");
    let images = root().join("assets/images");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--batch-size",
        "2",
        "--progress-every",
        "0",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress:"))
        .collect();
    // Seven images in batches of two: after 2, 4 and 6 (the summary reports the end).
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("progress: 2/7 images (28.6%), "),
        "{stderr}"
    );
    assert!(lines[2].contains(" left"), "{stderr}");
    for bad in ["inf", "1e20", "x"] {
        let r = dinov2(&[
            "embed",
            "--model",
            &model(),
            "--progress-every",
            bad,
            "--output",
            out.to_str().unwrap(),
            images.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("number of seconds"), "{bad}: {stderr}");
    }
}

/// `--progress jsonl`: every line on stderr, but the exit's own error, is a JSON object with an
/// `event`: the start, progress after each batch (with --progress-every 0), each skipped input,
/// and the end with the manifest's counts.
#[test]
fn progress_in_json_lines_for_a_program_watching_the_job() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("p.npy");
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, "not a jpeg").unwrap();
    let images = root().join("assets/images");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--batch-size",
        "2",
        "--progress",
        "jsonl",
        "--progress-every",
        "0",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    let (last, events) = stderr
        .trim_end()
        .lines()
        .collect::<Vec<_>>()
        .split_last()
        .map(|(last, events)| (last.to_string(), events.to_vec()))
        .unwrap();
    assert!(last.starts_with("error: 1 of 8 inputs"), "{stderr}");
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // Eight inputs in batches of two: progress after 2, 4 and 6 (the end reports the rest).
    assert_eq!(
        kinds,
        ["start", "progress", "progress", "progress", "skipped", "done"],
        "{stderr}"
    );
    assert_eq!(events[0]["total"], 8);
    assert_eq!(events[1]["done"], 2);
    assert!(events[3]["eta_s"].as_f64().unwrap() >= 0.0, "{stderr}");
    assert_eq!(events[4]["path"], bad.to_str().unwrap());
    assert_eq!(events[4]["stage"], "decode");
    let done = &events[5];
    assert_eq!((&done["embedded"], &done["failed"]), (&7.into(), &1.into()));
    assert!(done["images_per_s"].as_f64().unwrap() > 0.0, "{stderr}");
}

/// `--output -`: an Arrow IPC stream on standard output, a record batch per commit as the job
/// runs, with the rows, columns and values of the files; its temporary state is removed; it
/// cannot be resumed.
#[test]
fn arrow_stream_on_standard_output() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    let dir = TempDir::new().unwrap();
    let images = root().join("assets/images");
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, "not a jpeg").unwrap();
    let args = |out: &str| -> Vec<String> {
        let mut a: Vec<String> = ["embed", "--model", &model(), "--batch-size", "2"]
            .map(String::from)
            .into();
        a.extend(["--chunk-rows", "2", "--output", out].map(String::from));
        a.extend([images.display().to_string(), bad.display().to_string()]);
        a
    };
    let npy = dir.path().join("want.npy");
    let r = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(args(npy.to_str().unwrap()))
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1), "bad.jpg fails");
    let (shape, want) = read_npy(&npy);
    let want_paths = lines(&PathBuf::from(format!("{}.paths.txt", npy.display())));

    let child = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(args("-"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let r = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("see the skipped lines above"), "{stderr}");
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.stdout), None).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    assert!(batches.len() > 1, "a batch per commit: {}", batches.len());
    let (mut paths, mut values): (Vec<String>, Vec<f32>) = (Vec::new(), Vec::new());
    for batch in &batches {
        let names: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["path", "width", "height", "embedding"]);
        let path = batch.column(0).as_string::<i32>();
        paths.extend(path.iter().map(|p| p.unwrap().to_owned()));
        let embedding = batch.column(3).as_fixed_size_list();
        assert_eq!(embedding.value_length() as usize, shape[1]);
        values.extend(
            embedding
                .values()
                .as_primitive::<Float32Type>()
                .values()
                .iter(),
        );
    }
    assert_eq!(paths, want_paths);
    assert_eq!(values, want);
    let temp_left = |pid: u32| {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .any(|name| name.starts_with(&format!("dinov2-embed-{pid}-")))
    };
    assert!(!temp_left(pid), "the job's temporary folder is removed");
    // Also when the job fails.
    let mut fail = args("-");
    fail.extend(["--on-error".into(), "fail".into()]);
    let child = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(fail)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let r = child.wait_with_output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        !temp_left(pid),
        "the failed job's temporary folder is removed"
    );

    let mut resume = args("-");
    resume.push("--resume".into());
    let r = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(resume)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("cannot be resumed"),
        "{stderr}"
    );
}

#[test]
fn oversized_inputs_are_refused_before_they_are_read() {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(
        root().join("assets/images/chelsea.jpg"),
        images.join("a.jpg"),
    )
    .unwrap();
    // A 3 GiB file (sparse: it takes no space) named like an image.
    File::create(images.join("huge.png"))
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    // A shard whose second member's header claims 8 GiB.
    let jpeg = std::fs::read(images.join("a.jpg")).unwrap();
    let mut tar = tar_of(&[("x.jpg".into(), jpeg.clone()), ("y.jpg".into(), jpeg)]);
    let second = 512 + data_blocks(&tar[..512]) * 512;
    let header = &mut tar[second..second + 512];
    header[124..136].copy_from_slice(b"77777777777\0");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    std::fs::write(images.join("shard.tar"), &tar).unwrap();

    let out = dir.path().join("o.npy");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    let errors: Vec<serde_json::Value> = errors
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The two oversized inputs, and the archive, whose claimed member runs past its end.
    assert_eq!(errors.len(), 3, "{errors:?}");
    for e in &errors[..2] {
        assert_eq!(e["stage"], "read", "{e}");
        assert!(
            e["error"].as_str().unwrap().contains("more than the limit"),
            "{e}"
        );
    }
    assert!(
        errors[2]["error"].as_str().unwrap().contains("cut short"),
        "{errors:?}"
    );
    assert!(errors
        .iter()
        .any(|e| e["path"].as_str().unwrap().ends_with("huge.png")));
    assert!(errors
        .iter()
        .any(|e| e["path"].as_str().unwrap().ends_with("shard.tar/y.jpg")));
    // The good file and the good member are embedded.
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    assert_eq!(paths.len(), 2, "{paths:?}");
}

/// Data blocks of the member whose 512-byte header is `header`.
fn data_blocks(header: &[u8]) -> usize {
    let size = std::str::from_utf8(&header[124..135]).unwrap();
    (usize::from_str_radix(size.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()).div_ceil(512)
}

#[test]
fn register_pooling_needs_a_model_with_registers() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("r.npy");
    let images = root().join("assets/images");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--pooling",
        "registers",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has no register tokens"), "{stderr}");
    assert!(!PathBuf::from(format!("{}.partial", out.display())).exists());
    // A model with 4 registers of 32 values: 4 x 32 per image, each register unit length.
    let with_registers = root().join("tests/fixtures/golden/registers_mlp");
    let r = dinov2(&[
        "embed",
        "--model",
        with_registers.to_str().unwrap(),
        "--pooling",
        "registers",
        "--normalize",
        "--output",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (shape, values) = read_npy(&out);
    assert_eq!(shape, vec![7, 4, 32]);
    for v in values.chunks(32) {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
}

#[test]
fn a_folder_output_is_clip_retrievals_layout() {
    let dir = TempDir::new().unwrap();
    let images = root().join("assets/images");
    let images = images.to_str().unwrap();
    let npy = embed_ok(&model(), dir.path().join("flat.npy"), &[], &[images]);
    let folder = dir.path().join("emb");
    let as_folder = format!("{}/", folder.display());
    let r = dinov2(&["embed", "--model", &model(), "--output", &as_folder, images]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The embeddings, as the .npy output has them; the metadata, row for row.
    assert_eq!(
        read_npy(&folder.join("img_emb/img_emb_0.npy")),
        read_npy(&npy)
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(folder.join("metadata/metadata_0.parquet")).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut paths = Vec::new();
    for batch in reader {
        use arrow_array::cast::AsArray;
        let batch = batch.unwrap();
        let column = batch
            .column_by_name("image_path")
            .unwrap()
            .as_string::<i32>();
        paths.extend(column.iter().map(|p| p.unwrap().to_string()));
        assert!(batch.column_by_name("width").is_some());
    }
    assert_eq!(
        paths,
        lines(&PathBuf::from(format!("{}.paths.txt", npy.display())))
    );
    let mut entries: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["img_emb", "metadata"]);
    // --overwrite replaces an earlier output folder, and refuses any other folder, before any
    // work, leaving it as it was.
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--overwrite",
        "--output",
        &as_folder,
        images,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--overwrite",
        "--output",
        &format!("{}/", mine.display()),
        images,
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to replace"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(!PathBuf::from(format!("{}.partial", mine.display())).exists());
    // The same for a folder that only looks like one, and for a file of that name; patch
    // grids do not fit the layout.
    let lookalike = dir.path().join("lookalike");
    std::fs::create_dir_all(lookalike.join("metadata")).unwrap();
    std::fs::write(lookalike.join("metadata/labels.csv"), "keep me").unwrap();
    std::fs::write(dir.path().join("file"), "keep me").unwrap();
    for (output, extra, says) in [
        (
            format!("{}/", lookalike.display()),
            "--overwrite",
            "metadata/labels.csv",
        ),
        (
            format!("{}/", dir.path().join("file").display()),
            "--overwrite",
            "a file is there",
        ),
        (as_folder.clone(), "--pooling=patch", "one vector per image"),
        (
            as_folder.clone(),
            "--output-dtype=binary",
            "read float vectors",
        ),
        (as_folder.clone(), "--output-dtype=int8", "int8 vectors"),
    ] {
        let r = dinov2(&[
            "embed",
            "--model",
            &model(),
            extra,
            "--output",
            &output,
            images,
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{output}: {stderr}");
        assert!(stderr.contains(says), "{output}: {stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(lookalike.join("metadata/labels.csv")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("file")).unwrap(),
        "keep me"
    );
}

/// The header and the data bytes of an `.npy` file.
fn npy_bytes(path: &Path) -> (String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len])
        .unwrap()
        .to_string();
    (header, bytes[10 + len..].to_vec())
}

/// numpy.packbits of `v > 0`, each `unit` values padded to whole bytes.
fn packbits(values: &[f32], unit: usize) -> Vec<u8> {
    values
        .chunks(unit)
        .flat_map(|vector| {
            vector
                .chunks(8)
                .map(|bits| {
                    bits.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &v)| b | (((v > 0.0) as u8) << (7 - i)))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The values of a Parquet output's `embedding` column, fixed-size lists of `width` values of `T`.
fn embedding_column<T: arrow_array::ArrowPrimitiveType>(path: &Path, width: i32) -> Vec<T::Native> {
    use arrow_array::cast::AsArray;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut got = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let list = batch
            .column_by_name("embedding")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        assert_eq!(list.value_length(), width);
        got.extend_from_slice(list.values().as_primitive::<T>().values());
    }
    got
}

#[test]
fn binary_outputs_pack_the_sign_bits() {
    let dir = TempDir::new().unwrap();
    let images = root().join("assets/images");
    let images = images.to_str().unwrap();
    let run =
        |name: &str, extra: &[&str]| embed_ok(&model(), dir.path().join(name), extra, &[images]);
    // CLS vectors of 48 values: 6 bytes each.
    let (shape, full) = read_npy(&run("f32.npy", &[]));
    let (header, bits) = npy_bytes(&run("bin.npy", &["--output-dtype", "binary"]));
    assert!(header.contains("'descr': '|u1'"), "{header}");
    assert!(
        header.contains(&format!("'shape': ({}, 6)", shape[0])),
        "{header}"
    );
    assert_eq!(bits, packbits(&full, 48));
    // Patch grids: each patch token's 48 values packed on their own.
    let (pshape, patches) = read_npy(&run("p32.npy", &["--pooling", "patch"]));
    let st = std::fs::read(run(
        "pbin.safetensors",
        &["--pooling", "patch", "--output-dtype", "binary"],
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&st).unwrap();
    let t = st.tensor("embeddings").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    assert_eq!(t.shape(), &[pshape[0], pshape[1], pshape[2], 6]);
    assert_eq!(t.data(), &packbits(&patches, 48)[..]);
    // Parquet: a fixed-size list of uint8.
    let pq = run("bin.parquet", &["--output-dtype", "binary"]);
    let got = embedding_column::<arrow_array::types::UInt8Type>(&pq, 6);
    assert_eq!(got, packbits(&full, 48));
}

/// `--output-dtype int8` as the writer documents it: each `unit` values scaled so that the largest
/// magnitude is 127, rounded.
fn int8(values: &[f32], unit: usize) -> Vec<i8> {
    values
        .chunks(unit)
        .flat_map(|v| {
            let m = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            v.iter()
                .map(move |x| (x * 127.0 / m).round() as i8)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot =
        |x: &[f32], y: &[f32]| -> f64 { x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum() };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

#[test]
fn int8_outputs_keep_the_cosine() {
    let dir = TempDir::new().unwrap();
    let images = root().join("assets/images");
    let images = images.to_str().unwrap();
    let run =
        |name: &str, extra: &[&str]| embed_ok(&model(), dir.path().join(name), extra, &[images]);
    let (shape, full) = read_npy(&run("f32.npy", &[]));
    let int8_npy = run("i8.npy", &["--output-dtype", "int8"]);
    let (header, bytes) = npy_bytes(&int8_npy);
    assert!(header.contains("'descr': '|i1'"), "{header}");
    assert!(
        header.contains(&format!("'shape': ({}, 48)", shape[0])),
        "{header}"
    );
    let q: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
    assert_eq!(q, int8(&full, 48));
    // Every pair's cosine kept to 2e-3 (each value is off by at most half a 1/127 step of its
    // vector's largest magnitude; 1.3e-3 at worst over these 48-value vectors).
    let qf: Vec<f32> = q.iter().map(|&v| f32::from(v)).collect();
    let mut worst = 0f64;
    for i in 0..shape[0] {
        for j in 0..shape[0] {
            let (a, b) = (&full[i * 48..][..48], &full[j * 48..][..48]);
            let (qa, qb) = (&qf[i * 48..][..48], &qf[j * 48..][..48]);
            worst = worst.max((cosine(a, b) - cosine(qa, qb)).abs());
        }
    }
    assert!(worst < 2e-3, "{worst}");
    // Patch grids: each patch token scaled on its own.
    let (pshape, patches) = read_npy(&run("p32.npy", &["--pooling", "patch"]));
    let st = std::fs::read(run(
        "pi8.safetensors",
        &["--pooling", "patch", "--output-dtype", "int8"],
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&st).unwrap();
    let t = st.tensor("embeddings").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I8);
    assert_eq!(t.shape(), &pshape[..]);
    let want: Vec<u8> = int8(&patches, 48).iter().map(|&v| v as u8).collect();
    assert_eq!(t.data(), &want[..]);
    // Parquet: a fixed-size list of int8.
    let pq = run("i8.parquet", &["--output-dtype", "int8"]);
    let got = embedding_column::<arrow_array::types::Int8Type>(&pq, 48);
    assert_eq!(got, q);
    // knn reads int8 outputs: the same two neighbours as from the float vectors (their order
    // may swap where two are nearly tied: the same photo as JPEG and PNG).
    let f32_npy = dir.path().join("f32.npy");
    let neighbours = |input: &Path, out: &str| {
        let out = dir.path().join(out);
        let r = dinov2(&[
            "knn",
            input.to_str().unwrap(),
            "--k",
            "2",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        parquet_rows(&out)
            .into_iter()
            .map(|r| (r["query"].to_string(), r["neighbor"].to_string()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        neighbours(&int8_npy, "k8.parquet"),
        neighbours(&f32_npy, "k32.parquet")
    );
    assert_eq!(
        neighbours(&pq, "k8p.parquet"),
        neighbours(&f32_npy, "k32b.parquet")
    );
}

/// Writes `columns` as a Parquet table at `path`, `rows_per_group` rows to a row group, zstd
/// compressed.
fn write_table(path: &Path, columns: Vec<(&str, arrow_array::ArrayRef)>, rows_per_group: usize) {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    let batch = arrow_array::RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_tables_of_images_are_read_row_by_row() {
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields};
    use std::sync::Arc;

    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    let bytes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(images.join(n)).unwrap())
        .collect();
    let model = model();
    let embed = |out: &Path, args: &[&str], input: &Path| {
        let mut all = vec!["embed", "--model", &model, "--batch-size", "3"];
        all.extend_from_slice(args);
        all.extend(["--output", out.to_str().unwrap(), input.to_str().unwrap()]);
        dinov2(&all)
    };
    let files = dir.path().join("files.npy");
    let r = embed(&files, &[], &images);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, want) = read_npy(&files);

    // Hugging Face datasets' layout: an Image struct of bytes and path, in row groups of two
    // rows, with a null image and a row of garbage after the photos.
    let mut cells: Vec<Option<&[u8]>> = bytes.iter().map(|b| Some(&b[..])).collect();
    cells.push(None);
    cells.push(Some(b"not an image"));
    let rows = cells.len();
    let struct_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let nulls: Vec<bool> = cells.iter().map(Option::is_some).collect();
    let image = StructArray::new(
        struct_fields,
        vec![
            Arc::new(BinaryArray::from(cells.clone())) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("x.jpg"); rows])),
        ],
        Some(nulls.into()),
    );
    let labels: ArrayRef = Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>()));
    let hf = dir.path().join("train-00000-of-00001.parquet");
    write_table(
        &hf,
        vec![("label", labels.clone()), ("image", Arc::new(image))],
        2,
    );
    let out = dir.path().join("hf.npy");
    let r = embed(&out, &[], &hf);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "two bad rows: {stderr}");
    let (shape, got) = read_npy(&out);
    assert_eq!(shape[0], names.len());
    assert_eq!(got, want, "the same values as the files");
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    let expect: Vec<String> = (0..names.len())
        .map(|i| format!("{}#{i}", hf.display()))
        .collect();
    assert_eq!(paths, expect);
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let null: serde_json::Value = serde_json::from_str(&errors[0]).unwrap();
    assert_eq!(null["path"], format!("{}#{}", hf.display(), names.len()));
    assert_eq!(null["stage"], "read");
    assert!(null["error"].as_str().unwrap().contains("null"), "{null}");
    let garbage: serde_json::Value = serde_json::from_str(&errors[1]).unwrap();
    assert_eq!(garbage["stage"], "decode");

    // img2dataset's layout: binary columns, the image named jpg; --image-column picks a column
    // and must name one of images.
    let jpg: ArrayRef = Arc::new(BinaryArray::from(
        bytes.iter().map(|b| Some(&b[..])).collect::<Vec<_>>(),
    ));
    let txt: ArrayRef = Arc::new(BinaryArray::from(vec![
        Some(&b"a caption"[..]);
        names.len()
    ]));
    let keys: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..names.len()).map(|i| format!("{i:09}")),
    ));
    let i2d = dir.path().join("00000.parquet");
    write_table(
        &i2d,
        vec![("key", keys), ("txt", txt.clone()), ("jpg", jpg.clone())],
        64,
    );
    let out = dir.path().join("i2d.npy");
    let r = embed(&out, &[], &i2d);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(read_npy(&out).1, want);
    // Rows named by a column of strings, or of integers; null ids fall back to TABLE#ROW.
    let out = dir.path().join("keyed.npy");
    let r = embed(&out, &["--id-column", "key"], &i2d);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    assert_eq!(paths[0], "000000000");
    assert_eq!(paths.len(), names.len());
    let out = dir.path().join("labelled.npy");
    let r = embed(&out, &["--id-column", "label"], &hf);
    assert_eq!(r.status.code(), Some(1), "two bad rows");
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    assert_eq!(paths[..3], ["0", "1", "2"]);
    let out = dir.path().join("unkeyed.npy");
    let r = embed(&out, &["--id-column", "nope"], &i2d);
    assert_eq!(r.status.code(), Some(1));
    let errors = std::fs::read_to_string(format!("{}.errors.jsonl", out.display())).unwrap();
    assert!(errors.contains("--id-column"), "{errors}");
    let ambiguous = dir.path().join("two.parquet");
    write_table(&ambiguous, vec![("a", txt.clone()), ("b", jpg.clone())], 64);
    let out = dir.path().join("two.npy");
    let r = embed(&out, &[], &ambiguous);
    assert_eq!(r.status.code(), Some(1));
    let errors = std::fs::read_to_string(format!("{}.errors.jsonl", out.display())).unwrap();
    assert!(errors.contains("--image-column"), "{errors}");
    let out = dir.path().join("picked.npy");
    let r = embed(&out, &["--image-column", "b"], &ambiguous);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(read_npy(&out).1, want);
    for (column, says) in [
        ("c", "no column \\\"c\\\""),
        ("label", "not encoded images"),
    ] {
        let out = dir.path().join(format!("wrong_{column}.npy"));
        let r = embed(&out, &["--image-column", column], &hf);
        assert_eq!(r.status.code(), Some(1));
        let errors = std::fs::read_to_string(format!("{}.errors.jsonl", out.display())).unwrap();
        assert!(errors.contains(says), "{column}: {errors}");
    }

    // A table without images and a file that is not Parquet are each one failed input; the
    // other inputs are embedded.
    let no_images = dir.path().join("labels.parquet");
    write_table(&no_images, vec![("label", labels)], 64);
    let not_parquet = dir.path().join("page.parquet");
    std::fs::write(&not_parquet, b"<html>not found</html>").unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n{}\n{}\n",
            no_images.display(),
            not_parquet.display(),
            i2d.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("mixed.npy");
    let out_arg = out.to_str().unwrap();
    let list_arg = format!("@{}", list.display());
    let r = dinov2(&["embed", "--model", &model, "--output", out_arg, &list_arg]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(read_npy(&out).1, want);
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("labels.parquet") && errors[0].contains("no column of images"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("page.parquet") && errors[1].contains("not a readable Parquet"),
        "{errors:?}"
    );
}

/// Reads the f32 tensors of a safetensors file: name to (shape, values).
fn read_safetensors(path: &Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn several_poolings_come_from_one_pass() {
    let dir = TempDir::new().unwrap();
    let images = root().join("assets/images");
    let images = images.to_str().unwrap();
    let model = root().join("tests/fixtures/golden/registers_mlp");
    let model = model.to_str().unwrap();
    let poolings = ["cls", "mean", "cls+mean", "patch", "registers", "tokens"];
    // Each pooling on its own, then all at once: the same values, each in its own tensor, also
    // when every row goes through the job's chunk files on its own.
    let mut single = Vec::new();
    for p in poolings {
        let out = dir.path().join(format!("{p}.npy"));
        embed_ok(
            model,
            out.clone(),
            &["--pooling", p, "--normalize"],
            &[images],
        );
        single.push(read_npy(&out));
    }
    let all = poolings.join(",");
    let out = dir.path().join("all.safetensors");
    embed_ok(
        model,
        out.clone(),
        &["--pooling", &all, "--normalize", "--chunk-rows", "1"],
        &[images],
    );
    let tensors = read_safetensors(&out);
    assert_eq!(tensors.len(), poolings.len());
    for (p, want) in poolings.iter().zip(&single) {
        let got = &tensors[&p.replace('+', "_")];
        assert_eq!(got, want, "{p}");
    }
    let grid = &tensors["patch"].0;
    assert_eq!(tensors["tokens"].0, [7, 1 + 4 + grid[1] * grid[2], 32]);
    assert_eq!(
        lines(&PathBuf::from(format!("{}.paths.txt", out.display()))).len(),
        7
    );

    // Parquet: a column per pooling, in the order asked, and the grid; binary packs each
    // output's vectors (each token's) on their own.
    let out = dir.path().join("all.parquet");
    embed_ok(
        model,
        out.clone(),
        &["--pooling", "patch,cls", "--output-dtype", "binary"],
        &[images],
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(&out).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["path", "width", "height", "patch", "cls", "grid_h", "grid_w", "region"]
    );
    let batch = reader.build().unwrap().next().unwrap().unwrap();
    use arrow_array::cast::AsArray;
    let cls = batch.column_by_name("cls").unwrap().as_fixed_size_list();
    assert_eq!(cls.value_length(), 4, "32 bits in 4 bytes");
    let patch = batch.column_by_name("patch").unwrap().as_list::<i32>();
    assert_eq!(patch.value(0).len(), grid[1] * grid[2] * 4);

    // With intermediate layers (the tiny model: 2 layers), each output as its own run gives it.
    let tiny = self::model();
    let layers = ["--layers", "2,0", "--no-layer-norm", "--normalize"];
    let mut single = Vec::new();
    for p in ["mean", "cls+mean", "patch"] {
        let out = dir.path().join(format!("layers_{p}.npy"));
        let mut args = vec!["--pooling", p];
        args.extend(layers);
        embed_ok(&tiny, out.clone(), &args, &[images]);
        single.push(read_npy(&out));
    }
    let out = dir.path().join("layers_all.safetensors");
    let mut args = vec!["--pooling", "mean,cls+mean,patch"];
    args.extend(layers);
    embed_ok(&tiny, out.clone(), &args, &[images]);
    let tensors = read_safetensors(&out);
    for (name, want) in ["mean", "cls_mean", "patch"].iter().zip(&single) {
        assert_eq!(&tensors[*name], want, "layers {name}");
    }

    // Refused before any work: a format of one array, a pooling twice, tokens in a folder.
    for (pooling, output, says) in [
        ("cls,patch", "x.npy", "several outputs"),
        ("cls,mean,cls", "x.parquet", "asked twice"),
        ("tokens", "folder/", "clip-retrieval"),
    ] {
        let out = dir.path().join(output);
        let out = out.to_str().unwrap();
        let out = if output.ends_with('/') {
            format!("{out}/")
        } else {
            out.to_string()
        };
        let r = dinov2(&[
            "embed",
            "--model",
            model,
            "--pooling",
            pooling,
            "--output",
            &out,
            images,
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{pooling}: {stderr}");
        assert!(stderr.contains(says), "{pooling}: {stderr}");
        assert!(!dir.path().join(output).exists());
    }
}

/// The rows of a Parquet file as JSON values, via arrow's reader (strings, numbers, booleans).
fn parquet_rows(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::DataType;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for i in 0..batch.num_rows() {
            let mut row = serde_json::Map::new();
            for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
                let v = if col.is_null(i) {
                    serde_json::Value::Null
                } else {
                    match col.data_type() {
                        DataType::Utf8 => col.as_string::<i32>().value(i).into(),
                        DataType::UInt32 => col
                            .as_primitive::<arrow_array::types::UInt32Type>()
                            .value(i)
                            .into(),
                        DataType::Float32 => (col
                            .as_primitive::<arrow_array::types::Float32Type>()
                            .value(i) as f64)
                            .into(),
                        DataType::Boolean => col.as_boolean().value(i).into(),
                        other => panic!("unexpected {other}"),
                    }
                };
                row.insert(field.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

#[test]
fn knn_and_dedup_find_the_copies() {
    let dir = TempDir::new().unwrap();
    // The samples and a copy of two of them (byte for byte: similarity 1).
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    for n in ["coffee.jpg", "rocket.jpg"] {
        std::fs::copy(images.join(n), images.join(format!("z_{n}"))).unwrap();
    }
    let images = images.to_str().unwrap();
    let model = model();
    let parquet = embed_ok(
        &model,
        dir.path().join("e.parquet"),
        &["--output-dtype", "f16"],
        &[images],
    );
    let npy = embed_ok(&model, dir.path().join("e.npy"), &[], &[images]);
    let run = |args: &[&str]| {
        let r = dinov2(args);
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        (r.status.code(), stderr)
    };
    for (input, tag) in [(&parquet, "parquet"), (&npy, "npy")] {
        let out = dir.path().join(format!("dedup_{tag}.parquet"));
        let (code, stderr) = run(&[
            "dedup",
            input.to_str().unwrap(),
            "--threshold",
            "0.99999",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        let rows = parquet_rows(&out);
        assert_eq!(rows.len(), names.len() + 2);
        let by_name = |n: &str| {
            rows.iter()
                .find(|r| r["path"].as_str().unwrap().ends_with(&format!("/{n}")))
                .unwrap()
                .clone()
        };
        for n in ["coffee.jpg", "rocket.jpg"] {
            let (original, copy) = (by_name(n), by_name(&format!("z_{n}")));
            assert_eq!(original["keep"], true, "{tag}");
            assert_eq!(copy["keep"], false, "{tag}");
            assert_eq!(copy["group"], original["group"]);
            assert_eq!(copy["group_size"], 2);
            assert_eq!(copy["duplicate_of"], original["path"]);
            assert_eq!(copy["nearest"], original["path"]);
            assert!(copy["nearest_score"].as_f64().unwrap() > 0.9999);
        }
        // The same photo as JPEG and PNG may be as close (a random model tells little apart);
        // whatever goes has its kept duplicate.
        for r in rows.iter().filter(|r| r["keep"] == false) {
            assert!(r["group_size"].as_u64().unwrap() >= 2, "{tag}: {r:?}");
            assert!(r["duplicate_of"].is_string(), "{tag}: {r:?}");
            assert!(
                r["nearest_score"].as_f64().unwrap() >= 0.99999,
                "{tag}: {r:?}"
            );
        }
    }
    // knn of every row against the others: the copy is the original's first neighbour; with
    // --queries, against itself: each row finds itself first.
    let out = dir.path().join("knn.parquet");
    let (code, stderr) = run(&[
        "knn",
        npy.to_str().unwrap(),
        "--k",
        "3",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = parquet_rows(&out);
    assert_eq!(rows.len(), (names.len() + 2) * 3);
    let first = rows
        .iter()
        .find(|r| r["query"].as_str().unwrap().ends_with("/coffee.jpg") && r["rank"] == 1)
        .unwrap();
    assert!(first["neighbor"]
        .as_str()
        .unwrap()
        .ends_with("/z_coffee.jpg"));
    assert!(
        rows.iter().all(|r| r["query"] != r["neighbor"]),
        "no row is its own neighbour"
    );
    let knn_again = |extra: &[&str]| {
        let mut args = vec![
            "knn",
            npy.to_str().unwrap(),
            "--queries",
            parquet.to_str().unwrap(),
            "--k",
            "1",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // An existing output is replaced only when asked.
    let (code, stderr) = knn_again(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
    let (code, stderr) = knn_again(&["--overwrite"]);
    assert_eq!(code, Some(0), "{stderr}");
    for r in parquet_rows(&out) {
        assert!(r["score"].as_f64().unwrap() > 0.999, "{r:?}");
    }

    // Outputs without one vector per row, a wrong column, a mismatch: clear errors.
    let patch = embed_ok(
        &model,
        dir.path().join("p.parquet"),
        &["--pooling", "patch"],
        &[images],
    );
    let wide = embed_ok(
        &model,
        dir.path().join("w.npy"),
        &["--pooling", "cls+mean"],
        &[images],
    );
    for (args, says) in [
        (
            vec!["dedup", patch.to_str().unwrap()],
            "not one vector per row",
        ),
        (
            vec!["dedup", parquet.to_str().unwrap(), "--column", "cls"],
            "no column \"cls\"",
        ),
        (
            vec![
                "knn",
                npy.to_str().unwrap(),
                "--queries",
                wide.to_str().unwrap(),
            ],
            "values per vector",
        ),
        (
            vec!["dedup", npy.to_str().unwrap(), "--threshold", "2"],
            "from -1 to 1",
        ),
        (vec!["knn", images], "not an embed folder output"),
    ] {
        let mut args = args.clone();
        args.extend(["--output", out.to_str().unwrap(), "--overwrite"]);
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn urls_are_images_and_tar_streams() {
    let dir = TempDir::new().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = sample_images(&images);
    let shard = tar_of(&members_of(&images, &names[..2]));
    std::fs::write(images.join("shard.tar"), &shard).unwrap();
    let host = file_host(images.clone());
    let local = embed_ok(
        &model(),
        dir.path().join("local.npy"),
        &[],
        &[
            images.join(&names[2]).to_str().unwrap(),
            images.join(&names[3]).to_str().unwrap(),
        ],
    );
    let (_, local) = read_npy(&local);
    let (_, in_shard) = read_npy(&embed_ok(
        &model(),
        dir.path().join("shard.npy"),
        &[],
        &[images.join("shard.tar").to_str().unwrap()],
    ));
    // Two image URLs (one redirected, one that fails once with a 503 and has a query), a tar
    // archive's URL, a URL that is missing and one that answers a web page.
    std::fs::write(images.join("page.html"), "<html>no image here</html>").unwrap();
    let a = format!("{host}/redirect/{}", names[2]);
    let b = format!("{host}/flaky/{}?v=1", names[3]);
    let (tar, missing) = (format!("{host}/shard.tar"), format!("{host}/missing.jpg"));
    let page = format!("{host}/page.html");
    let out = dir.path().join("urls.npy");
    let r = dinov2(&[
        "embed",
        "--model",
        &model(),
        "--max-failures",
        "2",
        "--output",
        out.to_str().unwrap(),
        &a,
        &b,
        &tar,
        &missing,
        &page,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (_, got) = read_npy(&out);
    assert_eq!(got, [local.clone(), in_shard].concat());
    let paths = lines(&PathBuf::from(format!("{}.paths.txt", out.display())));
    assert_eq!(
        paths,
        [
            a.clone(),
            b.clone(),
            format!("{tar}/{}", names[0]),
            format!("{tar}/{}", names[1])
        ]
    );
    let errors = lines(&PathBuf::from(format!("{}.errors.jsonl", out.display())));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains(&missing) && errors[0].contains("404"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains(&page) && errors[1].contains("text/html"),
        "{}",
        errors[1]
    );
    // The same URLs from a list, and from a Parquet table's text column of URLs.
    let list = dir.path().join("urls.txt");
    let plain = [&names[2], &names[3]].map(|n| format!("{host}/{n}"));
    std::fs::write(&list, plain.join("\n")).unwrap();
    let (_, from_list) = read_npy(&embed_ok(
        &model(),
        dir.path().join("list.npy"),
        &[],
        &[&format!("@{}", list.display())],
    ));
    assert_eq!(from_list, local);
    let table = dir.path().join("urls.parquet");
    let urls: arrow_array::ArrayRef =
        std::sync::Arc::new(arrow_array::StringArray::from(plain.to_vec()));
    write_table(&table, vec![("url", urls)], 1);
    let (_, from_table) = read_npy(&embed_ok(
        &model(),
        dir.path().join("table.npy"),
        &["--image-column", "url"],
        &[table.to_str().unwrap()],
    ));
    assert_eq!(from_table, local);
}
