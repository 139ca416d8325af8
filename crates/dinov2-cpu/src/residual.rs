//! A block's residual update, `x += γ ⊙ branch` (layer scale, then the sum, each rounded as
//! torch rounds `x + γ * branch`), alone or followed by the next LayerNorm while each row is in
//! cache.

use rayon::prelude::*;

use crate::fastmath::widest;
use crate::norm::normalize_row;

/// Rows per task: a few hundred KiB of `x` and `branch`, enough to outweigh the hand-off.
const ROWS_PER_TASK: usize = 64;

/// `x += γ ⊙ branch` for each row of `x` (`gamma.len()` wide).
pub fn add_scaled(x: &mut [f32], branch: &[f32], gamma: &[f32]) {
    let h = check(x, branch, gamma);
    x.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(branch.par_chunks(h * ROWS_PER_TASK))
        .for_each(|(xs, bs)| {
            widest(
                #[inline(always)]
                move || {
                    for (xr, br) in xs.chunks_exact_mut(h).zip(bs.chunks_exact(h)) {
                        update_row(xr, br, gamma);
                    }
                },
            )
        });
}

/// [`add_scaled`], then [`crate::layer_norm`] of the updated `x` with `w` and `b`: one pass
/// over the rows instead of two, the same values.
pub fn add_scaled_layer_norm(
    x: &mut [f32],
    branch: &[f32],
    gamma: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f64,
) -> Vec<f32> {
    let h = check(x, branch, gamma);
    assert!(
        w.len() == h && b.len() == h,
        "add_scaled_layer_norm: the norm is not {h} wide"
    );
    // Not zeroed: each row is written once below, and the length set after.
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(h * ROWS_PER_TASK)
        .zip(x.par_chunks_mut(h * ROWS_PER_TASK))
        .zip(branch.par_chunks(h * ROWS_PER_TASK))
        .for_each(|((ys, xs), bs)| {
            widest(
                #[inline(always)]
                move || {
                    let rows = ys.chunks_exact_mut(h).zip(xs.chunks_exact_mut(h));
                    for ((yr, xr), br) in rows.zip(bs.chunks_exact(h)) {
                        update_row(xr, br, gamma);
                        normalize_row(xr, yr, w, b, eps);
                    }
                },
            )
        });
    // SAFETY: the rows above cover all `x.len()` elements (x is whole rows of h).
    unsafe { y.set_len(x.len()) };
    y
}

/// Checks that `x` and `branch` are the same whole rows of `gamma.len()`; returns that width.
fn check(x: &[f32], branch: &[f32], gamma: &[f32]) -> usize {
    let h = gamma.len();
    assert!(
        h > 0 && x.len() == branch.len() && x.len().is_multiple_of(h),
        "add_scaled: x ({}) and branch ({}) are not the same rows of {h}",
        x.len(),
        branch.len()
    );
    h
}

/// One row of `x += γ ⊙ branch`: the product rounded, then the sum (no fused multiply-add,
/// as torch computes it).
#[inline(always)]
fn update_row(xr: &mut [f32], br: &[f32], gamma: &[f32]) {
    for ((xv, &bv), &g) in xr.iter_mut().zip(br).zip(gamma) {
        *xv += g * bv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_norm;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 250.0) - 2.0)
            .collect()
    }

    #[test]
    fn fused_update_and_norm_equal_the_two_steps() {
        // Rows that fill tasks exactly and rows that leave a partial one.
        for rows in [1, 64, 130] {
            let h = 48;
            let (branch, gamma) = (values(rows * h, 1), values(h, 2));
            let (w, b) = (values(h, 3), values(h, 4));
            let mut x1 = values(rows * h, 5);
            let mut x2 = x1.clone();
            let want_x: Vec<f32> = x1
                .iter()
                .zip(&branch)
                .enumerate()
                .map(|(i, (&x, &bv))| x + gamma[i % h] * bv)
                .collect();
            add_scaled(&mut x1, &branch, &gamma);
            assert_eq!(x1, want_x, "{rows} rows");
            let want_y = layer_norm(&x1, &w, &b, 1e-6);
            let y = add_scaled_layer_norm(&mut x2, &branch, &gamma, &w, &b, 1e-6);
            assert_eq!(x2, want_x, "{rows} rows");
            assert_eq!(y, want_y, "{rows} rows");
        }
    }
}
