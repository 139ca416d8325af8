//! From the model's tokens to embedding vectors: CLS, mean of the patch tokens, both, or the patch
//! grid, optionally L2-normalized.

use crate::{ModelOutput, Tensor};

/// Which vector an image's embedding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// `pooler_output`: the normalized CLS token (`h` values).
    #[default]
    Cls,
    /// Mean of the patch tokens of `last_hidden_state`, registers excluded (`h`).
    Mean,
    /// `[CLS, mean]`: the linear classifier's input (`2h`).
    ClsMean,
    /// Every patch token, row-major over the patch grid (`gh · gw · h`).
    Patch,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "cls+mean" => Ok(Pooling::ClsMean),
            "patch" => Ok(Pooling::Patch),
            _ => Err(format!(
                "unknown pooling {s:?}: expected cls, mean, cls+mean or patch"
            )),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::ClsMean => "cls+mean",
            Pooling::Patch => "patch",
        })
    }
}

/// One image's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The vector (or, for patch pooling, the grid's vectors one after the other).
    pub values: Vec<f32>,
    /// The patch grid `(gh, gw)` for patch pooling.
    pub grid: Option<(usize, usize)>,
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// Pools each image of `output` (`prefix` = 1 + registers tokens before the patches; `grid` the
/// patch grid of the batch).
pub fn pool(
    output: &ModelOutput,
    prefix: usize,
    grid: (usize, usize),
    pooling: Pooling,
    normalize: bool,
) -> Vec<Embedding> {
    let s: &Tensor = &output.last_hidden_state;
    let (b, seq, h) = (s.shape[0], s.shape[1], s.shape[2]);
    (0..b)
        .map(|i| {
            let img = &s.data[i * seq * h..(i + 1) * seq * h];
            let patches = &img[prefix * h..];
            let mean = || -> Vec<f32> {
                let n = (seq - prefix) as f64;
                (0..h)
                    .map(|c| (patches.chunks_exact(h).map(|t| t[c] as f64).sum::<f64>() / n) as f32)
                    .collect()
            };
            let mut values: Vec<f32> = match pooling {
                Pooling::Cls => img[..h].to_vec(),
                Pooling::Mean => mean(),
                Pooling::ClsMean => img[..h].iter().copied().chain(mean()).collect(),
                Pooling::Patch => patches.to_vec(),
            };
            if normalize {
                let width = if pooling == Pooling::Patch {
                    h
                } else {
                    values.len()
                };
                values.chunks_exact_mut(width).for_each(l2_normalize);
            }
            Embedding {
                values,
                grid: (pooling == Pooling::Patch).then_some(grid),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> ModelOutput {
        // 1 image, CLS + 1 register + 2 patches, h = 2.
        let last =
            Tensor::new(vec![1, 4, 2], vec![3.0, 4.0, 9.0, 9.0, 1.0, 2.0, 3.0, 6.0]).unwrap();
        ModelOutput {
            pooler_output: Tensor::new(vec![1, 2], vec![3.0, 4.0]).unwrap(),
            last_hidden_state: last,
            hidden_states: None,
            attentions: None,
        }
    }

    #[test]
    fn poolings() {
        let o = output();
        assert_eq!(
            pool(&o, 2, (1, 2), Pooling::Cls, false)[0].values,
            vec![3.0, 4.0]
        );
        assert_eq!(
            pool(&o, 2, (1, 2), Pooling::Mean, false)[0].values,
            vec![2.0, 4.0]
        );
        assert_eq!(
            pool(&o, 2, (1, 2), Pooling::ClsMean, false)[0].values,
            vec![3.0, 4.0, 2.0, 4.0]
        );
        let p = &pool(&o, 2, (1, 2), Pooling::Patch, false)[0];
        assert_eq!(
            (p.values.clone(), p.grid),
            (vec![1.0, 2.0, 3.0, 6.0], Some((1, 2)))
        );
        assert_eq!(
            pool(&o, 2, (1, 2), Pooling::Cls, true)[0].values,
            vec![0.6, 0.8]
        );
        let n = pool(&o, 2, (1, 2), Pooling::Patch, true);
        assert!((n[0].values[2] - 0.447_213_6).abs() < 1e-6);
    }
}
