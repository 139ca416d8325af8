//! LayerNorm over the last dimension: biased variance, statistics accumulated in f64.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::fastmath::{lane_sum_f64, widest};

/// `y = (x − mean) / sqrt(var + eps) · w + b` for each row of `x` (`w.len()` wide), each row
/// compiled for the widest vector unit the CPU offers.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let h = w.len();
    assert_eq!(b.len(), h, "layer_norm: bias and weight differ in length");
    assert_eq!(x.len() % h, 0, "layer_norm: input rows are not {h} wide");
    // Not zeroed: each row is written once below, and the length set after.
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(yr, xr)| {
            widest(
                #[inline(always)]
                move || normalize_row(xr, yr, w, b, eps),
            )
        });
    // SAFETY: the rows above cover all `x.len()` elements (x is whole rows of h).
    unsafe { y.set_len(x.len()) };
    y
}

/// One row of [`layer_norm`]: statistics in f64 partial sums (mean, then the biased variance
/// about it), the output rounded once to f32. Inlined into a caller that runs it through
/// [`widest`].
#[inline(always)]
pub(crate) fn normalize_row(
    xr: &[f32],
    yr: &mut [MaybeUninit<f32>],
    w: &[f32],
    b: &[f32],
    eps: f64,
) {
    let h = xr.len() as f64;
    let mean = lane_sum_f64(xr, |v| v as f64) / h;
    let var = lane_sum_f64(xr, move |v| (v as f64 - mean).powi(2)) / h;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &bb) in yr.iter_mut().zip(xr).zip(w).zip(b) {
        o.write(((v as f64 - mean) * inv * g as f64 + bb as f64) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_rows() {
        let y = layer_norm(
            &[1.0, 2.0, 3.0, 4.0, -1.0, 1.0],
            &[1.0, 1.0, 1.0],
            &[0.0, 0.0, 0.5],
            0.0,
        );
        let s = (2.0f64 / 3.0).sqrt();
        assert!((y[0] as f64 + 1.0 / s).abs() < 1e-6);
        assert!((y[2] as f64 - (1.0 / s + 0.5)).abs() < 1e-6);
        assert!(y[3..].iter().all(|v| v.is_finite()));
    }
}
