//! Criterion benchmarks of the CUDA kernels and cuBLAS(Lt) GEMMs (`dinov2-kernels`) at the shapes
//! of ViT-B/14, 224 px, batch 256, f16 (257 tokens per image, 65 792 rows): the four GEMMs of a
//! block (FLOP/s, shown by criterion as elem/s: 2 per multiply-add; on an H100/H200 also on our
//! Hopper GEMMs, and fc1 with the exact GELU fused), flash attention (FLOP/s of
//! its two products; also at 518 px, 1370 tokens, batch 32, the 128-row variant and the path
//! that writes the probabilities),
//! LayerNorm, the residual update with and without the fused LayerNorm, the GELU epilogue,
//! ViT-g/14's SwiGLU gate, the token assembly, patch unfolding and pooling (bytes read and
//! written per second), and the card's copy ceiling (a
//! device-to-device copy of 200 MB: the bandwidth the memory-bound kernels are held against).
//! Last, the whole forward pass per model size (`DINOV2_BENCH_ARCHS`, default ViT-S and ViT-B;
//! batch `DINOV2_BENCH_BATCH`, default 64; f16, 224 px, random weights): pixels on the device to
//! CLS vectors on the host, replayed as a CUDA graph after two passes, in FLOP/s (images per
//! second = FLOP/s / FLOP per image, as `dinov2 bench` counts them).
//!
//! `benches/peer_kernels.py` times PyTorch's kernels on the same shapes (SDPA, `layer_norm`,
//! GELU, `linear`, the copy), and `scripts/gpu/kernel_table.py` sets both side by side.
//!
//! Each sample queues its launches and synchronizes the device before the clock stops. Without a
//! CUDA device (or driver, or cuBLAS) it prints why and returns, so `cargo bench` works anywhere.
//!
//! ```sh
//! cargo bench --bench cuda_kernels -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use common::values;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dinov2::crates::kernels::{
    fold_layer_norm, Act, Buffer, DType, Device, OwnGemm, OwnTile, RowStats, STATS_COLUMNS,
};
use dinov2::{flops_per_image, released, CudaBackend, Dinov2, Dtype, Pooling, Tensor};

const BATCH: usize = 256;
const TOKENS: usize = 257;
const ROWS: usize = BATCH * TOKENS;
const HIDDEN: usize = 768;
const HEADS: usize = 12;
const T: DType = DType::F16;

fn buffer(dev: &Device, shape: &[usize], dtype: DType, seed: u64) -> Buffer {
    let n = shape.iter().product();
    dev.upload(&values(n, seed), shape, dtype)
        .expect("device memory")
}

/// Times `iters` launches of `f`, synchronizing before the clock stops.
fn timed(dev: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    dev.synchronize().expect("device");
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().expect("device");
    start.elapsed()
}

/// The four GEMMs of a ViT-B/14 block with their bias, and fc1 followed by the exact GELU as the
/// model runs it: on cuBLASLt (the `bias_act` pass after it for the GELU), and on an H100/H200
/// also on our Hopper kernels, both `cp.async` tile widths and the TMA kernels (`…/own_n128`,
/// `…/own_n256`, `…/own_tma`, `…/own_tma2`, `…/own_pp`, `…/own_pp2`: the GELU in their epilogue).
/// `DINOV2_BENCH_SKIP_TMA=1` leaves the TMA kernels out (the device script sets it when their
/// tests timed out).
fn gemms(c: &mut Criterion, dev: &Device) {
    let mut g = c.benchmark_group("linear_f16");
    let h = HIDDEN;
    let hopper = dev.set_own_gemm(OwnGemm::Off, OwnTile::N128).is_ok()
        && dev.set_own_gemm(OwnGemm::All, OwnTile::N128).is_ok();
    for (what, k, n, act) in [
        ("qkv", h, 3 * h, Act::Identity),
        ("proj", h, h, Act::Identity),
        ("fc1", h, 4 * h, Act::Identity),
        ("fc2", 4 * h, h, Act::Identity),
        ("fc1_gelu", h, 4 * h, Act::Gelu),
    ] {
        let x = buffer(dev, &[ROWS, k], T, 1);
        // Weights of nn.Linear's scale (as the PyTorch peer's randn / sqrt(k)).
        let scale = (k as f32).sqrt().recip();
        let w: Vec<f32> = values(n * k, 2).iter().map(|v| v * scale).collect();
        let w = dev.upload(&w, &[n, k], T).expect("device memory");
        let b = buffer(dev, &[n], T, 3);
        let mut y = dev.alloc(T, &[ROWS, n]).expect("device memory");
        g.throughput(Throughput::Elements((2 * ROWS * k * n) as u64));
        let variants: &[(&str, OwnGemm, OwnTile)] = if hopper {
            &[
                ("", OwnGemm::Off, OwnTile::N128),
                ("/own_n128", OwnGemm::All, OwnTile::N128),
                ("/own_n256", OwnGemm::All, OwnTile::N256),
                ("/own_tma", OwnGemm::All, OwnTile::Tma),
                ("/own_tma2", OwnGemm::All, OwnTile::Tma2),
                ("/own_pp", OwnGemm::All, OwnTile::PingPong),
                ("/own_pp2", OwnGemm::All, OwnTile::PingPong2),
            ]
        } else {
            &[("", OwnGemm::Off, OwnTile::N128)]
        };
        let skip_tma = std::env::var("DINOV2_BENCH_SKIP_TMA").is_ok_and(|v| v == "1");
        for &(suffix, policy, tile) in variants {
            if !matches!(tile, OwnTile::N128 | OwnTile::N256) && skip_tma {
                continue;
            }
            if hopper {
                dev.set_own_gemm(policy, tile).expect("sm_90 device");
            }
            g.bench_function(format!("vitb14/{what}/{ROWS}x{k}x{n}{suffix}"), |bench| {
                bench.iter_custom(|iters| {
                    timed(dev, iters, || {
                        dev.linear_act(&x, &w, Some(&b), &mut y, (ROWS, n, k), act)
                            .expect("linear");
                    })
                })
            });
        }
    }
    if hopper {
        dev.set_own_gemm(OwnGemm::Off, OwnTile::N128)
            .expect("sm_90 device");
    }
    g.finish();
}

/// ViT-B/14's MLP output with its residual update and the next LayerNorm (f32 stream), on an
/// H100/H200: as two passes (the GEMM on cuBLASLt, `…/two_passes`, or on our persistent kernel,
/// `…/two_passes_pp`: then `add_scaled_layer_norm`), and with the update in the persistent
/// kernel's epilogue (`…/fused_pp`, `…/fused_pp2`: then `layer_norm`).
fn residual_updates(c: &mut Criterion, dev: &Device) {
    // Our kernels exist on sm_90 only (setting a policy other than Off fails elsewhere); each
    // variant below sets its own, and the last resets it.
    if std::env::var("DINOV2_BENCH_SKIP_TMA").is_ok_and(|v| v == "1")
        || dev.set_own_gemm(OwnGemm::All, OwnTile::PingPong).is_err()
    {
        return;
    }
    let mut g = c.benchmark_group("linear_f16");
    let (k, n) = (4 * HIDDEN, HIDDEN);
    let x = buffer(dev, &[ROWS, k], T, 5);
    let scale = (k as f32).sqrt().recip();
    let w: Vec<f32> = values(n * k, 6).iter().map(|v| v * scale).collect();
    let w = dev.upload(&w, &[n, k], T).expect("device memory");
    let b = buffer(dev, &[n], T, 7);
    let gamma = buffer(dev, &[n], DType::F32, 8);
    let (norm_w, norm_b) = (
        buffer(dev, &[n], DType::F32, 9),
        buffer(dev, &[n], DType::F32, 10),
    );
    let mut stream = buffer(dev, &[ROWS, n], DType::F32, 11);
    let mut branch = dev.alloc(T, &[ROWS, n]).expect("device memory");
    let mut y = dev.alloc(T, &[ROWS, n]).expect("device memory");
    g.throughput(Throughput::Elements((2 * ROWS * k * n) as u64));
    for (suffix, tile, fused) in [
        ("two_passes", None, false),
        ("two_passes_pp", Some(OwnTile::PingPong), false),
        ("fused_pp", Some(OwnTile::PingPong), true),
        ("fused_pp2", Some(OwnTile::PingPong2), true),
    ] {
        let policy = if tile.is_some() {
            OwnGemm::All
        } else {
            OwnGemm::Off
        };
        dev.set_own_gemm(policy, tile.unwrap_or(OwnTile::N128))
            .expect("sm_90 device");
        let name = format!("vitb14/fc2_residual_ln/{ROWS}x{k}x{n}/{suffix}");
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                timed(dev, iters, || {
                    let shape = (ROWS, n, k);
                    if fused {
                        let done = dev
                            .linear_residual(&x, &w, Some(&b), &gamma, &mut stream, None, shape)
                            .expect("linear_residual");
                        assert!(done, "the residual update was not fused");
                        dev.layer_norm(&stream, &norm_w, &norm_b, &mut y, ROWS, n, 1e-6)
                            .expect("layer_norm");
                    } else {
                        dev.linear_act(&x, &w, Some(&b), &mut branch, shape, Act::Identity)
                            .expect("linear");
                        dev.add_scaled_layer_norm(
                            &mut stream,
                            &branch,
                            &gamma,
                            &norm_w,
                            &norm_b,
                            &mut y,
                            ROWS,
                            n,
                            1e-6,
                        )
                        .expect("add_scaled_layer_norm");
                    }
                })
            })
        });
    }
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128)
        .expect("sm_90 device");
    g.finish();
}

/// The two LayerNorms of a ViT-B/14 block with an f16 residual stream, on an H100/H200, both
/// ways, on our persistent GEMM (`pp`, `pp2`):
/// - `norm2_fc1/…`: the attention's residual update, the norm and fc1 with the GELU: as
///   `add_scaled_layer_norm` then fc1 on the normed rows (`two_passes_*`), and as
///   `add_scaled_stats` then fc1 with the norm folded in (`folded_*`);
/// - `fc2_norm1_qkv/…`: fc2 with the residual update in its epilogue, the next block's norm and
///   its qkv: `layer_norm` between the two GEMMs (`two_passes_*`), or fc2's epilogue writing the
///   rows' statistics and qkv with the norm folded in (`folded_*`).
fn folded_norms(c: &mut Criterion, dev: &Device) {
    // Our kernels exist on sm_90 only (setting a policy other than Off fails elsewhere); each
    // variant below sets its own, and the last resets it.
    if std::env::var("DINOV2_BENCH_SKIP_TMA").is_ok_and(|v| v == "1")
        || dev.set_own_gemm(OwnGemm::All, OwnTile::PingPong).is_err()
    {
        return;
    }
    let mut g = c.benchmark_group("linear_f16");
    let h = HIDDEN;
    let (gamma, norm_w, norm_b) = (
        buffer(dev, &[h], DType::F32, 20),
        buffer(dev, &[h], DType::F32, 21),
        buffer(dev, &[h], DType::F32, 22),
    );
    let mut stream = buffer(dev, &[ROWS, h], T, 23);
    let branch = buffer(dev, &[ROWS, h], T, 24);
    let mut normed = dev.alloc(T, &[ROWS, h]).expect("device memory");
    let weight = |n: usize, k: usize, seed: u64| {
        let scale = (k as f32).sqrt().recip();
        let w: Vec<f32> = values(n * k, seed).iter().map(|v| v * scale).collect();
        let folded = fold_layer_norm(
            &w,
            Some(&values(n, seed + 1)),
            &values(k, seed + 2),
            &values(k, seed + 3),
            (n, k),
            T,
        )
        .expect("shapes");
        let up = |v: &[f32], shape: &[usize], t| dev.upload(v, shape, t).expect("device memory");
        (
            up(&w, &[n, k], T),
            up(&folded.weight, &[n, k], T),
            up(&folded.colsum, &[n], DType::F32),
            up(&folded.bias, &[n], DType::F32),
        )
    };
    let (fc1, fc1_f, fc1_s, fc1_b) = weight(4 * h, h, 30);
    let (qkv, qkv_f, qkv_s, qkv_b) = weight(3 * h, h, 40);
    // fc2's weight scaled as the others, so that the stream stays in range over many updates.
    let (fc2, _, _, _) = weight(h, 4 * h, 50);
    let bias = buffer(dev, &[4 * h], DType::F32, 51);
    let hidden = buffer(dev, &[ROWS, 4 * h], T, 52);
    let mut fc1_out = dev.alloc(T, &[ROWS, 4 * h]).expect("device memory");
    let mut qkv_out = dev.alloc(T, &[ROWS, 3 * h]).expect("device memory");
    let mut stats = dev.alloc(DType::F32, &[ROWS, 1, 2]).expect("device memory");
    let mut parts = dev
        .alloc(DType::F32, &[ROWS, h / STATS_COLUMNS, 2])
        .expect("device memory");
    for (suffix, tile) in [("pp", OwnTile::PingPong), ("pp2", OwnTile::PingPong2)] {
        dev.set_own_gemm(OwnGemm::All, tile).expect("sm_90 device");
        for folded in [false, true] {
            let way = if folded { "folded" } else { "two_passes" };
            g.throughput(Throughput::Elements((2 * ROWS * h * 4 * h) as u64));
            g.bench_function(format!("vitb14/norm2_fc1/{way}_{suffix}"), |bench| {
                bench.iter_custom(|iters| {
                    timed(dev, iters, || {
                        let shape = (ROWS, 4 * h, h);
                        if folded {
                            let ran = dev
                                .add_scaled_stats(&mut stream, &branch, &gamma, &mut stats, ROWS, h)
                                .expect("add_scaled_stats");
                            let norm = RowStats {
                                stats: &stats,
                                parts: 1,
                                eps: 1e-6,
                            };
                            let ran = ran
                                && dev
                                    .linear_folded(
                                        &stream,
                                        &fc1_f,
                                        &fc1_s,
                                        &fc1_b,
                                        norm,
                                        &mut fc1_out,
                                        shape,
                                        Act::Gelu,
                                    )
                                    .expect("linear_folded");
                            assert!(ran, "the fold did not run");
                        } else {
                            dev.add_scaled_layer_norm(
                                &mut stream,
                                &branch,
                                &gamma,
                                &norm_w,
                                &norm_b,
                                &mut normed,
                                ROWS,
                                h,
                                1e-6,
                            )
                            .expect("add_scaled_layer_norm");
                            dev.linear_act(
                                &normed,
                                &fc1,
                                Some(&bias),
                                &mut fc1_out,
                                shape,
                                Act::Gelu,
                            )
                            .expect("linear");
                        }
                    })
                })
            });
            g.throughput(Throughput::Elements((2 * ROWS * h * 7 * h) as u64));
            g.bench_function(format!("vitb14/fc2_norm1_qkv/{way}_{suffix}"), |bench| {
                bench.iter_custom(|iters| {
                    timed(dev, iters, || {
                        let out = if folded { Some(&mut parts) } else { None };
                        let ran = dev
                            .linear_residual(
                                &hidden,
                                &fc2,
                                None,
                                &gamma,
                                &mut stream,
                                out,
                                (ROWS, h, 4 * h),
                            )
                            .expect("linear_residual");
                        assert!(ran, "the residual update was not fused");
                        let shape = (ROWS, 3 * h, h);
                        if folded {
                            let norm = RowStats {
                                stats: &parts,
                                parts: h / STATS_COLUMNS,
                                eps: 1e-6,
                            };
                            let ran = dev
                                .linear_folded(
                                    &stream,
                                    &qkv_f,
                                    &qkv_s,
                                    &qkv_b,
                                    norm,
                                    &mut qkv_out,
                                    shape,
                                    Act::Identity,
                                )
                                .expect("linear_folded");
                            assert!(ran, "the fold did not run");
                        } else {
                            dev.layer_norm(&stream, &norm_w, &norm_b, &mut normed, ROWS, h, 1e-6)
                                .expect("layer_norm");
                            dev.linear_act(&normed, &qkv, None, &mut qkv_out, shape, Act::Identity)
                                .expect("linear");
                        }
                    })
                })
            });
        }
    }
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128)
        .expect("sm_90 device");
    g.finish();
}

/// ViT-B/14 at 518 px: 1370 tokens, and a batch that keeps the work near the 224-px case's.
const HIGH_RES: (usize, usize) = (32, 1370);

/// Flash attention with ViT-B/14's heads on `dev`, `batch` images of `tokens` tokens; `label`
/// names the variant (`vitb14`: the kernel the device picks at 224 px; `vitb14_518px`: the same
/// at 518 px; `vitb14_r128`, `vitb14_518px_r128`: a device opened with `DINOV2_ATTENTION=r128`;
/// `vitb14_wg`, `vitb14_518px_wg`: with `DINOV2_ATTENTION=wgmma`; `vitb14_wg2`,
/// `vitb14_518px_wg2`: `wgmma2`).
fn attention(c: &mut Criterion, dev: &Device, label: &str, (batch, tokens): (usize, usize)) {
    let mut g = c.benchmark_group("attention_f16");
    let d = HIDDEN / HEADS;
    let qkv = buffer(dev, &[batch, tokens, 3 * HIDDEN], T, 4);
    let mut out = dev.alloc(T, &[batch, tokens, HIDDEN]).expect("memory");
    let scale = (d as f32).powf(-0.5);
    g.throughput(Throughput::Elements(
        (4 * batch * HEADS * tokens * tokens * d) as u64,
    ));
    g.bench_function(format!("{label}/{batch}x{HEADS}x{tokens}x{d}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.attention(&qkv, &mut out, batch, tokens, HEADS, d, scale)
                    .expect("attention");
            })
        })
    });
    g.finish();
}

/// The attention path that also writes the f32 probabilities `[B, heads, N, N]` (attentions
/// requested), at ViT-B/14's shape: the same FLOPs, bounded by writing 811 MB of probabilities.
fn attention_probs(c: &mut Criterion, dev: &Device) {
    let mut g = c.benchmark_group("attention_f16");
    let d = HIDDEN / HEADS;
    let qkv = buffer(dev, &[BATCH, TOKENS, 3 * HIDDEN], T, 4);
    let mut out = dev.alloc(T, &[BATCH, TOKENS, HIDDEN]).expect("memory");
    let mut probs = dev
        .alloc(DType::F32, &[BATCH, HEADS, TOKENS, TOKENS])
        .expect("memory");
    let scale = (d as f32).powf(-0.5);
    g.throughput(Throughput::Elements(
        (4 * BATCH * HEADS * TOKENS * TOKENS * d) as u64,
    ));
    g.bench_function(
        format!("vitb14_probs/{BATCH}x{HEADS}x{TOKENS}x{d}"),
        |bench| {
            bench.iter_custom(|iters| {
                timed(dev, iters, || {
                    dev.attention_probs(&qkv, &mut out, &mut probs, BATCH, TOKENS, HEADS, d, scale)
                        .expect("attention_probs");
                })
            })
        },
    );
    g.finish();
}

fn norms(c: &mut Criterion, dev: &Device) {
    let mut g = c.benchmark_group("layer_norm");
    let h = HIDDEN;
    let w = buffer(dev, &[h], DType::F32, 5);
    let b = buffer(dev, &[h], DType::F32, 6);
    let gamma = buffer(dev, &[h], DType::F32, 7);
    let mut x = buffer(dev, &[ROWS, h], DType::F32, 8);
    let branch = buffer(dev, &[ROWS, h], T, 9);
    let mut y = dev.alloc(T, &[ROWS, h]).expect("memory");
    // f32 residual in, f16 out.
    g.throughput(Throughput::Bytes((ROWS * h * (4 + 2)) as u64));
    g.bench_function(format!("f32_to_f16/{ROWS}x{h}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.layer_norm(&x, &w, &b, &mut y, ROWS, h, 1e-6)
                    .expect("layer_norm");
            })
        })
    });
    // The residual update alone (the last block, before the final LayerNorm is fused): reads x
    // (f32) and the branch (f16), writes x.
    g.throughput(Throughput::Bytes((ROWS * h * (4 + 2 + 4)) as u64));
    g.bench_function(format!("add_scaled/{ROWS}x{h}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.add_scaled(&mut x, &branch, &gamma, ROWS, h)
                    .expect("add_scaled");
            })
        })
    });
    // Reads x (f32) and the branch (f16), writes x (f32) and y (f16).
    g.throughput(Throughput::Bytes((ROWS * h * (4 + 2 + 4 + 2)) as u64));
    g.bench_function(format!("add_scaled_layer_norm/{ROWS}x{h}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.add_scaled_layer_norm(&mut x, &branch, &gamma, &w, &b, &mut y, ROWS, h, 1e-6)
                    .expect("add_scaled_layer_norm");
            })
        })
    });
    g.finish();
}

fn elementwise(c: &mut Criterion, dev: &Device) {
    let mut g = c.benchmark_group("elementwise_f16");
    let f = 4 * HIDDEN;
    let mut u = buffer(dev, &[ROWS, f], T, 10);
    g.throughput(Throughput::Bytes((2 * ROWS * f * 2) as u64));
    g.bench_function(format!("gelu/{ROWS}x{f}"), |bench| {
        bench.iter_custom(|iters| {
            // In place, over and over: GELU maps its output into a bounded range, and the GPU
            // runs subnormal values at full speed.
            timed(dev, iters, || {
                dev.bias_act(&mut u, None, ROWS, f, Act::Gelu)
                    .expect("bias_act");
            })
        })
    });
    drop(u);
    // ViT-g/14's gated FFN: z [rows, 2·4096] -> [rows, 4096].
    let f = 4096;
    let z = buffer(dev, &[ROWS, 2 * f], T, 13);
    let mut gated = dev.alloc(T, &[ROWS, f]).expect("memory");
    g.throughput(Throughput::Bytes((ROWS * 3 * f * 2) as u64));
    g.bench_function(format!("swiglu/{ROWS}x{f}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.swiglu(&z, &mut gated, ROWS, f).expect("swiglu");
            })
        })
    });
    drop((z, gated));
    // CLS + positions (+ patches) into the f32 residual stream.
    let n = TOKENS - 1;
    let patches = buffer(dev, &[BATCH, n, HIDDEN], T, 14);
    let cls = buffer(dev, &[HIDDEN], DType::F32, 15);
    let positions = buffer(dev, &[TOKENS, HIDDEN], T, 16);
    let mut x = dev
        .alloc(DType::F32, &[BATCH, TOKENS, HIDDEN])
        .expect("memory");
    g.throughput(Throughput::Bytes(
        (BATCH * TOKENS * HIDDEN * (2 + 4)) as u64,
    ));
    g.bench_function(format!("embed_tokens/{BATCH}x{n}x{HIDDEN}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.embed_tokens(
                    &patches,
                    &cls,
                    &positions,
                    None,
                    None,
                    &mut x,
                    (BATCH, n, HIDDEN),
                )
                .expect("embed_tokens");
            })
        })
    });
    drop((patches, x));
    // As the model runs it: pixels uploaded in the compute dtype, rows padded 588 -> 592.
    let pixels = buffer(dev, &[BATCH, 3, 224, 224], T, 11);
    let mut cols = dev.alloc(T, &[BATCH * 256, 592]).expect("memory");
    g.throughput(Throughput::Bytes(
        (BATCH * (3 * 224 * 224 + 256 * 592) * 2) as u64,
    ));
    g.bench_function(format!("im2col/{BATCH}x3x224x224"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.im2col(&pixels, &mut cols, BATCH, 3, 224, 224, 14)
                    .expect("im2col");
            })
        })
    });
    let tokens = buffer(dev, &[BATCH, TOKENS, HIDDEN], T, 12);
    let mut pooled = dev.alloc(DType::F32, &[BATCH, 2 * HIDDEN]).expect("memory");
    g.throughput(Throughput::Bytes((BATCH * TOKENS * HIDDEN * 2) as u64));
    g.bench_function(
        format!("pool_cls_mean/{BATCH}x{TOKENS}x{HIDDEN}"),
        |bench| {
            bench.iter_custom(|iters| {
                timed(dev, iters, || {
                    dev.pool_tokens(
                        black_box(&tokens),
                        &mut pooled,
                        (BATCH, TOKENS, HIDDEN),
                        1,
                        true,
                        true,
                    )
                    .expect("pool_tokens");
                })
            })
        },
    );
    g.finish();
}

/// The copy ceiling: device-to-device, bytes read plus bytes written per second.
fn ceiling(c: &mut Criterion, dev: &Device) {
    let mut g = c.benchmark_group("ceiling");
    let src = buffer(dev, &[ROWS, HIDDEN], DType::F32, 13);
    let mut dst = dev.alloc(DType::F32, &[ROWS, HIDDEN]).expect("memory");
    let bytes = ROWS * HIDDEN * 4;
    g.throughput(Throughput::Bytes((2 * bytes) as u64));
    g.bench_function(format!("copy_d2d/{bytes}"), |bench| {
        bench.iter_custom(|iters| {
            timed(dev, iters, || {
                dev.copy_into(&src, &mut dst).expect("copy");
            })
        })
    });
    g.finish();
}

/// The whole forward pass per model size, as `dinov2 bench` times it (CUDA graphs on).
fn forward(c: &mut Criterion) {
    let archs = std::env::var("DINOV2_BENCH_ARCHS").unwrap_or_else(|_| "vits14,vitb14".into());
    let batch: usize = std::env::var("DINOV2_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(64);
    let backend = match CudaBackend::new(0, Dtype::F16) {
        Ok(b) => b,
        Err(e) => {
            println!("forward: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("forward_f16");
    g.sample_size(10);
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let Some(config) = released(arch) else {
            eprintln!("DINOV2_BENCH_ARCHS: unknown architecture {arch:?}, skipped");
            continue;
        };
        let model = Dinov2::random(backend.clone(), &config, 0).expect("random weights");
        let n = batch * 3 * 224 * 224;
        let pixels = Tensor::new(vec![batch, 3, 224, 224], values(n, 14)).expect("sizes agree");
        let pixels = model.upload_pixels(&pixels).expect("valid pixels");
        // Two passes: the second records the CUDA graph that the timed passes replay.
        for _ in 0..2 {
            model
                .embed_batch(&pixels, Pooling::Cls, false)
                .expect("forward");
        }
        let flops = flops_per_image(&config, 224, 224) * batch as f64;
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(format!("{arch}/batch{batch}/224px/cls"), |bench| {
            bench.iter(|| {
                // The copy of the CLS vectors to the host waits for the device.
                model
                    .embed_batch(black_box(&pixels), Pooling::Cls, false)
                    .expect("forward")
            })
        });
    }
    g.finish();
}

fn main() {
    let dev = match Device::new(0) {
        Ok(dev) => dev,
        Err(e) => {
            println!("cuda_kernels: nothing to benchmark without a CUDA device: {e}");
            return;
        }
    };
    let info = dev.info();
    println!(
        "cuda_kernels on {} (compute capability {}.{}, {:?}, cuBLAS {})",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.code,
        info.cublas_version
    );
    let mut c = Criterion::default().configure_from_args();
    // The kernel targets first (attention against SDPA, LayerNorm against the copy ceiling),
    // so that a device script cut short by its time limit still has them.
    ceiling(&mut c, &dev);
    attention(&mut c, &dev, "vitb14", (BATCH, TOKENS));
    attention(&mut c, &dev, "vitb14_518px", HIGH_RES);
    // The 128-row flash kernel beside the default 64-row one (the variable is read when a
    // device opens).
    std::env::set_var("DINOV2_ATTENTION", "r128");
    let wide = Device::new(0);
    std::env::remove_var("DINOV2_ATTENTION");
    if let Ok(wide) = wide {
        attention(&mut c, &wide, "vitb14_r128", (BATCH, TOKENS));
        // At 1370 tokens the loop over K/V tiles is 22 long, not 5: the 64-row kernel's warps
        // each read every K/V tile from shared memory for 16 query rows, the 128-row kernel's
        // for 32, half the reads per MMA (run 4: the 64-row kernel at 0.60x SDPA here).
        attention(&mut c, &wide, "vitb14_518px_r128", HIGH_RES);
    }
    // The warpgroup-MMA kernels (H100/H200; opt-in: DINOV2_ATTENTION=wgmma, and wgmma2 with
    // two warpgroups a block sharing each K/V tile) at both lengths; `DINOV2_BENCH_SKIP_WG=1`
    // leaves them out (the device script sets it when their tests timed out).
    let skip_wg = std::env::var("DINOV2_BENCH_SKIP_WG").is_ok_and(|v| v == "1");
    for (choice, label) in [("wgmma", "wg"), ("wgmma2", "wg2")] {
        if skip_wg {
            break;
        }
        std::env::set_var("DINOV2_ATTENTION", choice);
        let wg = Device::new(0);
        std::env::remove_var("DINOV2_ATTENTION");
        let Ok(wg) = wg else { continue };
        if let Some(why) = &wg.info().hopper_error {
            eprintln!("no {label} attention benches: the sm_90a kernels were refused: {why}");
        }
        if wg.info().hopper_kernels() {
            attention(&mut c, &wg, &format!("vitb14_{label}"), (BATCH, TOKENS));
            attention(&mut c, &wg, &format!("vitb14_518px_{label}"), HIGH_RES);
        }
    }
    norms(&mut c, &dev);
    elementwise(&mut c, &dev);
    residual_updates(&mut c, &dev);
    folded_norms(&mut c, &dev);
    gemms(&mut c, &dev);
    attention_probs(&mut c, &dev);
    drop(dev);
    forward(&mut c);
    c.final_summary();
}
