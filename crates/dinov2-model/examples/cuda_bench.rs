//! Throughput of the DINOv2 encoder on the GPU through `CudaBackend`, with random weights: the
//! operations of `Dinov2`'s forward pass (patch embedding, tokens, every block, final norm),
//! timed with CUDA events, without the final download (PyTorch's timing keeps the output on the
//! device too). Peak memory is the driver's used-memory delta, as `scripts/gpu/torch_peer.py`
//! measures it.
//!
//! ```text
//! cuda_bench [--model s|b|l|g] [--batch 256] [--dtype f16] [--size 224] [--iters 10] [--warmup 3]
//! ```
//! Prints one `RESULT ours ...` line for the device script's table.

use std::process::ExitCode;

use dinov2_checkpoint::Activation;
use dinov2_model::{Backend, CudaBackend, CudaTensor, CudaWeight, Dtype, Tensor, TokenParams};

/// The released ViT/14 shapes: hidden, heads, layers, FFN (hidden width, SwiGLU).
fn architecture(name: &str) -> Option<(usize, usize, usize, usize, bool)> {
    Some(match name {
        "s" => (384, 6, 12, 1536, false),
        "b" => (768, 12, 12, 3072, false),
        "l" => (1024, 16, 24, 4096, false),
        "g" => (1536, 24, 40, 4096, true),
        _ => return None,
    })
}

struct Layer {
    norm1: (CudaWeight, CudaWeight),
    qkv: (CudaWeight, CudaWeight),
    proj: (CudaWeight, CudaWeight),
    ls1: CudaWeight,
    norm2: (CudaWeight, CudaWeight),
    fc1: (CudaWeight, CudaWeight),
    fc2: (CudaWeight, CudaWeight),
    ls2: CudaWeight,
}

struct Rng(u64);

impl Rng {
    fn values(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
                offset + scale * (2.0 * u - 1.0)
            })
            .collect()
    }
}

fn parse() -> Result<(String, usize, Dtype, usize, usize, usize), String> {
    let mut model = "b".to_string();
    let (mut batch, mut dtype, mut size, mut iters, mut warmup) = (256, Dtype::F16, 224, 10, 3);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .ok_or(format!("{} needs a value", args[i]))?;
        let bad = |e: std::num::ParseIntError| format!("{}: {e}", args[i]);
        match args[i].as_str() {
            "--model" => model = value.clone(),
            "--batch" => batch = value.parse().map_err(bad)?,
            "--dtype" => dtype = value.parse()?,
            "--size" => size = value.parse().map_err(bad)?,
            "--iters" => iters = value.parse().map_err(bad)?,
            "--warmup" => warmup = value.parse().map_err(bad)?,
            other => return Err(format!("unknown option {other}")),
        }
        i += 2;
    }
    Ok((model, batch, dtype, size, iters, warmup))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cuda_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (model, batch, dtype, size, iters, warmup) = parse()?;
    let (h, heads, layers, ffn, swiglu) =
        architecture(&model).ok_or(format!("unknown model {model:?}: s, b, l or g"))?;
    let p = 14;
    let grid = size / p;
    let n = grid * grid;
    let be = CudaBackend::new(0, dtype).map_err(|e| e.to_string())?;
    let dev = be.device().clone();
    let (free0, total) = dev.memory().map_err(|e| e.to_string())?;
    let e = |e: dinov2_model::ModelError| e.to_string();
    let mut rng = Rng(42);
    let mut w = |shape: Vec<usize>, scale: f32, offset: f32| -> Result<CudaWeight, String> {
        let count = shape.iter().product();
        be.weight(rng.values(count, scale, offset), shape)
            .map_err(e)
    };
    let fan = |k: usize| (3.0 / k as f32).sqrt();
    let ffn_in = if swiglu { 2 * ffn } else { ffn };
    let patch_w = w(vec![h, 3 * p * p], fan(3 * p * p), 0.0)?;
    let patch_b = w(vec![h], 0.02, 0.0)?;
    let cls = w(vec![h], 0.5, 0.0)?;
    let positions = w(vec![1 + n, h], 0.5, 0.0)?;
    let norm = (w(vec![h], 0.1, 1.0)?, w(vec![h], 0.02, 0.0)?);
    let mut blocks = Vec::new();
    for _ in 0..layers {
        blocks.push(Layer {
            norm1: (w(vec![h], 0.1, 1.0)?, w(vec![h], 0.02, 0.0)?),
            qkv: (w(vec![3 * h, h], fan(h), 0.0)?, w(vec![3 * h], 0.02, 0.0)?),
            proj: (w(vec![h, h], fan(h), 0.0)?, w(vec![h], 0.02, 0.0)?),
            ls1: w(vec![h], 0.05, 0.1)?,
            norm2: (w(vec![h], 0.1, 1.0)?, w(vec![h], 0.02, 0.0)?),
            fc1: (
                w(vec![ffn_in, h], fan(h), 0.0)?,
                w(vec![ffn_in], 0.02, 0.0)?,
            ),
            fc2: (w(vec![h, ffn], fan(ffn), 0.0)?, w(vec![h], 0.02, 0.0)?),
            ls2: w(vec![h], 0.05, 0.1)?,
        });
    }
    let pixels = Tensor {
        shape: vec![batch, 3, size, size],
        data: Rng(7).values(batch * 3 * size * size, 2.0, 0.0),
    };
    let pixels = be.upload(&pixels).map_err(e)?;

    let forward = || -> Result<CudaTensor, String> {
        let emb = be.patch_embed(&pixels, &patch_w, &patch_b, p).map_err(e)?;
        let mut x = be
            .embed_tokens(
                &emb,
                TokenParams {
                    cls: &cls,
                    positions: &positions,
                    registers: None,
                    mask: None,
                },
            )
            .map_err(e)?;
        let mut y = be
            .layer_norm(&x, &blocks[0].norm1.0, &blocks[0].norm1.1, 1e-6)
            .map_err(e)?;
        for (i, l) in blocks.iter().enumerate() {
            let qkv = be
                .linear(&y, &l.qkv.0, Some(&l.qkv.1), Activation::Identity)
                .map_err(e)?;
            let (att, _) = be.attention(&qkv, heads, false).map_err(e)?;
            let a = be
                .linear(&att, &l.proj.0, Some(&l.proj.1), Activation::Identity)
                .map_err(e)?;
            y = be
                .add_scaled_layer_norm(&mut x, &a, &l.ls1, &l.norm2.0, &l.norm2.1, 1e-6)
                .map_err(e)?;
            let f = if swiglu {
                let z = be
                    .linear(&y, &l.fc1.0, Some(&l.fc1.1), Activation::Identity)
                    .map_err(e)?;
                let g = be.swiglu(&z).map_err(e)?;
                be.linear(&g, &l.fc2.0, Some(&l.fc2.1), Activation::Identity)
                    .map_err(e)?
            } else {
                let u = be
                    .linear(&y, &l.fc1.0, Some(&l.fc1.1), Activation::Gelu)
                    .map_err(e)?;
                be.linear(&u, &l.fc2.0, Some(&l.fc2.1), Activation::Identity)
                    .map_err(e)?
            };
            let (nw, nb) = match blocks.get(i + 1) {
                Some(next) => (&next.norm1.0, &next.norm1.1),
                None => (&norm.0, &norm.1),
            };
            y = be
                .add_scaled_layer_norm(&mut x, &f, &l.ls2, nw, nb, 1e-6)
                .map_err(e)?;
        }
        Ok(y)
    };

    for _ in 0..warmup {
        forward()?;
    }
    be.synchronize().map_err(e)?;
    let timer = dev.start_timer().map_err(|e| e.to_string())?;
    for _ in 0..iters {
        forward()?;
    }
    let ms = dev.stop_timer(timer).map_err(|e| e.to_string())? as f64 / iters.max(1) as f64;
    let (free1, _) = dev.memory().map_err(|e| e.to_string())?;
    let tokens = (n + 1) as f64;
    let (hf, ff) = (h as f64, ffn as f64);
    let per_layer = 2.0 * tokens * (4.0 * hf * hf + if swiglu { 3.0 } else { 2.0 } * hf * ff)
        + 4.0 * tokens * tokens * hf;
    let flops =
        batch as f64 * (layers as f64 * per_layer + 2.0 * n as f64 * 3.0 * (p * p) as f64 * hf);
    let info = dev.info();
    println!(
        "RESULT ours model=vit{model}14 batch={batch} dtype={dtype} size={size} ms={ms:.3} \
         img_s={:.1} tflops={:.1} mem_mib={} device=\"{}\" code={:?} cublas={}",
        batch as f64 / (ms / 1e3),
        flops / (ms / 1e3) / 1e12,
        (free0.saturating_sub(free1)) >> 20,
        info.name,
        info.code,
        info.cublas_version,
    );
    eprintln!("total device memory {} MiB", total >> 20);
    Ok(())
}
