//! CUDA graphs: the work a closure queues on the device's stream, recorded once and replayed with
//! one launch. A forward pass is a few hundred kernels and GEMMs; at small batches, issuing them
//! one by one costs more host time than the device spends on them, and a replay issues them all
//! at once.
//!
//! What a recording bakes in, and the rules that follow for its users:
//! * every device address its kernels read or write: inputs must be copied into buffers that
//!   outlive the graph ([`Device::copy_into`], [`Device::upload_into`]) and results read from
//!   such buffers;
//! * every scalar argument (shapes, epsilons), and cuBLAS(Lt)'s algorithm choice;
//! * buffers allocated and freed inside the recording become the graph's own memory, kept by the
//!   driver between replays (not in the stream's pool). A buffer allocated inside must also be
//!   freed inside: the driver refuses to replay a graph whose allocation is still live.
//!
//! A recording must not synchronize with the host (no download): capture fails, and
//! [`Device::end_recording`] reports it.

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

impl Device {
    /// Starts recording the stream's work instead of running it. Call [`Device::end_recording`]
    /// whatever happens next: until then the stream runs nothing.
    pub fn begin_recording(&self) -> Result<()> {
        // Thread-local mode: a call on this thread that could not be recorded safely (a
        // synchronous allocation or copy, a synchronization) fails instead of silently running
        // outside the graph. Other threads (image decoders) are not affected.
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ctx(|| "starting a CUDA graph capture".into())
    }

    /// Ends the recording started by [`Device::begin_recording`] and instantiates it. An error
    /// queued during the recording (a call that capture does not allow) surfaces here.
    pub fn end_recording(&self) -> Result<Graph> {
        let ended = self.stream.end_capture(dsys::CUgraphInstantiate_flags(0));
        // Buffers dropped inside a failed capture record their (harmless) free errors in the
        // context; clear them so that the next synchronization does not report them.
        if ended.is_err() {
            let _ = self.ctx.check_err();
        }
        let graph = ended
            .ctx(|| "ending a CUDA graph capture".into())?
            .ok_or_else(|| KernelError::Unsupported("the CUDA graph capture was empty".into()))?;
        // Maps the graph's memory and uploads its nodes now rather than at the first replay.
        graph
            .upload()
            .ctx(|| "uploading a CUDA graph to the device".into())?;
        Ok(Graph { graph })
    }

    /// Queues a replay of `graph` on the stream (ordered after the work queued before).
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        graph.graph.launch().ctx(|| "launching a CUDA graph".into())
    }
}
