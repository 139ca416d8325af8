//! The CUDA kernels of dinov2 with safe Rust launchers, and cuBLAS(Lt) GEMMs. It knows nothing of
//! DINOv2 as a model: it offers operations over device [`Buffer`]s.
//!
//! * Kernels live in `kernels/*.cu` at the repository root; `cargo xtask kernels` compiles them
//!   with nvcc 13.0 into the committed [`artifacts`] (compute_80 PTX and sm_90 cubins, and an
//!   sm_90a cubin of our Hopper GEMMs) that are embedded here, so building this crate needs no
//!   CUDA toolkit.
//! * cudarc loads libcuda and cuBLAS at run time. [`Device::new`] probes them first and returns an
//!   error, never a panic, where they are missing.
//! * Every operation computes in f32 (accumulation, statistics, softmax, activations) whatever the
//!   storage type (f32, f16, bf16).
//!
//! ```no_run
//! use dinov2_kernels::{DType, Device};
//! let dev = Device::new(0)?;
//! let x = dev.upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F16)?;
//! let w = dev.upload(&[1.0, 1.0, 1.0, 1.0], &[2], DType::F32)?;
//! let b = dev.zeros(DType::F32, &[2])?;
//! let mut y = dev.alloc(DType::F16, &[2, 2])?;
//! dev.layer_norm(&x, &w, &b, &mut y, 2, 2, 1e-6)?;
//! println!("{:?}", dev.download(&y)?);
//! # Ok::<(), dinov2_kernels::KernelError>(())
//! ```

mod arena;
pub mod artifacts;
mod buffer;
mod device;
mod error;
mod fold;
mod gemm;
mod graph;
mod hopper_gemm;
mod ops;
mod probs;
mod profile;
mod switches;

pub use arena::MemoryPlan;
pub use buffer::{Buffer, DType};
pub use device::{probe_libraries, CodeKind, Device, DeviceInfo, Timer};
pub use error::{KernelError, Result};
pub use fold::{fold_layer_norm, FoldedWeights};
pub use gemm::{GemmPath, TUNE_CANDIDATES, TUNE_MIN_MACS};
pub use graph::{Graph, Recorder, RecordingMemory};
pub use hopper_gemm::{OwnGemm, OwnTile, RowStats, STATS_COLUMNS};
pub use ops::{Act, MAX_HEAD_DIM};
pub use profile::OpTime;
pub use switches::{flag, switch};
