//! The contract between the model and a compute backend: a handful of fused operations from which
//! `Dinov2` builds every variant. Each backend (the CPU one here, CUDA next) implements them; the CPU
//! implementation is the executable specification of the others.

use dinov2_checkpoint::Activation;

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
    /// Activations living on the backend (cloned to keep hidden states).
    type Tensor: Clone;
    /// Parameters, uploaded once (shared by the threads that use the model).
    type Weight: Send + Sync;

    /// A short name for messages (`cpu`, `cuda:0`).
    fn name(&self) -> String;
    /// Uploads a parameter.
    fn weight(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<Self::Weight>;
    /// Uploads an input.
    fn upload(&self, tensor: &Tensor) -> Result<Self::Tensor>;
    /// Copies a tensor back to the host.
    fn download(&self, tensor: &Self::Tensor) -> Result<Tensor>;

    /// Pools the final tokens `[B, S, h]` into host rows `[B, w]` exactly as [`pool_tokens`]
    /// defines them (`prefix` tokens precede the patches). The default downloads every token and
    /// pools on the host; a backend with pooling kernels overrides it for CLS and mean pooling so
    /// that only `[B, h]` or `[B, 2h]` values leave the device.
    fn pool(&self, tokens: &Self::Tensor, prefix: usize, pooling: Pooling) -> Result<Tensor> {
        Ok(pool_tokens(&self.download(tokens)?, prefix, pooling))
    }

    /// The device's name for reports: `cpu`, or the card's (`NVIDIA H100 80GB HBM3`).
    fn device_name(&self) -> String {
        self.name()
    }

    /// Bytes of device memory in use as the driver counts it (all processes), after the queued
    /// work; `None` where the backend has no device memory of its own (the CPU).
    fn memory_used(&self) -> Option<usize> {
        None
    }

    /// Hands memory that the backend's allocator keeps for reuse back to the driver, after the
    /// queued work, so that [`Backend::memory_used`] deltas measure one workload.
    fn release_cached_memory(&self) -> Result<()> {
        Ok(())
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
}
