//! `Dinov2`: the vision transformer written once over a [`Backend`], with its three heads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use dinov2_checkpoint::{Activation, Checkpoint, Dinov2Config};

use crate::backend::{Backend, TokenParams};
use crate::error::{ModelError, Result};
use crate::loss::{loss, resolve_problem_type, Labels};
use crate::outputs::{BackboneOutput, ClassifierOutput, ModelOutput};
use crate::params::{Ffn, HostParams, Layer, Linear, Norm, ParamSource, Params, RandomParams};
use crate::pooling::{embeddings, join_layers, pool_tokens, Embedding, Pooling};
use crate::positions::{resized_positions, Interpolation};
use crate::replay::{PassOutput, PassShape, Recorded, ReplayStatus, Replays};

mod embed;
use crate::Tensor;
use embed::Pixels;

/// Options of a forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Return the embeddings and every layer's output.
    pub hidden_states: bool,
    /// Return every layer's attention probabilities.
    pub attentions: bool,
    /// The position-embedding rule.
    pub interpolation: Interpolation,
}

/// The encoder's raw result, still on the backend.
struct Encoded<T> {
    /// The final LayerNorm of the last layer's output: `last_hidden_state`.
    normed: T,
    hidden_states: Vec<T>,
    attentions: Vec<T>,
}

/// Pixel values `[B, C, H, W]` checked against the model and uploaded to its backend: the input
/// of [`Dinov2::embed_batch`], for passes that reuse one upload (benchmarks time the model
/// without the host-to-device copy, as PyTorch's timing keeps its input on the device).
pub struct PixelBatch<T> {
    tensor: T,
    batch: usize,
    height: usize,
    width: usize,
}

impl<T> PixelBatch<T> {
    /// Number of images.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// Identifies a resized position table: patch grid, pixel squareness (the skip rule), rule.
type PositionKey = (usize, usize, bool, Interpolation);

/// A DINOv2 model (plain or with registers) on a backend.
///
/// The fields are dropped in order: the recordings and the device memory go before the backend.
pub struct Dinov2<B: Backend> {
    /// Recorded embedding passes (CUDA graphs), by shape; where the backend records, its lock
    /// also serializes the model's passes (see [`Dinov2::exclusive`]).
    replays: Mutex<Replays<Recorded<B>>>,
    /// Position embeddings per (grid, pixel squareness, rule), uploaded once.
    positions: Mutex<HashMap<PositionKey, Arc<B::Weight>>>,
    params: Params<B::Weight>,
    host: HostParams,
    config: Dinov2Config,
    /// Whether the backend records ([`Backend::can_record`], asked once).
    records: bool,
    backend: B,
}

impl<B: Backend> Dinov2<B> {
    /// Uploads the checkpoint's parameters to `backend`.
    pub fn load(backend: B, checkpoint: &Checkpoint) -> Result<Self> {
        Self::from_source(backend, &checkpoint.config, &checkpoint.weights)
    }

    /// A model of the architecture `config` with deterministic random weights (for benchmarks).
    pub fn random(backend: B, config: &Dinov2Config, seed: u64) -> Result<Self> {
        Self::from_source(backend, config, &RandomParams::new(config, seed))
    }

    /// Uploads the parameters of `config` read from `source`.
    pub fn from_source(
        backend: B,
        config: &Dinov2Config,
        source: &dyn ParamSource,
    ) -> Result<Self> {
        let (params, host) = Params::load(&backend, config, source)?;
        let records = backend.can_record();
        Ok(Dinov2 {
            replays: Mutex::new(Replays::new(records)),
            positions: Mutex::new(HashMap::new()),
            params,
            host,
            config: config.clone(),
            records,
            backend,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Where the recording of embedding passes stands (see [`Dinov2::embed`]).
    pub fn replay_status(&self) -> ReplayStatus {
        self.replays
            .lock()
            .map(|r| r.status().clone())
            .unwrap_or_default()
    }

    /// Gives back the device memory the model holds beyond its weights: its recorded passes
    /// (recorded again when their shapes come back) and the backend's cached blocks
    /// ([`Backend::release_cached_memory`]). For a caller that ran out of device memory and
    /// tries again with fewer images.
    pub fn release_memory(&self) -> Result<()> {
        if let Some(mut replays) = self.exclusive()? {
            replays.clear();
        }
        self.backend.release_cached_memory()
    }

    /// Whether the checkpoint carries a classification head.
    pub fn has_classifier(&self) -> bool {
        self.host.classifier.is_some()
    }

    /// Checks `pixel_values` `[B, C, H, W]` and returns `(B, H, W)`.
    fn check_pixels(&self, pixels: &Tensor) -> Result<(usize, usize, usize)> {
        let bad = |reason: String| ModelError::input("pixel_values", reason);
        let [b, c, h, w] = pixels.shape[..] else {
            return Err(bad(format!(
                "expected 4 dimensions [B, C, H, W], found shape {:?}",
                pixels.shape
            )));
        };
        match Tensor::elements(&pixels.shape) {
            Some(n) if n == pixels.data.len() => {}
            needed => {
                return Err(bad(format!(
                    "holds {} values, shape {:?} needs {}",
                    pixels.data.len(),
                    pixels.shape,
                    needed.map_or("more than memory can hold".into(), |n| n.to_string())
                )))
            }
        }
        if b == 0 {
            return Err(bad("the batch is empty".into()));
        }
        if c != self.config.num_channels {
            return Err(bad(format!(
                "has {c} channels, the model expects {}",
                self.config.num_channels
            )));
        }
        let p = self.config.patch_size;
        if h < p || w < p {
            return Err(bad(format!(
                "{h}x{w} pixels is smaller than one {p}x{p} patch"
            )));
        }
        Ok((b, h, w))
    }

    /// Holds the model's passes apart where the backend records: a capture records all the work
    /// queued on the backend meanwhile, so no other pass of this model may queue any (a pass from
    /// another thread waits). `None`, and no waiting, where the backend does not record.
    fn exclusive(&self) -> Result<Option<MutexGuard<'_, Replays<Recorded<B>>>>> {
        if !self.records {
            return Ok(None);
        }
        self.replays.lock().map(Some).map_err(|_| poisoned())
    }

    /// Checks `pixel_values` `[B, C, H, W]` and uploads them to the backend.
    pub fn upload_pixels(&self, pixels: &Tensor) -> Result<PixelBatch<B::Tensor>> {
        let _pass = self.exclusive()?;
        self.upload(pixels)
    }

    /// [`Dinov2::upload_pixels`] for callers that hold [`Dinov2::exclusive`] already.
    fn upload(&self, pixels: &Tensor) -> Result<PixelBatch<B::Tensor>> {
        let (batch, height, width) = self.check_pixels(pixels)?;
        Ok(PixelBatch {
            tensor: self.backend.upload(pixels)?,
            batch,
            height,
            width,
        })
    }

    fn positions(
        &self,
        height: usize,
        width: usize,
        rule: Interpolation,
    ) -> Result<Arc<B::Weight>> {
        let p = self.config.patch_size;
        let key = (height / p, width / p, height == width, rule);
        if let Some(w) = self.positions.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(w.clone());
        }
        let values = resized_positions(&self.config, &self.host.positions, height, width, rule)?;
        let rows = values.len() / self.config.hidden_size;
        let w = Arc::new(
            self.backend
                .weight(values, vec![rows, self.config.hidden_size])?,
        );
        self.positions
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, w.clone());
        Ok(w)
    }

    /// One block on the residual stream `x`, given `y = norm1(x)`; returns `next(x)` (the next
    /// block's `norm1`, or the final LayerNorm) through the fused residual-and-norm operation, and
    /// the attention probabilities when asked. Each intermediate is dropped as soon as it is
    /// used, so the device's memory pool hands it to the next one (the peak is the MLP's: `x`,
    /// its input and hidden activations, and its output).
    fn layer(
        &self,
        layer: &Layer<B::Weight>,
        x: &mut B::Tensor,
        y: B::Tensor,
        next: &Norm<B::Weight>,
        want_probs: bool,
    ) -> Result<(B::Tensor, Option<B::Tensor>)> {
        let be = &self.backend;
        let eps = self.config.layer_norm_eps;
        // x += gamma ⊙ out(h), then the norm of the updated x.
        let residual =
            |x: &mut B::Tensor, h, out: &Linear<B::Weight>, gamma, norm: &Norm<B::Weight>| {
                let bias = out.bias.as_ref();
                be.linear_add_scaled_layer_norm(
                    x,
                    h,
                    &out.weight,
                    bias,
                    gamma,
                    &norm.weight,
                    &norm.bias,
                    eps,
                )
            };
        let qkv = be.linear(
            &y,
            &layer.qkv.weight,
            layer.qkv.bias.as_ref(),
            Activation::Identity,
        )?;
        drop(y);
        let (attended, probs) = be.attention(&qkv, self.config.num_attention_heads, want_probs)?;
        drop(qkv);
        let y = residual(x, attended, &layer.proj, &layer.layer_scale1, &layer.norm2)?;
        // The MLP's hidden activations, and its output layer.
        let (hidden, out) = match &layer.ffn {
            Ffn::Mlp { fc1, fc2 } => {
                let u = be.linear(&y, &fc1.weight, fc1.bias.as_ref(), self.config.hidden_act)?;
                drop(y);
                (u, fc2)
            }
            Ffn::SwiGlu {
                weights_in,
                weights_out,
            } => {
                let z = be.linear(
                    &y,
                    &weights_in.weight,
                    weights_in.bias.as_ref(),
                    Activation::Identity,
                )?;
                drop(y);
                let g = be.swiglu(&z)?;
                drop(z);
                (g, weights_out)
            }
        };
        let y_next = residual(x, hidden, out, &layer.layer_scale2, next)?;
        Ok((y_next, probs))
    }

    /// Embeddings and encoder; keeps the hidden states `i` (0 = the embeddings, `i` = layer `i`'s
    /// output, transformers' `hidden_states` indices) for which `keep(i)`, in order.
    fn encode(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        mask: Option<&[bool]>,
        opts: &ForwardOptions,
        keep: &dyn Fn(usize) -> bool,
    ) -> Result<Encoded<B::Tensor>> {
        let (b, height, width) = (pixels.batch, pixels.height, pixels.width);
        if opts.interpolation == Interpolation::Legacy && self.config.num_register_tokens > 0 {
            return Err(ModelError::Unsupported(
                "the legacy position-embedding rule exists only for dinov2 models, not dinov2_with_registers".into(),
            ));
        }
        let p = self.config.patch_size;
        let patches = (height / p) * (width / p);
        let mask = match mask {
            Some(m) if m.len() != b * patches => {
                return Err(ModelError::input(
                    "bool_masked_pos",
                    format!(
                        "holds {} values, expected [B={b}, num_patches={patches}]",
                        m.len()
                    ),
                ))
            }
            // transformers ignores the mask when the model has no mask token.
            Some(m) => self.params.mask_token.as_ref().map(|t| (t, m)),
            None => None,
        };
        let positions = self.positions(height, width, opts.interpolation)?;
        let be = &self.backend;
        let embedded =
            be.patch_embed(
                &pixels.tensor,
                &self.params.patch.weight,
                self.params.patch.bias.as_ref().ok_or_else(|| {
                    ModelError::Unsupported("patch embedding without a bias".into())
                })?,
                p,
            )?;
        let mut x = be.embed_tokens(
            &embedded,
            TokenParams {
                cls: &self.params.cls,
                positions: &positions,
                registers: self.params.registers.as_ref(),
                mask,
            },
        )?;
        let mut hidden_states = Vec::new();
        let mut attentions = Vec::new();
        let layers = &self.params.layers;
        let eps = self.config.layer_norm_eps;
        let mut y = be.layer_norm(&x, &layers[0].norm1.weight, &layers[0].norm1.bias, eps)?;
        for (i, layer) in layers.iter().enumerate() {
            if keep(i) {
                hidden_states.push(x.clone());
            }
            let next = layers.get(i + 1).map_or(&self.params.norm, |l| &l.norm1);
            let (y_next, probs) = self.layer(layer, &mut x, y, next, opts.attentions)?;
            y = y_next;
            if let Some(probs) = probs {
                attentions.push(probs);
            }
        }
        if keep(layers.len()) {
            hidden_states.push(x);
        }
        Ok(Encoded {
            normed: y,
            hidden_states,
            attentions,
        })
    }

    fn download_all(&self, list: Vec<B::Tensor>, keep: bool) -> Result<Option<Vec<Tensor>>> {
        if !keep {
            return Ok(None);
        }
        list.iter()
            .map(|t| self.backend.download(t))
            .collect::<Result<_>>()
            .map(Some)
    }

    /// `Dinov2Model.forward`: `pixel_values` `[B, C, H, W]`, optional `bool_masked_pos` `[B·N]`.
    ///
    /// Without a mask, hidden states or attentions, the pass is recorded and replayed on a
    /// backend that records, as [`Dinov2::embed`]'s.
    pub fn forward(
        &self,
        pixels: &Tensor,
        mask: Option<&[bool]>,
        opts: &ForwardOptions,
    ) -> Result<ModelOutput> {
        if mask.is_none() && !opts.hidden_states && !opts.attentions {
            // Only the final tokens: a pass that can be recorded and replayed.
            let (batch, height, width) = self.check_pixels(pixels)?;
            let shape = PassShape {
                batch,
                height,
                width,
                output: PassOutput::Tokens,
                interpolation: opts.interpolation,
            };
            let last_hidden_state = self
                .final_pass(Pixels::Host(pixels), &shape)?
                .pop()
                .ok_or_else(|| ModelError::Unsupported("a token pass gave no tokens".into()))?;
            return Ok(self.model_output(last_hidden_state, None, None));
        }
        let _pass = self.exclusive()?;
        let pixels = self.upload(pixels)?;
        let enc = self.encode(&pixels, mask, opts, &|_| opts.hidden_states)?;
        let last_hidden_state = self.backend.download(&enc.normed)?;
        Ok(self.model_output(
            last_hidden_state,
            self.download_all(enc.hidden_states, opts.hidden_states)?,
            self.download_all(enc.attentions, opts.attentions)?,
        ))
    }

    /// [`ModelOutput`] from the final tokens: `pooler_output` is the CLS row.
    fn model_output(
        &self,
        last_hidden_state: Tensor,
        hidden_states: Option<Vec<Tensor>>,
        attentions: Option<Vec<Tensor>>,
    ) -> ModelOutput {
        let pooler_output = token_rows(&last_hidden_state, 0, 1);
        ModelOutput {
            pooler_output: Tensor {
                shape: vec![last_hidden_state.shape[0], self.config.hidden_size],
                data: pooler_output.data,
            },
            last_hidden_state,
            hidden_states,
            attentions,
        }
    }

    /// `Dinov2ForImageClassification.forward`: logits of `[CLS, mean(patch tokens)]`, and the loss
    /// when labels are given.
    pub fn classify(
        &self,
        pixels: &Tensor,
        labels: Option<&Labels>,
        opts: &ForwardOptions,
    ) -> Result<ClassifierOutput> {
        let (weight, bias) = self.host.classifier.as_ref().ok_or_else(|| {
            ModelError::Unsupported(
                "the checkpoint has no classification head (classifier.weight is absent)".into(),
            )
        })?;
        let _pass = self.exclusive()?;
        let pixels = self.upload(pixels)?;
        let enc = self.encode(&pixels, None, opts, &|_| opts.hidden_states)?;
        // `[CLS, mean(patch tokens)]` pooled on the backend: `[B, 2h]`.
        let input = self.backend.pool(
            &enc.normed,
            self.config.num_prefix_tokens(),
            Pooling::ClsMean,
        )?;
        let (b, width) = (input.shape[0], input.shape[1]);
        let c = bias.len();
        let logits = Tensor {
            shape: vec![b, c],
            data: dinov2_cpu::linear(&input.data, b, width, weight, c, Some(bias)),
        };
        let loss = labels
            .map(|l| {
                loss(
                    resolve_problem_type(self.config.problem_type, c, l),
                    &logits,
                    l,
                )
            })
            .transpose()?;
        Ok(ClassifierOutput {
            logits,
            loss,
            hidden_states: self.download_all(enc.hidden_states, opts.hidden_states)?,
            attentions: self.download_all(enc.attentions, opts.attentions)?,
        })
    }

    /// `Dinov2Backbone.forward`: the stages of `config.out_indices`, normalized by the final
    /// LayerNorm when `apply_layernorm`, reshaped to `[B, h, gh, gw]` when `reshape_hidden_states`.
    pub fn backbone(&self, pixels: &Tensor, opts: &ForwardOptions) -> Result<BackboneOutput> {
        let _pass = self.exclusive()?;
        let pixels = self.upload(pixels)?;
        let enc = self.encode(&pixels, None, opts, &|_| true)?;
        let p = self.config.patch_size;
        let (gh, gw) = (pixels.height / p, pixels.width / p);
        let norm = &self.params.norm;
        let mut feature_maps = Vec::new();
        for &stage in &self.config.out_indices {
            let state = &enc.hidden_states[stage];
            let state = if self.config.apply_layernorm {
                let y = self.backend.layer_norm(
                    state,
                    &norm.weight,
                    &norm.bias,
                    self.config.layer_norm_eps,
                )?;
                self.backend.download(&y)?
            } else {
                self.backend.download(state)?
            };
            feature_maps.push(if self.config.reshape_hidden_states {
                let patches = token_rows(&state, self.config.num_prefix_tokens(), gh * gw);
                channels_first(&patches, gh, gw)
            } else {
                state
            });
        }
        Ok(BackboneOutput {
            feature_maps,
            hidden_states: self.download_all(enc.hidden_states, opts.hidden_states)?,
            attentions: self.download_all(enc.attentions, opts.attentions)?,
        })
    }
}

fn poisoned() -> ModelError {
    ModelError::Unsupported(
        "a previous forward pass panicked while caching position embeddings or recordings".into(),
    )
}

/// Tokens `start..start + count` of each image of `[B, S, h]`: `[B, count, h]`.
fn token_rows(x: &Tensor, start: usize, count: usize) -> Tensor {
    let (b, s, h) = (x.shape[0], x.shape[1], x.shape[2]);
    let mut data = Vec::with_capacity(b * count * h);
    for i in 0..b {
        data.extend_from_slice(&x.data[(i * s + start) * h..(i * s + start + count) * h]);
    }
    Tensor {
        shape: vec![b, count, h],
        data,
    }
}

/// `[B, gh·gw, h]` to `[B, h, gh, gw]`.
fn channels_first(x: &Tensor, gh: usize, gw: usize) -> Tensor {
    let (b, n, h) = (x.shape[0], x.shape[1], x.shape[2]);
    let mut data = vec![0.0f32; x.len()];
    for i in 0..b {
        for t in 0..n {
            for c in 0..h {
                data[(i * h + c) * n + t] = x.data[(i * n + t) * h + c];
            }
        }
    }
    Tensor {
        shape: vec![b, h, gh, gw],
        data,
    }
}
