//! The DINOv2 vision transformer, written once over a [`Backend`]: `Dinov2Model`,
//! `Dinov2WithRegistersModel`, their image classifiers and backbones, as transformers 5.17.0
//! computes them. The CPU backend ([`CpuBackend`]) is the reference; the CUDA backend plugs into the
//! same trait.

mod backend;
mod cpu;
mod cuda;
mod error;
mod flops;
mod head;
mod loss;
mod model;
mod outputs;
mod params;
mod pooling;
mod positions;
mod replay;

pub use backend::{Backend, Device, Dtype, FoldedNormLinear, OpTime, TokenParams};
pub use cpu::CpuBackend;
pub use cuda::{CudaBackend, CudaTensor, CudaWeight};
pub use dinov2_cpu::Tensor;
pub use error::{ModelError, Result};
pub use flops::flops_per_image;
pub use head::Head;
pub use loss::{loss, resolve_problem_type, Labels};
pub use model::{Dinov2, ForwardOptions, PixelBatch};
pub use outputs::{BackboneOutput, ClassifierOutput, ModelOutput, Output};
pub use params::{ParamSource, RandomParams};
pub use pooling::{embeddings, pool, pool_tokens, Embedding, Pooling};
pub use positions::Interpolation;
pub use replay::ReplayStatus;
