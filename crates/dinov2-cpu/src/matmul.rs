//! Matrix products through the `gemm` crate (multi-threaded, f32 accumulate).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::ops::Range;

use crate::shared_out::SharedOut;

/// The `gemm` crate's own threading for a product not split among the threads ([`Split`]).
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= MIN_THREADED_PRODUCT {
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
    if let Some(b) = b {
        assert_eq!(b.len(), n, "linear: bias is not [n]");
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let y_out = SharedOut::new(y.spare_capacity_mut().as_mut_ptr().cast());
    // The product of rows `rows` and columns `cols` of y, written into y: the block starts as
    // the bias in every row, and the product is added to it; without a bias, the product
    // overwrites zeros. Each thread fills its own block right before its product, so the
    // filling is shared and the block is still in cache when the product reads it.
    let block = |rows: Range<usize>, cols: Range<usize>, parallelism| {
        // SAFETY: all three buffers are live and sized as checked above: rows and cols lie
        // within [0, m) and [0, n), so every element the strides address from column
        // cols.start of wᵀ lies in `wt` (k·n values) and every element of y written lies in
        // y's capacity. Blocks run at the same time write disjoint rows or columns of y, which
        // does not alias x or wt; the product reads only elements the fill has written.
        unsafe {
            fill(y_out, n, rows.clone(), cols.clone(), b);
            gemm_into(
                (rows.len(), k, cols.len()),
                (y_out.at(rows.start * n + cols.start), n),
                &x[rows.start * k..rows.end * k],
                wt.as_ptr().offset(cols.start as isize * wt_cs),
                (wt_rs, wt_cs),
                b.is_some(),
                parallelism,
            )
        }
    };
    match Split::choose(m, k, n, rayon::current_num_threads()) {
        Split::Rows(part) => (0..m.div_ceil(part))
            .into_par_iter()
            .for_each(|p| block(p * part..m.min((p + 1) * part), 0..n, Parallelism::None)),
        Split::Columns(part) => (0..n.div_ceil(part))
            .into_par_iter()
            .for_each(|p| block(0..m, p * part..n.min((p + 1) * part), Parallelism::None)),
        Split::Whole => block(0..m, 0..n, parallelism(m, n, k)),
    }
    // SAFETY: the blocks of every split cover all m·n elements, and each block's fill wrote
    // all of its own.
    unsafe { y.set_len(m * n) };
    y
}

/// Writes rows `rows`, columns `cols` of `y` (row stride `n`): the bias's columns in each row,
/// or zeros.
///
/// # Safety
/// `y` must have room for the block, and no other thread may touch the block meanwhile.
unsafe fn fill(y: SharedOut, n: usize, rows: Range<usize>, cols: Range<usize>, b: Option<&[f32]>) {
    for r in rows {
        let row = y.at(r * n + cols.start);
        match b {
            Some(b) => std::ptr::copy_nonoverlapping(b[cols.clone()].as_ptr(), row, cols.len()),
            None => std::ptr::write_bytes(row, 0, cols.len()),
        }
    }
}

/// How a linear layer's product is shared among the threads: one part of the output's rows or
/// columns per thread, each part's product single-threaded, or the whole product in one call
/// (threaded inside the `gemm` crate when large enough). All three give the same values: the
/// crate's blocking along k, and so each element's order of summation, depends on k alone.
#[derive(Debug, PartialEq)]
enum Split {
    /// Parts of this many rows.
    Rows(usize),
    /// Parts of this many columns.
    Columns(usize),
    /// One call for the whole product.
    Whole,
}

impl Split {
    /// On the 2-core development machine, both splits beat the crate's own threading:
    /// - rows at 2056 rows (batch 8), on all eight ViT-S/14 and ViT-B/14 linear shapes by
    ///   2-11% (medians of 15 interleaved runs, twice), where they were level or slower at 257
    ///   and 514 rows;
    /// - columns at 257 and 514 rows (batch 1 and 2), on all eight shapes by up to 22% (the
    ///   MLP's second layer) and 13% (the attention's projection): each thread packs only its
    ///   part of the weight. At 2056 rows columns were level with rows per shape, and whole
    ///   ViT-S/14 passes at batch 8 were slower in three of five interleaved pairs.
    fn choose(m: usize, k: usize, n: usize, threads: usize) -> Split {
        let part = column_part(n, threads);
        if threads <= 1 || m * n * k < MIN_THREADED_PRODUCT {
            Split::Whole
        } else if m >= threads * MIN_ROWS_PER_THREAD {
            Split::Rows(m.div_ceil(threads))
        } else if part < n {
            Split::Columns(part)
        } else {
            Split::Whole
        }
    }
}

/// Rows a thread must have before a product is split by rows (see [`Split::choose`]).
const MIN_ROWS_PER_THREAD: usize = 512;

/// Multiply-adds (`m·n·k`) below which a product stays on one thread: under ~1 MFLOP the
/// threads cost more than they give.
const MIN_THREADED_PRODUCT: usize = 1 << 18;

/// Columns of the output each thread computes when split by columns: `n` split evenly, rounded
/// up to whole micro-tiles of the `gemm` crate's AVX-512 kernel (64 columns).
fn column_part(n: usize, threads: usize) -> usize {
    const TILE: usize = 64;
    n.div_ceil(threads.max(1)).div_ceil(TILE) * TILE
}

/// `y[m, n] (+)= x[m, k] · wᵀ[k, n]`, adding to `y` when `accumulate`, else overwriting it; `y`
/// is `(pointer, row stride)`.
///
/// # Safety
/// `wt` with strides `(wt_rs, wt_cs)` must address `k·n` live elements, `y` with its row stride
/// `m·n` live elements that nothing else reads or writes meanwhile, and `x` must hold `m·k` values.
unsafe fn gemm_into(
    (m, k, n): (usize, usize, usize),
    (y, y_rs): (*mut f32, usize),
    x: &[f32],
    wt: *const f32,
    (wt_rs, wt_cs): (isize, isize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    debug_assert!(x.len() == m * k);
    gemm(
        m,
        n,
        k,
        y,
        1,
        y_rs as isize,
        accumulate,
        x.as_ptr(),
        1,
        k as isize,
        wt,
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
    fn split_products_equal_the_whole() {
        // On two threads: a product split by columns (two parts, the last ragged) and one split
        // by rows (a ragged last part); both weight layouts, with and without a bias.
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (k, n) = (70, 211);
        for (m, split) in [(300, Split::Columns(128)), (1061, Split::Rows(531))] {
            assert_eq!(Split::choose(m, k, n, 2), split);
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let w = transpose(&wt, k, n);
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 2.0).collect();
            let mut whole: Vec<f32> = (0..m).flat_map(|_| b.iter().copied()).collect();
            // SAFETY: sizes as the product's.
            unsafe {
                gemm_into(
                    (m, k, n),
                    (whole.as_mut_ptr(), n),
                    &x,
                    wt.as_ptr(),
                    (n as isize, 1),
                    true,
                    Parallelism::None,
                )
            };
            two.install(|| {
                assert_eq!(linear_kn(&x, m, k, &wt, n, Some(&b)), whole, "{split:?}");
                assert_eq!(linear(&x, m, k, &w, n, Some(&b)), whole, "{split:?}");
                let unbiased = linear_kn(&x, m, k, &wt, n, None);
                let want = linear_kn(&x[..k], 1, k, &wt, n, None);
                assert_eq!(unbiased[..n], want[..], "{split:?}");
            });
        }
    }

    #[test]
    fn small_products_and_one_thread_stay_whole() {
        assert_eq!(Split::choose(2056, 768, 3072, 1), Split::Whole);
        assert_eq!(Split::choose(8, 8, 8, 2), Split::Whole);
        // Too few columns for two parts.
        assert_eq!(Split::choose(300, 1000, 64, 2), Split::Whole);
        assert_eq!(Split::choose(257, 768, 3072, 2), Split::Columns(1536));
        assert_eq!(Split::choose(2056, 768, 3072, 2), Split::Rows(1028));
    }

    #[test]
    fn column_parts_are_whole_tiles_covering_the_output() {
        assert_eq!(column_part(768, 2), 384);
        assert_eq!(column_part(211, 2), 128);
        assert_eq!(column_part(1000, 3), 384);
        assert_eq!(column_part(64, 2), 64);
        assert_eq!(column_part(10, 1), 64);
        for (n, threads) in [(1000, 3), (211, 2), (3072, 2), (19, 4)] {
            let part = column_part(n, threads);
            assert!(
                part % 64 == 0 && n.div_ceil(part) <= threads,
                "{n} over {threads}"
            );
        }
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
