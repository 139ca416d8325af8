//! The model's parameters, read from a checkpoint into a backend's weights once: QKV fused into one
//! `[3h, h]` projection, the patch convolution flattened to a `[h, C·p·p]` linear layer.

use dinov2_checkpoint::{expected_tensors, Dinov2Config, Weights};

use crate::backend::Backend;
use crate::error::Result;

/// A linear layer in torch's layout: weight `[n, k]`, bias `[n]`.
pub(crate) struct Linear<W> {
    pub weight: W,
    pub bias: Option<W>,
}

/// LayerNorm parameters.
pub(crate) struct Norm<W> {
    pub weight: W,
    pub bias: W,
}

/// The feed-forward block of a layer.
pub(crate) enum Ffn<W> {
    /// `fc2(act(fc1(y)))`.
    Mlp { fc1: Linear<W>, fc2: Linear<W> },
    /// `weights_out(silu(x1) · x2)` with `[x1 | x2] = weights_in(y)`.
    SwiGlu {
        weights_in: Linear<W>,
        weights_out: Linear<W>,
    },
}

/// One pre-norm transformer block.
pub(crate) struct Layer<W> {
    pub norm1: Norm<W>,
    pub qkv: Linear<W>,
    pub proj: Linear<W>,
    pub layer_scale1: W,
    pub norm2: Norm<W>,
    pub ffn: Ffn<W>,
    pub layer_scale2: W,
}

/// Every parameter the forward pass reads on the backend. The position embeddings and the
/// classifier stay on the host (they are resized per resolution, and run on pooled vectors).
pub(crate) struct Params<W> {
    pub patch: Linear<W>,
    pub cls: W,
    pub mask_token: Option<W>,
    pub registers: Option<W>,
    pub layers: Vec<Layer<W>>,
    pub norm: Norm<W>,
}

/// Host-side parameters.
pub(crate) struct HostParams {
    /// `[1 + M², h]`.
    pub positions: Vec<f32>,
    /// `[num_labels, 2h]` and `[num_labels]`, when the checkpoint has a classifier.
    pub classifier: Option<(Vec<f32>, Vec<f32>)>,
}

/// Where parameters come from: a checkpoint's weights, or random values for benchmarks.
pub trait ParamSource {
    /// The tensor `name` (transformers' naming) as shape and f32 values.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// Whether the tensor exists.
    fn has(&self, name: &str) -> bool;
}

impl ParamSource for Weights {
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.require(name)?;
        Ok((t.shape.to_vec(), t.to_f32()))
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Deterministic random parameters of the shapes a config implies, scaled like a trained ViT's
/// (unit LayerNorm gains, `1/√fan_in` weights, small layer scales), for benchmarks without a
/// checkpoint. Includes a classifier when the config has labels.
pub struct RandomParams {
    shapes: std::collections::HashMap<String, Vec<usize>>,
    seed: u64,
}

impl RandomParams {
    /// Random parameters for `config`, reproducible from `seed`.
    pub fn new(config: &Dinov2Config, seed: u64) -> Self {
        let shapes = expected_tensors(config)
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        RandomParams { shapes, seed }
    }
}

impl ParamSource for RandomParams {
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = self.shapes.get(name).cloned().ok_or_else(|| {
            crate::ModelError::Unsupported(format!("no tensor `{name}` in this architecture"))
        })?;
        let n: usize = shape.iter().product();
        // SplitMix64 seeded by the name, uniform in [-1, 1).
        let mut state = name
            .bytes()
            .fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let (offset, scale) = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name == "layernorm.weight"
        {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.02)
        } else if name.contains("lambda1") {
            (0.1, 0.05)
        } else if shape.len() >= 2 && !name.starts_with("embeddings.")
            || name.ends_with("projection.weight")
        {
            (
                0.0,
                (3.0 / shape[1..].iter().product::<usize>() as f32).sqrt(),
            )
        } else {
            (0.0, 0.5)
        };
        Ok((shape, (0..n).map(|_| offset + scale * next()).collect()))
    }

    fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

struct Loader<'a, B: Backend> {
    backend: &'a B,
    source: &'a dyn ParamSource,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.source.tensor(name)?.1)
    }

    fn tensor(&self, name: &str, shape: Vec<usize>) -> Result<B::Weight> {
        self.backend.weight(self.host(name)?, shape)
    }

    fn vector(&self, name: &str) -> Result<B::Weight> {
        self.upload_vector(self.host(name)?)
    }

    /// A one-dimensional parameter from its host values.
    fn upload_vector(&self, v: Vec<f32>) -> Result<B::Weight> {
        let n = v.len();
        self.backend.weight(v, vec![n])
    }

    fn linear(&self, prefix: &str) -> Result<Linear<B::Weight>> {
        self.linear_with(prefix, B::linear_weight)
    }

    /// The patch convolution as a linear layer, through [`Backend::patch_weight`].
    fn patch(&self, prefix: &str) -> Result<Linear<B::Weight>> {
        self.linear_with(prefix, B::patch_weight)
    }

    /// `{prefix}.weight` flattened to `[n, k]` and uploaded by `upload`, and `{prefix}.bias`.
    fn linear_with(
        &self,
        prefix: &str,
        upload: impl Fn(&B, Vec<f32>, usize, usize) -> Result<B::Weight>,
    ) -> Result<Linear<B::Weight>> {
        let (values, bias, (n, k)) = self.linear_host(prefix)?;
        Ok(Linear {
            weight: upload(self.backend, values, n, k)?,
            bias: bias.map(|b| self.upload_vector(b)).transpose()?,
        })
    }

    fn norm(&self, prefix: &str) -> Result<Norm<B::Weight>> {
        Ok(Norm {
            weight: self.vector(&format!("{prefix}.weight"))?,
            bias: self.vector(&format!("{prefix}.bias"))?,
        })
    }

    /// The LayerNorm `{norm}` and the linear layer that reads its output, `layer`: its weight
    /// `[n, k]` and bias as host values. Folded where the backend folds them
    /// ([`Backend::fold_norm_linear`]), else each uploaded as [`Loader::norm`] and
    /// [`Backend::linear_weight`] do.
    fn norm_linear(&self, norm: &str, layer: HostLinear) -> Result<NormLinear<B::Weight>> {
        let (weight, bias, (n, k)) = layer;
        let (gamma, beta) = (
            self.host(&format!("{norm}.weight"))?,
            self.host(&format!("{norm}.bias"))?,
        );
        let folded =
            self.backend
                .fold_norm_linear((&gamma, &beta), &weight, bias.as_deref(), (n, k))?;
        if let Some(f) = folded {
            let norm = Norm {
                weight: f.norm_weight,
                bias: f.norm_bias,
            };
            let linear = Linear {
                weight: f.weight,
                bias: Some(f.bias),
            };
            return Ok((norm, linear));
        }
        let norm = Norm {
            weight: self.upload_vector(gamma)?,
            bias: self.upload_vector(beta)?,
        };
        let linear = Linear {
            weight: self.backend.linear_weight(weight, n, k)?,
            bias: bias.map(|b| self.upload_vector(b)).transpose()?,
        };
        Ok((norm, linear))
    }

    /// `{prefix}.weight` flattened to `[n, k]` and `{prefix}.bias`, as host values.
    fn linear_host(&self, prefix: &str) -> Result<HostLinear> {
        let (shape, weight) = self.source.tensor(&format!("{prefix}.weight"))?;
        let (n, k) = (shape[0], shape[1..].iter().product());
        Ok((weight, Some(self.host(&format!("{prefix}.bias"))?), (n, k)))
    }

    /// The query, key and value projections as one `[3·h, h]` layer, as host values.
    fn fused_qkv(&self, prefix: &str, config: &Dinov2Config) -> Result<HostLinear> {
        let h = config.hidden_size;
        let mut weight = Vec::with_capacity(3 * h * h);
        let mut bias = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            weight.extend(self.host(&format!("{prefix}.{part}.weight"))?);
            if config.qkv_bias {
                bias.extend(self.host(&format!("{prefix}.{part}.bias"))?);
            }
        }
        Ok((weight, config.qkv_bias.then_some(bias), (3 * h, h)))
    }
}

/// A linear layer's weight `[n, k]` and bias as host values, and (n, k).
type HostLinear = (Vec<f32>, Option<Vec<f32>>, (usize, usize));

/// A LayerNorm and the linear layer that reads its output.
type NormLinear<W> = (Norm<W>, Linear<W>);

impl<W> Params<W> {
    /// Reads every parameter from `source` onto `backend`.
    pub(crate) fn load<B: Backend<Weight = W>>(
        backend: &B,
        config: &Dinov2Config,
        source: &dyn ParamSource,
    ) -> Result<(Self, HostParams)> {
        let h = config.hidden_size;
        let l = Loader { backend, source };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let qkv = l.fused_qkv(&format!("{p}.attention.attention"), config)?;
                let (norm1, qkv) = l.norm_linear(&format!("{p}.norm1"), qkv)?;
                // The MLP's input layer reads norm2's output.
                let (norm2, ffn) = if config.use_swiglu_ffn {
                    let input = l.linear_host(&format!("{p}.mlp.weights_in"))?;
                    let (norm2, weights_in) = l.norm_linear(&format!("{p}.norm2"), input)?;
                    let weights_out = l.linear(&format!("{p}.mlp.weights_out"))?;
                    let ffn = Ffn::SwiGlu {
                        weights_in,
                        weights_out,
                    };
                    (norm2, ffn)
                } else {
                    let input = l.linear_host(&format!("{p}.mlp.fc1"))?;
                    let (norm2, fc1) = l.norm_linear(&format!("{p}.norm2"), input)?;
                    let fc2 = l.linear(&format!("{p}.mlp.fc2"))?;
                    (norm2, Ffn::Mlp { fc1, fc2 })
                };
                Ok(Layer {
                    norm1,
                    qkv,
                    proj: l.linear(&format!("{p}.attention.output.dense"))?,
                    layer_scale1: l.vector(&format!("{p}.layer_scale1.lambda1"))?,
                    norm2,
                    ffn,
                    layer_scale2: l.vector(&format!("{p}.layer_scale2.lambda1"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = Params {
            patch: l.patch("embeddings.patch_embeddings.projection")?,
            cls: l.tensor("embeddings.cls_token", vec![h])?,
            mask_token: if config.use_mask_token {
                Some(l.tensor("embeddings.mask_token", vec![h])?)
            } else {
                None
            },
            registers: if config.num_register_tokens > 0 {
                Some(l.tensor(
                    "embeddings.register_tokens",
                    vec![config.num_register_tokens, h],
                )?)
            } else {
                None
            },
            layers,
            norm: l.norm("layernorm")?,
        };
        let classifier = if source.has("classifier.weight") {
            Some((l.host("classifier.weight")?, l.host("classifier.bias")?))
        } else {
            None
        };
        let host = HostParams {
            positions: l.host("embeddings.position_embeddings")?,
            classifier,
        };
        Ok((params, host))
    }
}
