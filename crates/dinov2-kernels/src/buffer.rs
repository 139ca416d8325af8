//! Device buffers that know their element type and shape.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::arena::{Arena, Traced};

/// Element type of a [`Buffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Bytes (masks).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// The kernel-name suffix (`f32`, `f16`, `bf16`, `u8`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        self != DType::U8
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A row-major device array: bytes on the device, an element type and a shape.
///
/// Memory is stream-ordered: it is freed on the stream that allocated it, after the work queued
/// before the drop, so a buffer may be dropped right after the launch that reads it.
#[derive(Debug)]
pub struct Buffer {
    pub(crate) memory: Memory,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    /// Its entry in the log of the recording being made, if any (see [`crate::MemoryPlan`]).
    pub(crate) _traced: Option<Traced>,
}

/// Where a [`Buffer`]'s bytes are.
#[derive(Debug)]
pub(crate) enum Memory {
    /// Its own allocation: from the stream's pool, or the graph's memory inside a recording.
    Own(CudaSlice<u8>),
    /// A range of a recording's arena, planned (see [`crate::MemoryPlan`]); the arena lives as long.
    Planned { arena: Arc<Arena>, offset: usize },
}

impl Buffer {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype.size()
    }

    /// Gives the same memory another shape with as many elements.
    pub fn reshape(&mut self, shape: Vec<usize>) -> bool {
        if shape.iter().product::<usize>() == self.len() {
            self.shape = shape;
            true
        } else {
            false
        }
    }

    /// The raw device address (event tracking is off, so the guard does nothing).
    pub(crate) fn ptr(&self, stream: &CudaStream) -> u64 {
        match &self.memory {
            Memory::Own(data) => {
                let (ptr, _guard) = data.device_ptr(stream);
                ptr
            }
            Memory::Planned { arena, offset } => arena.address(*offset),
        }
    }
}
