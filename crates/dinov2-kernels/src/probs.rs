//! The plan of the attention that also returns its probabilities ([`Device::attention_probs`]):
//! `P = softmax(scale · Q·Kᵀ)` and `O = P·V` as two cuBLAS products around a row softmax kernel.
//!
//! The packed `qkv` rows `[batch, n, 3·heads·d]` are read in place. The `(image, head)` blocks
//! of Q, K, V and O are strided matrices, and the probabilities `[batch, heads, n, n]` are
//! contiguous, so each product is a few strided-batched GEMMs: one per head over the images,
//! or one per image over the heads, whichever launches fewer.
//!
//! In cuBLAS's column-major terms, a row-major `[r, c]` block with row pitch `ld` is the `c × r`
//! matrix with leading dimension `ld`:
//!
//! - scores: the row-major `S = Q·Kᵀ` (`n × n`) is the column-major `Sᵀ = K·Qᵀ`, with `A` the
//!   stored K block (`d × n`, used transposed) and `B` the stored Q block (`d × n`);
//! - values: the row-major `O = P·V` (`n × d`, pitch `heads·d`) is the column-major
//!   `Oᵀ = Vᵀ·Pᵀ`, with `A` the stored V block (`d × n`) and `B` the stored P block (`n × n`).
//!
//! [`Device::attention_probs`]: crate::Device::attention_probs

use crate::gemm::{BatchedGemm, StridedOperand};

/// Where the `(image, head)` blocks of one launch start, and the distance between the blocks it
/// batches, in elements of the qkv, probabilities and output buffers.
#[derive(Debug, Clone, Copy)]
struct Blocks {
    qkv: (usize, usize),
    probs: (usize, usize),
    out: (usize, usize),
    count: usize,
}

/// The strided-batched GEMMs of the attention over `batch` images of `n` tokens and `heads`
/// heads of dim `d`: those of the scores `Q·Kᵀ` (into the probabilities' buffer) and those of
/// the values `P·V` (into the output), one of each per launch.
pub(crate) fn attention_gemms(
    batch: usize,
    n: usize,
    heads: usize,
    d: usize,
) -> Vec<(BatchedGemm, BatchedGemm)> {
    let h = heads * d;
    let (ld, nn) = (3 * h, n * n);
    let launches: Vec<Blocks> = if batch >= heads {
        // One launch per head, batched over the images.
        (0..heads)
            .map(|j| Blocks {
                qkv: (j * d, n * ld),
                probs: (j * nn, heads * nn),
                out: (j * d, n * h),
                count: batch,
            })
            .collect()
    } else {
        // One launch per image, batched over the heads.
        (0..batch)
            .map(|i| Blocks {
                qkv: (i * n * ld, d),
                probs: (i * heads * nn, nn),
                out: (i * n * h, d),
                count: heads,
            })
            .collect()
    };
    let operand = |(offset, stride): (usize, usize), extra: usize, ld: usize| StridedOperand {
        offset: offset + extra,
        ld,
        stride,
    };
    launches
        .into_iter()
        .map(|l| {
            let scores = BatchedGemm {
                m: n,
                n,
                k: d,
                transa: true,
                transb: false,
                a: operand(l.qkv, h, ld),
                b: operand(l.qkv, 0, ld),
                c: operand(l.probs, 0, n),
                count: l.count,
            };
            let values = BatchedGemm {
                m: d,
                n,
                k: n,
                transa: false,
                transb: false,
                a: operand(l.qkv, 2 * h, ld),
                b: operand(l.probs, 0, n),
                c: operand(l.out, 0, h),
                count: l.count,
            };
            (scores, values)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C_i = alpha · op(A_i) · op(B_i)` exactly as `cublasGemmStridedBatchedEx` defines it on
    /// column-major storage (beta 0), written into `c`; checks that every matrix lies inside
    /// its buffer and that the leading dimensions are legal.
    fn strided_batched(g: &BatchedGemm, alpha: f64, a: &[f64], b: &[f64], c: &mut [f64]) {
        let (a_rows, a_cols) = if g.transa { (g.k, g.m) } else { (g.m, g.k) };
        let (b_rows, b_cols) = if g.transb { (g.n, g.k) } else { (g.k, g.n) };
        for (o, rows, cols, len) in [
            (&g.a, a_rows, a_cols, a.len()),
            (&g.b, b_rows, b_cols, b.len()),
            (&g.c, g.m, g.n, c.len()),
        ] {
            assert!(
                o.ld >= rows.max(1),
                "leading dimension {} < rows {rows}",
                o.ld
            );
            let last = o.offset + (g.count - 1) * o.stride + (cols - 1) * o.ld + rows - 1;
            assert!(last < len, "matrix ends at {last}, buffer holds {len}");
        }
        for i in 0..g.count {
            let at =
                |o: &StridedOperand, r: usize, col: usize| o.offset + i * o.stride + r + col * o.ld;
            let opa = |r: usize, l: usize| {
                if g.transa {
                    a[at(&g.a, l, r)]
                } else {
                    a[at(&g.a, r, l)]
                }
            };
            let opb = |l: usize, col: usize| {
                if g.transb {
                    b[at(&g.b, col, l)]
                } else {
                    b[at(&g.b, l, col)]
                }
            };
            for col in 0..g.n {
                for r in 0..g.m {
                    let s: f64 = (0..g.k).map(|l| opa(r, l) * opb(l, col)).sum();
                    c[at(&g.c, r, col)] = alpha * s;
                }
            }
        }
    }

    /// The attention computed from its definition: (out `[batch, n, heads·d]`, probabilities
    /// `[batch, heads, n, n]`).
    fn direct(
        qkv: &[f64],
        batch: usize,
        n: usize,
        heads: usize,
        d: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let h = heads * d;
        let mut out = vec![0.0; batch * n * h];
        let mut probs = vec![0.0; batch * heads * n * n];
        for i in 0..batch {
            for j in 0..heads {
                let x = |t: usize, part: usize, c: usize| {
                    qkv[(i * n + t) * 3 * h + part * h + j * d + c]
                };
                for r in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|t| scale * (0..d).map(|c| x(r, 0, c) * x(t, 1, c)).sum::<f64>())
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for t in 0..n {
                        probs[((i * heads + j) * n + r) * n + t] = e[t] / sum;
                    }
                    for c in 0..d {
                        out[(i * n + r) * h + j * d + c] =
                            (0..n).map(|t| e[t] / sum * x(t, 2, c)).sum();
                    }
                }
            }
        }
        (out, probs)
    }

    /// The plan run by the emulated cuBLAS, with the softmax kernel's arithmetic in between,
    /// gives the attention's definition: more images than heads, fewer, as many, one token.
    #[test]
    fn the_plan_computes_the_attention() {
        for &(batch, n, heads, d) in &[
            (3, 5, 2, 4),
            (1, 7, 3, 8),
            (2, 4, 2, 3),
            (1, 1, 1, 2),
            (4, 3, 1, 5),
            (2, 6, 5, 2),
        ] {
            let h = heads * d;
            let scale = 1.0 / (d as f64).sqrt();
            let qkv: Vec<f64> = (0..batch * n * 3 * h)
                .map(|i| (i as f64 * 0.731).sin())
                .collect();
            let (want_out, want_probs) = direct(&qkv, batch, n, heads, d, scale);
            let plan = attention_gemms(batch, n, heads, d);
            assert_eq!(
                plan.len(),
                batch.min(heads),
                "one launch per head or per image"
            );
            let mut probs = vec![f64::NAN; batch * heads * n * n];
            let mut out = vec![f64::NAN; batch * n * h];
            for (scores, _) in &plan {
                strided_batched(scores, scale, &qkv, &qkv, &mut probs);
            }
            // softmax_rows: every row of n scores, in place.
            for row in probs.chunks_mut(n) {
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - mx).exp() / sum);
            }
            for (_, values) in &plan {
                strided_batched(values, 1.0, &qkv, &probs, &mut out);
            }
            let what = format!("batch {batch} n {n} heads {heads} d {d}");
            for (got, want) in probs.iter().zip(&want_probs) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{what}: probabilities {got} against {want}"
                );
            }
            for (got, want) in out.iter().zip(&want_out) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{what}: output {got} against {want}"
                );
            }
        }
    }
}
