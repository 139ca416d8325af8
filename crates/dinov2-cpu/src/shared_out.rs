//! A raw output pointer shared by parallel tasks that write disjoint elements of one buffer.

/// The start of an output buffer, shared by tasks that each write their own elements of it
/// (an attention head's columns, a GEMM block's rows or columns).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: the tasks given a `SharedOut` write disjoint elements, and the buffer outlives them
// (each user says why at its own `unsafe` block).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(start: *mut f32) -> SharedOut {
        SharedOut(start)
    }

    /// Pointer to the element `offset` places from the start; a method, so that closures
    /// capture the whole (Sync) wrapper, not its field.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
