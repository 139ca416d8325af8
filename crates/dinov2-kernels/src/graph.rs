//! CUDA graphs: the work queued on the device's stream between [`Device::begin_recording`] and
//! [`Recorder::finish`], recorded once and replayed with one launch. A forward pass is a few
//! hundred kernels and GEMMs; at small batches, issuing them one by one costs more host time than
//! the device spends on them, and a replay issues them all at once.
//!
//! What a recording bakes in, and the rules that follow for its users:
//! * every device address its kernels read or write: inputs must be copied into buffers that
//!   outlive the graph ([`Device::copy_into`], [`Device::upload_into`]) and results read from
//!   such buffers;
//! * every scalar argument (shapes, epsilons), and cuBLAS(Lt)'s algorithm choice;
//! * buffers allocated and freed inside the recording become the graph's own memory, kept by the
//!   driver between replays (not in the stream's pool). A buffer allocated inside must also be
//!   freed inside: the driver refuses to replay a graph whose allocation is still live. The
//!   reverse holds too: a buffer allocated before the recording must not be freed during it
//!   (the free fails and so does the capture), so nothing is replaced, only written into.
//!
//! A recording must not synchronize with the host (no download): capture fails, and
//! [`Recorder::finish`] reports it.

use cudarc::driver::{sys as dsys, CudaGraph};

use crate::device::Device;
use crate::error::{DriverContext, KernelError, Result};

/// A recorded sequence of stream work, replayed by [`Device::replay`].
pub struct Graph {
    graph: CudaGraph,
}

// SAFETY: a CUDA graph exec may be launched from any thread; cudarc marks it !Send only because
// the driver does not synchronize concurrent calls on one graph. Every method here takes `&self`
// and the users of `Graph` (the model's replay cache) keep it behind a mutex, so calls on one
// graph never overlap.
unsafe impl Send for Graph {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

/// A capture in progress on the device's stream, from [`Device::begin_recording`]. Finish it
/// with [`Recorder::finish`] or give it up with [`Recorder::abandon`]; dropped unfinished (an
/// early return, a panic), it ends the capture too, so the stream always runs work again.
pub struct Recorder<'a> {
    device: &'a Device,
    open: bool,
}

impl Device {
    /// Starts recording the stream's work instead of running it.
    ///
    /// The capture belongs to the stream, not to the thread: work that another thread queues on
    /// this device meanwhile would be recorded instead of run. Record from the thread that owns
    /// the device's work (the model serializes its own passes for this).
    pub fn begin_recording(&self) -> Result<Recorder<'_>> {
        // Thread-local mode: a call on this thread that could not be recorded safely (a
        // synchronous allocation or copy, a synchronization) fails instead of silently running
        // outside the graph. Other threads' unsafe calls do not invalidate the capture.
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ctx(|| "starting a CUDA graph capture".into())?;
        Ok(Recorder {
            device: self,
            open: true,
        })
    }

    /// True where buffers are allocated in stream order (`cuMemAllocAsync`): the only kind a
    /// recording can allocate. Without it (memory pools disabled), nothing can be recorded.
    pub fn records(&self) -> bool {
        self.ctx.has_async_alloc()
    }

    /// Ends the capture: the graph it made, if any.
    fn end_capture(&self) -> Result<Option<CudaGraph>> {
        // Buffers dropped inside a failed capture store their free errors in the context, and
        // cudarc's `end_capture` reports a stored error before ending anything: clear them, or
        // the stream would stay in capture mode.
        let _ = self.ctx.check_err();
        let ended = self
            .stream
            .end_capture(dsys::CUgraphInstantiate_flags(0))
            .ctx(|| "ending a CUDA graph capture".into());
        let _ = self.ctx.check_err();
        ended
    }

    /// Queues a replay of `graph` on the stream (ordered after the work queued before).
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        graph.graph.launch().ctx(|| "launching a CUDA graph".into())
    }
}

impl Recorder<'_> {
    /// Ends the capture and instantiates what it recorded. An error queued during the recording
    /// (a call that capture does not allow) surfaces here.
    pub fn finish(mut self) -> Result<Graph> {
        self.open = false;
        let graph = self
            .device
            .end_capture()?
            .ok_or_else(|| KernelError::Unsupported("the CUDA graph capture was empty".into()))?;
        // Maps the graph's memory and uploads its nodes now rather than at the first replay.
        graph
            .upload()
            .ctx(|| "uploading a CUDA graph to the device".into())?;
        Ok(Graph { graph })
    }

    /// Ends the capture and drops what it recorded (after the work being recorded failed).
    pub fn abandon(mut self) -> Result<()> {
        self.open = false;
        self.device.end_capture().map(drop)
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.device.end_capture();
        }
    }
}
