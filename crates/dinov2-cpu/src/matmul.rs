//! Matrix products through the `gemm` crate (multi-threaded, f32 accumulate).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::ops::Range;

use crate::shared_out::SharedOut;

/// The `gemm` crate's own threading for a product left whole ([`Split::Whole`]): it shares
/// the output's tiles among the threads within one blocking of k, so its values are the
/// single-threaded ones (checked bit for bit on ViT shapes of 5 to 64 rows).
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
        Split::Grid { row_parts, cols } => {
            let col_parts = n.div_ceil(cols);
            (0..row_parts * col_parts).into_par_iter().for_each(|p| {
                let (r, c) = (p / col_parts, p % col_parts * cols);
                let rows = r * m / row_parts..(r + 1) * m / row_parts;
                block(rows, c..n.min(c + cols), Parallelism::None)
            })
        }
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

/// How a linear layer's product is shared among the threads: a grid of blocks of the output,
/// each block's product single-threaded (each thread then packs only its block's part of the
/// weight), or one call for the whole. Both give the same values: the `gemm` crate's blocking
/// along k, and so each element's order of summation, depends on k alone.
#[derive(Debug, PartialEq)]
enum Split {
    /// The rows in `row_parts` even parts (sizes differing by at most one), the columns in
    /// blocks of `cols` (the last one ragged).
    Grid { row_parts: usize, cols: usize },
    /// One call for the whole product, threaded inside the `gemm` crate where it is large.
    Whole,
}

impl Split {
    /// - Enough rows (at least [`MIN_ROWS_PER_THREAD`] a thread): one part of the rows a thread.
    /// - Fewer: the columns in whole micro-tiles of the crate's kernel, and the rows as well
    ///   where there are fewer tiles than threads; of those grids, the one whose busiest thread
    ///   has the least to do, counting [`PACKING_ROWS`] rows a block for packing its part of
    ///   the weight, and of equals the fewest row parts.
    ///
    /// Every block has more than [`GEMM_SMALL`] rows, or the whole product is one block, so that
    /// the values do not depend on the split (see there).
    ///
    /// On two threads that is one block of columns a thread for ViT-S/B/L/g's shapes at 257 and
    /// 514 rows, and one block of rows a thread at 2056; measured on the 2-core development
    /// machine against the crate's own threading:
    /// - rows at 2056 rows (batch 8), on all eight ViT-S/14 and ViT-B/14 linear shapes by
    ///   2-11% (medians of 15 interleaved runs, twice), where they were level or slower at 257
    ///   and 514 rows;
    /// - columns at 257 and 514 rows (batch 1 and 2), on all eight shapes by up to 22% (the
    ///   MLP's second layer) and 13% (the attention's projection). At 2056 rows columns were
    ///   level with rows per shape, and whole ViT-S/14 passes at batch 8 were slower in three
    ///   of five interleaved pairs.
    ///
    /// With many threads and few rows (16 threads at batch 8: 2056 rows, where a column split
    /// of ViT-B/14's 768 columns would have 12 tiles for 16 threads), the grid splits rows too
    /// (4 x 4 blocks of 514 rows and 192 columns).
    fn choose(m: usize, k: usize, n: usize, threads: usize) -> Split {
        if threads <= 1 || m * n * k < MIN_THREADED_PRODUCT || m <= GEMM_SMALL {
            return Split::Whole;
        }
        if m >= threads * MIN_ROWS_PER_THREAD {
            return Split::Grid {
                row_parts: threads,
                cols: n,
            };
        }
        let tiles = n.div_ceil(TILE);
        let mut best = (usize::MAX, Split::Whole);
        for row_parts in 1..=threads {
            if row_parts > 1 && m / row_parts <= GEMM_SMALL {
                break;
            }
            let cols = tiles.div_ceil(threads.div_ceil(row_parts).min(tiles)) * TILE;
            let blocks = row_parts * n.div_ceil(cols);
            let rows = m.div_ceil(row_parts);
            let busiest = blocks.div_ceil(threads) * (rows + PACKING_ROWS) * cols.min(n);
            if busiest < best.0 {
                best = (busiest, Split::Grid { row_parts, cols });
            }
        }
        match best.1 {
            Split::Grid { row_parts: 1, cols } if cols >= n => Split::Whole,
            split => split,
        }
    }
}

/// The largest products (rows and columns of the output both at most this) that the `gemm`
/// crate runs through its small-matrix path, which blocks k in fixed steps of 512 where its
/// other products split k into even blocks (k = 588: 512 + 76 against 294 + 294). A block that
/// small would round its sums differently from the same rows of the whole product; so no split
/// makes one, and the values stay the same whatever the number of threads.
pub(crate) const GEMM_SMALL: usize = 64;

/// Rows a thread must have before a product is split by rows alone (see [`Split::choose`]).
const MIN_ROWS_PER_THREAD: usize = 512;

/// What packing a block's part of the weight costs, counted as rows of its product: an
/// estimate, not a fit. Packing reads each weight element once, often from memory, where a row
/// of the product is k·cols multiply-adds at two 16-lane FMAs a cycle. On two threads no ViT
/// shape's choice depends on it (a block of half the columns always beats one of half the
/// rows); on more, it keeps the grid from splitting rows where that saves little.
const PACKING_ROWS: usize = 32;

/// Multiply-adds (`m·n·k`) below which a product stays on one thread: under ~1 MFLOP the
/// threads cost more than they give.
const MIN_THREADED_PRODUCT: usize = 1 << 18;

/// Columns of the `gemm` crate's AVX-512 micro-tiles: a block of columns is a multiple.
const TILE: usize = 64;

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

    /// The linear layers' (k, n) of ViT-S/B/L/g: qkv, projection, the MLP's two layers
    /// (ViT-g's SwiGLU: its input and output layers).
    const VIT_SHAPES: [(usize, usize); 16] = [
        (384, 1152),
        (384, 384),
        (384, 1536),
        (1536, 384),
        (768, 2304),
        (768, 768),
        (768, 3072),
        (3072, 768),
        (1024, 3072),
        (1024, 1024),
        (1024, 4096),
        (4096, 1024),
        (1536, 4608),
        (1536, 1536),
        (1536, 8192),
        (4096, 1536),
    ];

    #[test]
    fn split_products_equal_the_whole() {
        // Splits by columns (the last part ragged), by rows (uneven parts) and both, on pools of
        // 2 and 16 threads, and a product of few rows left whole; both weight layouts, with and
        // without a bias. k = 588 (the patch embedding's) is past the 512 at which the crate's
        // small-matrix path would block k differently from the whole.
        let (k, n) = (588, 211);
        for (m, threads, split) in [
            (
                100,
                2,
                Split::Grid {
                    row_parts: 1,
                    cols: 128,
                },
            ),
            (
                1061,
                2,
                Split::Grid {
                    row_parts: 2,
                    cols: n,
                },
            ),
            (
                300,
                16,
                Split::Grid {
                    row_parts: 4,
                    cols: 64,
                },
            ),
            (
                130,
                16,
                Split::Grid {
                    row_parts: 2,
                    cols: 64,
                },
            ),
            (40, 16, Split::Whole),
        ] {
            assert_eq!(
                Split::choose(m, k, n, threads),
                split,
                "{m} rows on {threads} threads"
            );
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let w = transpose(&wt, k, n);
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 2.0).collect();
            // The whole product in one single-threaded call: into the bias, and over NaNs
            // (which an unbiased product must overwrite).
            let whole_into = |mut y: Vec<f32>, accumulate| {
                // SAFETY: sizes as the product's.
                unsafe {
                    gemm_into(
                        (m, k, n),
                        (y.as_mut_ptr(), n),
                        &x,
                        wt.as_ptr(),
                        (n as isize, 1),
                        accumulate,
                        Parallelism::None,
                    )
                };
                y
            };
            let whole = whole_into((0..m).flat_map(|_| b.iter().copied()).collect(), true);
            let unbiased = whole_into(vec![f32::NAN; m * n], false);
            pool.install(|| {
                assert_eq!(linear_kn(&x, m, k, &wt, n, Some(&b)), whole, "{split:?}");
                assert_eq!(linear(&x, m, k, &w, n, Some(&b)), whole, "{split:?}");
                assert_eq!(linear_kn(&x, m, k, &wt, n, None), unbiased, "{split:?}");
            });
        }
    }

    #[test]
    fn two_threads_split_vit_shapes_as_measured() {
        // One block of columns a thread at 257 and 514 rows, of rows at 2056: the choices
        // measured on the 2-core development machine.
        for (k, n) in VIT_SHAPES {
            for m in [257, 514] {
                let cols = n.div_ceil(2).div_ceil(TILE) * TILE;
                assert_eq!(
                    Split::choose(m, k, n, 2),
                    Split::Grid { row_parts: 1, cols }
                );
            }
            assert_eq!(
                Split::choose(2056, k, n, 2),
                Split::Grid {
                    row_parts: 2,
                    cols: n
                }
            );
        }
    }

    #[test]
    fn many_threads_keep_every_thread_busy() {
        // Where a split by columns alone would leave threads idle, rows are split too; the
        // busiest thread has at most a quarter more than an even share of the product.
        assert_eq!(
            Split::choose(2056, 768, 768, 16),
            Split::Grid {
                row_parts: 4,
                cols: 192
            }
        );
        for threads in [4, 8, 16, 32] {
            for (k, n) in VIT_SHAPES {
                for m in [257, 2056, 4112] {
                    let Split::Grid { row_parts, cols } = Split::choose(m, k, n, threads) else {
                        panic!("{m} x {k} x {n} on {threads} threads: whole");
                    };
                    let rows = m.div_ceil(row_parts);
                    assert!(m / row_parts > GEMM_SMALL, "{m} rows in {row_parts}");
                    let blocks = row_parts * n.div_ceil(cols);
                    let busiest = blocks.div_ceil(threads) * rows * cols.min(n);
                    let even = (m * n).div_ceil(threads);
                    // At 257 rows a thread may hold one 64-column tile of a narrow product.
                    let slack = if m < 1000 { 2.0 } else { 1.25 };
                    assert!(
                        busiest as f64 <= slack * even as f64,
                        "{m} x {k} x {n} on {threads} threads: {row_parts} x {cols} blocks, \
                         {busiest} against {even}"
                    );
                }
            }
        }
    }

    #[test]
    fn small_products_and_one_thread_stay_whole() {
        assert_eq!(Split::choose(2056, 768, 3072, 1), Split::Whole);
        assert_eq!(Split::choose(8, 8, 8, 2), Split::Whole);
        // One column tile and too few rows to split.
        assert_eq!(Split::choose(20, 20000, 64, 2), Split::Whole);
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
