//! Device time per operation, for finding where a forward pass spends it: with `DINOV2_PROFILE=1`
//! (read when the device opens), [`Device::profile_op`] brackets each operation with two CUDA
//! events, and [`Device::take_profile`] waits for the stream and sums the times by operation.
//! Off by default: the events cost a little, and a recording (CUDA graph) cannot be timed this
//! way, so callers record nothing while profiling.

use std::sync::Mutex;

use cudarc::driver::{sys as dsys, CudaEvent};

use crate::device::Device;
use crate::error::{DriverContext, Result};

/// The device time of one kind of operation since the last [`Device::take_profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The operation (`gemm`, `attention`, `layer_norm`, ...).
    pub op: &'static str,
    /// How many times it ran.
    pub calls: u64,
    /// Their total device time, in milliseconds.
    pub ms: f64,
}

/// Operations bracketed so far, not yet summed.
#[derive(Default)]
pub(crate) struct Pending(Mutex<Vec<(&'static str, CudaEvent, CudaEvent)>>);

/// Bracketed operations kept until [`Device::take_profile`]: past this, later ones go untimed,
/// so that a long job run with `DINOV2_PROFILE=1` (which nothing reads) keeps its memory.
const MAX_PENDING: usize = 1 << 16;

impl Device {
    /// Whether operations are being timed (`DINOV2_PROFILE=1`).
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// Runs `f`, which queues the work of operation `op`; while profiling, brackets that work
    /// with events on the stream.
    pub fn profile_op<T, E>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let Some(pending) = &self.profile else {
            return f();
        };
        if pending
            .0
            .lock()
            .map_or(true, |list| list.len() >= MAX_PENDING)
        {
            return f();
        }
        let event = || {
            self.stream
                .record_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
                .ok()
        };
        let start = event();
        let out = f()?;
        // A failed event only loses this operation's time.
        if let (Some(start), Some(end)) = (start, event()) {
            if let Ok(mut list) = pending.0.lock() {
                list.push((op, start, end));
            }
        }
        Ok(out)
    }

    /// Waits for the stream, then returns the time of each operation bracketed since the last
    /// call, by operation, longest first; empty when not profiling.
    pub fn take_profile(&self) -> Result<Vec<OpTime>> {
        let Some(pending) = &self.profile else {
            return Ok(Vec::new());
        };
        self.synchronize()?;
        let list = std::mem::take(&mut *pending.0.lock().unwrap_or_else(|p| p.into_inner()));
        let mut times: Vec<OpTime> = Vec::new();
        for (op, start, end) in list {
            let ms = start
                .elapsed_ms(&end)
                .ctx(|| format!("timing {op} with events"))? as f64;
            match times.iter_mut().find(|t| t.op == op) {
                Some(t) => {
                    t.calls += 1;
                    t.ms += ms;
                }
                None => times.push(OpTime { op, calls: 1, ms }),
            }
        }
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}
