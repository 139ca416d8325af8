//! Planned memory for recordings ([`crate::RecordingMemory::Planned`]): every buffer a recorded
//! pass allocates is a range of one arena, at an offset planned from a trace of the same pass
//! (why and how: [`MemoryPlan`]).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::error::{DriverContext, KernelError, Result};

/// Alignment of every planned buffer in bytes: what `cuMemAlloc` guarantees, and what
/// cuBLASLt's algorithm choice assumes of its operands by default.
pub(crate) const ALIGN: usize = 256;

/// One step of a capture's allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A buffer of `bytes` was allocated; buffers are numbered from 0 in this order.
    Alloc { bytes: usize },
    /// Buffer number `alloc` was freed.
    Free { alloc: usize },
}

/// The allocations and frees of one capture, in order. Buffers log their own frees
/// ([`Traced`]), so the log is shared with them.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// The events, and the number of allocations among them (the next buffer's number).
    state: Mutex<(Vec<Event>, usize)>,
}

impl Log {
    /// Logs an allocation of `bytes`: the buffer's membership, which logs its free when dropped.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Traced {
        let mut state = lock(&self.state);
        let alloc = state.1;
        state.1 += 1;
        state.0.push(Event::Alloc { bytes });
        Traced {
            log: self.clone(),
            alloc,
        }
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.state).0.clone()
    }
}

/// A lock that a panic elsewhere does not poison: the log is a plain list, valid after any push.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer's entry in a [`Log`]: its number, and its free logged when it is dropped.
#[derive(Debug)]
pub(crate) struct Traced {
    log: Arc<Log>,
    alloc: usize,
}

impl Traced {
    /// The buffer's number in its log.
    pub fn alloc(&self) -> usize {
        self.alloc
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        lock(&self.log.state)
            .0
            .push(Event::Free { alloc: self.alloc });
    }
}

/// Where each buffer of a traced capture goes in one arena, and the arena's size.
///
/// A CUDA graph that allocates inside its capture gets one allocation node per buffer, placed by
/// the driver. Run 4 (an H100) measured 386 MiB of device memory for the recorded passes of
/// ViT-B/14 at batch 64 in f16, and 290 MiB for the same passes run eagerly from the stream's
/// pool, where the buffers alive at once (the f32 residual stream, the MLP's hidden activations
/// and its output) are 169 MiB: a pool cannot put a 101 MB buffer where a 76 MB one was freed.
/// The pass is the same every time, so its allocations can be planned, as an ahead-of-time
/// compiler plans a graph's buffers:
///
/// 1. a first capture runs the pass with the graph's own memory and logs every allocation and
///    free in order; its graph is thrown away unlaunched;
/// 2. the plan gives every buffer an offset such that buffers alive at the same time
///    never share a byte (largest first, each at the lowest offset free for its lifetime);
/// 3. a second capture hands out those ranges of one arena, logging again; the recording is kept
///    only if its log equals the trace, so every buffer had the lifetime the plan assumed.
///
/// The arena of a device is shared by its recordings: their replays run one after another on
/// the device's one stream, and nothing outside a replay reads its intermediates. A recording
/// too large for it gets a new, larger arena, and the recordings on the old one are then not
/// current ([`crate::Device::recording_is_current`]): the model records them again into the
/// new one, so that the old one's memory goes back instead of adding to the new one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The capture the plan is for.
    trace: Vec<Event>,
    /// Per buffer: its bytes and its offset in the arena.
    buffers: Vec<(usize, usize)>,
    /// The arena's bytes: the end of the highest buffer.
    bytes: usize,
}

impl MemoryPlan {
    /// Plans `trace`. A buffer lives from its allocation to its free (to the end of the capture
    /// if it was not freed in it); two buffers whose lives overlap get disjoint ranges. Largest
    /// first, each at the lowest aligned offset that no already placed buffer of overlapping
    /// life covers. Greedy, so not optimal in general; for a chain of ViT blocks the arena is
    /// the most bytes alive at once, the least possible (a unit test checks this).
    pub(crate) fn new(trace: Vec<Event>) -> Self {
        // (bytes, aligned size, first event, event after the last) per buffer.
        let mut lives: Vec<(usize, usize, usize, usize)> = Vec::new();
        for (t, event) in trace.iter().enumerate() {
            match *event {
                Event::Alloc { bytes } => {
                    lives.push((bytes, aligned(bytes), t, usize::MAX));
                }
                Event::Free { alloc } => {
                    if let Some(life) = lives.get_mut(alloc) {
                        life.3 = life.3.min(t);
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..lives.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(lives[i].1), lives[i].2));
        let mut offsets = vec![0usize; lives.len()];
        // Placed buffers as (offset, size, first event, event after the last).
        let mut placed: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(lives.len());
        let mut bytes = 0;
        for i in order {
            let (_, size, start, end) = lives[i];
            let mut rivals: Vec<(usize, usize)> = placed
                .iter()
                .filter(|p| p.2 < end && start < p.3)
                .map(|p| (p.0, p.1))
                .collect();
            rivals.sort_unstable();
            let mut offset = 0;
            for (at, len) in rivals {
                if offset + size <= at {
                    break;
                }
                offset = offset.max(at + len);
            }
            offsets[i] = offset;
            placed.push((offset, size, start, end));
            bytes = bytes.max(offset + size);
        }
        let buffers = lives.iter().zip(offsets).map(|(l, o)| (l.0, o)).collect();
        MemoryPlan {
            trace,
            buffers,
            bytes,
        }
    }

    /// The arena's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Buffers planned.
    pub fn buffers(&self) -> usize {
        self.buffers.len()
    }

    /// The offset of buffer number `alloc` if it has `bytes` as traced; `None` where the capture
    /// being planned has gone another way than the trace.
    pub(crate) fn offset(&self, alloc: usize, bytes: usize) -> Option<usize> {
        match self.buffers.get(alloc) {
            Some(&(traced, offset)) if traced == bytes => Some(offset),
            _ => None,
        }
    }

    /// Whether `events` are the traced ones: the same buffers with the same lives.
    pub(crate) fn matches(&self, events: &[Event]) -> bool {
        self.trace == events
    }
}

/// The first buffer of `trace` never freed in it, as (its number, its bytes). Such a buffer
/// outlives its capture: in a planned recording it would be a range of the arena that the
/// next replay of any recording on the device overwrites (the driver, which refuses to replay
/// a graph whose own allocation is still live, sees nothing of an arena), so a trace with one
/// is not planned.
pub(crate) fn unfreed(trace: &[Event]) -> Option<(usize, usize)> {
    let mut live: Vec<Option<usize>> = Vec::new();
    for event in trace {
        match *event {
            Event::Alloc { bytes } => live.push(Some(bytes)),
            Event::Free { alloc } => {
                if let Some(slot) = live.get_mut(alloc) {
                    *slot = None;
                }
            }
        }
    }
    live.iter()
        .enumerate()
        .find_map(|(alloc, bytes)| bytes.map(|b| (alloc, b)))
}

fn aligned(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

/// The device memory that planned buffers are ranges of, freed in stream order when the last
/// recording and buffer using it are gone.
pub(crate) struct Arena {
    _memory: CudaSlice<u8>,
    base: u64,
    bytes: usize,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("bytes", &self.bytes).finish()
    }
}

impl Arena {
    /// Allocates `bytes` (at least one) from the stream's pool, outside any capture.
    pub fn new(stream: &Arc<CudaStream>, bytes: usize) -> Result<Self> {
        // SAFETY: u8 has no invalid bit patterns; kernels write before anyone reads.
        let memory = unsafe { stream.alloc::<u8>(bytes.max(1)) }
            .ctx(|| format!("allocating a recording's arena of {bytes} bytes"))?;
        let base = memory.device_ptr(stream).0;
        Ok(Arena {
            _memory: memory,
            base,
            bytes,
        })
    }

    /// The address of byte `offset`.
    pub fn address(&self, offset: usize) -> u64 {
        self.base + offset as u64
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The error of a planned capture whose allocations went another way than its trace.
pub(crate) fn diverged(plan: &MemoryPlan, events: &[Event]) -> KernelError {
    let allocs = |e: &[Event]| {
        e.iter()
            .filter(|e| matches!(e, Event::Alloc { .. }))
            .count()
    };
    KernelError::Unsupported(format!(
        "a recorded pass allocated differently from its traced capture ({} buffers and {} \
         events, against {} and {}): its planned memory would not be valid",
        allocs(events),
        events.len(),
        plan.buffers(),
        plan.trace.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_never_freed_is_named() {
        let alloc = |bytes| Event::Alloc { bytes };
        let free = |alloc| Event::Free { alloc };
        assert_eq!(unfreed(&[]), None);
        assert_eq!(unfreed(&[alloc(10), alloc(20), free(1), free(0)]), None);
        assert_eq!(
            unfreed(&[alloc(10), alloc(20), alloc(30), free(0), free(2)]),
            Some((1, 20))
        );
        assert_eq!(unfreed(&[alloc(10), free(0), alloc(40)]), Some((1, 40)));
    }

    /// A pseudo-random trace like a pass's: allocations of mixed sizes, each freed a few steps
    /// later (some at the end, some never).
    fn random_trace(seed: u64, allocs: usize) -> Vec<Event> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        let mut events = Vec::new();
        let mut live: Vec<usize> = Vec::new();
        for a in 0..allocs {
            events.push(Event::Alloc {
                bytes: 1 + next() % 100_000,
            });
            live.push(a);
            while !live.is_empty() && next() % 3 == 0 {
                let i = next() % live.len();
                events.push(Event::Free {
                    alloc: live.swap_remove(i),
                });
            }
        }
        for alloc in live.into_iter().skip(2) {
            events.push(Event::Free { alloc });
        }
        events
    }

    /// Each buffer's (offset, bytes, first event, event after the last).
    fn placed(plan: &MemoryPlan) -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::new();
        for (t, e) in plan.trace.iter().enumerate() {
            match *e {
                Event::Alloc { bytes } => {
                    let offset = plan.offset(out.len(), bytes).unwrap();
                    out.push((offset, bytes, t, usize::MAX));
                }
                Event::Free { alloc } => out[alloc].3 = t,
            }
        }
        out
    }

    /// The most bytes (aligned) alive at once: no plan can use fewer.
    fn live_peak(trace: &[Event]) -> usize {
        let (mut sizes, mut live, mut peak) = (Vec::new(), 0, 0);
        for e in trace {
            match *e {
                Event::Alloc { bytes } => {
                    sizes.push(aligned(bytes));
                    live += aligned(bytes);
                    peak = peak.max(live);
                }
                Event::Free { alloc } => live -= sizes[alloc],
            }
        }
        peak
    }

    #[test]
    fn buffers_alive_together_never_share_a_byte() {
        for seed in 0..50 {
            let plan = MemoryPlan::new(random_trace(seed, 200));
            let buffers = placed(&plan);
            for (i, a) in buffers.iter().enumerate() {
                assert_eq!(a.0 % ALIGN, 0, "buffer {i} misaligned");
                assert!(a.0 + a.1 <= plan.bytes(), "buffer {i} outside the arena");
                for (j, b) in buffers.iter().enumerate().skip(i + 1) {
                    let together = a.2 < b.3 && b.2 < a.3;
                    let overlap = a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
                    assert!(
                        !(together && overlap),
                        "seed {seed}: buffers {i} and {j} alive together share memory"
                    );
                }
            }
            assert!(plan.bytes() >= live_peak(&plan.trace));
        }
    }

    /// The shape of a pre-norm block's buffers (ViT-B/14 at batch 64, f16 with an f32 residual
    /// stream): where the stream pool held 240 MiB, the plan needs only the largest set of
    /// buffers alive at once.
    #[test]
    fn a_chain_of_blocks_needs_only_its_peak() {
        let t = 64 * 257;
        let (x, y, qkv, u) = (t * 768 * 4, t * 768 * 2, t * 2304 * 2, t * 3072 * 2);
        let mut events = vec![Event::Alloc { bytes: x }];
        let mut n = 1;
        let mut alloc = |events: &mut Vec<Event>, bytes| {
            events.push(Event::Alloc { bytes });
            n += 1;
            n - 1
        };
        let mut y_in = alloc(&mut events, y);
        for _ in 0..12 {
            let q = alloc(&mut events, qkv);
            events.push(Event::Free { alloc: y_in });
            let att = alloc(&mut events, y);
            events.push(Event::Free { alloc: q });
            let proj = alloc(&mut events, y);
            events.push(Event::Free { alloc: att });
            let y2 = alloc(&mut events, y);
            events.push(Event::Free { alloc: proj });
            let hidden = alloc(&mut events, u);
            events.push(Event::Free { alloc: y2 });
            let out = alloc(&mut events, y);
            events.push(Event::Free { alloc: hidden });
            y_in = alloc(&mut events, y);
            events.push(Event::Free { alloc: out });
        }
        events.push(Event::Free { alloc: y_in });
        events.push(Event::Free { alloc: 0 });
        let plan = MemoryPlan::new(events.clone());
        assert_eq!(plan.bytes(), live_peak(&events));
        assert_eq!(plan.bytes(), aligned(x) + aligned(u) + aligned(y));
        assert!(plan.matches(&events));
        assert!(!plan.matches(&events[1..]));
    }

    #[test]
    fn a_capture_that_goes_another_way_gets_no_offset() {
        let plan = MemoryPlan::new(vec![
            Event::Alloc { bytes: 100 },
            Event::Alloc { bytes: 300 },
            Event::Free { alloc: 0 },
        ]);
        assert_eq!(plan.offset(1, 300), Some(0));
        assert_eq!(plan.offset(0, 100), Some(512));
        assert_eq!(plan.offset(1, 301), None);
        assert_eq!(plan.offset(2, 100), None);
        assert_eq!(plan.bytes(), 768);
    }

    #[test]
    fn buffers_log_their_own_frees() {
        let log = Arc::new(Log::default());
        let a = log.alloc(10);
        let b = log.alloc(20);
        assert_eq!((a.alloc(), b.alloc()), (0, 1));
        drop(a);
        drop(b);
        assert_eq!(
            log.events(),
            vec![
                Event::Alloc { bytes: 10 },
                Event::Alloc { bytes: 20 },
                Event::Free { alloc: 0 },
                Event::Free { alloc: 1 },
            ]
        );
    }
}
