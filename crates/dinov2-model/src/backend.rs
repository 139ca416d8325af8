//! The contract between the model and a compute backend: a handful of fused operations from which
//! `Dinov2` builds every variant. Each backend (the CPU one here, CUDA next) implements them; the CPU
//! implementation is the executable specification of the others.

use dinov2_checkpoint::Activation;
pub use dinov2_kernels::OpTime;

use crate::error::Result;
use crate::pooling::{pool_tokens, Pooling};
use crate::Tensor;

/// Precision of the compute, independent of how the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::BF16),
            _ => Err(format!("unknown dtype {s:?}: expected f32, f16 or bf16")),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        })
    }
}

/// A LayerNorm and the linear layer after it with the norm folded in
/// ([`Backend::fold_norm_linear`]).
pub struct FoldedNormLinear<W> {
    /// The norm's weight, marked as folded.
    pub norm_weight: W,
    /// The norm's bias.
    pub norm_bias: W,
    /// The layer's folded weight `[n, k]`.
    pub weight: W,
    /// The layer's folded bias `[n]`.
    pub bias: W,
}

/// The parameters that turn patch embeddings into the encoder's input sequence.
pub struct TokenParams<'a, W> {
    /// `[h]`.
    pub cls: &'a W,
    /// `[1 + N, h]`: the CLS position then one row per patch, already resized to the grid.
    pub positions: &'a W,
    /// `[R, h]`, inserted after CLS without position embeddings.
    pub registers: Option<&'a W>,
    /// `[h]`, with the per-patch mask (`[B·N]`, true = replace the patch embedding).
    pub mask: Option<(&'a W, &'a [bool])>,
}

/// A compute backend. Shapes are row-major; "rows" means all leading dimensions flattened.
pub trait Backend: Send + Sync {
    /// Activations living on the backend (cloned to keep hidden states; sent with the
    /// recordings that own some).
    type Tensor: Clone + Send;
    /// Parameters, uploaded once (shared by the threads that use the model).
    type Weight: Send + Sync;
    /// A recorded sequence of work ([`Backend::record`]); the model keeps it behind a mutex.
    type Recording: Send;

    /// Images per forward pass that use this backend well, for callers that do not choose
    /// (the embedder, `dinov2 embed`): small on the CPU, where larger batches fall out of cache.
    const BATCH_SIZE: usize = 8;

    /// A short name for messages (`cpu`, `cuda:0`).
    fn name(&self) -> String;
    /// Uploads a parameter.
    fn weight(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<Self::Weight>;
    /// Uploads the weight of [`Backend::linear`] or [`Backend::patch_embed`], `[n, k]` as torch
    /// stores it; a backend may keep it in the layout its products prefer.
    fn linear_weight(&self, values: Vec<f32>, n: usize, k: usize) -> Result<Self::Weight> {
        self.weight(values, vec![n, k])
    }
    /// Uploads the patch convolution flattened to `[n, k]` (`k = C·p·p`), the weight of
    /// [`Backend::patch_embed`]; a backend may pad `k` for its products (the CUDA backend pads
    /// it to a multiple of 8: 588 -> 592 at patch 14, so the f16 GEMM reads aligned rows).
    fn patch_weight(&self, values: Vec<f32>, n: usize, k: usize) -> Result<Self::Weight> {
        self.linear_weight(values, n, k)
    }
    /// Uploads pixel values, the model's input, in the precision the backend computes in
    /// (rounded as its patch embedding would round them: the results do not change).
    fn upload(&self, tensor: &Tensor) -> Result<Self::Tensor>;
    /// Copies a tensor back to the host.
    fn download(&self, tensor: &Self::Tensor) -> Result<Tensor>;

    /// Pools the final tokens `[B, S, h]` into host rows `[B, w]` exactly as [`pool_tokens`]
    /// defines them (`prefix` tokens precede the patches): on the backend where
    /// [`Backend::pool_on_device`] can, so that only `[B, h]` or `[B, 2h]` values leave the
    /// device, else on the host after downloading every token.
    fn pool(&self, tokens: &Self::Tensor, prefix: usize, pooling: Pooling) -> Result<Tensor> {
        match self.pool_on_device(tokens, prefix, pooling)? {
            Some(pooled) => self.download(&pooled),
            None => Ok(pool_tokens(&self.download(tokens)?, prefix, pooling)),
        }
    }

    /// [`Backend::pool`] left on the backend (`[B, w]`), for the poolings it has kernels for;
    /// `None` for the others (and by default), which [`Backend::pool`] does on the host.
    fn pool_on_device(
        &self,
        tokens: &Self::Tensor,
        prefix: usize,
        pooling: Pooling,
    ) -> Result<Option<Self::Tensor>> {
        let _ = (tokens, prefix, pooling);
        Ok(None)
    }

    /// Whether [`Backend::record`] records (CUDA graphs), so that the model replays passes of a
    /// shape it has seen instead of issuing every operation again.
    fn can_record(&self) -> bool {
        false
    }

    /// Records the work `body` queues on the backend, without running it, for
    /// [`Backend::replay`]. Every address the work touches is baked in: the caller feeds a
    /// replay through [`Backend::copy_into`] / [`Backend::upload_into`] into tensors made before
    /// the recording, and reads its results from such tensors. `Ok(None)` where the backend does
    /// not record ([`Backend::can_record`] is false).
    fn record(&self, body: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        let _ = body;
        Ok(None)
    }

    /// Queues the work of a recording again, on the tensors it recorded.
    fn replay(&self, recording: &Self::Recording) -> Result<()>;

    /// False when `recording` holds memory that a later recording's has replaced (on CUDA, an
    /// arena outgrown by a larger one): the model then drops it, and records it again, into
    /// the memory the others share, when its shape comes back.
    fn is_current(&self, recording: &Self::Recording) -> bool {
        let _ = recording;
        true
    }

    /// A copy of `tensor` in memory of its own (never shared with `tensor`).
    fn duplicate(&self, tensor: &Self::Tensor) -> Result<Self::Tensor>;

    /// Copies `src` into `dst`, which has its shape and keeps its memory.
    fn copy_into(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()>;

    /// Uploads `src` into `dst`, which has its shape (and the precision [`Backend::upload`]
    /// gives it) and keeps its memory.
    fn upload_into(&self, src: &Tensor, dst: &mut Self::Tensor) -> Result<()>;

    /// The device's name for reports: the processor's (`AMD EPYC 9R14`, `cpu` where the system
    /// does not say), or the card's (`NVIDIA H100 80GB HBM3`).
    fn device_name(&self) -> String {
        self.name()
    }

    /// What else a published measurement should name about the device, as (key, value) pairs:
    /// driver and library versions, compute capability (none by default).
    fn device_details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Bytes of device memory in use as the driver counts it (all processes), after the queued
    /// work; `None` where the backend has no device memory of its own (the CPU).
    fn memory_used(&self) -> Option<usize> {
        None
    }

    /// Named parts of the backend's device memory in bytes, for telling a
    /// [`Backend::memory_used`] delta apart (on CUDA: the allocator's pool and the CUDA graphs'
    /// memory, now and at most since the last [`Backend::release_cached_memory`], the cuBLAS
    /// workspace and the recordings' arena, which is part of the pool); empty where the backend
    /// has no device memory of its own.
    fn memory_parts(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Device time per operation since the last call, longest first, where the backend times
    /// them (CUDA with `DINOV2_PROFILE=1`); `None` elsewhere.
    fn take_op_profile(&self) -> Result<Option<Vec<OpTime>>> {
        Ok(None)
    }

    /// Hands memory that the backend's allocator keeps for reuse back to the driver, after the
    /// queued work, so that [`Backend::memory_used`] deltas measure one workload.
    fn release_cached_memory(&self) -> Result<()> {
        Ok(())
    }

    /// A LayerNorm (`norm`: its weight and bias, `[k]`) and the linear layer that reads its
    /// output (`weight` `[n, k]`, `bias` `[n]`), with the norm folded into the product where the
    /// backend does that (CUDA with `DINOV2_NORM=fold`): the four parameters as
    /// [`Backend::layer_norm`] (and the fused residual steps) and [`Backend::linear`] then take
    /// them, the norm's weight marking its output as left to that layer. `Ok(None)`, the
    /// default, keeps the two apart.
    fn fold_norm_linear(
        &self,
        norm: (&[f32], &[f32]),
        weight: &[f32],
        bias: Option<&[f32]>,
        shape: (usize, usize),
    ) -> Result<Option<FoldedNormLinear<Self::Weight>>> {
        let _ = (norm, weight, bias, shape);
        Ok(None)
    }

    /// Conv2d with kernel = stride = `patch` over `[B, C, H, W]`: returns `[B, gh·gw, h]`.
    fn patch_embed(
        &self,
        pixels: &Self::Tensor,
        weight: &Self::Weight,
        bias: &Self::Weight,
        patch: usize,
    ) -> Result<Self::Tensor>;
    /// Mask substitution, CLS prepended, positions added to CLS and patches, registers inserted after
    /// CLS: `[B, N, h]` patches become `[B, 1 + R + N, h]`.
    fn embed_tokens(
        &self,
        patches: &Self::Tensor,
        params: TokenParams<'_, Self::Weight>,
    ) -> Result<Self::Tensor>;
    /// LayerNorm over the last dimension.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: &Self::Weight,
        eps: f64,
    ) -> Result<Self::Tensor>;
    /// `act(x · wᵀ + b)` with `w` as `[n, k]` (torch's `nn.Linear` layout).
    fn linear(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        act: Activation,
    ) -> Result<Self::Tensor>;
    /// `silu(x1) · x2` over rows `[x1 | x2]`.
    fn swiglu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Softmax attention over `[B, N, 3·heads·d]` packed QKV: `[B, N, heads·d]`, and the
    /// probabilities `[B, heads, N, N]` when asked.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        heads: usize,
        want_probs: bool,
    ) -> Result<(Self::Tensor, Option<Self::Tensor>)>;
    /// `x += gamma ⊙ branch` (layer scale and residual).
    fn add_scaled(
        &self,
        x: &mut Self::Tensor,
        branch: &Self::Tensor,
        gamma: &Self::Weight,
    ) -> Result<()>;
    /// `x += gamma ⊙ branch`, then `LayerNorm(x)`: the residual update of a pre-norm block fused
    /// with the next block's norm. Backends with a fused kernel override it.
    fn add_scaled_layer_norm(
        &self,
        x: &mut Self::Tensor,
        branch: &Self::Tensor,
        gamma: &Self::Weight,
        weight: &Self::Weight,
        bias: &Self::Weight,
        eps: f64,
    ) -> Result<Self::Tensor> {
        self.add_scaled(x, branch, gamma)?;
        self.layer_norm(x, weight, bias, eps)
    }
    /// `x += gamma ⊙ (h · wᵀ + b)`, then `LayerNorm(x)` with `norm_weight` and `norm_bias`: a
    /// pre-norm block's output projection, its residual update and the next norm. `h` is
    /// consumed, so that it is freed as soon as the product has read it. Backends that can put
    /// the residual update into the product override it.
    #[allow(clippy::too_many_arguments)]
    fn linear_add_scaled_layer_norm(
        &self,
        x: &mut Self::Tensor,
        h: Self::Tensor,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        gamma: &Self::Weight,
        norm_weight: &Self::Weight,
        norm_bias: &Self::Weight,
        eps: f64,
    ) -> Result<Self::Tensor> {
        let branch = self.linear(&h, weight, bias, Activation::Identity)?;
        drop(h);
        self.add_scaled_layer_norm(x, &branch, gamma, norm_weight, norm_bias, eps)
    }
}

/// Where a model runs: the CPU, or a CUDA GPU by ordinal. Parsed from `cpu`, `cuda` (GPU 0) or
/// `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on GPU `N`.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
