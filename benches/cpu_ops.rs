//! Criterion benchmarks of the CPU backend (`dinov2-cpu`) at the shapes of ViT-S/14 and ViT-B/14
//! at 224 px, batch 8 (257 tokens per image, 2056 rows): the GEMMs of a block, also at one image
//! (throughput in FLOP/s, shown by criterion as elem/s: 2 per multiply-add), attention (FLOP/s of its two
//! products; also ViT-S/14 at 518 px, 1370 tokens), LayerNorm and GELU (bytes read and written
//! per second), then the whole forward pass to CLS embeddings (images per second, as elem/s).
//!
//! ```sh
//! cargo bench --bench cpu_ops -- --warm-up-time 1 --measurement-time 2
//! DINOV2_BENCH_ARCHS=vits14,vitb14 cargo bench --bench cpu_ops -- forward
//! ```
//! The forward pass runs ViT-S only unless `DINOV2_BENCH_ARCHS` names others (ViT-B takes about
//! 2.5 s per batch of 8 on two cores).

mod common;

use common::values;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dinov2::crates::cpu as ops;
use dinov2::{released, CpuBackend, Dinov2, Pooling, Tensor};

/// Images per batch and tokens per image (224 px, patch 14: 16 x 16 patches + CLS).
const BATCH: usize = 8;
const TOKENS: usize = 257;
const ROWS: usize = BATCH * TOKENS;

/// (name, hidden size, heads) of the two sizes benchmarked op by op.
const SIZES: [(&str, usize, usize); 2] = [("vits14", 384, 6), ("vitb14", 768, 12)];

fn linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    for (name, h, _) in SIZES {
        // qkv, proj, fc1, fc2 of one block: (k, n).
        for (what, k, n) in [
            ("qkv", h, 3 * h),
            ("proj", h, h),
            ("fc1", h, 4 * h),
            ("fc2", 4 * h, h),
        ] {
            // Transposed once, as the CPU backend keeps linear weights.
            let wt = ops::transpose(&values(n * k, 2), n, k);
            let b = values(n, 3);
            // Batch 8, and one image (the threads split the product by rows at the one, by
            // columns at the other).
            for rows in [ROWS, TOKENS] {
                let x = values(rows * k, 1);
                g.throughput(Throughput::Elements((2 * rows * k * n) as u64));
                g.bench_function(format!("{name}/{what}/{rows}x{k}x{n}"), |bench| {
                    bench.iter(|| ops::linear_kn(black_box(&x), rows, k, &wt, n, Some(&b)))
                });
            }
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    for (name, h, heads) in SIZES {
        let d = h / heads;
        let qkv = values(ROWS * 3 * h, 4);
        let scale = (d as f64).powf(-0.5);
        g.throughput(Throughput::Elements(
            (4 * BATCH * heads * TOKENS * TOKENS * d) as u64,
        ));
        g.bench_function(format!("{name}/{BATCH}x{heads}x{TOKENS}x{d}"), |bench| {
            bench.iter(|| ops::attention(black_box(&qkv), BATCH, TOKENS, heads, d, scale, false))
        });
    }
    // ViT-S/14 at 518 px, one image: 1370 tokens, where attention is a quarter of the FLOPs.
    let (h, heads, tokens) = (384, 6, 1370);
    let d = h / heads;
    let qkv = values(tokens * 3 * h, 4);
    let scale = (d as f64).powf(-0.5);
    g.throughput(Throughput::Elements(
        (4 * heads * tokens * tokens * d) as u64,
    ));
    g.bench_function(format!("vits14_518px/1x{heads}x{tokens}x{d}"), |bench| {
        bench.iter(|| ops::attention(black_box(&qkv), 1, tokens, heads, d, scale, false))
    });
    g.finish();
}

fn layer_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_norm");
    for (name, h, _) in SIZES {
        let x = values(ROWS * h, 5);
        let (w, b) = (values(h, 6), values(h, 7));
        g.throughput(Throughput::Bytes((2 * ROWS * h * 4) as u64));
        g.bench_function(format!("{name}/{ROWS}x{h}"), |bench| {
            bench.iter(|| ops::layer_norm(black_box(&x), &w, &b, 1e-6))
        });
    }
    g.finish();
}

fn gelu(c: &mut Criterion) {
    let mut g = c.benchmark_group("gelu");
    for (name, h, _) in SIZES {
        let f = 4 * h;
        let x = values(ROWS * f, 8);
        g.throughput(Throughput::Bytes((2 * ROWS * f * 4) as u64));
        // In place: a fresh copy per run (not timed), so that no run sees GELU(GELU(x)).
        g.bench_function(format!("{name}/{ROWS}x{f}"), |bench| {
            bench.iter_batched_ref(
                || x.clone(),
                |y| ops::apply_activation(y, ops::Activation::Gelu),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn forward(c: &mut Criterion) {
    let archs = std::env::var("DINOV2_BENCH_ARCHS").unwrap_or_else(|_| "vits14".into());
    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let Some(config) = released(arch) else {
            eprintln!("DINOV2_BENCH_ARCHS: unknown architecture {arch:?}, skipped");
            continue;
        };
        let model = Dinov2::random(CpuBackend, &config, 0).expect("random weights");
        let pixels = Tensor::new(vec![BATCH, 3, 224, 224], values(BATCH * 3 * 224 * 224, 9))
            .expect("sizes agree");
        let pixels = model.upload_pixels(&pixels).expect("valid pixels");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{arch}/batch{BATCH}/224px/cls"), |bench| {
            bench.iter(|| {
                model
                    .embed_batch(black_box(&pixels), Pooling::Cls, false)
                    .expect("forward")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, linear, attention, layer_norm, gelu, forward);
criterion_main!(benches);
