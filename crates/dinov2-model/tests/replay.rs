//! The model's recording and replay of embedding passes, checked on the CPU through a backend
//! that records the way CUDA graphs do: while recording, each operation is put on a tape instead
//! of running, over handles whose contents a replay rewrites in place; a replay runs the tape.
//! What the CUDA backend relies on is thus checked without a GPU: the model feeds a replay only
//! through the recording's input, reads only its output, and never reads a result back while
//! recording. Every replayed embedding must equal the plain CPU backend's for the same pixels.

use std::sync::{Arc, Mutex};

use dinov2_checkpoint::{released_json, Activation, Dinov2Config};
use dinov2_kernels::{fold_layer_norm, DType};
use dinov2_model::{
    Backend, CpuBackend, Dinov2, Dtype, FoldedNormLinear, Pooling, Result, Tensor, TokenParams,
};

/// A tensor whose contents can be rewritten in place (what a device address is to a graph).
type Handle = Arc<Mutex<Tensor>>;
/// One recorded operation.
type Step = Box<dyn Fn() -> Result<()> + Send>;

/// A recorded pass: its operations, and the arena its memory would be in (see
/// [`TapeBackend::arena`]).
struct Tape {
    steps: Vec<Step>,
    arena: usize,
}

fn handle(t: Tensor) -> Handle {
    Arc::new(Mutex::new(t))
}

fn empty() -> Handle {
    handle(Tensor {
        shape: vec![],
        data: vec![],
    })
}

fn get(h: &Handle) -> Tensor {
    h.lock().unwrap().clone()
}

/// The CPU backend with CUDA-graph semantics.
struct TapeBackend {
    cpu: CpuBackend,
    /// `Some` while recording.
    tape: Mutex<Option<Vec<Step>>>,
    /// Makes every recording fail (as an invalidated capture does), after the body ran.
    fail_recording: bool,
    /// Makes every replay fail with this error, after it ran its first step: `Some(true)` out
    /// of device memory (as a graph launch that cannot allocate does), `Some(false)` another.
    fail_replay: Option<bool>,
    /// Folds each LayerNorm into the linear layer the loader offers with it, as the CUDA
    /// backend does under `DINOV2_NORM=fold` ([`Backend::fold_norm_linear`]): the layer takes
    /// the folded weights, and a LayerNorm with a folded norm's weight normalizes without
    /// affine. The addresses of those weights.
    fold: Option<Mutex<Vec<usize>>>,
    /// Emulates the CUDA backend's planned memory: one arena shared by the recordings, as
    /// large as the largest recording's tape (steps standing in for bytes), replaced by a
    /// larger one when a recording does not fit, which leaves the recordings on the old one
    /// not current. `(size, number)` of the live arena; `None`: every recording is current.
    arena: Option<Mutex<(usize, usize)>>,
}

impl TapeBackend {
    fn new() -> Self {
        TapeBackend {
            cpu: CpuBackend::new(Dtype::F32).unwrap(),
            tape: Mutex::new(None),
            fail_recording: false,
            fail_replay: None,
            fold: None,
            arena: None,
        }
    }

    /// Whether `w` is the weight of a folded LayerNorm.
    fn folded(&self, w: &Arc<Tensor>) -> bool {
        let at = Arc::as_ptr(w) as usize;
        self.fold
            .as_ref()
            .is_some_and(|f| f.lock().unwrap().contains(&at))
    }

    fn recording(&self) -> bool {
        self.tape.lock().unwrap().is_some()
    }

    /// Runs `f` into `out` now, or puts it on the tape while recording.
    fn run_into(
        &self,
        out: &Handle,
        f: impl Fn() -> Result<Tensor> + Send + 'static,
    ) -> Result<()> {
        let out = out.clone();
        let step = move || {
            let t = f()?;
            *out.lock().unwrap() = t;
            Ok(())
        };
        match self.tape.lock().unwrap().as_mut() {
            Some(tape) => {
                tape.push(Box::new(step));
                Ok(())
            }
            None => step(),
        }
    }

    /// [`TapeBackend::run_into`] a new handle.
    fn run(&self, f: impl Fn() -> Result<Tensor> + Send + 'static) -> Result<Handle> {
        let out = empty();
        self.run_into(&out, f)?;
        Ok(out)
    }
}

impl Backend for TapeBackend {
    type Tensor = Handle;
    type Weight = Arc<Tensor>;
    type Recording = Tape;

    fn name(&self) -> String {
        "tape".into()
    }

    fn weight(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<Arc<Tensor>> {
        // A weight made while recording (a position table missing from the cache) would be
        // uploaded from the host inside the capture and kept after it.
        assert!(!self.recording(), "weight upload while recording");
        Ok(Arc::new(self.cpu.weight(values, shape)?))
    }

    fn linear_weight(&self, values: Vec<f32>, n: usize, k: usize) -> Result<Arc<Tensor>> {
        assert!(!self.recording(), "weight upload while recording");
        Ok(Arc::new(self.cpu.linear_weight(values, n, k)?))
    }

    fn upload(&self, tensor: &Tensor) -> Result<Handle> {
        assert!(!self.recording(), "upload while recording");
        Ok(handle(tensor.clone()))
    }

    fn download(&self, tensor: &Handle) -> Result<Tensor> {
        // What a device synchronization inside a capture does: the recording fails.
        if self.recording() {
            return Err(dinov2_model::ModelError::Unsupported(
                "download while recording".into(),
            ));
        }
        Ok(get(tensor))
    }

    fn pool_on_device(
        &self,
        tokens: &Handle,
        prefix: usize,
        pooling: Pooling,
    ) -> Result<Option<Handle>> {
        if pooling == Pooling::Patch {
            return Ok(None);
        }
        let tokens = tokens.clone();
        self.run(move || Ok(dinov2_model::pool_tokens(&get(&tokens), prefix, pooling)))
            .map(Some)
    }

    fn can_record(&self) -> bool {
        true
    }

    /// Runs `body` twice and keeps the second tape, as the CUDA backend captures it twice (the
    /// first time only to plan its memory): the model's body must record the same work again.
    fn record(&self, body: &mut dyn FnMut() -> Result<()>) -> Result<Option<Tape>> {
        let mut tapes = Vec::new();
        for _ in 0..2 {
            *self.tape.lock().unwrap() = Some(Vec::new());
            let ran = body();
            tapes.push(self.tape.lock().unwrap().take().unwrap());
            ran?;
        }
        let tape = tapes.pop().unwrap();
        assert_eq!(
            tape.len(),
            tapes[0].len(),
            "the second capture recorded other work"
        );
        if self.fail_recording {
            return Err(dinov2_model::ModelError::Unsupported(
                "capture invalidated".into(),
            ));
        }
        let arena = self.arena.as_ref().map_or(0, |a| {
            let mut live = a.lock().unwrap();
            if live.0 < tape.len() {
                *live = (tape.len(), live.1 + 1);
            }
            live.1
        });
        Ok(Some(Tape { steps: tape, arena }))
    }

    fn replay(&self, recording: &Tape) -> Result<()> {
        if let Some(out_of_memory) = self.fail_replay {
            // Half done, as a failed launch may leave the recording's outputs.
            recording.steps[0]()?;
            return Err(if out_of_memory {
                dinov2_model::ModelError::OutOfMemory {
                    backend: "tape".into(),
                    reason: "graph launch".into(),
                }
            } else {
                dinov2_model::ModelError::Unsupported("launch failed".into())
            });
        }
        recording.steps.iter().try_for_each(|step| step())
    }

    fn is_current(&self, recording: &Tape) -> bool {
        self.arena
            .as_ref()
            .is_none_or(|a| a.lock().unwrap().1 == recording.arena)
    }

    fn duplicate(&self, tensor: &Handle) -> Result<Handle> {
        assert!(!self.recording(), "duplicate while recording");
        Ok(handle(get(tensor)))
    }

    fn copy_into(&self, src: &Handle, dst: &mut Handle) -> Result<()> {
        let src = src.clone();
        self.run_into(dst, move || Ok(get(&src)))
    }

    fn upload_into(&self, src: &Tensor, dst: &mut Handle) -> Result<()> {
        assert!(!self.recording(), "upload_into while recording");
        assert_eq!(src.shape, dst.lock().unwrap().shape);
        *dst.lock().unwrap() = src.clone();
        Ok(())
    }

    fn patch_embed(
        &self,
        pixels: &Handle,
        weight: &Arc<Tensor>,
        bias: &Arc<Tensor>,
        patch: usize,
    ) -> Result<Handle> {
        let (cpu, x, w, b) = (
            self.cpu.clone(),
            pixels.clone(),
            weight.clone(),
            bias.clone(),
        );
        self.run(move || cpu.patch_embed(&get(&x), &w, &b, patch))
    }

    fn embed_tokens(&self, patches: &Handle, p: TokenParams<'_, Arc<Tensor>>) -> Result<Handle> {
        let (cpu, x) = (self.cpu.clone(), patches.clone());
        let (cls, positions) = (p.cls.clone(), p.positions.clone());
        let registers = p.registers.cloned();
        let mask = p.mask.map(|(t, m)| (t.clone(), m.to_vec()));
        self.run(move || {
            cpu.embed_tokens(
                &get(&x),
                TokenParams {
                    cls: &cls,
                    positions: &positions,
                    registers: registers.as_deref(),
                    mask: mask.as_ref().map(|(t, m)| (&**t, &m[..])),
                },
            )
        })
    }

    fn layer_norm(
        &self,
        x: &Handle,
        weight: &Arc<Tensor>,
        bias: &Arc<Tensor>,
        eps: f64,
    ) -> Result<Handle> {
        let (w, b) = if self.folded(weight) {
            // The affine part is in the next layer's weights.
            let k = weight.data.len();
            let unit = |v: f32| Arc::new(Tensor::new(vec![k], vec![v; k]).unwrap());
            (unit(1.0), unit(0.0))
        } else {
            (weight.clone(), bias.clone())
        };
        let (cpu, x) = (self.cpu.clone(), x.clone());
        self.run(move || cpu.layer_norm(&get(&x), &w, &b, eps))
    }

    fn fold_norm_linear(
        &self,
        (gamma, beta): (&[f32], &[f32]),
        weight: &[f32],
        bias: Option<&[f32]>,
        (n, k): (usize, usize),
    ) -> Result<Option<FoldedNormLinear<Arc<Tensor>>>> {
        let Some(folds) = &self.fold else {
            return Ok(None);
        };
        let f = fold_layer_norm(weight, bias, gamma, beta, (n, k), DType::F32).unwrap();
        let norm_weight = self.weight(gamma.to_vec(), vec![k])?;
        folds
            .lock()
            .unwrap()
            .push(Arc::as_ptr(&norm_weight) as usize);
        Ok(Some(FoldedNormLinear {
            norm_weight,
            norm_bias: self.weight(beta.to_vec(), vec![k])?,
            weight: self.linear_weight(f.weight, n, k)?,
            bias: self.weight(f.bias, vec![n])?,
        }))
    }

    fn linear(
        &self,
        x: &Handle,
        weight: &Arc<Tensor>,
        bias: Option<&Arc<Tensor>>,
        act: Activation,
    ) -> Result<Handle> {
        let (cpu, x, w, b) = (self.cpu.clone(), x.clone(), weight.clone(), bias.cloned());
        self.run(move || cpu.linear(&get(&x), &w, b.as_deref(), act))
    }

    fn swiglu(&self, x: &Handle) -> Result<Handle> {
        let (cpu, x) = (self.cpu.clone(), x.clone());
        self.run(move || cpu.swiglu(&get(&x)))
    }

    fn attention(
        &self,
        qkv: &Handle,
        heads: usize,
        want_probs: bool,
    ) -> Result<(Handle, Option<Handle>)> {
        assert!(!want_probs, "embedding passes never ask for probabilities");
        let (cpu, x) = (self.cpu.clone(), qkv.clone());
        let out = self.run(move || Ok(cpu.attention(&get(&x), heads, false)?.0))?;
        Ok((out, None))
    }

    fn add_scaled(&self, x: &mut Handle, branch: &Handle, gamma: &Arc<Tensor>) -> Result<()> {
        // Copy on write, as the CUDA backend's shared residual: a new handle.
        let (cpu, old, br, g) = (self.cpu.clone(), x.clone(), branch.clone(), gamma.clone());
        *x = self.run(move || {
            let mut t = get(&old);
            cpu.add_scaled(&mut t, &get(&br), &g)?;
            Ok(t)
        })?;
        Ok(())
    }
}

fn config(name: &str) -> Dinov2Config {
    let mut json = released_json(name).unwrap();
    json["hidden_size"] = 32.into();
    json["num_attention_heads"] = 2.into();
    json["num_hidden_layers"] = 2.into();
    Dinov2Config::from_json(&json).unwrap()
}

/// Deterministic pixel values that differ with `seed`.
fn pixels(seed: u32, batch: usize, h: usize, w: usize) -> Tensor {
    let n = batch * 3 * h * w;
    let data = (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect();
    Tensor::new(vec![batch, 3, h, w], data).unwrap()
}

#[test]
fn replayed_passes_equal_plain_passes_for_new_pixels() {
    for name in ["vits14", "vits14-reg"] {
        let config = config(name);
        let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
        let taped = Dinov2::random(TapeBackend::new(), &config, 7).unwrap();
        // Shapes interleaved, each pooling (Patch is pooled on the host after the replay), host
        // and uploaded inputs.
        let shapes = [
            (2, 28, 42, Pooling::Cls),
            (1, 56, 28, Pooling::Patch),
            (2, 28, 42, Pooling::ClsMean),
        ];
        let mut seed = 0;
        for round in 0..4 {
            for &(b, h, w, pooling) in &shapes {
                seed += 1;
                let px = pixels(seed, b, h, w);
                let want = plain.embed(&px, pooling, round % 2 == 1).unwrap();
                let got = if round % 2 == 0 {
                    taped.embed(&px, pooling, round % 2 == 1).unwrap()
                } else {
                    let up = taped.upload_pixels(&px).unwrap();
                    taped.embed_batch(&up, pooling, true).unwrap()
                };
                assert_eq!(got, want, "{name} round {round} {b}x{h}x{w} {pooling:?}");
            }
        }
        let status = taped.replay_status();
        assert_eq!(status.failure, None, "{name}");
        assert_eq!(
            status.recorded,
            shapes.len(),
            "{name}: each shape recorded at its second pass"
        );
        assert_eq!(
            status.replays,
            2 * shapes.len() as u64,
            "{name}: rounds 3 and 4 replayed"
        );
    }
}

#[test]
fn intermediate_layer_passes_replay_per_set_of_layers() {
    let config = config("vits14-reg");
    let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    let taped = Dinov2::random(TapeBackend::new(), &config, 7).unwrap();
    // Layers out of order and repeated, with and without the norm; Patch pooled on the host.
    let asks: [(&[usize], bool, Pooling); 4] = [
        (&[2, 1], true, Pooling::Cls),
        (&[0, 2, 0], false, Pooling::Patch),
        (&[1], true, Pooling::ClsMean),
        (&[2, 1], false, Pooling::Cls),
    ];
    let mut seed = 500;
    for round in 0..3 {
        for &(layers, norm, pooling) in &asks {
            seed += 1;
            let px = pixels(seed, 2, 28, 42);
            let want = plain
                .embed_layers(&px, layers, norm, pooling, round == 2)
                .unwrap();
            let got = taped
                .embed_layers(&px, layers, norm, pooling, round == 2)
                .unwrap();
            assert_eq!(
                got, want,
                "round {round} {layers:?} norm {norm} {pooling:?}"
            );
        }
    }
    let status = taped.replay_status();
    assert_eq!(status.failure, None);
    assert_eq!(
        (status.recorded, status.replays),
        (asks.len(), asks.len() as u64),
        "each set recorded at its second pass, replayed at its third"
    );
}

#[test]
fn forward_passes_replay_per_shape_and_rule() {
    use dinov2_model::{ForwardOptions, Interpolation};
    let config = config("vits14");
    let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    let taped = Dinov2::random(TapeBackend::new(), &config, 7).unwrap();
    let rules = [Interpolation::default(), Interpolation::Legacy];
    let mut seed = 100;
    for round in 0..3 {
        for interpolation in rules {
            seed += 1;
            let px = pixels(seed, 2, 28, 42);
            let opts = ForwardOptions {
                interpolation,
                ..ForwardOptions::default()
            };
            let want = plain.forward(&px, None, &opts).unwrap();
            let got = taped.forward(&px, None, &opts).unwrap();
            assert_eq!(
                got.last_hidden_state, want.last_hidden_state,
                "round {round}"
            );
            assert_eq!(got.pooler_output, want.pooler_output, "round {round}");
        }
    }
    // With hidden states the pass is not recorded, and still equal.
    let opts = ForwardOptions {
        hidden_states: true,
        ..ForwardOptions::default()
    };
    let px = pixels(999, 2, 28, 42);
    let want = plain.forward(&px, None, &opts).unwrap();
    let got = taped.forward(&px, None, &opts).unwrap();
    assert_eq!(got.hidden_states, want.hidden_states);
    let status = taped.replay_status();
    assert_eq!(status.failure, None);
    // One recording per rule (the second round), replayed in the third.
    assert_eq!((status.recorded, status.replays), (2, 2));
}

/// The LayerNorms folded into the linear layers after them, as the CUDA backend folds them
/// (`DINOV2_NORM=fold`): the loader offers norm1 with qkv and norm2 with the MLP's input layer
/// (never the final norm), and the folded model computes the same function: within f32
/// rounding of the plain one, recorded and replayed, with the MLP and with SwiGLU.
#[test]
fn folded_layer_norms_compute_the_same_function() {
    for name in ["vits14", "vitg14-reg"] {
        let mut config = config(name);
        config.layer_norm_eps = 1e-6;
        let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
        let mut backend = TapeBackend::new();
        backend.fold = Some(Mutex::new(Vec::new()));
        let folded = Dinov2::random(backend, &config, 7).unwrap();
        for seed in 0..4 {
            let px = pixels(seed, 2, 28, 42);
            let want = plain.embed(&px, Pooling::ClsMean, false).unwrap();
            let got = folded.embed(&px, Pooling::ClsMean, false).unwrap();
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (g, w) in got.iter().zip(&want) {
                for (a, b) in g.values.iter().zip(&w.values) {
                    num += (*a as f64 - *b as f64).powi(2);
                    den += (*b as f64).powi(2);
                }
            }
            let err = (num / den).sqrt();
            assert!(err < 1e-5, "{name} pass {seed}: rel L2 {err:.2e}");
        }
        assert_eq!(
            folded.replay_status().replays,
            2,
            "{name}: passes 3 and 4 replayed"
        );
    }
}

#[test]
fn the_folding_backend_folds_two_norms_a_layer() {
    let config = config("vits14");
    let mut backend = TapeBackend::new();
    backend.fold = Some(Mutex::new(Vec::new()));
    let model = Dinov2::random(backend, &config, 7).unwrap();
    let folds = model.backend().fold.as_ref().unwrap().lock().unwrap().len();
    assert_eq!(folds, 2 * config.num_hidden_layers);
}

/// A recording that outgrows the arena the others share moves them to its larger one: they are
/// dropped and recorded again at their next pass, into the larger arena, and stay there; the
/// outputs equal plain passes throughout.
#[test]
fn recordings_outgrown_by_a_larger_one_are_recorded_again_into_it() {
    let config = config("vits14");
    let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    let mut backend = TapeBackend::new();
    backend.arena = Some(Mutex::new((0, 0)));
    let taped = Dinov2::random(backend, &config, 7).unwrap();
    // Patch tokens are pooled on the host: that pass's tape is shorter than the CLS pass's.
    let shapes = [(1, 28, 28, Pooling::Patch), (1, 28, 28, Pooling::Cls)];
    let mut seed = 200;
    for round in 0..5 {
        for &(b, h, w, pooling) in &shapes {
            seed += 1;
            let px = pixels(seed, b, h, w);
            let want = plain.embed(&px, pooling, false).unwrap();
            let got = taped.embed(&px, pooling, false).unwrap();
            assert_eq!(got, want, "round {round} {pooling:?}");
        }
    }
    let status = taped.replay_status();
    assert_eq!(status.failure, None);
    // Round 2 records both, the CLS pass into a larger arena, which drops the patch pass's
    // recording; round 3 records the patch pass again (its count is still the two passes that
    // got it recorded), into the larger arena, and replays the CLS pass; rounds 4 and 5 replay
    // both.
    assert_eq!((status.recorded, status.replays), (3, 5));
}

/// Mean embeddings of two images of 28 x 28 px from each seed: `taped`'s equal `plain`'s.
fn mean_embeddings_match(
    taped: &Dinov2<TapeBackend>,
    plain: &Dinov2<CpuBackend>,
    seeds: std::ops::Range<u32>,
    what: &str,
) {
    for seed in seeds {
        let px = pixels(seed, 2, 28, 28);
        assert_eq!(
            taped.embed(&px, Pooling::Mean, false).unwrap(),
            plain.embed(&px, Pooling::Mean, false).unwrap(),
            "{what}pass {seed}"
        );
    }
}

#[test]
fn a_failed_recording_turns_recording_off_and_passes_go_on() {
    let config = config("vits14");
    let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    let mut backend = TapeBackend::new();
    backend.fail_recording = true;
    let taped = Dinov2::random(backend, &config, 7).unwrap();
    mean_embeddings_match(&taped, &plain, 0..4, "");
    let status = taped.replay_status();
    assert_eq!(status.failure.as_deref(), Some("capture invalidated"));
    assert_eq!((status.recorded, status.replays), (0, 0));
}

/// A replay that fails gives way to the eager pass, whose results are returned: out of device
/// memory, the shape runs unrecorded from then on and other shapes still record; any other
/// error turns recording off.
#[test]
fn a_failed_replay_runs_the_pass_and_passes_go_on() {
    let config = config("vits14");
    let plain = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    for (out_of_memory, failure, too_large) in [
        (false, Some("a replay failed: launch failed"), 0),
        (true, None, 1),
    ] {
        let mut backend = TapeBackend::new();
        backend.fail_replay = Some(out_of_memory);
        let taped = Dinov2::random(backend, &config, 7).unwrap();
        let what = format!("out of memory {out_of_memory}, ");
        mean_embeddings_match(&taped, &plain, 0..5, &what);
        let status = taped.replay_status();
        assert_eq!(status.failure.as_deref(), failure);
        assert_eq!(status.too_large, too_large);
        // Recorded at pass 2, its replay at pass 3 failed; not recorded again.
        assert_eq!((status.recorded, status.replays), (1, 0));
        // Another shape still records where the failure was the memory's.
        let px = pixels(9, 1, 28, 28);
        for _ in 0..2 {
            taped.embed(&px, Pooling::Mean, false).unwrap();
        }
        let more = usize::from(out_of_memory);
        assert_eq!(taped.replay_status().recorded, 1 + more);
    }
}

#[test]
fn the_cpu_backend_records_nothing() {
    let config = config("vits14");
    let model = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    for seed in 0..3 {
        model
            .embed(&pixels(seed, 1, 28, 28), Pooling::Cls, false)
            .unwrap();
    }
    let status = model.replay_status();
    assert!(!status.enabled);
    assert_eq!(
        (status.recorded, status.replays, status.failure),
        (0, 0, None)
    );
}
