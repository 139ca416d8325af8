//! The f32 CPU backend of dinov2, and its numerical reference: plain operations over row-major
//! buffers (GEMM with bias, LayerNorm, activations, attention, residual updates, patch extraction, bicubic
//! resampling). It knows nothing of the model; `dinov2-model` assembles the ViT from these, and
//! every CUDA kernel has its twin here.

mod activation;
mod attention;
mod ceiling;
pub mod fastmath;
mod matmul;
mod norm;
mod patch;
mod resample;
mod residual;
mod shared_out;
mod tensor;

pub use activation::{apply_activation, swiglu, Activation};
pub use attention::attention;
pub use ceiling::fma_ceiling;
pub use matmul::{linear, linear_kn, matmul, transpose, View};
pub use norm::layer_norm;
pub use patch::im2col;
pub use resample::{resize_grid, scale_factor_output, Resample};
pub use residual::{add_scaled, add_scaled_layer_norm};
pub use tensor::Tensor;
