//! Matrix products through the `gemm` crate (multi-threaded, f32 accumulate).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    // Below ~1 MFLOP the threads cost more than they give.
    if threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `y = x · wᵀ + b` for a torch `nn.Linear`: `x` is `[m, k]`, `w` is `[n, k]` (row-major, as
/// stored), `b` is `[n]`; returns `[m, n]`. For a weight used many times, [`transpose`] it once
/// and call [`linear_kn`]: the same values, without repacking the weight at every call.
pub fn linear(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "linear: weight is not [n, k]");
    // w[n, k] row-major is wᵀ[k, n] with strides (1, k).
    product(x, m, k, w, n, b, (1, k as isize))
}

/// [`linear`] with the weight stored transposed, `wt` `[k, n]` row-major ([`transpose`] of the
/// torch layout). The GEMM then packs the weight with contiguous copies instead of a transposing
/// gather: a fifth less time at 257 rows (one 224 px image), the same values.
pub fn linear_kn(
    x: &[f32],
    m: usize,
    k: usize,
    wt: &[f32],
    n: usize,
    b: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(wt.len(), n * k, "linear_kn: weight is not [k, n]");
    product(x, m, k, wt, n, b, (n as isize, 1))
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major (the CPU backend's linear weights, once
/// at load), in tiles of 128 rows by 8 columns: each tile writes 8 output rows of 512 contiguous
/// bytes, few enough for an 8-way L1 even when the output rows lie a multiple of 4 KiB apart.
/// Element by element the writes missed: 2.8-6.2 ns an element on ViT-B/14's weights, 0.5-0.8
/// this way.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE_ROWS: usize = 128;
    const TILE_COLS: usize = 8;
    assert_eq!(values.len(), rows * cols, "transpose: not [rows, cols]");
    let mut out = vec![0.0f32; values.len()];
    for r0 in (0..rows).step_by(TILE_ROWS) {
        for c0 in (0..cols).step_by(TILE_COLS) {
            for r in r0..(r0 + TILE_ROWS).min(rows) {
                let row = &values[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE_COLS).min(cols) {
                    out[c * rows + r] = row[c];
                }
            }
        }
    }
    out
}

/// `y[m, n] = x[m, k] · wᵀ[k, n] + b`, with `wᵀ`'s (row, column) strides given.
fn product(
    x: &[f32],
    m: usize,
    k: usize,
    wt: &[f32],
    n: usize,
    b: Option<&[f32]>,
    (wt_rs, wt_cs): (isize, isize),
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: input is not [m, k]");
    // With a bias, y starts as the bias in every row (written once, not zeroed first); the
    // product is added to it. Without, the product overwrites zeros.
    let mut y = match b {
        Some(b) => {
            assert_eq!(b.len(), n, "linear: bias is not [n]");
            let mut y = Vec::with_capacity(m * n);
            for _ in 0..m {
                y.extend_from_slice(b);
            }
            y
        }
        None => vec![0.0f32; m * n],
    };
    let threads = rayon::current_num_threads();
    if threads > 1 && n > 0 && k > 0 && m >= threads * MIN_ROWS_PER_THREAD {
        // One part of the rows per thread, each product single-threaded.
        let rows = m.div_ceil(threads);
        y.par_chunks_mut(rows * n)
            .zip(x.par_chunks(rows * k))
            .for_each(|(yc, xc)| {
                // SAFETY: as below, for this part's rows of x and y.
                unsafe {
                    let part = (xc.len() / k, k, n);
                    gemm_rows(
                        part,
                        yc,
                        xc,
                        wt,
                        (wt_rs, wt_cs),
                        b.is_some(),
                        Parallelism::None,
                    )
                }
            });
    } else {
        // SAFETY: all three buffers are live and sized as checked above (every element the
        // strides address lies in `wt`: it holds k·n values), and y does not alias x or wt.
        unsafe {
            gemm_rows(
                (m, k, n),
                &mut y,
                x,
                wt,
                (wt_rs, wt_cs),
                b.is_some(),
                parallelism(m, n, k),
            )
        };
    }
    y
}

/// Rows a thread must have before a product is split by rows, one single-threaded product a
/// part, instead of threaded inside the `gemm` crate. At 2056 rows (batch 8) on the 2-core
/// development machine, two halves beat the crate's own threading on all eight ViT-S/14 and
/// ViT-B/14 linear shapes, by 2-11% (medians of 15 interleaved runs, twice); at 257 and 514
/// rows they were level or slower.
const MIN_ROWS_PER_THREAD: usize = 512;

/// `y[m, n] (+)= x[m, k] · wᵀ[k, n]`, adding to `y` when `accumulate`, else overwriting it.
///
/// # Safety
/// `wt` with strides `(wt_rs, wt_cs)` must address only its own `k·n` elements, `y` must hold
/// `m·n` and `x` `m·k` values.
unsafe fn gemm_rows(
    (m, k, n): (usize, usize, usize),
    y: &mut [f32],
    x: &[f32],
    wt: &[f32],
    (wt_rs, wt_cs): (isize, isize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    debug_assert!(y.len() == m * n && x.len() == m * k);
    gemm(
        m,
        n,
        k,
        y.as_mut_ptr(),
        1,
        n as isize,
        accumulate,
        x.as_ptr(),
        1,
        k as isize,
        wt.as_ptr(),
        wt_cs,
        wt_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// Strided matrix view for [`matmul`]: element `(r, c)` is at `offset + r·rs + c·cs`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` over strided views, single-threaded (callers parallelize
/// across independent products). Writes every element of the `dst` view.
///
/// # Safety
/// Every element addressed by the views must lie inside its buffer, and `dst` must not overlap
/// the elements another thread writes at the same time.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    d: View,
    lhs: *const f32,
    l: View,
    rhs: *const f32,
    r: View,
) {
    gemm(
        m,
        n,
        k,
        dst.add(d.offset),
        d.cs as isize,
        d.rs as isize,
        false,
        lhs.add(l.offset),
        l.cs as isize,
        l.rs as isize,
        rhs.add(r.offset),
        r.cs as isize,
        r.rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element_once() {
        // Whole tiles, partial tiles in either dimension, a single row and column, empty.
        for (rows, cols) in [(256, 16), (130, 9), (1, 37), (37, 1), (300, 770), (0, 5)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&values, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        values[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    #[test]
    fn products_split_by_rows_equal_the_whole() {
        // Enough rows for each thread's part (when there are threads), and a ragged last part.
        let threads = rayon::current_num_threads();
        let (m, k, n) = (threads.max(2) * MIN_ROWS_PER_THREAD + 37, 70, 19);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let wt: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 2.0).collect();
        let split = linear_kn(&x, m, k, &wt, n, Some(&b));
        let mut whole: Vec<f32> = (0..m).flat_map(|_| b.iter().copied()).collect();
        // SAFETY: sizes as the product's.
        unsafe {
            gemm_rows(
                (m, k, n),
                &mut whole,
                &x,
                &wt,
                (n as isize, 1),
                true,
                Parallelism::None,
            )
        };
        assert_eq!(split, whole);
        let unbiased = linear_kn(&x, m, k, &wt, n, None);
        let want = linear_kn(&x[..k], 1, k, &wt, n, None);
        assert_eq!(unbiased[..n], want[..]);
    }

    #[test]
    fn linear_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = [0.5, -1.0, 2.0];
        let y = linear(&x, m, k, &w, n, Some(&b));
        for i in 0..m {
            for j in 0..n {
                let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                assert!((y[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
