//! What the embed job writes per image: one pooling, or several taken from one pass. For several,
//! the model returns every token ([`Pooling::Tokens`]) and each pooling is taken from them on
//! the host ([`Embedding::pooled_as`]), with the same values a pass with that pooling gives.

use dinov2::{Embedding, Pooling};

/// The poolings asked, in order, and what splitting a pass into them needs.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Distinct, at least one.
    pub poolings: Vec<Pooling>,
    /// L2-normalize each vector (each token's).
    pub normalize: bool,
    /// Tokens before the patches: 1 + registers.
    pub prefix: usize,
    /// Hidden states concatenated per token: the number of `--layers`, or 1.
    pub layers: usize,
}

/// One image's outputs: each one's shape, and their values one after another.
pub struct Split {
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<f32>,
}

impl Outputs {
    /// The pooling the model runs: the one asked, or every token when several are.
    pub fn pass(&self) -> Pooling {
        match self.poolings[..] {
            [one] => one,
            _ => Pooling::Tokens,
        }
    }

    /// Whether the pass itself normalizes (one output); else the split does.
    pub fn pass_normalizes(&self) -> bool {
        self.normalize && self.poolings.len() == 1
    }

    /// Whether one of the outputs follows the patch grid (`grid_h`, `grid_w` columns).
    pub fn has_grid(&self) -> bool {
        self.poolings.iter().any(|p| p.has_grid())
    }

    /// The name of each output's column or tensor: `default` for a single output, else the
    /// pooling's name (`cls+mean` as `cls_mean`).
    pub fn names(&self, default: &str) -> Vec<String> {
        match self.poolings[..] {
            [_] => vec![default.to_string()],
            _ => self
                .poolings
                .iter()
                .map(|p| p.to_string().replace('+', "_"))
                .collect(),
        }
    }

    /// Splits the pass's embedding of one image into the outputs.
    pub fn split(&self, pass: Embedding) -> Result<Split, String> {
        if let [pooling] = self.poolings[..] {
            let shape = self.shape(pooling, &pass)?;
            return Ok(Split {
                shapes: vec![shape],
                values: pass.values,
            });
        }
        let mut split = Split {
            shapes: Vec::with_capacity(self.poolings.len()),
            values: Vec::new(),
        };
        for &pooling in &self.poolings {
            let e = self
                .pooled(&pass, pooling)
                .ok_or_else(|| format!("the pass did not return every token for {pooling}"))?;
            split.shapes.push(self.shape(pooling, &e)?);
            split.values.extend(e.values);
        }
        Ok(split)
    }

    /// Output `pooling` taken from a pass that returned every token (several outputs); `None`
    /// when the pass holds other values.
    pub fn pooled(&self, pass: &Embedding, pooling: Pooling) -> Option<Embedding> {
        pass.pooled_as(self.prefix, self.layers, pooling, self.normalize)
    }

    /// The shape of `e`, an embedding of `pooling`: `[D]` for a vector, `[R, D]` for the
    /// registers, `[gh, gw, D]` for the patch grid, `[S, D]` for every token.
    fn shape(&self, pooling: Pooling, e: &Embedding) -> Result<Vec<usize>, String> {
        e.shape(pooling, self.prefix).ok_or_else(|| {
            format!(
                "the {pooling} output holds {} values, not a {pooling} shape (grid {:?})",
                e.values.len(),
                e.grid
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_one_pass_into_the_outputs() {
        // CLS, 1 register, 2 x 1 patches; h = 2.
        let tokens = Embedding {
            values: vec![3.0, 4.0, 9.0, 9.0, 1.0, 2.0, 3.0, 6.0],
            grid: Some((2, 1)),
        };
        let outputs = Outputs {
            poolings: vec![
                Pooling::Patch,
                Pooling::Cls,
                Pooling::Registers,
                Pooling::Mean,
            ],
            normalize: false,
            prefix: 2,
            layers: 1,
        };
        assert_eq!(outputs.pass(), Pooling::Tokens);
        assert!(!outputs.pass_normalizes() && outputs.has_grid());
        assert_eq!(
            outputs.names("embedding"),
            ["patch", "cls", "registers", "mean"]
        );
        let split = outputs.split(tokens.clone()).unwrap();
        assert_eq!(
            split.shapes,
            vec![vec![2, 1, 2], vec![2], vec![1, 2], vec![2]]
        );
        assert_eq!(
            split.values,
            [1.0, 2.0, 3.0, 6.0, 3.0, 4.0, 9.0, 9.0, 2.0, 4.0]
        );
        let one = Outputs {
            poolings: vec![Pooling::Tokens],
            ..outputs.clone()
        };
        assert_eq!(one.names("embedding"), ["embedding"]);
        assert_eq!(one.split(tokens.clone()).unwrap().shapes, vec![vec![4, 2]]);
        let normalized = Outputs {
            poolings: vec![Pooling::Cls, Pooling::ClsMean],
            normalize: true,
            ..outputs
        };
        assert_eq!(normalized.names("embedding"), ["cls", "cls_mean"]);
        let split = normalized.split(tokens).unwrap();
        assert_eq!(&split.values[..2], [0.6, 0.8]);
        // A vector that is not every token cannot be split.
        let cls = Embedding {
            values: vec![3.0, 4.0],
            grid: None,
        };
        assert!(normalized.split(cls).is_err());
    }
}
