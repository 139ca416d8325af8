//! From the model's final tokens to embedding vectors: CLS, mean of the patch tokens, both, the
//! patch grid, the register tokens or every token, optionally L2-normalized.
//!
//! [`pool_tokens`] is the one host implementation of the pooling arithmetic: [`Backend::pool`]'s
//! default (download, then pool here) and [`pool`] (from a [`ModelOutput`]) both use it, and the
//! CUDA kernels are tested against it.
//!
//! [`Backend::pool`]: crate::Backend::pool

use crate::{ModelOutput, Tensor};

/// Which vector an image's embedding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
    /// The register tokens, one after another (`R · h`; models with registers only).
    Registers,
    /// Every token, as `last_hidden_state` holds them: the CLS token, the registers, then the
    /// patches row-major (`(1 + R + gh · gw) · h`). Every other pooling can be taken from it on
    /// the host ([`Embedding::pooled_as`]), so that one pass gives several.
    Tokens,
}

impl Pooling {
    /// Whether the result is several token vectors (patches, registers, tokens), each `h`
    /// values, rather than one vector: normalization then applies to each.
    pub fn is_tokens(self) -> bool {
        matches!(self, Pooling::Patch | Pooling::Registers | Pooling::Tokens)
    }

    /// Whether the result follows the patch grid, which [`Embedding::grid`] then gives.
    pub fn has_grid(self) -> bool {
        matches!(self, Pooling::Patch | Pooling::Tokens)
    }

    /// The shape of one image's result, known before any image ([`Embedding::shape`] gives it
    /// after): `width` values per token (the hidden size, times the layers concatenated),
    /// `registers` register tokens, and `grid` the patch grid every image shares (a fixed
    /// center crop), `None` when it follows each image (the grid poolings' shape is then
    /// unknown).
    pub fn fixed_shape(
        self,
        width: usize,
        registers: usize,
        grid: Option<(usize, usize)>,
    ) -> Option<Vec<usize>> {
        match self {
            Pooling::Cls | Pooling::Mean => Some(vec![width]),
            Pooling::ClsMean => Some(vec![2 * width]),
            Pooling::Registers => Some(vec![registers, width]),
            Pooling::Patch => grid.map(|(gh, gw)| vec![gh, gw, width]),
            Pooling::Tokens => grid.map(|(gh, gw)| vec![1 + registers + gh * gw, width]),
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "cls+mean" => Ok(Pooling::ClsMean),
            "patch" => Ok(Pooling::Patch),
            "registers" => Ok(Pooling::Registers),
            "tokens" => Ok(Pooling::Tokens),
            _ => Err(format!(
                "unknown pooling {s:?}: expected cls, mean, cls+mean, patch, registers or tokens"
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
            Pooling::Registers => "registers",
            Pooling::Tokens => "tokens",
        })
    }
}

/// One image's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The vector (or, for patch pooling, the grid's vectors one after the other).
    pub values: Vec<f32>,
    /// The patch grid `(gh, gw)` for patch and token pooling.
    pub grid: Option<(usize, usize)>,
}

impl Embedding {
    /// The shape of this embedding of `pooling`, with `prefix` (1 + registers) tokens before the
    /// patches: `[D]` for a vector, `[R, D]` for the registers, `[gh, gw, D]` for the patch grid,
    /// `[S, D]` for every token. `None` when the values do not divide into that shape (or a grid
    /// pooling came without its grid).
    pub fn shape(&self, pooling: Pooling, prefix: usize) -> Option<Vec<usize>> {
        let len = self.values.len();
        let rows = match pooling {
            Pooling::Cls | Pooling::Mean | Pooling::ClsMean => return Some(vec![len]),
            Pooling::Patch => {
                let (gh, gw) = self.grid?;
                let cells = gh.checked_mul(gw)?;
                return (cells > 0 && len.is_multiple_of(cells)).then(|| vec![gh, gw, len / cells]);
            }
            Pooling::Registers => prefix.checked_sub(1)?,
            Pooling::Tokens => {
                let (gh, gw) = self.grid?;
                prefix.checked_add(gh.checked_mul(gw)?)?
            }
        };
        (rows > 0 && len.is_multiple_of(rows)).then(|| vec![rows, len / rows])
    }

    /// This embedding of [`Pooling::Tokens`] (`prefix` = 1 + registers tokens before the
    /// patches; `layers` hidden states concatenated per token, 1 without intermediate layers),
    /// pooled as `pooling` and L2-normalized when `normalize`: the values a pass with that
    /// pooling gives ([`crate::Dinov2::embed`], [`crate::Dinov2::embed_layers`]). `None` when
    /// this is not such an embedding.
    pub fn pooled_as(
        &self,
        prefix: usize,
        layers: usize,
        pooling: Pooling,
        normalize: bool,
    ) -> Option<Embedding> {
        let (gh, gw) = self.grid?;
        let seq = prefix.checked_add(gh.checked_mul(gw)?)?;
        if prefix == 0
            || layers == 0
            || self.values.is_empty()
            || !self.values.len().is_multiple_of(seq * layers)
        {
            return None;
        }
        let hidden = self.values.len() / seq;
        let h = hidden / layers;
        let pooled: Vec<Tensor> = (0..layers)
            .map(|l| {
                let data = self
                    .values
                    .chunks_exact(hidden)
                    .flat_map(|token| &token[l * h..(l + 1) * h])
                    .copied()
                    .collect();
                pool_tokens(
                    &Tensor {
                        shape: vec![1, seq, h],
                        data,
                    },
                    prefix,
                    pooling,
                )
            })
            .collect();
        let pooled: Vec<&Tensor> = pooled.iter().collect();
        embeddings(
            join_layers(&pooled, h, pooling, 1),
            hidden,
            (gh, gw),
            pooling,
            normalize,
        )
        .pop()
    }
}

/// Joins the poolings `[B, w]` of several hidden states into `[B, L·w]` as
/// [`crate::Dinov2::embed_layers`] gives them: per image the layers' vectors one after the other,
/// or for the token poolings (`h` values per token) per token.
pub(crate) fn join_layers(pooled: &[&Tensor], h: usize, pooling: Pooling, batch: usize) -> Tensor {
    let Some(first) = pooled.first() else {
        return Tensor {
            shape: vec![batch, 0],
            data: Vec::new(),
        };
    };
    let unit = if pooling.is_tokens() {
        h
    } else {
        first.last_dim()
    }
    .max(1);
    let rows = first.len() / unit;
    let mut data = Vec::with_capacity(rows * unit * pooled.len());
    for r in 0..rows {
        for p in pooled {
            data.extend_from_slice(&p.data[r * unit..(r + 1) * unit]);
        }
    }
    let row = data.len() / batch.max(1);
    Tensor {
        shape: vec![batch, row],
        data,
    }
}

/// Pools the final tokens `[B, S, h]` (`prefix` = 1 + registers tokens before the patches) into
/// `[B, w]`: `w` = `h` (CLS, mean), `2h` (CLS then mean), `(S - prefix)·h` (the patch tokens),
/// `(prefix - 1)·h` (the register tokens) or `S·h` (every token). The mean is accumulated in f64.
pub fn pool_tokens(tokens: &Tensor, prefix: usize, pooling: Pooling) -> Tensor {
    let (b, seq, h) = (tokens.shape[0], tokens.shape[1], tokens.shape[2]);
    let width = match pooling {
        Pooling::Cls | Pooling::Mean => h,
        Pooling::ClsMean => 2 * h,
        Pooling::Patch => (seq - prefix) * h,
        Pooling::Registers => (prefix - 1) * h,
        Pooling::Tokens => seq * h,
    };
    let mut data = Vec::with_capacity(b * width);
    for img in tokens.data.chunks_exact(seq * h).take(b) {
        let patches = &img[prefix * h..];
        let mean = || {
            let n = (seq - prefix) as f64;
            (0..h).map(move |c| {
                (patches.chunks_exact(h).map(|t| t[c] as f64).sum::<f64>() / n) as f32
            })
        };
        match pooling {
            Pooling::Cls => data.extend_from_slice(&img[..h]),
            Pooling::Mean => data.extend(mean()),
            Pooling::ClsMean => {
                data.extend_from_slice(&img[..h]);
                data.extend(mean());
            }
            Pooling::Patch => data.extend_from_slice(patches),
            Pooling::Registers => data.extend_from_slice(&img[h..prefix * h]),
            Pooling::Tokens => data.extend_from_slice(img),
        }
    }
    Tensor {
        shape: vec![b, width],
        data,
    }
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// Splits pooled rows `[B, w]` (from [`pool_tokens`] or [`crate::Backend::pool`]) into one
/// embedding per image, L2-normalizing each vector (each token's `hidden` values for patch and
/// register pooling) when `normalize`.
pub fn embeddings(
    pooled: Tensor,
    hidden: usize,
    grid: (usize, usize),
    pooling: Pooling,
    normalize: bool,
) -> Vec<Embedding> {
    let width = pooled.last_dim().max(1);
    let mut data = pooled.data;
    if normalize {
        let unit = if pooling.is_tokens() {
            hidden.max(1)
        } else {
            width
        };
        data.chunks_exact_mut(unit).for_each(l2_normalize);
    }
    data.chunks_exact(width)
        .map(|row| Embedding {
            values: row.to_vec(),
            grid: pooling.has_grid().then_some(grid),
        })
        .collect()
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
    let tokens = &output.last_hidden_state;
    embeddings(
        pool_tokens(tokens, prefix, pooling),
        tokens.shape[2],
        grid,
        pooling,
        normalize,
    )
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
    fn fixed_shapes_are_the_shapes_of_the_results() {
        // h = 2, one register, a 1 x 2 grid: output()'s image, through each pooling.
        let out = output();
        for pooling in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::ClsMean,
            Pooling::Patch,
            Pooling::Registers,
            Pooling::Tokens,
        ] {
            let e = pool(&out, 2, (1, 2), pooling, false).remove(0);
            assert_eq!(
                pooling.fixed_shape(2, 1, Some((1, 2))),
                e.shape(pooling, 2),
                "{pooling}"
            );
        }
        assert_eq!(Pooling::Patch.fixed_shape(2, 1, None), None);
        assert_eq!(Pooling::Tokens.fixed_shape(2, 1, None), None);
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

    #[test]
    fn pooled_shapes() {
        let t = Tensor::new(vec![2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        assert_eq!(pool_tokens(&t, 1, Pooling::Cls).shape, vec![2, 2]);
        assert_eq!(pool_tokens(&t, 1, Pooling::Mean).shape, vec![2, 2]);
        assert_eq!(pool_tokens(&t, 1, Pooling::ClsMean).shape, vec![2, 4]);
        let p = pool_tokens(&t, 1, Pooling::Patch);
        assert_eq!(p.shape, vec![2, 4]);
        assert_eq!(p.data, vec![2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
        let m = pool_tokens(&t, 1, Pooling::ClsMean);
        assert_eq!(m.data, vec![0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 10.0]);
    }

    #[test]
    fn shapes_of_each_pooling() {
        let e = |n: usize, grid| Embedding {
            values: vec![0.0; n],
            grid,
        };
        // h = 4, 1 register (prefix 2), a 2 x 3 grid.
        assert_eq!(e(4, None).shape(Pooling::Cls, 2), Some(vec![4]));
        assert_eq!(e(8, None).shape(Pooling::ClsMean, 2), Some(vec![8]));
        assert_eq!(e(4, None).shape(Pooling::Registers, 2), Some(vec![1, 4]));
        assert_eq!(
            e(24, Some((2, 3))).shape(Pooling::Patch, 2),
            Some(vec![2, 3, 4])
        );
        assert_eq!(
            e(32, Some((2, 3))).shape(Pooling::Tokens, 2),
            Some(vec![8, 4])
        );
        // Values that do not divide, a missing grid, no registers.
        assert_eq!(e(25, Some((2, 3))).shape(Pooling::Patch, 2), None);
        assert_eq!(e(24, None).shape(Pooling::Patch, 2), None);
        assert_eq!(e(30, Some((2, 3))).shape(Pooling::Tokens, 2), None);
        assert_eq!(e(4, None).shape(Pooling::Registers, 1), None);
    }
}
