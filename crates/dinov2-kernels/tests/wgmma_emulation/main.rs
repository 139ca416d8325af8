//! A CPU emulation of the Hopper kernels (`kernels/gemm_sm90a.cu`, `kernels/attention_sm90a.cu`,
//! their helpers in `kernels/wgmma.cuh`) down to shared-memory byte addresses, run against a naive
//! GEMM and attention: it checks their index arithmetic, descriptors and pipelines without a GPU.
//!
//! What is emulated comes from the PTX ISA, independently of the kernels:
//! * the matrix descriptor's fields (start address, leading and stride byte offsets, swizzle
//!   mode, base offset), decoded from the 64-bit value the kernel builds;
//! * the canonical layouts of wgmma operands in shared memory, 128-byte swizzle, with T = 8
//!   16-bit elements (16 bytes): K-major `((8,m),(T,2k)):((8T,SBO),(1,T))` and MN-major
//!   `((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))`, the swizzle XORing address bits 4-6 with bits 7-9
//!   of the address;
//! * the register fragments of `m64nNk16`: accumulator element `4j + e` of thread `t` of the
//!   warpgroup is row `16(t/32) + (t%32)/4 + 8(e/2)`, column `8j + 2(t%4) + e%2`; the A fragment
//!   from registers (four 32-bit registers) is the same layout over 16 columns, register `r`
//!   holding elements `2r, 2r + 1`;
//! * `cp.async` groups and `wgmma` groups with their waits, in two timings: copies land as late
//!   as their wait allows while the MMAs read at issue (a read before the data landed shows), or
//!   copies land at issue while the MMAs read as late as their wait allows (a copy over a stage
//!   still being read shows).
//!
//! The kernels' address, loop and fragment expressions are transcribed one for one;
//! `the_emulated_expressions_are_the_kernels` fails when the sources no longer contain them.
//! Shared memory starts as NaN and at an address that is not 1024-aligned; outputs start as NaN.
//! Values stay f32 (no rounding to 16 bits), so the comparison checks indexing, tightly.

// The loops mirror the kernels' indexed loops on purpose, to keep the transcription literal.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::path::Path;

#[path = "../reference/mod.rs"]
mod reference;
use reference::{naive_attention, random, rel_l2};

mod attention;
#[path = "../flash_emulation/kernel.rs"]
mod flash;
mod gemm;
mod hopper;
use attention::{attention_block, ATTN_WG_D, ATTN_WG_ROWS};
use gemm::{
    gemm_block, gemm_pp_cluster, gemm_ws_cluster, Epilogue, Folded, Gemm, GEMM_TILES, GM_BM, GP_BN,
    GW_BN,
};
use hopper::{
    frag_pos, k_major, load_sw128_tile, mn_major, sw128_desc, Block, Timing, RAW, TIMINGS,
};

/// An epilogue activation by name.
type Act = (&'static str, fn(f32) -> f32);

fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())) as f32
}

/// `act(x·wᵀ + bias)` in f64 (the activation in f32, as the kernel applies it).
fn linear_reference(p: &Gemm) -> Vec<f64> {
    let (m, n, k) = (p.m, p.n, p.k);
    (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let dot: f64 = (0..k)
                .map(|j| p.x[r * k + j] as f64 * p.w[c * k + j] as f64)
                .sum();
            let pre = dot + p.bias.map_or(0.0, |b| b[c] as f64);
            (p.act)(pre as f32) as f64
        })
        .collect()
}

/// Every output written, and all within 1e-6 (relative L2) of `linear_reference`.
fn check_linear(what: &str, y: &[f32], p: &Gemm) {
    assert!(
        y.iter().all(|v| v.is_finite()),
        "{what}: an output unwritten or NaN"
    );
    let err = rel_l2(y, &linear_reference(p));
    assert!(err < 1e-6, "{what}: rel L2 {err:.2e}");
}

#[test]
fn the_emulated_gemm_is_a_linear_layer() {
    // (m, n, k): one row; a partial last row tile; more K steps than stages; several column
    // tiles; K of a single step.
    let shapes = [
        (1, 256, 64),
        (130, 256, 192),
        (200, 512, 320),
        (128, 256, 448),
        (70, 768, 64),
    ];
    let identity: Act = ("identity", |x| x);
    let gelu: Act = ("gelu_tanh", gelu_tanh);
    for (m, n, k) in shapes {
        let x = random(m * k, (m * 7 + k) as u64);
        let w = random(n * k, (n * 13 + k) as u64);
        let bias = random(n, n as u64);
        for tile in GEMM_TILES {
            if n % tile.bn != 0 {
                continue;
            }
            for timing in TIMINGS {
                for (with_bias, (act_name, act)) in [(true, identity), (false, gelu), (true, gelu)]
                {
                    let p = Gemm {
                        x: &x,
                        w: &w,
                        bias: with_bias.then_some(&bias[..]),
                        act,
                        m,
                        n,
                        k,
                    };
                    let mut y = vec![f32::NAN; m * n];
                    for by in 0..m.div_ceil(GM_BM) {
                        for bx in 0..n / tile.bn {
                            gemm_block(&p, tile, timing, &mut y, (bx, by));
                        }
                    }
                    let what = format!(
                        "m={m} n={n} k={k} {tile:?} {timing:?} bias={with_bias} {act_name}"
                    );
                    check_linear(&what, &y, &p);
                }
            }
        }
    }
}

/// The warp-specialized TMA kernels, alone and in clusters of two CTAs multicasting B, their
/// producers and consumers running concurrently: rows past m (zero-filled by the copy engine; a
/// CTA wholly past m in the last cluster), one K step and more steps than stages (every stage
/// refilled, both mbarrier parities in turn), several column tiles. A wrong phase or count
/// deadlocks (a panic after seconds of no progress) or reads a stage's other fill.
#[test]
fn the_emulated_tma_gemm_is_a_linear_layer() {
    let shapes = [
        (1, 256, 64),
        (130, 256, 192),
        (200, 512, 320),
        (129, 256, 704),
        (70, 768, 64),
    ];
    for shape in shapes {
        check_tma_gemm(shape, |p, cluster, y| {
            // Whole clusters along M (the launcher rounds the grid up).
            for pair in 0..p.m.div_ceil(GM_BM).div_ceil(cluster) {
                for bx in 0..p.n / GW_BN {
                    gemm_ws_cluster(p, cluster, y, (bx, pair));
                }
            }
            "TMA".to_string()
        });
    }
}

#[test]
fn the_emulated_persistent_gemm_is_a_linear_layer() {
    // (m, n, k, blocks): one tile; blocks with one and two tiles; four tiles a block, with K
    // steps not a multiple of the stages (a consumer's first stage is then phases ahead of
    // the other's); a K step a tile (fewer than the stages); several turns on long K.
    let shapes = [
        (1, 128, 64, 1),
        (130, 256, 192, 3),
        (200, 512, 320, 2),
        (300, 384, 64, 4),
        (129, 128, 704, 1),
        (256, 256, 128, 132),
    ];
    for (m, n, k, blocks) in shapes {
        check_tma_gemm((m, n, k), |p, cluster, y| {
            // The launcher's grid: a cluster a unit of `cluster` row tiles by a column tile,
            // at most `blocks` CTAs (the resident clusters).
            let units = m.div_ceil(GM_BM).div_ceil(cluster) * (n / GP_BN);
            let clusters = units.min(usize::div_ceil(blocks, cluster));
            for first in 0..clusters {
                gemm_pp_cluster(p, cluster, y, Epilogue::Output(None), (first, clusters));
            }
            format!("persistent on {clusters} clusters")
        });
    }
}

/// Runs `gemm(p, cluster, y)` (a whole grid of a TMA kernel into `y`, which starts as NaN) on
/// random operands of `(m, n, k)`, with a bias and the tanh GELU and with neither, alone and in
/// clusters of two, and holds it to `linear_reference`; `gemm` says which kernel ran.
fn check_tma_gemm(
    (m, n, k): (usize, usize, usize),
    gemm: impl Fn(&Gemm, usize, &mut [f32]) -> String,
) {
    let x = random(m * k, (m * 5 + k) as u64);
    let w = random(n * k, (n * 11 + k) as u64);
    let bias = random(n, n as u64 + 1);
    for (with_bias, act) in [(true, gelu_tanh as fn(f32) -> f32), (false, |x| x)] {
        let p = Gemm {
            x: &x,
            w: &w,
            bias: with_bias.then_some(&bias[..]),
            act,
            m,
            n,
            k,
        };
        for cluster in [1, 2] {
            let mut y = vec![f32::NAN; m * n];
            let kernel = gemm(&p, cluster, &mut y);
            let what = format!("{kernel}, cluster {cluster}, m={m} n={n} k={k} bias={with_bias}");
            check_linear(&what, &y, &p);
        }
    }
}

#[test]
fn the_emulated_persistent_gemm_updates_a_residual_stream() {
    // The MLP's output layer's shapes (k >= 2n), several tiles a block, a partial row tile.
    for (m, n, k, blocks) in [(130, 256, 512, 3), (200, 128, 320, 1), (300, 384, 768, 132)] {
        let x = random(m * k, (m + k) as u64);
        let w = random(n * k, (n * 5 + k) as u64);
        let bias = random(n, n as u64 + 3);
        let gamma = random(n, n as u64 + 4);
        let stream = random(m * n, (m * n) as u64);
        let p = Gemm {
            x: &x,
            w: &w,
            bias: Some(&bias[..]),
            act: |x| x,
            m,
            n,
            k,
        };
        let branch = linear_reference(&p);
        let want: Vec<f64> = (0..m * n)
            .map(|i| stream[i] as f64 + gamma[i % n] as f64 * branch[i])
            .collect();
        // Each row's (mean, M2) over each 128-column tile of the updated stream.
        let want_stats: Vec<f64> = (0..m * n / GP_BN)
            .flat_map(|i| {
                let (r, t) = (i / (n / GP_BN), i % (n / GP_BN));
                let v = &want[r * n + t * GP_BN..r * n + (t + 1) * GP_BN];
                let mean = v.iter().sum::<f64>() / GP_BN as f64;
                [mean, v.iter().map(|x| (x - mean).powi(2)).sum()]
            })
            .collect();
        for cluster in [1, 2] {
            let mut y = stream.clone();
            let mut stats = vec![[f32::NAN; 2]; m * n / GP_BN];
            let units = m.div_ceil(GM_BM).div_ceil(cluster) * (n / GP_BN);
            let clusters = units.min(usize::div_ceil(blocks, cluster));
            for first in 0..clusters {
                let epilogue = Epilogue::Residual {
                    gamma: &gamma,
                    stats: Some(&mut stats),
                };
                gemm_pp_cluster(&p, cluster, &mut y, epilogue, (first, clusters));
            }
            let what = format!("residual cluster {cluster} m={m} n={n} k={k}");
            let err = rel_l2(&y, &want);
            assert!(err < 1e-6, "{what}: rel L2 {err:.2e}");
            let err = rel_l2(stats.as_flattened(), &want_stats);
            assert!(err < 1e-5, "{what}: statistics rel L2 {err:.2e}");
        }
    }
}

/// The persistent kernel with a LayerNorm folded in (the `_ln` kernels): the residual stream
/// as x, the folded weight and bias (`fold_layer_norm`), each row's statistics as one pair
/// (`row_stats`) or one a 128-column group (a `_res_rx` kernel's), against the norm and then
/// the linear layer in f64. Rows far from zero mean with a large column, as DINOv2's residual
/// streams have, make the mean's cancellation matter.
#[test]
fn the_emulated_persistent_gemm_folds_a_layer_norm() {
    let eps = 1e-6f32;
    for (m, n, k, blocks) in [(130, 256, 256, 3), (300, 384, 384, 132), (1, 128, 128, 1)] {
        let mut x: Vec<f32> = random(m * k, (m + 3 * k) as u64)
            .iter()
            .enumerate()
            .map(|(i, v)| 2.0 * v + 3.0 + (i / k % 5) as f32)
            .collect();
        for r in 0..m {
            x[r * k + 5] = 40.0;
        }
        let w = random(n * k, (n * 3 + k) as u64);
        let bias = random(n, n as u64 + 5);
        let gamma: Vec<f32> = random(k, k as u64 + 6)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let beta = random(k, k as u64 + 7);
        // LayerNorm (biased variance) then the linear layer and the activation, in f64.
        let normed: Vec<f32> = x
            .chunks_exact(k)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                (0..k).map(move |c| (row[c] as f64 - mean) * inv)
            })
            .enumerate()
            .map(|(i, v)| (v * gamma[i % k] as f64 + beta[i % k] as f64) as f32)
            .collect();
        let folded = dinov2_kernels::fold_layer_norm(
            &w,
            Some(&bias),
            &gamma,
            &beta,
            (n, k),
            dinov2_kernels::DType::F32,
        )
        .expect("shapes");
        for parts in [1, k / GP_BN] {
            // Each row's (mean, M2) over `parts` groups of columns, in f32.
            let group = k / parts;
            let stats: Vec<[f32; 2]> = x
                .chunks_exact(group)
                .map(|v| {
                    let mean = v.iter().sum::<f32>() / group as f32;
                    [mean, v.iter().map(|x| (x - mean) * (x - mean)).sum()]
                })
                .collect();
            let norm = Folded {
                stats: &stats,
                parts,
                colsum: &folded.colsum,
                eps,
            };
            for (act_name, act) in [("identity", (|x| x) as fn(f32) -> f32), ("gelu", gelu_tanh)] {
                let reference = Gemm {
                    x: &normed,
                    w: &w,
                    bias: Some(&bias),
                    act,
                    m,
                    n,
                    k,
                };
                let want = linear_reference(&reference);
                let p = Gemm {
                    x: &x,
                    w: &folded.weight,
                    bias: Some(&folded.bias),
                    ..reference
                };
                for cluster in [1, 2] {
                    let mut y = vec![f32::NAN; m * n];
                    let units = m.div_ceil(GM_BM).div_ceil(cluster) * (n / GP_BN);
                    let clusters = units.min(usize::div_ceil(blocks, cluster));
                    for first in 0..clusters {
                        let epilogue = Epilogue::Output(Some(&norm));
                        gemm_pp_cluster(&p, cluster, &mut y, epilogue, (first, clusters));
                    }
                    let what = format!(
                        "folded norm, {parts} parts, {act_name}, cluster {cluster}, m={m} n={n} k={k}"
                    );
                    assert!(
                        y.iter().all(|v| v.is_finite()),
                        "{what}: an output unwritten"
                    );
                    let err = rel_l2(&y, &want);
                    assert!(err < 1e-5, "{what}: rel L2 {err:.2e}");
                }
            }
        }
    }
}

/// The launches of `Device::attention` for the warpgroup-MMA kernels (`wgmma_launches` in
/// ops/attention.rs): (warpgroups a block, blocks, first query row) for blocks of `rows` query rows.
fn wgmma_launches(n: usize, rows: usize) -> Vec<(usize, usize, usize)> {
    if rows == ATTN_WG_ROWS {
        return vec![(1, n.div_ceil(rows), 0)];
    }
    let tail = n % rows;
    if tail == 0 || tail > 16 {
        return vec![(2, n.div_ceil(rows), 0)];
    }
    let mut launches = Vec::new();
    if n / rows > 0 {
        launches.push((2, n / rows, 0));
    }
    launches.push((1, 1, n - tail));
    launches
}

#[test]
fn the_emulated_wgmma_attention_is_softmax_attention() {
    // Token counts: one; last key tiles of 1, 15, 16 (n16), 17, 32 (n32), 33 and 63 keys (n64,
    // masked) and none (whole tiles); several query blocks; 257 (ViT at 224 px: a last tile of
    // one key, a last query tile of one row). With 128-row blocks also a second warpgroup with
    // no rows (80), a part-filled one (130 + 16 > 128: 144), and 16 rows past a whole block.
    let lengths = [1, 15, 16, 17, 32, 33, 63, 64, 80, 96, 130, 144, 257, 272];
    let (b, heads, d) = (2, 2, ATTN_WG_D);
    for n in lengths {
        let scale = (d as f64).powf(-0.5);
        let scale_log2 = (scale as f32) * std::f32::consts::LOG2_E;
        let qkv = random(b * n * 3 * heads * d, (n * 131 + 7) as u64);
        let want = naive_attention(&qkv, b, n, heads, d, scale);
        for (rows, timing) in [64, 128].into_iter().flat_map(|r| TIMINGS.map(|t| (r, t))) {
            let mut out = vec![f32::NAN; b * n * heads * d];
            for (wgs, blocks, q_first) in wgmma_launches(n, rows) {
                for img in 0..b {
                    for head in 0..heads {
                        for bx in 0..blocks {
                            let at = (bx, head, img);
                            attention_block(
                                timing, wgs, q_first, &qkv, &mut out, n, heads, scale_log2, at,
                            );
                        }
                    }
                }
            }
            let what = format!("n={n} {rows}-row blocks {timing:?}");
            assert!(
                out.iter().all(|v| v.is_finite()),
                "{what}: an output unwritten or NaN"
            );
            let err = rel_l2(&out, &want);
            assert!(err < 1e-5, "{what}: rel L2 {err:.2e}");
        }
    }
}

/// The emulated layouts themselves: the swizzled loader and the descriptors' reads agree on every
/// element of a tile, K-major and MN-major, at every K step the kernels take; the fragments are
/// bijections.
#[test]
fn the_loader_and_the_descriptors_agree() {
    // A 64-row tile whose element (r, c) holds r·64 + c, loaded as the kernels load.
    let global: Vec<f32> = (0..64 * 64).map(|i| i as f32).collect();
    let mut b = Block::new(Timing::MmasLate, 64 * 128 + 1024);
    let tile = (RAW + 1023) & !1023;
    load_sw128_tile(&mut b, 64, 128, tile, &global, 0, 64, 64);
    let desc = sw128_desc(tile);
    for kk in 0..4u64 {
        for r in 0..64 {
            for k in 0..16 {
                let want = (r * 64 + 16 * kk as usize + k) as f32;
                assert_eq!(
                    b.read(k_major(desc + 2 * kk, r, k)),
                    want,
                    "K-major kk={kk} ({r}, {k})"
                );
            }
        }
    }
    for kk in 0..4u64 {
        for k in 0..16 {
            for c in 0..64 {
                let want = ((16 * kk as usize + k) * 64 + c) as f32;
                assert_eq!(
                    b.read(mn_major(desc + 128 * kk, k, c)),
                    want,
                    "MN-major kk={kk} ({k}, {c})"
                );
            }
        }
    }
    for n in [16, 32, 64, 128, 256] {
        let mut seen = vec![0u8; 64 * n];
        for t in 0..128 {
            for i in 0..n / 2 {
                let (r, c) = frag_pos(t, i);
                seen[r * n + c] += 1;
            }
        }
        assert!(
            seen.iter().all(|&s| s == 1),
            "m64n{n}: the fragment is not a bijection"
        );
    }
}

/// The kernel lines the emulation transcribes, whitespace ignored.
#[test]
fn the_emulated_expressions_are_the_kernels() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let read = |name: &str| squeeze(&std::fs::read_to_string(root.join(name)).expect(name));
    let files = [
        (
            "wgmma.cuh",
            &[
                "return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | \
                 ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);",
                "constexpr int STEP = THREADS / 8;",
                "static_assert(STEP % 8 == 0 && ROWS % STEP == 0, \"whole swizzle groups, whole passes\");",
                "const int c = threadIdx.x & 7, r0 = threadIdx.x >> 3;",
                "const uint32_t swizzled = (uint32_t)((c ^ (r0 & 7)) << 4);",
                "for (int i = 0; i < ROWS / STEP; i++) {",
                "const int r = r0 + STEP * i;",
                "const bool ok = r < live;",
                "cp_async16(dst + r * 128 + swizzled, ok ? src + r * ld + c * 8 : src, ok ? 16 : 0);",
                "\"wgmma.mma_async.sync.aligned.m64n128k16.f32.\" TY \".\" TY \" {\"",
                "\"wgmma.mma_async.sync.aligned.m64n256k16.f32.\" TY \".\" TY \" {\"",
                "\"wgmma.mma_async.sync.aligned.m64n16k16.f32.\" TY \".\" TY \" {\"",
                "\"wgmma.mma_async.sync.aligned.m64n32k16.f32.\" TY \".\" TY \" {\"",
                "\"wgmma.mma_async.sync.aligned.m64n64k16.f32.\" TY \".\" TY \" {\"",
                // SS: scale-d, scale-a, scale-b, trans-a = 0, trans-b = 0; RS: trans-b = 1.
                "\"}, %64, %65, p, 1, 1, 0, 0;\\n}\\n\"",
                "\"}, %128, %129, p, 1, 1, 0, 0;\\n}\\n\"",
                "\"}, %8, %9, p, 1, 1, 0, 0;\\n}\\n\"",
                "\"}, %16, %17, p, 1, 1, 0, 0;\\n}\\n\"",
                "\"}, %32, %33, p, 1, 1, 0, 0;\\n}\\n\"",
                "\"}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\\n}\\n\"",
                ": \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(db), \"r\"(1))",
                // The mbarrier and TMA forms the warp-specialized kernel's emulation stands for.
                "\"mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\\n\"",
                "\"mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\\n\"",
                "\"mbarrier.arrive.shared::cta.b64 _, [%0];\\n\"",
                "\"mov.u32 lane, %%laneid;\\nsetp.eq.u32 lead, lane, 0;\\n\"",
                "\"mapa.shared::cluster.u32 remote, %0, %1;\\n\"",
                "\"@lead mbarrier.arrive.shared::cta.b64 _, [%0], 32;\\n\"",
                "\"@lead mbarrier.arrive.shared::cluster.b64 _, [remote], 32;\\n}\\n\"",
                "\".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\\n\"",
                "\"cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes\" \
                 \" [%0], [%1, {%3, %4}], [%2];\\n\"",
            ][..],
        ),
        (
            "gemm_sm90a.cu",
            &[
                "#define GM_BM 128",
                "#define GM_BK 64",
                "#define GM_THREADS 256",
                "#define GM_STAGE_BYTES(BN) ((GM_BM + (BN)) * GM_BK * 2)",
                "#define GM_SMEM_BYTES(BN, STAGES) ((STAGES) * GM_STAGE_BYTES(BN) + 1024)",
                "constexpr int A_BYTES = GM_BM * GM_BK * 2;",
                "constexpr int LOOKAHEAD = STAGES - 1 - WAIT;",
                "const uint32_t base = (raw + 1023u) & ~1023u;",
                "uint8_t* const tile = smem_raw + (base - raw);",
                "const int wg = tid >> 7;",
                "const int m0 = blockIdx.y * GM_BM;",
                "const int n0 = blockIdx.x * BN;",
                "const int steps = k / GM_BK;",
                "const uint32_t sa = base + stage * STAGE_BYTES;",
                "const int k0 = step * GM_BK;",
                "load_sw128_tile<GM_BM, GM_THREADS>(sa, x + (size_t)m0 * k + k0, k, m - m0);",
                "load_sw128_tile<BN, GM_THREADS>(sa + A_BYTES, w + (size_t)n0 * k + k0, k, BN);",
                "for (int s = 0; s < LOOKAHEAD; s++) { if (s < steps) load_step(s, s); cp_async_commit(); }",
                "cp_async_wait<LOOKAHEAD - 1>();",
                "const uint32_t stage = base + (step % STAGES) * STAGE_BYTES;",
                "const uint64_t da = sw128_desc(stage + wg * (64 * 128));",
                "const uint64_t db = sw128_desc(stage + A_BYTES);",
                "for (int kk = 0; kk < GM_BK / 16; kk++) wgmma_k16<T, BN>(d, da + 2 * kk, db + 2 * kk);",
                "mma_k_step<T, BN>(d, da, db); const int next = step + LOOKAHEAD; if (next < steps) \
                 load_step(next, next % STAGES); cp_async_commit(); wgmma_wait<WAIT>();",
                // mma_k_step
                "fence_accumulators(d); wgmma_fence(); #pragma unroll \
                 for (int kk = 0; kk < GM_BK / 16; kk++) wgmma_k16<T, BN>(d, da + 2 * kk, db + 2 * kk); \
                 wgmma_commit(); }",
                "wgmma_wait<0>(); fence_accumulators(d); cp_async_wait<0>();",
                "__syncthreads(); stage_tile<T, ACT, BN>(d, tile, wg * 64 + ((tid >> 5) & 3) * 16 + \
                 ((tid & 31) >> 2), tid & 31, bias, bias_f32, n0); __syncthreads(); \
                 store_tile<T, BN, GM_THREADS>(tile, y, m0, m, n, n0, tid);",
                // stage_tile, store_tile
                "constexpr int ROW_BYTES = BN * 2 + 16;",
                "for (int j = 0; j < BN / 8; j++) {",
                "const int col = j * 8 + (lane & 3) * 2;",
                "const float b0 = bias_at<T>(bias, bias_f32, n0 + col);",
                "const float b1 = bias_at<T>(bias, bias_f32, n0 + col + 1);",
                "const float2 rn0 = NORM ? rownorm[row] : make_float2(0.0f, 0.0f);",
                "const float2 rn1 = NORM ? rownorm[row + 8] : make_float2(0.0f, 0.0f);",
                "const float s0 = NORM ? colsum[n0 + col] : 0.0f, s1 = NORM ? colsum[n0 + col + 1] : 0.0f;",
                "*reinterpret_cast<uint32_t*>(tile + row * ROW_BYTES + col * 2) = \
                 pack2<T>(activate(pre_activation<NORM>(d[4 * j], b0, rn0, s0), ACT), \
                 activate(pre_activation<NORM>(d[4 * j + 1], b1, rn0, s1), ACT));",
                "*reinterpret_cast<uint32_t*>(tile + (row + 8) * ROW_BYTES + col * 2) = \
                 pack2<T>(activate(pre_activation<NORM>(d[4 * j + 2], b0, rn1, s0), ACT), \
                 activate(pre_activation<NORM>(d[4 * j + 3], b1, rn1, s1), ACT));",
                // pre_activation, row_norm
                "return NORM ? fmaf(rn.y, fmaf(-rn.x, cs, sum), bias) : sum + bias;",
                "float mean = 0.0f; for (int t = 0; t < parts; t++) mean += p[t].x; mean /= parts; \
                 const float group = (float)(k / parts); float m2 = 0.0f; \
                 for (int t = 0; t < parts; t++) { const float dm = p[t].x - mean; \
                 m2 += p[t].y + group * dm * dm; } return make_float2(mean, 1.0f / sqrtf(m2 / k + eps));",
                "constexpr int CHUNKS = BN / 8;",
                "for (int i = t; i < GM_BM * CHUNKS; i += THREADS) {",
                "const int r = i / CHUNKS, ch = i % CHUNKS;",
                "if (m0 + r < m) { *reinterpret_cast<uint4*>(y + (size_t)(m0 + r) * n + n0 + ch * 8) = \
                 *reinterpret_cast<const uint4*>(tile + r * ROW_BYTES + ch * 16); }",
                // gemm_ws_body
                "#define GW_BN 256",
                "#define GW_STAGES 4",
                "#define GW_THREADS 384",
                "#define GW_SMEM_BYTES (GW_STAGES * GM_STAGE_BYTES(GW_BN) + 2 * GW_STAGES * 8 + 1024)",
                "constexpr int STAGE_BYTES = GM_STAGE_BYTES(GW_BN);",
                "const uint32_t full = base + GW_STAGES * STAGE_BYTES;",
                "const uint32_t empty = full + GW_STAGES * 8;",
                "const int n0 = blockIdx.x * GW_BN;",
                "const uint32_t rank = CLUSTER == 1 ? 0 : cluster_ctarank();",
                // init_stage_barriers, fill_stage, release_stage
                "if (threadIdx.x == 0) { for (int s = 0; s < STAGES; s++) { mbar_init(full + 8 * s, 1); \
                 mbar_init(empty + 8 * s, releases); } mbar_init_fence(); } \
                 if (CLUSTER == 1) __syncthreads(); else cluster_sync(); }",
                "constexpr int A_BYTES = GM_BM * GM_BK * 2; const int s = it % STAGES; \
                 if (it >= STAGES) mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1); \
                 const uint32_t stage = base + s * GM_STAGE_BYTES(BN), bar = full + 8 * s; \
                 mbar_arrive_expect_tx(bar, GM_STAGE_BYTES(BN)); \
                 tma_load_2d(stage, map_x, bar, k0, m0); if (CLUSTER == 1) { \
                 tma_load_2d(stage + A_BYTES, map_w, bar, k0, n0); } else { constexpr int HALF = BN / 2; \
                 tma_load_2d_multicast(stage + A_BYTES + rank * (HALF * 128), map_w, bar, k0, n0 + rank * HALF, 0x3); }",
                "if (CLUSTER == 1) mbar_arrive(bar); else mbar_arrive_warp_here_and_there(bar, rank ^ 1);",
                "init_stage_barriers<GW_STAGES, CLUSTER>(full, empty, CLUSTER * 2 * 128); if (wg == 0) {",
                "setmaxnreg_dec<40>(); if (tid == 0) { for (int step = 0; step < steps; step++) \
                 produce_stage<GW_BN, GW_STAGES, CLUSTER>(step, base, full, empty, map_x, map_w, step * GM_BK, \
                 m0, n0, rank); } if (CLUSTER == 1) return; } else { setmaxnreg_inc<232>();",
                "if (CLUSTER == 2) cluster_sync(); }",
                // the consumers
                "const int c = wg - 1;",
                "for (int step = 0; step < steps; step++) { const int s = step % GW_STAGES; \
                 mbar_wait(full + 8 * s, (step / GW_STAGES) & 1); \
                 const uint32_t stage = base + s * STAGE_BYTES; \
                 const uint64_t da = sw128_desc(stage + c * (64 * 128)); \
                 const uint64_t db = sw128_desc(stage + A_BYTES);",
                "mma_k_step<T, GW_BN>(d, da, db); wgmma_wait<1>(); fence_accumulators(d);",
                "if (step > 0) release_stage<CLUSTER>(empty + 8 * ((step - 1) % GW_STAGES), rank); } \
                 wgmma_wait<0>(); fence_accumulators(d);",
                "named_barrier(1, 2 * 128); stage_tile<T, ACT, GW_BN>(d, tile, c * 64 + ((tid >> 5) & 3) * 16 + \
                 ((tid & 31) >> 2), tid & 31, bias, bias_f32, n0); named_barrier(1, 2 * 128); \
                 store_tile<T, GW_BN, 2 * 128>(tile, y, m0, m, n, n0, tid - 128);",
                "gemm_ws_body<T, ACT, 1>(&map_x, &map_w, bias, bias_f32, y, m, n, k);",
                "extern \"C\" __global__ void __cluster_dims__(1, 2, 1) __launch_bounds__(GW_THREADS, 1)",
                "gemm_ws_body<T, ACT, 2>(&map_x, &map_w, bias, bias_f32, y, m, n, k);",
                "GEMM_WS_KERNEL(name, T, aname, ACT)",
                // gemm_pp_body
                "#define GP_BN 128",
                "#define GP_STAGES 4",
                "#define GP_THREADS 384",
                "#define GP_TILE_BYTES (GM_BM * (GP_BN * 2 + 16))",
                "#define GP_NORM_BYTES (GM_BM * 8)",
                "#define GP_SMEM_BYTES \\ (GP_STAGES * GM_STAGE_BYTES(GP_BN) + 2 * GP_TILE_BYTES + \
                 2 * GP_STAGES * 8 + 2 * GP_NORM_BYTES + 1024)",
                "float2* const row_norms = reinterpret_cast<float2*>(out_tiles + 2 * GP_TILE_BYTES + \
                 2 * GP_STAGES * 8);",
                "for (int kk = 0; kk < GM_BK / 16; kk++) { wgmma_k16<T, GP_BN>(d0, da0 + 2 * kk, db + 2 * kk); \
                 wgmma_k16<T, GP_BN>(d1, da1 + 2 * kk, db + 2 * kk); } wgmma_commit();",
                "uint8_t* const out_tiles = smem_raw + (base - raw) + GP_STAGES * STAGE_BYTES;",
                "const uint32_t full = base + GP_STAGES * STAGE_BYTES + 2 * GP_TILE_BYTES;",
                "const uint32_t empty = full + GP_STAGES * 8;",
                "const int col_tiles = n / GP_BN;",
                "const int units = ((m + GM_BM - 1) / GM_BM + CLUSTER - 1) / CLUSTER * col_tiles;",
                "const int first = blockIdx.x / CLUSTER, stride = gridDim.x / CLUSTER;",
                "init_stage_barriers<GP_STAGES, CLUSTER>(full, empty, CLUSTER * 128);",
                "auto unit_m0 = [&](int u) { return (u / col_tiles * CLUSTER + (int)rank) * GM_BM; };",
                "auto unit_n0 = [&](int u) { return u % col_tiles * GP_BN; };",
                "int it = 0; for (int u = first; u < units; u += stride) \
                 for (int step = 0; step < steps; step++, it++) \
                 produce_stage<GP_BN, GP_STAGES, CLUSTER>(it, base, full, empty, map_x, map_w, step * GM_BK, \
                 unit_m0(u), unit_n0(u), rank); } if (CLUSTER == 1) return; } else {",
                "uint8_t* const out = out_tiles + c * GP_TILE_BYTES;",
                "const int row = ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);",
                "for (int i = c; first + i * stride < units; i += 2) { \
                 const int u = first + i * stride, m0 = unit_m0(u), n0 = unit_n0(u);",
                "if (i > 0) named_barrier(2 + c, 2 * 128);",
                "for (int step = 0; step < steps; step++) { const int it = i * steps + step, s = it % GP_STAGES; \
                 mbar_wait(full + 8 * s, (it / GP_STAGES) & 1); \
                 const uint32_t stage = base + s * STAGE_BYTES; \
                 mma_k_step_128rows<T>(d0, d1, sw128_desc(stage), sw128_desc(stage + 64 * 128), \
                 sw128_desc(stage + A_BYTES)); wgmma_wait<1>(); fence_accumulators(d0); \
                 fence_accumulators(d1);",
                "if (step > 0) release_stage<CLUSTER>(empty + 8 * ((it - 1) % GP_STAGES), rank); }",
                "if (first + (i + 1) * stride < units) named_barrier_arrive(2 + (c ^ 1), 2 * 128);",
                "if (NORM) {",
                "const int r = m0 + (tid & 127); row_norms[c * GM_BM + (tid & 127)] = \
                 r < m ? row_norm(norm.stats + (size_t)r * norm.parts, norm.parts, k, norm.eps) \
                 : make_float2(0.0f, 0.0f); } \
                 wgmma_wait<0>(); fence_accumulators(d0); fence_accumulators(d1); \
                 release_stage<CLUSTER>(empty + 8 * ((i * steps + steps - 1) % GP_STAGES), rank);",
                "tid & 127, stats_out); } } \
                 // CLUSTER 2: neither CTA leaves while the other may still copy into it or \
                 arrive on its // barriers. if (CLUSTER == 2) cluster_sync(); }",
                "extern \"C\" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(GP_THREADS, 1)",
                "named_barrier(4 + c, 128); const float2* const rn = row_norms + c * GM_BM; \
                 stage_tile<T, ACT, GP_BN, NORM>(d0, out, row, tid & 31, bias, bias_f32, n0, rn, norm.colsum); \
                 stage_tile<T, ACT, GP_BN, NORM>(d1, out, 64 + row, tid & 31, bias, bias_f32, n0, rn, norm.colsum); \
                 named_barrier(4 + c, 128);",
                "gemm_pp_body<T, ACT, 1, 0>(&map_x, &map_w, bias, bias_f32, y, nullptr, m, n, k);",
                "gemm_pp_body<T, ACT, 2, 0>(&map_x, &map_w, bias, bias_f32, y, nullptr, m, n, k);",
                "gemm_pp_body<T, ACT_IDENTITY, CLUSTER, RES>(&map_x, &map_w, bias, bias_f32, x, gamma, m, n, \\ \
                 k, stats);",
                "gemm_pp_body<T, ACT, CLUSTER, 0, true>(&map_x, &map_w, bias, 1, y, nullptr, m, n, k, nullptr, \\ \
                 FoldedNorm{stats, colsum, parts, eps});",
                "GEMM_PP_LN_KERNEL(name, T, aname, ACT, 1, pp, )",
                "GEMM_PP_LN_KERNEL(name, T, aname, ACT, 2, pp2, __cluster_dims__(2, 1, 1))",
                "GEMM_PP_RES_KERNEL(name, T, res, 1, 1, pp, )",
                "GEMM_PP_RES_KERNEL(name, T, res_rx, 2, 1, pp, )",
                "GEMM_PP_RES_KERNEL(name, T, res, 1, 2, pp2, __cluster_dims__(2, 1, 1))",
                "GEMM_PP_RES_KERNEL(name, T, res_rx, 2, 2, pp2, __cluster_dims__(2, 1, 1))",
                // store_tile_residual
                "constexpr int QUADS = BN / 4;",
                "for (int i = t; i < GM_BM * QUADS; i += THREADS) { const int r = i / QUADS, c = 4 * (i % QUADS); \
                 if (m0 + r < m) { X* xr = x + (size_t)(m0 + r) * n + n0 + c; \
                 const float4 xv = load4(xr), gv = load4(gamma + n0 + c), \
                 bv = load4(reinterpret_cast<const T*>(tile + r * ROW_BYTES + c * 2)); \
                 const float4 v = round4(make_float4(xv.x + gv.x * bv.x, xv.y + gv.y * bv.y, \
                 xv.z + gv.z * bv.z, xv.w + gv.w * bv.w), xr); store4(xr, v);",
                "if (stats_out) { const float mean = warp_sum(v.x + v.y + v.z + v.w) / BN; \
                 const float dx = v.x - mean, dy = v.y - mean, dz = v.z - mean, dw = v.w - mean; \
                 const float m2 = warp_sum(dx * dx + dy * dy + dz * dz + dw * dw); \
                 if (c == 0) stats_out[(size_t)(m0 + r) * (n / BN) + n0 / BN] = make_float2(mean, m2); } } }",
                "if (RES == 0) store_tile<T, GP_BN, 128>(out, static_cast<T*>(y), m0, m, n, n0, tid & 127); \
                 else if (RES == 1) store_tile_residual<T, float, GP_BN, 128>(out, static_cast<float*>(y), \
                 gamma, m0, m, n, n0, tid & 127, stats_out); else store_tile_residual<T, T, GP_BN, 128>(out, \
                 static_cast<T*>(y), gamma, m0, m, n, n0, tid & 127, stats_out); } }",
                "GEMM_PP_KERNEL(name, T, aname, ACT)",
                "GEMM_KERNEL(name, T, aname, ACT, 128, 3, 0, 2)",
                "GEMM_KERNEL(name, T, aname, ACT, 256, 4, 1, 1)",
            ][..],
        ),
        (
            "attention_sm90a.cu",
            &[
                "#define ATTN_WG_ROWS 64",
                "#define ATTN_WG_KEYS 64",
                "#define ATTN_WG_D 64",
                "#define ATTN_WG_THREADS 128",
                "#define ATTN_WG_TILE_BYTES (64 * 64 * 2)",
                "#define ATTN_WG_SMEM ((FA_BM + 4 * FA_BN) * (ATTN_WG_D + 8) * 2)",
                "for (int kk = 0; kk < ATTN_WG_D / 16; kk++) wg_qk<T, KEYS>(s, dq + 2 * kk, dk + 2 * kk);",
                "wgmma_commit(); if (PV) {",
                "for (int kk = 0; kk < ATTN_WG_KEYS / 16; kk++) wg_pv<T>(o, p[kk], dv + 128 * kk); \
                 wgmma_commit(); wgmma_wait<1>(); } else { wgmma_wait<0>(); } fence_accumulators(s);",
                "if (PV) { wgmma_wait<0>(); fence_accumulators(o); fence_fragments(p); } #pragma unroll \
                 for (int jj = 0; jj < 8; jj++) { o[4 * jj] *= alpha0;",
                "const int key0 = key_base + 2 * q;",
                "if (key0 + 8 * (i >> 2) + (i & 1) >= n) s[i] = -INFINITY;",
                "mx0 = fmaxf(mx0, fmaxf(s[4 * jj], s[4 * jj + 1]));",
                "mx1 = fmaxf(mx1, fmaxf(s[4 * jj + 2], s[4 * jj + 3]));",
                "mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));",
                "mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));",
                "const float ms0 = mx0 * scale_log2, ms1 = mx1 * scale_log2;",
                "const float alpha0 = ex2_approx(fmaf(m0, scale_log2, -ms0));",
                "const float alpha1 = ex2_approx(fmaf(m1, scale_log2, -ms1));",
                "s[4 * jj] = ex2_approx(fmaf(s[4 * jj], scale_log2, -ms0));",
                "s[4 * jj + 3] = ex2_approx(fmaf(s[4 * jj + 3], scale_log2, -ms1));",
                "sum0 += s[4 * jj] + s[4 * jj + 1];",
                "sum1 += s[4 * jj + 2] + s[4 * jj + 3];",
                "l0 = l0 * alpha0 + sum0;",
                "l1 = l1 * alpha1 + sum1;",
                "o[4 * jj] *= alpha0;",
                "o[4 * jj + 3] *= alpha1;",
                "p[kk][0] = pack2<T>(s[8 * kk], s[8 * kk + 1]);",
                "p[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);",
                "p[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);",
                "p[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);",
                "for (int kk = 0; kk < KEYS / 16; kk++) wg_pv<T>(o, p[kk], dv + 128 * kk); \
                 wgmma_commit(); wgmma_wait<0>(); fence_accumulators(o); fence_fragments(p); }",
                "const uint32_t sq = (raw + 1023u) & ~1023u;",
                "const uint32_t sk = sq + WGS * ATTN_WG_TILE_BYTES;",
                "const uint32_t sv = sk + 2 * ATTN_WG_TILE_BYTES;",
                "constexpr int THREADS = WGS * ATTN_WG_THREADS;",
                "const int wg = threadIdx.x >> 7;",
                "const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;",
                "const int q0 = q_first + blockIdx.x * WGS * ATTN_WG_ROWS;",
                "const long ld = 3L * hd;",
                "const T* base = qkv + (long)img * n * ld + (long)head * D;",
                "const T* kbase = base + hd;",
                "const T* vbase = base + 2 * hd;",
                "if (WGS == 1 && n - q0 <= 16) { flash_attention<T, ATTN_WG_D, 1>(qkv, out, n, heads, \
                 ATTN_WG_D, scale_log2, q0); return; }",
                "for (int w = 0; w < WGS; w++) { const int rows = q0 + ATTN_WG_ROWS * w;",
                "load_sw128_tile<64, THREADS>(sq + w * ATTN_WG_TILE_BYTES, base + (long)(rows < n ? rows : \
                 0) * ld, ld, n - rows); }",
                "load_sw128_tile<64, THREADS>(sk, kbase, ld, n); cp_async_commit();",
                "const bool live = WGS == 1 || q0 + ATTN_WG_ROWS * wg < n;",
                "const uint64_t dq = sw128_desc(sq + wg * ATTN_WG_TILE_BYTES);",
                "for (int j = 0; j < tiles; j++) {",
                "cp_async_wait<0>(); fence_proxy_async(); __syncthreads(); \
                 const long key_base = (long)j * ATTN_WG_KEYS, next = key_base + ATTN_WG_KEYS;",
                "if (j + 1 < tiles) load_sw128_tile<64, THREADS>(sk + ((j + 1) & 1) * ATTN_WG_TILE_BYTES, \
                 kbase + next * ld, ld, n - (int)next); load_sw128_tile<64, THREADS>(sv + (j & 1) * \
                 ATTN_WG_TILE_BYTES, vbase + key_base * ld, ld, n - (int)key_base); cp_async_commit();",
                "const uint64_t dk = sw128_desc(sk + (j & 1) * ATTN_WG_TILE_BYTES);",
                "const uint64_t dv = sw128_desc(sv + ((j + 1) & 1) * ATTN_WG_TILE_BYTES);",
                "const int kb = (int)key_base, left = n - kb;",
                "wg_step<T, KEYS, TAIL, PV>(o, p, m0, m1, l0, l1, dq, dk, dv, kb, n, q, scale_log2)",
                "if (left <= 16) WG_STEP(16, true); else if (left <= 32) WG_STEP(32, true); \
                 else if (left < ATTN_WG_KEYS) WG_STEP(64, true); else WG_STEP(64, false);",
                "if (!live) { } else if (j == 0) { step(Flag<false>()); } else { step(Flag<true>()); }",
                "cp_async_wait<0>(); fence_proxy_async(); __syncthreads(); if (!live) return; \
                 const int left = n - (tiles - 1) * ATTN_WG_KEYS; \
                 const uint64_t dv = sw128_desc(sv + ((tiles - 1) & 1) * ATTN_WG_TILE_BYTES); \
                 if (left <= 16) wg_last_pv<T, 16>(o, p, dv); else if (left <= 32) wg_last_pv<T, 32>(o, p, dv); \
                 else wg_last_pv<T, 64>(o, p, dv);",
                "const float inv0 = 1.0f / t0, inv1 = 1.0f / t1;",
                "const int r0 = q0 + ATTN_WG_ROWS * wg + warp * 16 + g, r1 = r0 + 8;",
                "#define ATTN_WG2_SMEM (6 * ATTN_WG_TILE_BYTES + 1024)",
                "attention_wg<T, 1>(qkv, out, n, heads, scale_log2, q_first);",
                "attention_wg<T, 2>(qkv, out, n, heads, scale_log2, 0);",
                "T* obase = out + (long)img * n * hd + (long)head * D + 2 * q;",
                "if (r0 < n) *reinterpret_cast<uint32_t*>(obase + (long)r0 * hd + 8 * jj) = \
                 pack2<T>(o[4 * jj] * inv0, o[4 * jj + 1] * inv0);",
                "if (r1 < n) *reinterpret_cast<uint32_t*>(obase + (long)r1 * hd + 8 * jj) = \
                 pack2<T>(o[4 * jj + 2] * inv1, o[4 * jj + 3] * inv1);",
                "WG_QK(f16, \"f16\", 64, WGMMA_N64_SS)",
                "WG_QK(f16, \"f16\", 32, WGMMA_N32_SS)",
                "WG_QK(f16, \"f16\", 16, WGMMA_N16_SS)",
                "WGMMA_N64_RS_TRANS_B(\"f16\", o, a, dv);",
            ][..],
        ),
    ];
    // The launcher's plan, as `wgmma_launches` above transcribes it.
    let ops = squeeze(
        &std::fs::read_to_string(root.join("../crates/dinov2-kernels/src/ops/attention.rs"))
            .expect("ops/attention.rs"),
    );
    for expr in [
        "if rows == WGMMA_ROWS { return vec![WgLaunch { rows, blocks: n.div_ceil(rows), q_first: Some(0), }]; }",
        "let tail = n % rows; if tail == 0 || tail > 16 { return vec![WgLaunch { rows, blocks: \
         n.div_ceil(rows), q_first: None, }]; }",
        "if n / rows > 0 { launches.push(WgLaunch { rows, blocks: n / rows, q_first: None, }); }",
        "launches.push(WgLaunch { rows: WGMMA_ROWS, blocks: 1, q_first: Some(n - tail), });",
    ] {
        assert!(ops.contains(&squeeze(expr)), "ops/attention.rs no longer contains `{expr}`: update tests/wgmma_emulation");
    }
    for (name, exprs) in files {
        let source = read(name);
        for expr in exprs {
            assert!(
                source.contains(&squeeze(expr)),
                "{name} no longer contains `{expr}`: update tests/wgmma_emulation.rs"
            );
        }
    }
}
