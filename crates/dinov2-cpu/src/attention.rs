//! Multi-head scaled dot-product attention over packed QKV rows.

use rayon::prelude::*;

use crate::fastmath::{scale_rows, softmax_numerators};
use crate::matmul::{matmul, View, GEMM_SMALL};
use crate::shared_out::SharedOut;

/// How many blocks of query rows each image and head's attention runs in, each task holding
/// the scores of one block. All rows at once up to 512 tokens (1 MiB of scores), else blocks of
/// at most 256 rows. Memory then grows with N, not N², at high resolution; and a block's scores
/// (1.4 MiB at 518 px) stay in the core's L2 between the softmax and P·V, where the whole
/// square (7.5 MiB at 518 px) did not: attention at 1370 tokens ran 1.04-1.21x as fast with
/// blocks of 256 as with the square (ViT-S/14's shapes; docs/PERFORMANCE.md, "High resolution
/// on the CPU").
///
/// Where the images' heads are fewer than two for each of `threads` (one image of ViT-S/14's 6
/// heads on 16 threads), the rows are split further, down to [`MIN_BLOCK_ROWS`], so that every
/// thread has work. The blocks are even ([`block_rows`]).
fn row_blocks(seq: usize, image_heads: usize, threads: usize) -> usize {
    let cached = if seq <= 512 { 1 } else { seq.div_ceil(256) };
    let wanted = (2 * threads).div_ceil(image_heads.max(1));
    cached.max(wanted.min(seq / MIN_BLOCK_ROWS))
}

/// Rows of block `i` of `blocks` over `seq` query rows: even blocks, some a row longer than
/// others where `blocks` does not divide `seq`.
fn block_rows(seq: usize, blocks: usize, i: usize) -> std::ops::Range<usize> {
    i * seq / blocks..(i + 1) * seq / blocks
}

/// Fewest query rows of a block split for the threads' sake. Each block multiplies by all of its
/// head's keys and values, packed again for each block; and a block of at most
/// [`GEMM_SMALL`] rows would have its P·V (head dim ≤ 64 columns) rounded differently from a
/// larger block's, so that the outputs would depend on the number of threads.
const MIN_BLOCK_ROWS: usize = GEMM_SMALL + 1;

/// Softmax attention for each image and head.
///
/// `qkv` is `[B, N, 3·nh·d]`, each row `[q | k | v]`, head `j` at columns `j·d..(j+1)·d` of each
/// part. Returns the heads' outputs concatenated, `[B, N, nh·d]`, and when `want_probs` the
/// post-softmax probabilities `[B, nh, N, N]`. Scores are `q·kᵀ·scale`; the softmax subtracts the
/// row maximum (scale > 0). Without probabilities, each task holds the scores of at most
/// 256 query rows at a time beyond 512 tokens.
pub fn attention(
    qkv: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f64,
    want_probs: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let h = heads * head_dim;
    assert_eq!(
        qkv.len(),
        batch * seq * 3 * h,
        "attention: qkv is not [B, N, 3h]"
    );
    let mut out = vec![0.0f32; batch * seq * h];
    let mut probs = if want_probs {
        vec![0.0f32; batch * heads * seq * seq]
    } else {
        Vec::new()
    };
    let out_ptr = SharedOut::new(out.as_mut_ptr());
    let blocks = row_blocks(seq, batch * heads, rayon::current_num_threads());
    // One image and head, query rows `row0..row0 + rows`: `scores` holds their `rows x seq`.
    let task = |index: usize, row0: usize, rows: usize, scores: &mut [f32]| {
        let (b, head) = (index / heads, index % heads);
        let base = b * seq * 3 * h;
        let q = View {
            offset: base + row0 * 3 * h + head * head_dim,
            rs: 3 * h,
            cs: 1,
        };
        // kᵀ: element (t, j) = k[j][t].
        let kt = View {
            offset: base + h + head * head_dim,
            rs: 1,
            cs: 3 * h,
        };
        let v = View {
            offset: base + 2 * h + head * head_dim,
            rs: 3 * h,
            cs: 1,
        };
        let s = View {
            offset: 0,
            rs: seq,
            cs: 1,
        };
        // SAFETY: views stay inside `qkv` / `scores` (shapes asserted above; `scores` holds
        // `rows x seq`).
        unsafe {
            matmul(
                (rows, seq, head_dim),
                scores.as_mut_ptr(),
                s,
                qkv.as_ptr(),
                q,
                qkv.as_ptr(),
                kt,
            )
        };
        // Softmax numerators and 1/denominators. P·V takes the numerators and each output row
        // is scaled once after (d values, not N); the probabilities, when asked for, are
        // normalized after that, so that asking for them leaves the output as it is.
        let scale = scale as f32;
        let inv = softmax_numerators(&mut scores[..rows * seq], seq, scale);
        let o = View {
            offset: (b * seq + row0) * h + head * head_dim,
            rs: h,
            cs: 1,
        };
        // SAFETY: this task alone writes these rows of image b in the head's columns (row i:
        // head_dim values from o.offset + i·o.rs, inside `out`), and `inv` has one factor a row.
        unsafe {
            matmul(
                (rows, head_dim, seq),
                out_ptr.at(0),
                o,
                scores.as_ptr(),
                s,
                qkv.as_ptr(),
                v,
            );
            scale_rows(out_ptr.at(o.offset), o.rs, head_dim, &inv);
        };
        if want_probs {
            // SAFETY: `scores` holds `rows` rows of `seq`, and `inv` has one factor a row.
            unsafe { scale_rows(scores.as_mut_ptr(), seq, seq, &inv) };
        }
    };
    if want_probs {
        probs
            .par_chunks_mut(seq * seq)
            .enumerate()
            .for_each(|(index, scores)| task(index, 0, seq, scores));
    } else {
        (0..batch * heads * blocks).into_par_iter().for_each_init(
            || vec![0.0f32; seq.div_ceil(blocks) * seq],
            |scores, i| {
                let rows = block_rows(seq, blocks, i % blocks);
                task(i / blocks, rows.start, rows.len(), scores)
            },
        );
    }
    (out, want_probs.then_some(probs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention for comparison.
    fn naive(
        qkv: &[f32],
        b: usize,
        n: usize,
        nh: usize,
        d: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let h = nh * d;
        let at = |bb: usize, t: usize, part: usize, head: usize, c: usize| {
            qkv[(bb * n + t) * 3 * h + part * h + head * d + c] as f64
        };
        let mut out = vec![0.0; b * n * h];
        let mut probs = vec![0.0; b * nh * n * n];
        for bb in 0..b {
            for head in 0..nh {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|c| at(bb, i, 0, head, c) * at(bb, j, 1, head, c))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for j in 0..n {
                        let p = (s[j] - m).exp() / z;
                        probs[((bb * nh + head) * n + i) * n + j] = p;
                        for c in 0..d {
                            out[(bb * n + i) * h + head * d + c] += p * at(bb, j, 2, head, c);
                        }
                    }
                }
            }
        }
        (out, probs)
    }

    #[test]
    fn long_sequences_run_in_row_blocks_with_the_same_results() {
        // 2300 tokens: 9 blocks of 255 or 256 query rows.
        let (b, n, nh, d) = (1, 2300, 2, 8);
        assert_eq!(row_blocks(n, 2, 1), 9);
        assert_eq!(row_blocks(512, 2, 1), 1);
        assert_eq!(block_rows(n, 9, 0), 0..255);
        assert_eq!(block_rows(n, 9, 8), 2044..2300);
        let qkv: Vec<f32> = (0..b * n * 3 * nh * d)
            .map(|i| ((i * 7919) % 97) as f32 / 40.0 - 1.2)
            .collect();
        let scale = 1.0 / (d as f64).sqrt();
        let (blocked, _) = attention(&qkv, b, n, nh, d, scale, false);
        let (whole, probs) = attention(&qkv, b, n, nh, d, scale, true);
        assert!(probs.is_some());
        // The probabilities path computes each head's rows at once.
        let worst = blocked
            .iter()
            .zip(&whole)
            .map(|(a, w)| (a - w).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "blocked vs whole: {worst}");
        // Against f64 on a few rows of each block.
        let h = nh * d;
        let at = |t: usize, part: usize, head: usize, c: usize| {
            qkv[t * 3 * h + part * h + head * d + c] as f64
        };
        for head in 0..nh {
            for i in [0, 254, 255, 510, 511, 1500, 2043, 2044, 2299] {
                let sc: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d)
                            .map(|c| at(i, 0, head, c) * at(j, 1, head, c))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for c in 0..d {
                    let want: f64 = (0..n)
                        .map(|j| (sc[j] - m).exp() / z * at(j, 2, head, c))
                        .sum();
                    let got = blocked[i * h + head * d + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {i} head {head}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_threads_split_the_rows_with_the_same_results() {
        // One image of 6 heads on 16 threads: blocks of 85 or 86 rows (3); never under 65.
        assert_eq!(row_blocks(257, 6, 16), 3);
        assert_eq!(row_blocks(257, 6, 2), 1);
        assert_eq!(row_blocks(257, 96, 16), 1);
        assert_eq!(row_blocks(1370, 6, 16), 6);
        assert_eq!(row_blocks(1370, 1, 64), 21);
        assert_eq!(row_blocks(60, 1, 64), 1);
        for (seq, blocks) in [(257, 3), (1370, 21), (130, 2)] {
            let sizes: Vec<usize> = (0..blocks)
                .map(|i| block_rows(seq, blocks, i).len())
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), seq);
            assert!(sizes.iter().all(|&r| r > GEMM_SMALL), "{seq}: {sizes:?}");
        }
        // Head dim 64 and 600 keys: P·V is a product of at most 64 columns with k > 512.
        let (b, n, nh, d) = (1, 600, 2, 64);
        let qkv: Vec<f32> = (0..b * n * 3 * nh * d)
            .map(|i| ((i * 7919) % 97) as f32 / 40.0 - 1.2)
            .collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| attention(&qkv, b, n, nh, d, 0.25, false).0)
        };
        assert_eq!(run(16), run(1));
    }

    #[test]
    fn matches_naive_on_awkward_sizes() {
        let (b, n, nh, d) = (2, 13, 3, 8);
        let qkv: Vec<f32> = (0..b * n * 3 * nh * d)
            .map(|i| ((i * 7919) % 97) as f32 / 30.0 - 1.5)
            .collect();
        let scale = 1.0 / (d as f64).sqrt();
        let (out, probs) = attention(&qkv, b, n, nh, d, scale, true);
        let (out2, _) = attention(&qkv, b, n, nh, d, scale, false);
        let (want_out, want_probs) = naive(&qkv, b, n, nh, d, scale);
        assert_eq!(out, out2);
        for (a, w) in out.iter().zip(&want_out) {
            assert!((*a as f64 - w).abs() < 1e-5, "{a} vs {w}");
        }
        for (a, w) in probs.unwrap().iter().zip(&want_probs) {
            assert!((*a as f64 - w).abs() < 1e-6);
        }
    }
}
