//! Recorded embedding passes, replayed for the shapes that come again.
//!
//! A bulk embedding job runs the same (batch, height, width, output) pass thousands of times, the
//! output being a pooling, a set of pooled intermediate layers or the final tokens (and a library
//! user may call `forward` as often).
//! On a backend that records ([`Backend::can_record`]: CUDA graphs), the second pass of a shape
//! runs as usual and is also recorded, on input and output tensors owned by the recording;
//! from the third on, the pixels are copied into that input, the recording replayed with one
//! launch, and the results read from those outputs. The first pass of a shape only runs: a shape
//! seen once (the last, partial batch of a job) is not worth the recording's time and memory.
//!
//! Should a recording fail, the model says why in [`ReplayStatus`] and runs every pass as usual
//! from then on; results never depend on whether a pass was replayed.

use std::collections::{HashSet, VecDeque};

use crate::backend::Backend;
use crate::pooling::Pooling;
use crate::positions::Interpolation;

/// Recordings kept at once, the least recently used dropped first: each holds its own
/// activation memory (on CUDA, the graph's), and jobs rarely cycle through more shapes.
const MAX_RECORDINGS: usize = 8;

/// What a pass returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PassOutput {
    /// The final tokens pooled ([`crate::Dinov2::embed`]).
    Pooled(Pooling),
    /// The final tokens, `last_hidden_state` ([`crate::Dinov2::forward`] without extras).
    Tokens,
    /// The hidden states `kept` (distinct, increasing), each through the final LayerNorm when
    /// `norm`, then pooled ([`crate::Dinov2::embed_layers`]): one result per kept state.
    Layers {
        kept: Vec<usize>,
        norm: bool,
        pooling: Pooling,
    },
}

impl PassOutput {
    /// The pooling of the pass's results; `None` for tokens.
    pub fn pooling(&self) -> Option<Pooling> {
        match self {
            PassOutput::Pooled(pooling) | PassOutput::Layers { pooling, .. } => Some(*pooling),
            PassOutput::Tokens => None,
        }
    }
}

/// What a recording is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PassShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub output: PassOutput,
    pub interpolation: Interpolation,
}

/// One recorded pass and the tensors it reads and writes.
pub(crate) struct Recorded<B: Backend> {
    /// Pixel values `[B, C, H, W]`: the recording's input.
    pub input: B::Tensor,
    /// The recording's results, one per result of the pass: pooled rows `[B, w]`, or tokens
    /// `[B, S, h]` for a token pass or where the backend does not pool this way (`pooled` false).
    pub outputs: Vec<B::Tensor>,
    pub pooled: bool,
    pub recording: B::Recording,
}

/// Where recording stands, for reports (`dinov2 bench`, `dinov2 embed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStatus {
    /// Whether the backend records at all.
    pub enabled: bool,
    /// Shapes recorded so far (including any dropped since).
    pub recorded: usize,
    /// Passes replayed so far.
    pub replays: u64,
    /// Why recording was turned off, when a recording failed.
    pub failure: Option<String>,
    /// Shapes whose recording ran out of device memory: they run unrecorded.
    pub too_large: usize,
}

/// The recordings `R` of one model, by shape.
pub(crate) struct Replays<R> {
    /// Shapes run once, waiting for a second pass to be recorded.
    seen: HashSet<PassShape>,
    /// Shapes whose recording ran out of device memory: they run unrecorded from then on.
    too_large: HashSet<PassShape>,
    /// The recordings, the most recently used last.
    recorded: VecDeque<(PassShape, R)>,
    status: ReplayStatus,
}

impl<R> Replays<R> {
    pub fn new(enabled: bool) -> Self {
        Replays {
            seen: HashSet::new(),
            too_large: HashSet::new(),
            recorded: VecDeque::new(),
            status: ReplayStatus {
                enabled,
                ..ReplayStatus::default()
            },
        }
    }

    pub fn status(&self) -> &ReplayStatus {
        &self.status
    }

    /// The recording of `shape`, marked as the most recently used.
    pub fn find(&mut self, shape: &PassShape) -> Option<&mut R> {
        let i = self.recorded.iter().position(|(s, _)| s == shape)?;
        let r = self.recorded.remove(i)?;
        self.recorded.push_back(r);
        self.status.replays += 1;
        self.recorded.back_mut().map(|(_, r)| r)
    }

    /// Notes a pass of `shape` run without its recording; true when it should be recorded now
    /// (its second pass, recording on and never failed).
    pub fn should_record(&mut self, shape: &PassShape) -> bool {
        if !self.status.enabled || self.status.failure.is_some() || self.too_large.contains(shape) {
            return false;
        }
        !self.seen.insert(shape.clone())
    }

    /// Keeps a new recording, dropping the least recently used beyond [`MAX_RECORDINGS`].
    pub fn insert(&mut self, shape: PassShape, recorded: R) {
        self.seen.remove(&shape);
        self.recorded.push_back((shape, recorded));
        while self.recorded.len() > MAX_RECORDINGS {
            self.recorded.pop_front();
        }
        self.status.recorded += 1;
    }

    /// Gives up recording `shape`, whose recording ran out of device memory, and drops the
    /// other recordings to give their memory back; recording goes on for other shapes.
    pub fn too_large(&mut self, shape: &PassShape) {
        self.clear();
        if self.too_large.insert(shape.clone()) {
            self.status.too_large += 1;
        }
    }

    /// Drops every recording (freeing its memory); shapes are recorded again at their second
    /// pass from now.
    pub fn clear(&mut self) {
        self.recorded.clear();
        self.seen.clear();
    }

    /// Turns recording off for good, keeping the reason.
    pub fn fail(&mut self, reason: String) {
        self.status.failure = Some(reason);
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize) -> PassShape {
        PassShape {
            batch,
            height: 224,
            width: 224,
            output: PassOutput::Pooled(Pooling::Cls),
            interpolation: Interpolation::default(),
        }
    }

    #[test]
    fn a_shape_is_recorded_at_its_second_pass_only() {
        let mut r = Replays::<u32>::new(true);
        assert!(!r.should_record(&shape(8)));
        assert!(!r.should_record(&shape(4)));
        assert!(r.should_record(&shape(8)));
        assert!(r.find(&shape(8)).is_none());
        r.insert(shape(8), 80);
        assert_eq!(r.find(&shape(8)), Some(&mut 80));
        assert_eq!(r.status().recorded, 1);
        assert_eq!(r.status().replays, 1);
    }

    #[test]
    fn the_least_recently_used_recording_goes_first() {
        let mut r = Replays::<usize>::new(true);
        for b in 0..MAX_RECORDINGS {
            r.insert(shape(b), b);
        }
        // Shape 0 used again: shape 1 is now the oldest.
        assert!(r.find(&shape(0)).is_some());
        r.insert(shape(100), 100);
        assert!(r.find(&shape(1)).is_none());
        assert!(r.find(&shape(0)).is_some());
        assert!(r.find(&shape(100)).is_some());
        assert_eq!(r.status().recorded, MAX_RECORDINGS + 1);
    }

    #[test]
    fn a_shape_too_large_to_record_runs_unrecorded_and_others_still_record() {
        let mut r = Replays::<u32>::new(true);
        r.insert(shape(4), 4);
        assert!(!r.should_record(&shape(8)));
        r.too_large(&shape(8));
        assert!(
            r.find(&shape(4)).is_none(),
            "the other recordings were dropped"
        );
        assert!(!r.should_record(&shape(8)));
        assert!(!r.should_record(&shape(8)));
        assert!(!r.should_record(&shape(2)));
        assert!(r.should_record(&shape(2)));
        assert_eq!(r.status().failure, None);
        assert_eq!(r.status().too_large, 1);
    }

    #[test]
    fn nothing_is_recorded_when_off_or_after_a_failure() {
        let mut off = Replays::<u32>::new(false);
        assert!(!off.should_record(&shape(8)));
        assert!(!off.should_record(&shape(8)));
        let mut failed = Replays::<u32>::new(true);
        assert!(!failed.should_record(&shape(8)));
        failed.fail("capture invalidated".into());
        assert!(!failed.should_record(&shape(8)));
        assert_eq!(
            failed.status().failure.as_deref(),
            Some("capture invalidated")
        );
    }
}
