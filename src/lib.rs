//! dinov2: Meta's DINOv2 vision transformers as Hugging Face transformers defines them, in Rust.
//!
//! This facade re-exports what applications use: [`Checkpoint`] to open a model directory,
//! [`Dinov2`] over a backend ([`CpuBackend`], [`CudaBackend`]) to run it, [`Embedder`] for images,
//! and the output types.
//!
//! ```no_run
//! use dinov2::{Checkpoint, CpuBackend, Dinov2, ForwardOptions, Tensor};
//!
//! let checkpoint = Checkpoint::open("path/to/dinov2-small")?;
//! let model = Dinov2::load(CpuBackend, &checkpoint)?;
//! let pixels = Tensor::zeros(vec![1, 3, 224, 224]);
//! let out = model.forward(&pixels, None, &ForwardOptions::default())?;
//! assert_eq!(out.pooler_output.shape, vec![1, 384]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod embed;
mod error;
pub mod io;

pub use embed::{cut_to_patches, preprocess_config, stack_images, EmbedStream, Embedder, InTurn};
pub use error::{Error, Result};

pub use dinov2_checkpoint::{
    released, released_json, Activation, Checkpoint, CheckpointError, ConfigSource, Dinov2Config,
    ModelType, ProblemType, StorageDtype, Weights, RELEASED,
};
pub use dinov2_model::{
    flops_per_image, pool, pool_tokens, BackboneOutput, Backend, ClassifierOutput, CpuBackend,
    CudaBackend, Device, Dinov2, Dtype, Embedding, ForwardOptions, Head, Interpolation, Labels,
    ModelError, ModelOutput, OpTime, Output, PixelBatch, Pooling, ReplayStatus, Tensor,
};

/// Image decoding and preprocessing (Pillow parity).
pub use dinov2_image as image;

/// The crates behind the facade, for users who need their lower-level pieces.
pub mod crates {
    pub use dinov2_checkpoint as checkpoint;
    pub use dinov2_cpu as cpu;
    pub use dinov2_kernels as kernels;
    pub use dinov2_model as model;
}
