//! A LayerNorm folded into the linear layer after it, for the `gemm_*_ln_{pp,pp2}` kernels.
//!
//! With `n(x) = (x − mean) · inv` (inv = 1/sqrt(var + eps)) and the norm's weight γ and bias β,
//! a linear layer `w`, `b` after the norm computes
//!
//! ```text
//! (n(x) ⊙ γ + β)·wᵀ + b = inv · (x·w'ᵀ − mean · colsum) + b'
//!     w' = w ⊙ γ (γ scaling each row of w by column), colsum[j] = Σ_c w'[j][c], b' = b + w·β
//! ```
//!
//! so the product reads the residual stream itself and its epilogue normalizes each sum with
//! the row's statistics: the normed rows are never written. `w'` is rounded to the GEMM's
//! 16-bit type once, here, and `colsum` sums the rounded values, so that the mean's share of
//! `x·w'ᵀ` cancels against the same weights it was multiplied by.

use half::{bf16, f16};

use crate::DType;

/// The weights of [`fold_layer_norm`]: `weight` `[n, k]` (each value exact in the storage type),
/// `colsum` and `bias` `[n]` in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedWeights {
    /// `w ⊙ γ`, rounded to the storage type.
    pub weight: Vec<f32>,
    /// Each row of `weight` summed (in f64, rounded once).
    pub colsum: Vec<f32>,
    /// `b + w·β` (in f64, rounded once).
    pub bias: Vec<f32>,
}

/// Folds a LayerNorm's weight `gamma` and bias `beta` (`[k]`) into the linear layer after it,
/// `weight` `[n, k]` (torch's `nn.Linear` layout) and `bias` `[n]`, for a GEMM storing its
/// operands in `dtype` (f16 or bf16; f32 keeps the products exact). `None` where the shapes
/// disagree.
pub fn fold_layer_norm(
    weight: &[f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    (n, k): (usize, usize),
    dtype: DType,
) -> Option<FoldedWeights> {
    if weight.len() != n * k
        || gamma.len() != k
        || beta.len() != k
        || bias.is_some_and(|b| b.len() != n)
    {
        return None;
    }
    let round: fn(f32) -> f32 = match dtype {
        DType::F16 => |v| f16::from_f32(v).to_f32(),
        DType::BF16 => |v| bf16::from_f32(v).to_f32(),
        _ => |v| v,
    };
    let folded: Vec<f32> = weight
        .chunks_exact(k)
        .flat_map(|row| row.iter().zip(gamma).map(|(w, g)| round(w * g)))
        .collect();
    let colsum = folded
        .chunks_exact(k)
        .map(|row| row.iter().map(|&v| v as f64).sum::<f64>() as f32)
        .collect();
    let bias = weight
        .chunks_exact(k)
        .enumerate()
        .map(|(j, row)| {
            let shift: f64 = row
                .iter()
                .zip(beta)
                .map(|(&w, &b)| w as f64 * b as f64)
                .sum();
            (bias.map_or(0.0, |b| b[j] as f64) + shift) as f32
        })
        .collect();
    Some(FoldedWeights {
        weight: folded,
        colsum,
        bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LayerNorm then the linear layer, in f64.
    fn norm_then_linear(
        x: &[f32],
        (w, b): (&[f32], &[f32]),
        (gamma, beta): (&[f32], &[f32]),
        (n, k): (usize, usize),
        eps: f64,
    ) -> Vec<f64> {
        x.chunks_exact(k)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
                let inv = 1.0 / (var + eps).sqrt();
                let normed: Vec<f64> = (0..k)
                    .map(|c| (row[c] as f64 - mean) * inv * gamma[c] as f64 + beta[c] as f64)
                    .collect();
                (0..n).map(move |j| {
                    let dot: f64 = (0..k).map(|c| normed[c] * w[j * k + c] as f64).sum();
                    dot + b[j] as f64
                })
            })
            .collect()
    }

    fn values(n: usize, seed: u32, scale: f32, offset: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                offset + scale * ((s as f32 / u32::MAX as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn the_folded_product_is_the_norm_then_the_linear_layer() {
        let (m, n, k, eps) = (5, 7, 96, 1e-6);
        // Rows far from zero mean, and a large column, as residual streams have.
        let mut x = values(m * k, 1, 2.0, 3.0);
        for r in 0..m {
            x[r * k + 17] = 60.0;
        }
        let w = values(n * k, 2, 0.1, 0.0);
        let b = values(n, 3, 0.5, 0.0);
        let gamma = values(k, 4, 0.5, 1.0);
        let beta = values(k, 5, 0.2, 0.0);
        let want = norm_then_linear(&x, (&w, &b), (&gamma, &beta), (n, k), eps);
        let f = fold_layer_norm(&w, Some(&b), &gamma, &beta, (n, k), DType::F32).unwrap();
        // inv · (x·w'ᵀ − mean · colsum) + b', the statistics and sums in f64.
        let mut worst = 0.0f64;
        for (r, row) in x.chunks_exact(k).enumerate() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|c| row[c] as f64 * f.weight[j * k + c] as f64)
                    .sum();
                let got = inv * (dot - mean * f.colsum[j] as f64) + f.bias[j] as f64;
                worst = worst.max((got - want[r * n + j]).abs());
            }
        }
        assert!(worst < 1e-5, "worst absolute error {worst:.2e}");
    }

    #[test]
    fn the_folded_weight_is_exact_in_the_storage_type_and_summed_as_stored() {
        let (n, k) = (3, 40);
        let w = values(n * k, 6, 0.3, 0.0);
        let gamma = values(k, 7, 0.5, 1.0);
        let zeros = vec![0.0; k];
        for dtype in [DType::F16, DType::BF16] {
            let f = fold_layer_norm(&w, None, &gamma, &zeros, (n, k), dtype).unwrap();
            for (i, &v) in f.weight.iter().enumerate() {
                let exact = match dtype {
                    DType::F16 => f16::from_f32(v).to_f32(),
                    _ => bf16::from_f32(v).to_f32(),
                };
                assert_eq!(v, exact, "{dtype:?} weight {i}");
                let product = w[i] * gamma[i % k];
                assert!((v - product).abs() <= product.abs() * 2f32.powi(-7));
            }
            for j in 0..n {
                let sum: f64 = f.weight[j * k..(j + 1) * k].iter().map(|&v| v as f64).sum();
                assert_eq!(f.colsum[j], sum as f32);
                assert_eq!(f.bias[j], 0.0);
            }
        }
    }

    #[test]
    fn mismatched_shapes_fold_nothing() {
        let w = vec![0.0; 6];
        let v2 = vec![0.0; 2];
        let v3 = vec![0.0; 3];
        assert!(fold_layer_norm(&w, None, &v3, &v3, (2, 3), DType::F16).is_some());
        assert!(fold_layer_norm(&w, None, &v2, &v3, (2, 3), DType::F16).is_none());
        assert!(fold_layer_norm(&w, Some(&v3), &v3, &v3, (2, 3), DType::F16).is_none());
        assert!(fold_layer_norm(&w, None, &v3, &v3, (3, 3), DType::F16).is_none());
    }
}
