//! Bicubic resampling of a channels-last grid, as `torch.nn.functional.interpolate(mode="bicubic",
//! align_corners=False)` computes it: plain (Keys a = −0.75, edge-clamped taps, coordinates from the
//! sizes or from explicit scale factors) or antialiased (a = −0.5, PIL-style support, taps outside
//! the input dropped and the rest renormalised). Evaluated in f64.

/// Which resampling rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resample {
    /// `interpolate(size=(out_h, out_w), mode="bicubic")`.
    Bicubic,
    /// `interpolate(scale_factor=(sh, sw), mode="bicubic")`: source coordinates use `1/scale`, not
    /// `in/out` (transformers ≤ 4.44 and the original DINOv2 code, with `(g + 0.1) / M`).
    BicubicScaleFactor { scale_h: f64, scale_w: f64 },
    /// `interpolate(size=..., mode="bicubic", antialias=True)`.
    BicubicAntialias,
}

/// One output position's taps: input indices and weights.
type Taps = Vec<(usize, f64)>;

fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let c1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

fn plain_taps(input: usize, output: usize, scale: f64) -> Vec<Taps> {
    (0..output)
        .map(|o| {
            let s = scale * (o as f64 + 0.5) - 0.5;
            let i0 = (s.floor() as i64).min(input as i64 - 1);
            let t = (s - i0 as f64).clamp(0.0, 1.0);
            cubic_weights(t)
                .iter()
                .enumerate()
                .map(|(j, &w)| ((i0 - 1 + j as i64).clamp(0, input as i64 - 1) as usize, w))
                .collect()
        })
        .collect()
}

fn aa_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn antialias_taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    (0..output)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut taps: Taps = (xmin..xmax)
                .map(|i| (i, aa_filter((i as f64 - center + 0.5) * inv)))
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            if total != 0.0 {
                taps.iter_mut().for_each(|t| t.1 /= total);
            }
            taps
        })
        .collect()
}

/// Output size of `interpolate(scale_factor=s)` along one axis: `floor(in · s)`.
pub fn scale_factor_output(input: usize, scale_factor: f64) -> usize {
    (input as f64 * scale_factor).floor() as usize
}

/// Resamples `src`, a `[in_h, in_w, c]` grid, to `[out_h, out_w, c]`.
pub fn resize_grid(
    src: &[f32],
    in_h: usize,
    in_w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
    mode: Resample,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        in_h * in_w * channels,
        "resize_grid: source is not [in_h, in_w, c]"
    );
    let (rows, cols) = match mode {
        Resample::Bicubic => (
            plain_taps(in_h, out_h, in_h as f64 / out_h as f64),
            plain_taps(in_w, out_w, in_w as f64 / out_w as f64),
        ),
        Resample::BicubicScaleFactor { scale_h, scale_w } => (
            plain_taps(in_h, out_h, 1.0 / scale_h),
            plain_taps(in_w, out_w, 1.0 / scale_w),
        ),
        Resample::BicubicAntialias => (antialias_taps(in_h, out_h), antialias_taps(in_w, out_w)),
    };
    // Width pass into f64, then the height pass.
    let mut tmp = vec![0.0f64; in_h * out_w * channels];
    for y in 0..in_h {
        for (x, taps) in cols.iter().enumerate() {
            let dst = &mut tmp[(y * out_w + x) * channels..][..channels];
            for &(ix, w) in taps {
                let s = &src[(y * in_w + ix) * channels..][..channels];
                dst.iter_mut().zip(s).for_each(|(d, &v)| *d += w * v as f64);
            }
        }
    }
    let mut out = vec![0.0f32; out_h * out_w * channels];
    for (y, taps) in rows.iter().enumerate() {
        for x in 0..out_w {
            let dst = &mut out[(y * out_w + x) * channels..][..channels];
            let mut acc = vec![0.0f64; channels];
            for &(iy, w) in taps {
                let s = &tmp[(iy * out_w + x) * channels..][..channels];
                acc.iter_mut().zip(s).for_each(|(a, &v)| *a += w * v);
            }
            dst.iter_mut().zip(&acc).for_each(|(d, &a)| *d = a as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let src: Vec<f32> = (0..5 * 4 * 2).map(|i| (i as f32 * 0.7).sin()).collect();
        for mode in [Resample::Bicubic, Resample::BicubicAntialias] {
            let out = resize_grid(&src, 5, 4, 2, 5, 4, mode);
            for (a, b) in out.iter().zip(&src) {
                assert!((a - b).abs() < 1e-6, "{mode:?}");
            }
        }
    }

    #[test]
    fn constant_stays_constant() {
        let src = vec![3.0f32; 8 * 8];
        for mode in [
            Resample::Bicubic,
            Resample::BicubicAntialias,
            Resample::BicubicScaleFactor {
                scale_h: 5.1 / 8.0,
                scale_w: 11.1 / 8.0,
            },
        ] {
            let out = resize_grid(&src, 8, 8, 1, 5, 11, mode);
            assert!(out.iter().all(|v| (v - 3.0).abs() < 1e-6), "{mode:?}");
        }
    }

    #[test]
    fn scale_factor_sizes() {
        assert_eq!(scale_factor_output(37, 16.1 / 37.0), 16);
        assert_eq!(scale_factor_output(8, 6.1 / 8.0), 6);
    }
}
