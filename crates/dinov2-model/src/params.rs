//! The model's parameters, read from a checkpoint into a backend's weights once: QKV fused into one
//! `[3h, h]` projection, the patch convolution flattened to a `[h, C·p·p]` linear layer.

use dinov2_checkpoint::{Checkpoint, Dinov2Config, Weights};

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

struct Loader<'a, B: Backend> {
    backend: &'a B,
    weights: &'a Weights,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.weights.require(name)?.to_f32())
    }

    fn tensor(&self, name: &str, shape: Vec<usize>) -> Result<B::Weight> {
        self.backend.weight(self.host(name)?, shape)
    }

    fn vector(&self, name: &str) -> Result<B::Weight> {
        let v = self.host(name)?;
        let n = v.len();
        self.backend.weight(v, vec![n])
    }

    fn linear(&self, prefix: &str) -> Result<Linear<B::Weight>> {
        let w = self.weights.require(&format!("{prefix}.weight"))?;
        let shape = vec![w.shape[0], w.shape[1..].iter().product()];
        Ok(Linear {
            weight: self.backend.weight(w.to_f32(), shape)?,
            bias: Some(self.vector(&format!("{prefix}.bias"))?),
        })
    }

    fn norm(&self, prefix: &str) -> Result<Norm<B::Weight>> {
        Ok(Norm {
            weight: self.vector(&format!("{prefix}.weight"))?,
            bias: self.vector(&format!("{prefix}.bias"))?,
        })
    }

    fn fused_qkv(&self, prefix: &str, config: &Dinov2Config) -> Result<Linear<B::Weight>> {
        let h = config.hidden_size;
        let mut weight = Vec::with_capacity(3 * h * h);
        let mut bias = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            weight.extend(self.host(&format!("{prefix}.{part}.weight"))?);
            if config.qkv_bias {
                bias.extend(self.host(&format!("{prefix}.{part}.bias"))?);
            }
        }
        Ok(Linear {
            weight: self.backend.weight(weight, vec![3 * h, h])?,
            bias: if config.qkv_bias {
                Some(self.backend.weight(bias, vec![3 * h])?)
            } else {
                None
            },
        })
    }
}

impl<W> Params<W> {
    /// Reads every parameter of `checkpoint` onto `backend`.
    pub(crate) fn load<B: Backend<Weight = W>>(
        backend: &B,
        checkpoint: &Checkpoint,
    ) -> Result<(Self, HostParams)> {
        let config = &checkpoint.config;
        let h = config.hidden_size;
        let l = Loader {
            backend,
            weights: &checkpoint.weights,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let ffn = if config.use_swiglu_ffn {
                    Ffn::SwiGlu {
                        weights_in: l.linear(&format!("{p}.mlp.weights_in"))?,
                        weights_out: l.linear(&format!("{p}.mlp.weights_out"))?,
                    }
                } else {
                    Ffn::Mlp {
                        fc1: l.linear(&format!("{p}.mlp.fc1"))?,
                        fc2: l.linear(&format!("{p}.mlp.fc2"))?,
                    }
                };
                Ok(Layer {
                    norm1: l.norm(&format!("{p}.norm1"))?,
                    qkv: l.fused_qkv(&format!("{p}.attention.attention"), config)?,
                    proj: l.linear(&format!("{p}.attention.output.dense"))?,
                    layer_scale1: l.vector(&format!("{p}.layer_scale1.lambda1"))?,
                    norm2: l.norm(&format!("{p}.norm2"))?,
                    ffn,
                    layer_scale2: l.vector(&format!("{p}.layer_scale2.lambda1"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = Params {
            patch: l.linear("embeddings.patch_embeddings.projection")?,
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
        let classifier = if checkpoint.weights.has_classifier() {
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
