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
//! * buffers allocated and freed inside the recording live where [`RecordingMemory`] says: the
//!   graph's own memory, kept by the driver between replays (not in the stream's pool), or
//!   planned ranges of one arena ([`crate::MemoryPlan`]). A buffer allocated inside must also be
//!   freed inside: the driver refuses to replay a graph whose allocation is still live. The
//!   reverse holds too: a buffer allocated before the recording must not be freed during it
//!   (the free fails and so does the capture), so nothing is replaced, only written into.
//!
//! A recording must not synchronize with the host (no download): capture fails, and
//! [`Recorder::finish`] reports it.

use std::sync::Arc;

use cudarc::driver::{result as dresult, sys as dsys, CudaGraph};

use crate::arena::{diverged, unfreed, Arena, MemoryPlan};
use crate::device::{Device, Placement};
use crate::error::{DriverContext, KernelError, Result};

/// A recorded sequence of stream work, replayed by [`Device::replay`].
pub struct Graph {
    graph: CudaGraph,
    /// The arena its buffers are ranges of, when its memory was planned.
    arena: Option<Arc<Arena>>,
}

impl Graph {
    /// The arena its buffers are ranges of, when its memory was planned.
    pub(crate) fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena.as_ref()
    }
}

/// Where the buffers that a recording allocates live.
#[derive(Debug, Clone)]
pub enum RecordingMemory {
    /// The graph's own memory: an allocation node per buffer, placed by the driver.
    Graph,
    /// As `Graph`, with every allocation and free logged: a capture made only to plan the next
    /// one ([`Recorder::plan`]).
    Traced,
    /// Ranges of one arena, at the offsets of a plan made from a traced capture of the same
    /// work ([`MemoryPlan`]): the fewest bytes for it.
    Planned(Arc<MemoryPlan>),
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
    /// Where the capture's buffers go (the device holds the same until the capture ends): a
    /// traced capture's log, a planned one's plan, arena and log.
    placement: Placement,
}

impl Device {
    /// Starts recording the stream's work instead of running it.
    ///
    /// The capture belongs to the stream, not to the thread: work that another thread queues on
    /// this device meanwhile would be recorded instead of run. Record from the thread that owns
    /// the device's work (the model serializes its own passes for this).
    pub fn begin_recording(&self, memory: RecordingMemory) -> Result<Recorder<'_>> {
        let placement = match memory {
            RecordingMemory::Graph => Placement::Pool,
            RecordingMemory::Traced => Placement::Traced(Arc::default()),
            // Allocated before the capture: the arena is not the graph's.
            RecordingMemory::Planned(plan) => Placement::Planned {
                arena: self.arena_for(&plan)?,
                plan,
                log: Arc::default(),
            },
        };
        // Thread-local mode: a call on this thread that could not be recorded safely (a
        // synchronous allocation or copy, a synchronization) fails instead of silently running
        // outside the graph. Other threads' unsafe calls do not invalidate the capture.
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ctx(|| "starting a CUDA graph capture".into())?;
        self.set_placement(placement.clone());
        Ok(Recorder {
            device: self,
            open: true,
            placement,
        })
    }

    /// Sets where [`Device::alloc`] puts buffers (a lock poisoned by a panic is taken over: the
    /// placement is a plain value).
    fn set_placement(&self, placement: Placement) {
        *self.placement.lock().unwrap_or_else(|e| e.into_inner()) = placement;
    }

    /// True where buffers are allocated in stream order (`cuMemAllocAsync`): the only kind a
    /// recording can allocate. Without it (memory pools disabled), nothing can be recorded.
    pub fn records(&self) -> bool {
        self.ctx.has_async_alloc()
    }

    /// Ends the capture: the graph it made, if any, instantiated; allocations go to the pool
    /// again.
    fn end_capture(&self) -> Result<Option<CudaGraph>> {
        self.set_placement(Placement::Pool);
        // Buffers dropped inside a failed capture store their free errors in the context, and
        // cudarc's `end_capture` reports a stored error before ending anything: clear them, or
        // the stream would stay in capture mode.
        let _ = self.ctx.check_err();
        let ended = self
            .stream
            .end_capture(dsys::CUgraphInstantiate_flags(0))
            .ctx(|| "ending a CUDA graph capture".into());
        let _ = self.ctx.check_err();
        // cudarc binds the context before ending the capture: where that failed, the stream
        // still captures, and would record all later work instead of running it.
        if ended.is_err() && self.capturing() {
            let _ = self.discard_capture();
        }
        ended
    }

    /// Whether the stream is capturing (actively, or a capture that an error invalidated).
    fn capturing(&self) -> bool {
        // SAFETY: reads the capture status of our live stream.
        unsafe { dresult::stream::is_capturing(self.stream.cu_stream()) }.is_ok_and(|status| {
            status != dsys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
        })
    }

    /// Ends the capture and destroys what it recorded without instantiating it.
    fn discard_capture(&self) -> Result<()> {
        self.set_placement(Placement::Pool);
        let _ = self.ctx.check_err();
        // The capture is ended even where the context cannot be made current on this thread:
        // a stream left capturing would record all later work instead of running it. Where
        // both fail, the end's error is the one reported.
        let bound = self.bind();
        // SAFETY: the stream is capturing (the recorder is open); the graph it returns is ours
        // and destroyed once.
        let graph = unsafe { dresult::stream::end_capture(self.stream.cu_stream()) }
            .ctx(|| "ending a CUDA graph capture".into())?;
        let _ = self.ctx.check_err();
        if !graph.is_null() {
            // SAFETY: a graph (not an instance) that nothing else holds.
            unsafe { dresult::graph::destroy(graph) }
                .ctx(|| "destroying a traced CUDA graph".into())?;
        }
        bound
    }

    /// Queues a replay of `graph` on the stream (ordered after the work queued before).
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        graph.graph.launch().ctx(|| "launching a CUDA graph".into())
    }
}

impl Recorder<'_> {
    /// Ends the capture and instantiates what it recorded. An error queued during the recording
    /// (a call that capture does not allow) surfaces here.
    ///
    /// A planned capture must have allocated and freed exactly as its traced one did, or the
    /// offsets planned for it could overlap live buffers: otherwise it is dropped, and that is
    /// the error.
    pub fn finish(mut self) -> Result<Graph> {
        self.open = false;
        if let Placement::Planned { plan, log, .. } = &self.placement {
            let events = log.events();
            if !plan.matches(&events) {
                self.device.discard_capture()?;
                return Err(diverged(plan, &events));
            }
        }
        let graph = self
            .device
            .end_capture()?
            .ok_or_else(|| KernelError::Unsupported("the CUDA graph capture was empty".into()))?;
        // Maps the graph's memory and uploads its nodes now rather than at the first replay.
        graph
            .upload()
            .ctx(|| "uploading a CUDA graph to the device".into())?;
        let arena = match std::mem::replace(&mut self.placement, Placement::Pool) {
            Placement::Planned { arena, .. } => Some(arena),
            _ => None,
        };
        Ok(Graph { graph, arena })
    }

    /// Ends a [`RecordingMemory::Traced`] capture and plans the memory of the same work
    /// recorded again; what it recorded is discarded.
    pub fn plan(mut self) -> Result<MemoryPlan> {
        self.open = false;
        self.device.discard_capture()?;
        match &self.placement {
            Placement::Traced(log) => {
                let events = log.events();
                if let Some((alloc, bytes)) = unfreed(&events) {
                    return Err(KernelError::Unsupported(format!(
                        "buffer {alloc} of the recorded pass ({bytes} bytes) outlives the \
                         recording: a planned recording would share its memory with every \
                         replay's"
                    )));
                }
                Ok(MemoryPlan::new(events))
            }
            _ => Err(KernelError::Unsupported(
                "a capture without RecordingMemory::Traced has no plan".into(),
            )),
        }
    }

    /// Ends the capture and drops what it recorded (after the work being recorded failed).
    pub fn abandon(mut self) -> Result<()> {
        self.open = false;
        self.device.discard_capture()
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.device.discard_capture();
        }
    }
}
