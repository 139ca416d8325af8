//! A lane-by-lane CPU emulation of the tensor-core flash-attention kernel
//! (`flash_attention<T, DP>` in `kernels/flash.cuh`), run against a naive attention: it checks
//! the kernel's index arithmetic without a GPU.
//!
//! * `ldmatrix` (`.m8n8.x4`, with and without `.trans`) and `mma.sync.m16n8k16.row.col` (f32
//!   accumulators) are emulated from the fragment layouts of the PTX ISA: matrix `i` of an x4
//!   load takes its row addresses from lanes `8i..8i+8`; lane `l` then holds row `l/4`, columns
//!   `2(l%4)`, `2(l%4)+1` (transposed: those rows of column `l/4`). A (16x16): registers 0..3 hold
//!   rows g, g+8, g, g+8 and columns 2t(+1), 2t(+1), 2t+8(+1), 2t+8(+1) (g = lane/4, t = lane%4);
//!   B (16x8): registers 0, 1 hold rows 2t(+1) and 2t+8(+1) of column g; C/D: elements 0, 1 at
//!   row g and 2, 3 at row g+8, columns 2t, 2t+1.
//! * The kernel's address, mask and output expressions are transcribed here one for one;
//!   `the_emulated_expressions_are_the_kernels` fails when flash.cuh no longer contains them,
//!   so the two cannot drift apart silently.
//! * Shared memory starts as NaN, so a read of a row pad or of an unloaded element poisons the
//!   output; outputs start as NaN, so an element the kernel forgets to write shows.
//!
//! Values stay f32 (P is not rounded to f16/bf16): the comparison checks indexing, tightly.

// The loops mirror the kernel's indexed loops on purpose, to keep the transcription literal.
#![allow(clippy::needless_range_loop)]

use std::path::Path;

#[path = "../reference/mod.rs"]
mod reference;
use reference::{naive_attention, random, rel_l2};

mod kernel;
use kernel::{flash_block, Problem, BM};

#[test]
fn the_emulated_flash_kernel_is_softmax_attention() {
    // (batch, n, heads, d): every padded head dim, d < pad, one tile and several, N a multiple
    // of the tile and not, a single token.
    let cases = [
        (2, 13, 3, 8),
        (1, 1, 1, 8),
        (1, 65, 2, 16),
        (1, 100, 1, 24),
        (1, 64, 1, 32),
        (1, 77, 2, 40),
        (1, 130, 2, 64),
        (1, 50, 2, 72),
        (1, 70, 1, 96),
        (1, 129, 1, 128),
        (1, 257, 2, 64),
    ];
    // Both kernels: one m-tile a warp (every pad) and two (the _r128 kernels, pad <= 64).
    let runs = cases.iter().flat_map(|&c| [(c, 1), (c, 2)]);
    for ((b, n, heads, d), mt_count) in runs {
        let dp = [16, 32, 64, 96, 128].into_iter().find(|&p| p >= d).unwrap();
        if mt_count == 2 && dp > 64 {
            continue;
        }
        let scale = (d as f64).powf(-0.5);
        let p = Problem {
            n,
            heads,
            d,
            dp,
            scale_log2: (scale as f32) * std::f32::consts::LOG2_E,
        };
        let qkv = random(b * n * 3 * heads * d, (n * 131 + d) as u64);
        let mut out = vec![f32::NAN; b * n * heads * d];
        for img in 0..b {
            for head in 0..heads {
                for bx in 0..n.div_ceil(BM * mt_count) {
                    // The kernels' q0: blockIdx.x · FA_BM · MT.
                    let q0 = bx * BM * mt_count;
                    flash_block(&p, mt_count, &qkv, &mut out, q0, (head, img));
                }
            }
        }
        let want = naive_attention(&qkv, b, n, heads, d, scale);
        for (i, &g) in out.iter().enumerate() {
            assert!(
                g.is_finite(),
                "b={b} n={n} heads={heads} d={d} mt={mt_count}: out[{i}] = {g}"
            );
        }
        let err = rel_l2(&out, &want);
        assert!(
            err < 1e-5,
            "b={b} n={n} heads={heads} d={d} mt={mt_count}: rel L2 {err:.2e}"
        );
    }
}

/// The kernel lines the emulation transcribes, whitespace ignored.
#[test]
fn the_emulated_expressions_are_the_kernels() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/flash.cuh");
    let source = std::fs::read_to_string(&path).expect("kernels/flash.cuh");
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let source = squeeze(&source);
    for expr in [
        "#define FA_BM 64",
        "#define FA_BN 64",
        "#define FA_THREADS 128",
        "constexpr int LDS = DP + 8, CPR = DP / 8, CHUNKS = ROWS * CPR;",
        "constexpr int BQ = FA_BM * MT;",
        "T* sK = sQ + BQ * LDS;",
        "const int wrow = warp * 16 * MT;",
        "fa_load_tile<T, DP, BQ>(sQ, base, q0, n, d, ld);",
        "static_assert(CHUNKS % FA_THREADS == 0, \"a tile is whole passes of the block\");",
        "if constexpr (FA_THREADS % CPR == 0) {",
        "constexpr int RSTEP = FA_THREADS / CPR;",
        "const int r = threadIdx.x / CPR, col = (threadIdx.x % CPR) * 8;",
        "const T* g = src + (long)(row0 + r) * ld + col;",
        "const uint32_t s = smem_addr(dst + r * LDS + col);",
        "for (int i = 0; i < CHUNKS / FA_THREADS; i++) {",
        "const bool ok = row0 + r + i * RSTEP < n && col < d;",
        "fa_cp_async16(s + i * RSTEP * LDS * (int)sizeof(T), ok ? g + i * RSTEP * ld : src, ok);",
        "const int c = threadIdx.x + i * FA_THREADS;",
        "const int r = c / CPR, col = (c % CPR) * 8;",
        "const bool ok = row0 + r < n && col < d;",
        "fa_cp_async16(smem_addr(dst + r * LDS + col), ok ? src + (long)(row0 + r) * ld + col : src, \
         ok);",
        "const long ld = 3L * hd;",
        "const T* base = qkv + (long)img * n * ld + (long)head * d;",
        "const T* kbase = base + hd;",
        "const T* vbase = base + 2 * hd;",
        "ldmatrix_x4(qf[mt][kk], smem_addr(sQ + (qrow + mt * 16 + (lane & 15)) * LDS + kk * 16 + \
         (lane >> 4) * 8));",
        "const int key = np * 16 + (lane & 7) + (mat >> 1) * 8;",
        "const int dim = kk * 16 + (mat & 1) * 8;",
        "ldmatrix_x4(b, smem_addr(k + key * LDS + dim));",
        "Mma<T>::run(s[mt][2 * np], qf[mt][kk], b[0], b[1]);",
        "Mma<T>::run(s[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);",
        "const bool split = MT == 1 && n - q0 <= 16;",
        "const int qrow = split ? 0 : wrow;",
        "const bool live = split || q0 + wrow < n;",
        "const int c0 = warp * 16, key_base = j * FA_BN + c0;",
        "if (key_base + 16 > n) { if (key_base < n) fa_tile<T, DP, MT, true, 16>(qf, o, m0, m1, \
         l0, l1, k + c0 * LDS, v + c0 * LDS, key_base, n, lane, scale_log2); } else { \
         fa_tile<T, DP, MT, false, 16>(qf, o, m0, m1, l0, l1, k + c0 * LDS, v + c0 * LDS, \
         key_base, n, lane, scale_log2); }",
        "const float mx0 = fmaxf(m0[0], mw0), mx1 = fmaxf(m1[0], mw1);",
        "const float b0 = ex2_approx(fmaf(mw0, scale_log2, -ms0));",
        "l0[0] = l0[0] * a0 + p[(OTILES * 4 + 2) * 32] * b0;",
        "o[0][t][0] = o[0][t][0] * a0 + p[(t * 4) * 32] * b0;",
        "o[0][t][3] = o[0][t][3] * a1 + p[(t * 4 + 3) * 32] * b1;",
        "if (warp > 0) return;",
        "if (live) {",
        "if (!live) return;",
        "} else if ((j + 1) * FA_BN > n) { fa_tile<T, DP, MT, true, FA_BN>(qf, o, m0, m1, l0, \
         l1, k, v, j * FA_BN, n, lane, scale_log2); } else { fa_tile<T, DP, MT, false, \
         FA_BN>(qf, o, m0, m1, l0, l1, k, v, j * FA_BN, n, lane, scale_log2); }",
        "const int valid = n - key_base;",
        "if (TAIL && np * 16 >= valid) continue;",
        "const int key0 = key_base + tig * 2;",
        "if (key0 + t * 8 + (e & 1) >= n) s[mt][t][e] = -INFINITY;",
        "const float ms0 = mx0 * scale_log2, ms1 = mx1 * scale_log2;",
        "const float alpha0 = ex2_approx(fmaf(m0[mt], scale_log2, -ms0));",
        "const float alpha1 = ex2_approx(fmaf(m1[mt], scale_log2, -ms1));",
        "s[mt][t][0] = ex2_approx(fmaf(s[mt][t][0], scale_log2, -ms0));",
        "s[mt][t][3] = ex2_approx(fmaf(s[mt][t][3], scale_log2, -ms1));",
        "if (TAIL && kk * 16 >= valid) continue;",
        "a[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);",
        "a[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);",
        "a[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);",
        "a[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);",
        "const int key = kk * 16 + (lane & 7) + (mat & 1) * 8;",
        "const int dim = dp * 16 + (mat >> 1) * 8;",
        "ldmatrix_x4_trans(b, smem_addr(v + key * LDS + dim));",
        "Mma<T>::run(o[mt][2 * dp], a[mt], b[0], b[1]);",
        "Mma<T>::run(o[mt][2 * dp + 1], a[mt], b[2], b[3]);",
        "const int r0 = q0 + qrow + mt * 16 + g, r1 = r0 + 8;",
        "T* obase = out + (long)img * n * hd + (long)head * d + tig * 2;",
        "if (t * 8 < d) {",
        "*reinterpret_cast<uint32_t*>(obase + (long)r0 * hd + t * 8) = \
         Mma<T>::pack(o[mt][t][0] * inv0, o[mt][t][1] * inv0);",
        "*reinterpret_cast<uint32_t*>(obase + (long)r1 * hd + t * 8) = \
         Mma<T>::pack(o[mt][t][2] * inv1, o[mt][t][3] * inv1);",
    ] {
        assert!(
            source.contains(&squeeze(expr)),
            "flash.cuh no longer contains `{expr}`: update tests/flash_emulation.rs"
        );
    }
    // The kernels' first query row, as the test gives it.
    let kernels =
        std::fs::read_to_string(path.with_file_name("attention.cu")).expect("attention.cu");
    for expr in [
        "flash_attention<T, DP, 1>(qkv, out, n, heads, d, scale_log2, blockIdx.x * FA_BM);",
        "flash_attention<T, DP, 2>(qkv, out, n, heads, d, scale_log2, blockIdx.x * 2 * FA_BM);",
    ] {
        assert!(
            squeeze(&kernels).contains(&squeeze(expr)),
            "attention.cu no longer contains `{expr}`: update tests/flash_emulation"
        );
    }
}
