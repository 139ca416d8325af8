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
//! At most [`MAX_RECORDINGS`] are kept. Once that many are, a new shape takes the place of the
//! least recently used recording only when it has run more often than that recording has been
//! replayed, both counted with [`AGING_PASSES`] aging. A server whose batches come in more
//! sizes than that (one per number of images waiting) keeps its common sizes recorded and
//! runs the rare ones unrecorded, instead of recording and dropping sizes in turn, each
//! recording paid and never replayed.
//!
//! Should a recording or a replay fail, the model says why in [`ReplayStatus`] and runs every
//! pass as usual from then on (the failed replay's pass included); results never depend on
//! whether a pass was replayed.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::backend::Backend;
use crate::pooling::Pooling;
use crate::positions::Interpolation;

/// Recordings kept at once, the least recently used dropped first: each holds its own
/// activation memory (on CUDA, the graph's), and jobs rarely cycle through more shapes.
const MAX_RECORDINGS: usize = 8;

/// Every this many passes, the counts behind the admission of new recordings are halved (and
/// shapes whose count reaches 0 forgotten), so that a shape common long ago gives way to one
/// common now.
const AGING_PASSES: u32 = 256;

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
    /// Shapes not recorded: their passes so far (aged).
    seen: HashMap<PassShape, u32>,
    /// Shapes whose recording ran out of device memory: they run unrecorded from then on.
    too_large: HashSet<PassShape>,
    /// Shapes whose recording ran out of device memory while others held theirs, and that were
    /// given a second try with that memory back ([`Replays::too_large`]).
    second_chance: HashSet<PassShape>,
    /// The recordings, the most recently used last, each with its replays so far (aged).
    recorded: VecDeque<(PassShape, R, u32)>,
    /// Passes since the counts were last halved.
    since_aging: u32,
    status: ReplayStatus,
}

impl<R> Replays<R> {
    pub fn new(enabled: bool) -> Self {
        Replays {
            seen: HashMap::new(),
            too_large: HashSet::new(),
            second_chance: HashSet::new(),
            recorded: VecDeque::new(),
            since_aging: 0,
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
        let i = self.recorded.iter().position(|(s, _, _)| s == shape)?;
        self.tick();
        let (s, r, uses) = self.recorded.remove(i)?;
        self.recorded.push_back((s, r, uses.saturating_add(1)));
        self.status.replays += 1;
        self.recorded.back_mut().map(|(_, r, _)| r)
    }

    /// Notes a pass of `shape` run without its recording; true when it should be recorded now:
    /// recording on and never failed, its second pass or later, and either room for it or more
    /// passes of it than replays of the least recently used recording, which it would replace.
    pub fn should_record(&mut self, shape: &PassShape) -> bool {
        if !self.status.enabled || self.status.failure.is_some() || self.too_large.contains(shape) {
            return false;
        }
        self.tick();
        let runs = self.seen.entry(shape.clone()).or_insert(0);
        *runs = runs.saturating_add(1);
        let runs = *runs;
        runs >= 2
            && (self.recorded.len() < MAX_RECORDINGS
                || self
                    .recorded
                    .front()
                    .is_some_and(|(_, _, uses)| runs > *uses))
    }

    /// Keeps a new recording, dropping the least recently used beyond [`MAX_RECORDINGS`]. Its
    /// count starts from its passes so far.
    pub fn insert(&mut self, shape: PassShape, recorded: R) {
        let runs = self.seen.remove(&shape).unwrap_or(0);
        self.recorded.push_back((shape, recorded, runs));
        while self.recorded.len() > MAX_RECORDINGS {
            if let Some((dropped, _, uses)) = self.recorded.pop_front() {
                // Dropped, it competes again from its count.
                self.seen.insert(dropped, uses);
            }
        }
        self.status.recorded += 1;
    }

    /// Drops the recordings that are not `current` (holding memory that the others no longer
    /// share, [`Backend::is_current`]); each competes again from its count, as an evicted one
    /// does. That count starts from the passes that got it recorded, so it is recorded again
    /// at its next pass (at the one after, where aging has brought its count to 0).
    pub fn drop_stale(&mut self, current: impl Fn(&R) -> bool) {
        let (kept, stale) = std::mem::take(&mut self.recorded)
            .into_iter()
            .partition(|(_, r, _)| current(r));
        self.recorded = kept;
        for (shape, _, uses) in stale {
            self.seen.insert(shape, uses);
        }
    }

    /// Counts one pass; every [`AGING_PASSES`], halves every count.
    fn tick(&mut self) {
        self.since_aging += 1;
        if self.since_aging < AGING_PASSES {
            return;
        }
        self.since_aging = 0;
        self.seen.retain(|_, runs| {
            *runs /= 2;
            *runs > 0
        });
        for (_, _, uses) in &mut self.recorded {
            *uses /= 2;
        }
    }

    /// After `shape`'s recording (or replay) ran out of device memory: drops the other
    /// recordings to give their memory back. Where there were others, and this shape has not
    /// had its second chance yet, it is recorded again at its next pass, when their memory is
    /// free (on CUDA, a recording larger than the arena allocates a new one while the old one
    /// is still held); otherwise it runs unrecorded from then on. Recording goes on for other
    /// shapes.
    pub fn too_large(&mut self, shape: &PassShape) {
        let others = self.recorded.iter().any(|(s, _, _)| s != shape);
        let runs = self.seen.get(shape).copied();
        self.clear();
        if others && self.second_chance.insert(shape.clone()) {
            if let Some(runs) = runs {
                self.seen.insert(shape.clone(), runs);
            }
            return;
        }
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

    /// Takes back the replay that the last [`Replays::find`] counted: it failed, and the pass
    /// ran unrecorded.
    pub fn replay_failed(&mut self) {
        self.status.replays = self.status.replays.saturating_sub(1);
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
        assert!(r.should_record(&shape(8)));
        // Out of memory beside the recording of 4: that one is dropped, and 8 is tried again
        // at its next pass.
        r.too_large(&shape(8));
        assert!(
            r.find(&shape(4)).is_none(),
            "the other recordings were dropped"
        );
        assert_eq!(r.status().too_large, 0);
        assert!(r.should_record(&shape(8)));
        // Out of memory alone: given up.
        r.too_large(&shape(8));
        assert!(!r.should_record(&shape(8)));
        assert!(!r.should_record(&shape(8)));
        // Given up, too, on a second failure beside others.
        r.insert(shape(4), 4);
        r.too_large(&shape(8));
        assert!(r.find(&shape(4)).is_none());
        assert!(!r.should_record(&shape(8)));
        assert!(!r.should_record(&shape(2)));
        assert!(r.should_record(&shape(2)));
        assert_eq!(r.status().failure, None);
        assert_eq!(r.status().too_large, 1);
    }

    #[test]
    fn a_stale_recording_is_dropped_and_recorded_again_at_its_next_pass() {
        let mut r = Replays::<usize>::new(true);
        for b in [1, 2, 4] {
            r.insert(shape(b), b);
        }
        assert!(r.find(&shape(2)).is_some());
        // A larger recording outgrew the memory of 1 and 2 (values below 4 here).
        r.insert(shape(8), 8);
        r.drop_stale(|&v| v >= 4);
        assert!(r.find(&shape(1)).is_none());
        assert!(r.find(&shape(4)).is_some());
        assert!(r.find(&shape(8)).is_some());
        // Shape 2, replayed once before, is recorded again at its next pass; shape 1, never
        // replayed, at its second.
        assert!(r.find(&shape(2)).is_none());
        assert!(r.should_record(&shape(2)));
        assert!(!r.should_record(&shape(1)));
        assert!(r.should_record(&shape(1)));
        assert_eq!(r.status().recorded, 4);
    }

    /// One pass of `batch` as the model runs it; true when it was replayed.
    fn pass(r: &mut Replays<usize>, batch: usize) -> bool {
        if r.find(&shape(batch)).is_some() {
            return true;
        }
        if r.should_record(&shape(batch)) {
            r.insert(shape(batch), batch);
        }
        false
    }

    /// Batch sizes as a server's queue makes them: 16 sizes, the smaller ones more common
    /// (size k of 1..=16 with weight 17 - k), from a fixed pseudo-random sequence.
    fn served_sizes(passes: usize, offset: usize) -> Vec<usize> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let weights: Vec<usize> = (1..=16).map(|k| 17 - k).collect();
        let total: usize = weights.iter().sum();
        (0..passes)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut x = (state >> 33) as usize % total;
                let mut k = 0;
                while x >= weights[k] {
                    x -= weights[k];
                    k += 1;
                }
                offset + 8 * (k + 1)
            })
            .collect()
    }

    #[test]
    fn more_sizes_than_recordings_keep_the_common_ones_recorded() {
        let mut r = Replays::<usize>::new(true);
        let sizes = served_sizes(20_000, 0);
        let replayed = sizes.iter().filter(|&&b| pass(&mut r, b)).count();
        let kept: Vec<usize> = r.recorded.iter().map(|(s, _, _)| s.batch).collect();
        println!(
            "{} passes over 16 sizes: {} recordings made, {replayed} passes replayed, kept {kept:?}",
            sizes.len(),
            r.status().recorded
        );
        // The 8 recordings are mostly the 8 most common sizes (8..=64 images).
        assert!(
            kept.iter().filter(|&&b| b <= 64).count() >= 6,
            "kept {kept:?}"
        );
        // Recording every shape at its second pass and dropping the least recently used, as
        // until 2026-11-28, made 3735 recordings of these 20000 passes and replayed 12525.
        // Here sizes of nearly equal counts may still trade places at an aging: under 1%.
        assert!(
            r.status().recorded <= 200,
            "{} recordings",
            r.status().recorded
        );
        // The 8 most common of 16 sizes carry 100 of the 136 weights: about 73% of passes.
        assert!(replayed * 100 >= sizes.len() * 65, "{replayed} replayed");
    }

    #[test]
    fn a_new_set_of_sizes_takes_over_after_some_passes() {
        let mut r = Replays::<usize>::new(true);
        for b in served_sizes(5_000, 0) {
            pass(&mut r, b);
        }
        // A different job: the sizes 1000 + 8·k.
        let later = served_sizes(3_000, 1000);
        for &b in &later[..2_000] {
            pass(&mut r, b);
        }
        let replayed_at_end = later[2_000..].iter().filter(|&&b| pass(&mut r, b)).count();
        let kept: Vec<usize> = r.recorded.iter().map(|(s, _, _)| s.batch).collect();
        assert!(kept.iter().all(|&b| b > 1000), "kept {kept:?}");
        assert!(
            replayed_at_end * 100 >= 1_000 * 60,
            "{replayed_at_end} of 1000 replayed"
        );
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
