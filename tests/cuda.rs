//! Every golden fixture end to end on the GPU (`CudaBackend`):
//! * f32: every output within relative L2 1e-4 of transformers' float64 result;
//! * f16 / bf16, against the CPU f32 path on the same inputs: relative L2 <= 1e-2 / 3e-2 on
//!   `last_hidden_state` (and on logits and feature maps for the other heads), and pooled-output
//!   cosine >= 0.9999 / 0.9995 per image;
//! * the fused residual + LayerNorm and the pooling kernels against the CPU backend.
//!
//! They need a CUDA device (`cargo test` reports them as ignored); the fixtures are found through
//! `DINOV2_GOLDEN_DIR` (the device bundle sets it) or else in the repository.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{cases, golden_dir, read_f64, rel_l2, runs, Run};
use dinov2::io::{read_forward_inputs, ForwardInputs};
use dinov2::{Backend, Checkpoint, CpuBackend, CudaBackend, Dinov2, Dtype, Tensor};

type Inputs = ForwardInputs;

fn read_inputs(path: &Path) -> Inputs {
    read_forward_inputs(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The smallest cosine similarity between matching rows of `[rows, cols]` tensors.
fn min_cosine(a: &[f32], b: &[f64], cols: usize) -> f64 {
    a.chunks(cols)
        .zip(b.chunks(cols))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q).sum();
            let nx: f64 = x.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| q * q).sum::<f64>().sqrt();
            dot / (nx * ny).max(1e-300)
        })
        .fold(1.0, f64::min)
}

/// The embeddings as one f32 vector (ours) and one f64 vector (the reference), for [`rel_l2`].
fn flatten_pair(got: &[dinov2::Embedding], want: &[dinov2::Embedding]) -> (Vec<f32>, Vec<f64>) {
    assert_eq!(got.len(), want.len());
    let g = got.iter().flat_map(|e| e.values.clone()).collect();
    let w = want
        .iter()
        .flat_map(|e| e.values.iter().map(|&v| v as f64))
        .collect();
    (g, w)
}

fn run_model<B: Backend>(
    model: &Dinov2<B>,
    run: &Run,
    inputs: &Inputs,
) -> Result<Vec<(String, Tensor)>, String> {
    model
        .run(
            run.head(),
            &inputs.pixel_values,
            inputs.bool_masked_pos.as_deref(),
            inputs.labels.as_ref(),
            &run.options(),
        )
        .map(|o| o.into_named())
        .map_err(|e| e.to_string())
}

fn gpu(dtype: Dtype) -> CudaBackend {
    CudaBackend::new(0, dtype).unwrap_or_else(|e| panic!("cannot open cuda:0: {e}"))
}

/// Runs `check` on every run of every case; collects the failures so that one bad case does not
/// hide the others.
fn for_each_run(
    mut check: impl FnMut(&Path, &Checkpoint, &Run, &Inputs) -> Result<String, String>,
) {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let checkpoint = Checkpoint::open(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
        for run in runs(&case) {
            let inputs = read_inputs(&case.join(format!("{}.inputs.safetensors", run.name)));
            let context = format!("{name}/{}", run.name);
            match check(&case, &checkpoint, &run, &inputs) {
                Ok(report) => eprintln!("{context}: {report}"),
                Err(why) => {
                    eprintln!("{context}: FAILED {why}");
                    failures.push(format!("{context}: {why}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} run(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn golden_f32_on_gpu_matches_float64_truth() {
    let backend = gpu(Dtype::F32);
    for_each_run(|case, checkpoint, run, inputs| {
        let model = Dinov2::load(backend.clone(), checkpoint).map_err(|e| e.to_string())?;
        let got = run_model(&model, run, inputs)?;
        let expected = read_f64(&case.join(format!("{}.expected.safetensors", run.name)));
        let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let want: Vec<&str> = expected.keys().map(String::as_str).collect();
        if names != want {
            return Err(format!("outputs {names:?}, expected {want:?}"));
        }
        let mut worst = 0.0f64;
        for (name, t) in &got {
            let (shape, values) = &expected[name];
            if &t.shape != shape {
                return Err(format!("`{name}` shape {:?}, expected {shape:?}", t.shape));
            }
            let err = rel_l2(&t.data, values);
            if err.is_nan() || err > 1e-4 {
                return Err(format!("`{name}` relative L2 {err:.3e} > 1e-4"));
            }
            worst = worst.max(err);
        }
        Ok(format!("f32 worst relative L2 {worst:.2e}"))
    });
}

fn half_precision(dtype: Dtype, rel_tol: f64, cos_tol: f64) {
    let backend = gpu(dtype);
    for_each_run(|_, checkpoint, run, inputs| {
        let reference = Dinov2::load(CpuBackend, checkpoint).map_err(|e| e.to_string())?;
        let model = Dinov2::load(backend.clone(), checkpoint).map_err(|e| e.to_string())?;
        let want: BTreeMap<String, Tensor> =
            run_model(&reference, run, inputs)?.into_iter().collect();
        let got = run_model(&model, run, inputs)?;
        let mut report = Vec::new();
        for (name, t) in &got {
            let w = want
                .get(name)
                .ok_or_else(|| format!("`{name}` not in the CPU output"))?;
            if t.shape != w.shape {
                return Err(format!("`{name}` shape {:?}, CPU {:?}", t.shape, w.shape));
            }
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(format!("`{name}` has non-finite values"));
            }
            let w64: Vec<f64> = w.data.iter().map(|&v| v as f64).collect();
            if name == "last_hidden_state" || name == "logits" || name.starts_with("feature_maps") {
                let err = rel_l2(&t.data, &w64);
                if err.is_nan() || err > rel_tol {
                    return Err(format!("`{name}` relative L2 {err:.3e} > {rel_tol:.0e}"));
                }
                report.push(format!("{name} {err:.2e}"));
            }
            if name == "pooler_output" {
                let cols = t.shape.last().copied().unwrap_or(1).max(1);
                let cos = min_cosine(&t.data, &w64, cols);
                if cos.is_nan() || cos < cos_tol {
                    return Err(format!("`{name}` cosine {cos:.6} < {cos_tol}"));
                }
                report.push(format!("{name} cosine {cos:.6}"));
            }
        }
        Ok(format!("{dtype}: {}", report.join(", ")))
    });
}

#[test]
#[ignore = "needs a CUDA device"]
fn golden_f16_on_gpu_matches_cpu_f32() {
    half_precision(Dtype::F16, 1e-2, 0.9999);
}

#[test]
#[ignore = "needs a CUDA device"]
fn golden_bf16_on_gpu_matches_cpu_f32() {
    half_precision(Dtype::BF16, 3e-2, 0.9995);
}

/// `values` rounded to `dtype` to nearest even, as an upload in that dtype rounds them.
fn rounded(values: &[f32], dtype: Dtype) -> Vec<f32> {
    use half::{bf16, f16};
    values
        .iter()
        .map(|&v| match dtype {
            Dtype::F32 => v,
            Dtype::F16 => f16::from_f32(v).to_f32(),
            Dtype::BF16 => bf16::from_f32(v).to_f32(),
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn fused_residual_norm_matches_the_unfused_ops() {
    let cpu = CpuBackend;
    let vals = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
    let (rows, h) = (37, 48);
    let x = Tensor {
        shape: vec![rows, h],
        data: vals(rows * h, 0.37),
    };
    let branch = Tensor {
        shape: vec![rows, h],
        data: vals(rows * h, 0.11),
    };
    let (g, w, b) = (vals(h, 0.7), vals(h, 0.3), vals(h, 0.9));
    let gc = cpu.weight(g.clone(), vec![h]).unwrap();
    let wc = cpu.weight(w.clone(), vec![h]).unwrap();
    let bc = cpu.weight(b.clone(), vec![h]).unwrap();
    let to64 = |t: &Tensor| t.data.iter().map(|&v| v as f64).collect::<Vec<_>>();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let be = gpu(dtype);
        // `upload` rounds to the compute dtype (it is made for pixels); the update then widens
        // x to f32 (f16, bf16) or copies the shared buffer instead of writing through it (f32).
        let mut xg = be.upload(&x).unwrap();
        let uploaded = be.download(&xg).unwrap();
        assert_eq!(uploaded.data, rounded(&x.data, dtype), "{dtype}: upload");
        let mut xc = uploaded.clone();
        let yc = cpu
            .add_scaled_layer_norm(&mut xc, &branch, &gc, &wc, &bc, 1e-6)
            .unwrap();
        let keep = xg.clone(); // shared: the update must not write through it
        let bg = be.upload(&branch).unwrap();
        let gg = be.weight(g.clone(), vec![h]).unwrap();
        let wg = be.weight(w.clone(), vec![h]).unwrap();
        let bbg = be.weight(b.clone(), vec![h]).unwrap();
        let yg = be
            .add_scaled_layer_norm(&mut xg, &bg, &gg, &wg, &bbg, 1e-6)
            .unwrap();
        let tol = match dtype {
            Dtype::F32 => 1e-5,
            Dtype::F16 => 5e-3,
            Dtype::BF16 => 3e-2,
        };
        // The branch is rounded to the compute dtype before the update.
        let x_err = rel_l2(&be.download(&xg).unwrap().data, &to64(&xc));
        assert!(x_err < tol, "{dtype}: residual {x_err:.2e}");
        let y_err = rel_l2(&be.download(&yg).unwrap().data, &to64(&yc));
        assert!(y_err < tol, "{dtype}: normed {y_err:.2e}");
        assert_eq!(
            be.download(&keep).unwrap().data,
            uploaded.data,
            "{dtype}: a clone was written through"
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn pooling_on_the_device_matches_the_host() {
    use dinov2::{crates::model::pool_tokens, Activation, Pooling};
    // Awkward sizes; 1 CLS + 4 registers before the patches.
    let (b, s, h, prefix) = (3, 37, 40, 5);
    let x = Tensor {
        shape: vec![b, s, h],
        data: (0..b * s * h)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect(),
    };
    let mut eye = vec![0.0f32; h * h];
    (0..h).for_each(|i| eye[i * h + i] = 1.0);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let be = gpu(dtype);
        // x · I: tokens in the compute dtype, as the encoder leaves them.
        let w = be.weight(eye.clone(), vec![h, h]).unwrap();
        let tokens = be
            .linear(&be.upload(&x).unwrap(), &w, None, Activation::Identity)
            .unwrap();
        let host = be.download(&tokens).unwrap();
        for pooling in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::ClsMean,
            Pooling::Patch,
        ] {
            let got = be.pool(&tokens, prefix, pooling).unwrap();
            let want = pool_tokens(&host, prefix, pooling);
            assert_eq!(got.shape, want.shape, "{dtype} {pooling}");
            let w64: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
            let err = rel_l2(&got.data, &w64);
            eprintln!("{dtype} {pooling}: relative L2 {err:.2e}");
            assert!(err < 1e-6, "{dtype} {pooling}: relative L2 {err:.3e}");
            if pooling == Pooling::Cls {
                assert_eq!(got.data, want.data, "{dtype}: CLS is a copy");
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn embeddings_on_the_gpu_match_the_cpu() {
    use dinov2::Pooling;
    for (case, run) in [("dinov2_mlp", "rect24x40_mask"), ("registers_mlp", "sq32")] {
        let dir = golden_dir().join(case);
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let inputs = read_inputs(&dir.join(format!("{run}.inputs.safetensors")));
        let cpu = Dinov2::load(CpuBackend, &checkpoint).unwrap();
        // f32 checks the plumbing and the kernels tightly; f16 (the mean of rounded tokens may
        // cancel) only that nothing is grossly off.
        for (dtype, rel_tol, cos_tol) in [(Dtype::F32, 1e-4, 0.999_999), (Dtype::F16, 3e-2, 0.999)]
        {
            let be = gpu(dtype);
            assert!(!be.device_name().is_empty());
            be.release_cached_memory().unwrap();
            let before = be.memory_used().expect("the driver reports memory");
            let model = Dinov2::load(be.clone(), &checkpoint).unwrap();
            let registers =
                (checkpoint.config.num_register_tokens > 0).then_some(Pooling::Registers);
            for pooling in [
                Pooling::Cls,
                Pooling::Mean,
                Pooling::ClsMean,
                Pooling::Patch,
                Pooling::Tokens,
            ]
            .into_iter()
            .chain(registers)
            {
                for normalize in [false, true] {
                    let want = cpu.embed(&inputs.pixel_values, pooling, normalize).unwrap();
                    let got = model
                        .embed(&inputs.pixel_values, pooling, normalize)
                        .unwrap();
                    let (g, w) = flatten_pair(&got, &want);
                    let err = rel_l2(&g, &w);
                    let cols = want[0].values.len();
                    let cos = min_cosine(&g, &w, cols);
                    eprintln!(
                        "{case}/{run} {dtype} {pooling} normalize={normalize}: rel L2 {err:.2e}, cosine {cos:.7}"
                    );
                    assert!(err < rel_tol, "{case}/{run} {dtype} {pooling}: {err:.3e}");
                    assert!(
                        cos >= cos_tol,
                        "{case}/{run} {dtype} {pooling}: cosine {cos}"
                    );
                    assert_eq!(
                        got.iter().map(|e| e.grid).collect::<Vec<_>>(),
                        want.iter().map(|e| e.grid).collect::<Vec<_>>()
                    );
                }
            }
            // Intermediate layers: hidden states kept on the device, normed, pooled there.
            for (layers, norm, pooling) in [
                (vec![0, 1], true, Pooling::Cls),
                (vec![1], false, Pooling::Mean),
                (vec![1, 0], true, Pooling::Patch),
            ] {
                let want = cpu
                    .embed_layers(&inputs.pixel_values, &layers, norm, pooling, false)
                    .unwrap();
                let got = model
                    .embed_layers(&inputs.pixel_values, &layers, norm, pooling, false)
                    .unwrap();
                let (g, w) = flatten_pair(&got, &want);
                let err = rel_l2(&g, &w);
                eprintln!("{case}/{run} {dtype} layers {layers:?} norm={norm} {pooling}: rel L2 {err:.2e}");
                assert!(
                    err < rel_tol,
                    "{case}/{run} {dtype} layers {layers:?}: {err:.3e}"
                );
            }
            let after = be.memory_used().expect("the driver reports memory");
            eprintln!(
                "{case} {dtype}: {} KiB in use after loading and embedding",
                after.saturating_sub(before) >> 10
            );
        }
    }
}

/// Deterministic pixel values in [-1, 1) that differ with `seed`.
fn seeded_pixels(seed: u32, batch: usize, h: usize, w: usize) -> Tensor {
    let data = (0..batch * 3 * h * w)
        .map(|i| {
            let v = (i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
            (v % 1000) as f32 / 500.0 - 1.0
        })
        .collect();
    Tensor::new(vec![batch, 3, h, w], data).unwrap()
}

#[test]
#[ignore = "needs a CUDA device"]
fn replayed_cuda_graphs_equal_eager_passes() {
    use dinov2::{released, Pooling};
    // A golden checkpoint with registers (head dim 8) and ViT-S/14's real geometry (head dim 64,
    // the tuned attention path, cuBLASLt at real sizes) with random weights.
    let golden = Checkpoint::open(golden_dir().join("registers_mlp")).unwrap();
    let vits = released("vits14").unwrap();
    for dtype in [Dtype::F32, Dtype::F16] {
        let mut eager_be = gpu(dtype);
        eager_be.set_graphs(false);
        let mut graph_be = gpu(dtype);
        graph_be.set_graphs(true);
        let models = [
            (
                "registers_mlp",
                Dinov2::load(eager_be.clone(), &golden).unwrap(),
                Dinov2::load(graph_be.clone(), &golden).unwrap(),
                vec![(2, 32, 32, Pooling::Cls), (1, 24, 40, Pooling::Patch)],
            ),
            (
                "vits14",
                Dinov2::random(eager_be.clone(), &vits, 3).unwrap(),
                Dinov2::random(graph_be.clone(), &vits, 3).unwrap(),
                vec![(4, 224, 224, Pooling::Cls), (2, 224, 168, Pooling::ClsMean)],
            ),
        ];
        for (name, eager, graphed, shapes) in &models {
            let mut seed = 0;
            for round in 0..4 {
                for &(b, h, w, pooling) in shapes {
                    seed += 1;
                    let px = seeded_pixels(seed, b, h, w);
                    let want = eager.embed(&px, pooling, false).unwrap();
                    let got = if round % 2 == 0 {
                        graphed.embed(&px, pooling, false).unwrap()
                    } else {
                        let up = graphed.upload_pixels(&px).unwrap();
                        graphed.embed_batch(&up, pooling, false).unwrap()
                    };
                    let (g, r) = flatten_pair(&got, &want);
                    let err = rel_l2(&g, &r);
                    eprintln!(
                        "{name} {dtype} round {round} {b}x{h}x{w} {pooling}: rel L2 {err:.2e}"
                    );
                    assert!(
                        err <= 1e-6,
                        "{name} {dtype} round {round} {b}x{h}x{w} {pooling}: replay differs from eager by {err:.3e}"
                    );
                }
            }
            // `forward` without extras replays too (last_hidden_state, one more shape).
            let (b, h, w, _) = shapes[0];
            for round in 0..4 {
                let px = seeded_pixels(1000 + round, b, h, w);
                let opts = dinov2::ForwardOptions::default();
                let want = eager.forward(&px, None, &opts).unwrap();
                let got = graphed.forward(&px, None, &opts).unwrap();
                let r: Vec<f64> = want
                    .last_hidden_state
                    .data
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let err = rel_l2(&got.last_hidden_state.data, &r);
                eprintln!("{name} {dtype} forward round {round}: rel L2 {err:.2e}");
                assert!(
                    err <= 1e-6,
                    "{name} {dtype} forward round {round}: {err:.3e}"
                );
            }
            // Intermediate layers replay too (hidden states normed and pooled on the device).
            for round in 0..3 {
                let px = seeded_pixels(2000 + round, b, h, w);
                let want = eager
                    .embed_layers(&px, &[1, 0], true, Pooling::ClsMean, false)
                    .unwrap();
                let got = graphed
                    .embed_layers(&px, &[1, 0], true, Pooling::ClsMean, false)
                    .unwrap();
                let (g, r) = flatten_pair(&got, &want);
                let err = rel_l2(&g, &r);
                eprintln!("{name} {dtype} layers round {round}: rel L2 {err:.2e}");
                assert!(
                    err <= 1e-6,
                    "{name} {dtype} layers round {round}: {err:.3e}"
                );
            }
            let status = graphed.replay_status();
            eprintln!("{name} {dtype}: {status:?}");
            assert_eq!(status.failure, None, "{name} {dtype}: recording failed");
            assert_eq!(status.recorded, shapes.len() + 2, "{name} {dtype}");
            assert_eq!(
                status.replays,
                2 * shapes.len() as u64 + 3,
                "{name} {dtype}"
            );
            assert_eq!(eager.replay_status().recorded, 0);
        }
        // The recordings' buffers are ranges of one planned arena (DINOV2_PLANNED_MEMORY is on
        // by default), shared by the recordings of the backend's device.
        let parts = graph_be.memory_parts();
        let arena = parts.iter().find(|p| p.0 == "recording_arena").map(|p| p.1);
        eprintln!("{dtype}: memory parts {parts:?}");
        assert!(arena > Some(0), "{dtype}: no recording arena in {parts:?}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn embedding_runs_smaller_passes_when_the_device_runs_out_of_memory() {
    use dinov2::crates::kernels::DType;
    use dinov2::{released, Embedder, Pooling};
    let be = gpu(Dtype::F16);
    let vits = released("vits14").unwrap();
    let model = Dinov2::random(be.clone(), &vits, 3).unwrap();
    let embedder = Embedder::new(model, dinov2::image::PreprocessConfig::default())
        .with_pooling(Pooling::ClsMean);
    let (batch, side) = (16, 448);
    let px = seeded_pixels(7, batch, side, side);
    let per_image = px.data.len() / batch;
    let image = |i: usize| {
        let data = px.data[i * per_image..(i + 1) * per_image].to_vec();
        Tensor::new(vec![1, 3, side, side], data).unwrap()
    };
    // The reference: each image alone.
    let mut want = Vec::new();
    for i in 0..batch {
        want.extend(embedder.embed_batch(&image(i)).unwrap());
    }
    // What the whole batch takes, with memory to spare: the pool keeps the pass's blocks.
    be.release_cached_memory().unwrap();
    let before = be.memory_used().unwrap();
    embedder.embed_batch(&px).unwrap();
    let pass = be.memory_used().unwrap().saturating_sub(before);
    be.release_cached_memory().unwrap();
    // Fill the device but for a third of that pass.
    let (free, _) = be.device().memory().unwrap();
    let keep = pass / 3;
    eprintln!(
        "a pass of {batch} takes {} MiB; leaving {} MiB free",
        pass >> 20,
        keep >> 20
    );
    let filler = be
        .device()
        .alloc(DType::U8, &[free.saturating_sub(keep)])
        .unwrap();
    let got = embedder.embed_batch(&px);
    drop(filler);
    let got = got.unwrap();
    let limit = embedder.batch_limit();
    eprintln!("batch limit after running out of memory: {limit:?}");
    assert!(
        matches!(limit, Some(l) if l < batch),
        "the pass should have run out of memory and been split: {limit:?}"
    );
    let (g, w) = flatten_pair(&got, &want);
    let err = rel_l2(&g, &w);
    eprintln!("smaller passes against single images: rel L2 {err:.2e}");
    assert!(err < 1e-3, "{err:.3e}");
}

/// Our Hopper GEMMs inside the model (`DINOV2_GEMM=fused` / `own`), with the warpgroup-MMA
/// attention (`DINOV2_ATTENTION=wgmma`), and with the LayerNorms folded into the persistent
/// GEMMs (`DINOV2_NORM=fold`, over the stream in the compute dtype): ViT-S/14 and ViT-B/14
/// geometry with random weights, f16 and bf16, against the CPU's f32 embeddings, each held to
/// the tolerance of the cuBLASLt path and printed beside its error. Where the device is not
/// compute capability 9.0, there is nothing to run (the kernels are not loaded).
#[test]
#[ignore = "needs a CUDA device"]
fn our_gemms_in_the_model_match_the_cpu() {
    use dinov2::crates::kernels::{OwnGemm, OwnTile};
    use dinov2::{released, Pooling};
    let info = gpu(Dtype::F16).device().info().clone();
    if info.compute_capability != (9, 0) {
        eprintln!("no sm_90 device: our GEMMs are not loaded");
        return;
    }
    assert_eq!(info.hopper_error, None, "the sm_90a kernels did not load");
    for arch in ["vits14", "vitb14"] {
        let config = released(arch).unwrap();
        let cpu = Dinov2::random(CpuBackend, &config, 5).unwrap();
        let px = seeded_pixels(77, 2, 224, 224);
        let want = cpu.embed(&px, Pooling::ClsMean, false).unwrap();
        for dtype in [Dtype::F16, Dtype::BF16] {
            let tol: f64 = if dtype == Dtype::F16 { 1e-2 } else { 3e-2 };
            let mut errors = Vec::new();
            let mut baseline = None;
            // The last cases also run the warpgroup-MMA attention kernels, the last three the
            // residual stream in the compute dtype, and the last two the folded LayerNorms (the
            // variables are read when a device opens; the GPU tests run one at a time). Under
            // `All` the persistent kernels (PingPong, PingPong2) also take the MLP's residual
            // update into their epilogue.
            for (policy, tile, attention, residual, norm) in [
                (OwnGemm::Off, OwnTile::N128, "", "", ""),
                (OwnGemm::Fused, OwnTile::N128, "", "", ""),
                (OwnGemm::All, OwnTile::N128, "", "", ""),
                (OwnGemm::All, OwnTile::N256, "", "", ""),
                (OwnGemm::All, OwnTile::Tma, "", "", ""),
                (OwnGemm::All, OwnTile::Tma2, "", "", ""),
                (OwnGemm::All, OwnTile::PingPong, "", "", ""),
                (OwnGemm::All, OwnTile::PingPong2, "", "", ""),
                (OwnGemm::Fused, OwnTile::Tma, "wgmma", "", ""),
                (OwnGemm::Fused, OwnTile::Tma, "wgmma2", "", ""),
                (OwnGemm::All, OwnTile::PingPong, "wgmma2", "compute", ""),
                (OwnGemm::All, OwnTile::PingPong, "wgmma2", "compute", "fold"),
                (OwnGemm::All, OwnTile::PingPong2, "", "compute", "fold"),
            ] {
                if !attention.is_empty() {
                    std::env::set_var("DINOV2_ATTENTION", attention);
                }
                if !residual.is_empty() {
                    std::env::set_var("DINOV2_RESIDUAL", residual);
                }
                if !norm.is_empty() {
                    // The fold needs the persistent GEMM when the backend opens.
                    std::env::set_var("DINOV2_NORM", norm);
                    std::env::set_var("DINOV2_GEMM", "own");
                    std::env::set_var("DINOV2_GEMM_TILE", tile.env_name());
                }
                let be = gpu(dtype);
                for var in [
                    "DINOV2_ATTENTION",
                    "DINOV2_RESIDUAL",
                    "DINOV2_NORM",
                    "DINOV2_GEMM",
                    "DINOV2_GEMM_TILE",
                ] {
                    std::env::remove_var(var);
                }
                be.device().set_own_gemm(policy, tile).unwrap();
                let model = Dinov2::random(be, &config, 5).unwrap();
                let got = model.embed(&px, Pooling::ClsMean, false).unwrap();
                let (g, w) = flatten_pair(&got, &want);
                let err = rel_l2(&g, &w);
                errors.push(format!(
                    "{policy:?} {tile:?} {attention} {residual} {norm}: {err:.2e}"
                ));
                // The first case is cuBLASLt and the flash kernel: the others are held to the
                // half-precision tolerance, or to twice that path's error where random weights
                // put it higher (what is tested is that our kernels lose nothing more); three
                // times with the stream in the compute dtype, as its own test holds it.
                let baseline = *baseline.get_or_insert(err);
                let times = if residual.is_empty() { 2.0 } else { 3.0 };
                assert!(
                    err < tol.max(times * baseline),
                    "{arch} {dtype} {policy:?} {tile:?} attention {attention:?} residual {residual:?} norm {norm:?}: rel L2 {err:.3e} against the CPU (cuBLASLt path: {baseline:.3e})"
                );
            }
            eprintln!("{arch} {dtype} against CPU f32: {}", errors.join(", "));
        }
    }
}

/// `DINOV2_RESIDUAL=compute`: the residual stream in f16/bf16, as transformers keeps it there,
/// against the CPU's f32 embeddings beside the f32 stream's error, for the golden checkpoints
/// (registers, masks of odd sizes) and ViT-S/14 geometry; held to the same tolerance as the
/// half-precision paths.
#[test]
#[ignore = "needs a CUDA device"]
fn residual_stream_in_the_compute_dtype_matches_the_cpu() {
    use dinov2::{released, Pooling};
    let golden = Checkpoint::open(golden_dir().join("registers_mlp")).unwrap();
    let vits = released("vits14").unwrap();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let tol: f64 = if dtype == Dtype::F16 { 1e-2 } else { 3e-2 };
        for (name, px) in [
            ("registers_mlp", seeded_pixels(91, 2, 32, 32)),
            ("vits14", seeded_pixels(92, 2, 224, 224)),
        ] {
            let load = |be: CudaBackend| {
                if name == "vits14" {
                    Dinov2::random(be, &vits, 9).unwrap()
                } else {
                    Dinov2::load(be, &golden).unwrap()
                }
            };
            let cpu = if name == "vits14" {
                Dinov2::random(CpuBackend, &vits, 9).unwrap()
            } else {
                Dinov2::load(CpuBackend, &golden).unwrap()
            };
            let want = cpu.embed(&px, Pooling::ClsMean, false).unwrap();
            let mut errors = Vec::new();
            for compute_stream in [false, true] {
                if compute_stream {
                    std::env::set_var("DINOV2_RESIDUAL", "compute");
                }
                let be = gpu(dtype);
                std::env::remove_var("DINOV2_RESIDUAL");
                let model = load(be);
                let got = model.embed(&px, Pooling::ClsMean, false).unwrap();
                let (g, w) = flatten_pair(&got, &want);
                let err = rel_l2(&g, &w);
                errors.push(err);
                // The f16/bf16 stream rounds every residual update: held to the tolerance of the
                // half-precision paths, or three times the f32 stream's error where random
                // weights put that higher.
                let bound = tol.max(3.0 * errors[0]);
                assert!(
                    err < bound,
                    "{name} {dtype} stream in the compute dtype={compute_stream}: rel L2 {err:.3e} (bound {bound:.1e})"
                );
            }
            eprintln!(
                "{name} {dtype} against CPU f32: f32 stream {:.2e}, {dtype} stream {:.2e}",
                errors[0], errors[1]
            );
        }
    }
}
