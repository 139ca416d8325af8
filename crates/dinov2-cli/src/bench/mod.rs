//! `dinov2 bench`: embedding throughput of a released architecture (random weights) or a
//! checkpoint, per batch size, on any device, with the PyTorch peer timed in the same invocation
//! when asked.
//!
//! What is timed is what embedding users run: pixel values already on the device (uploaded once,
//! as the peer's input tensor lives on its device) through the encoder to the CLS vectors `[B, h]`
//! on the host ([`Dinov2::embed_batch`]: pooling on the device, then the copy back, which waits
//! for the device). The peer times `model(pixel_values).pooler_output` followed by a device
//! synchronization. Each side reports the median over the repeats, images per second, achieved
//! FLOP/s (2 per multiply-add of the GEMMs, attention products and patch convolution), the share
//! of the card's dense f16/bf16 tensor peak (on the CPU, of its f32 FMA ceiling measured at the
//! start on the same threads), and device memory as the driver's used-memory delta
//! during the passes (cached blocks released first: `torch.cuda.empty_cache()` for the peer).
//! The peer runs all its passes before ours, or with `--alternate` in turn with ours
//! ([`peer`]).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use dinov2::crates::cpu::fma_ceiling;
use dinov2::{
    flops_per_image, released_json, Backend, Checkpoint, Dinov2, Dinov2Config, Dtype, OpTime,
    Pooling, Tensor,
};
use serde_json::{json, Value};

use crate::args::{with_backend, BenchArgs, Device};
use crate::embed_verb::Reopen;
use crate::error::{CliError, Result};

mod peer;

/// How long the CPU's FMA ceiling is measured before a CPU bench.
const CEILING_TIME: Duration = Duration::from_millis(300);

/// Dense (no sparsity) f16/bf16 tensor-core peaks in TFLOP/s, by a substring of the device name
/// as the driver reports it; the first match wins, so the more specific names come first.
const DENSE_F16_PEAKS: &[(&str, f64)] = &[
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
];

/// The card's dense f16/bf16 peak, when the table knows it.
pub fn dense_f16_peak(device_name: &str) -> Option<f64> {
    DENSE_F16_PEAKS
        .iter()
        .find(|(key, _)| device_name.contains(key))
        .map(|&(_, peak)| peak)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of `v` (not empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Deterministic pixel values in roughly the normalized range.
fn pixels(batch: usize, size: usize) -> Tensor {
    let n = batch * 3 * size * size;
    let data = (0..n)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 4001) as f32 / 1000.0 - 2.0)
        .collect();
    Tensor::new(vec![batch, 3, size, size], data).expect("sizes agree")
}

/// Runs the bench verb.
pub fn run(args: BenchArgs) -> Result<()> {
    let (name, config, config_json, checkpoint) = match (&args.arch, &args.model) {
        (Some(arch), None) => {
            let value = released_json(arch).ok_or_else(|| {
                CliError(format!(
                    "--arch {arch}: expected one of {}",
                    dinov2::RELEASED.join(", ")
                ))
            })?;
            let config = Dinov2Config::from_json(&value)?;
            (arch.clone(), config, value.to_string(), None)
        }
        (None, Some(dir)) => {
            let ckpt = Checkpoint::open(dir)?;
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
            (
                dir.display().to_string(),
                ckpt.config.clone(),
                text,
                Some(ckpt),
            )
        }
        _ => return Err(CliError("give exactly one of --arch and --model".into())),
    };
    if args.batch_size.contains(&0) {
        return Err(CliError(
            "--batch-size: every batch size must be at least 1".into(),
        ));
    }
    if let Some(path) = &args.json {
        prepare_json(path)?;
    }
    with_backend!(args.device, args.dtype, |backend| {
        let load = |backend| match &checkpoint {
            Some(ckpt) => Dinov2::load(backend, ckpt),
            None => Dinov2::random(backend, &config, 0),
        };
        // The copies for --streams first, each on a backend of its own (on CUDA, its stream;
        // on the CPU they share the thread pool).
        let mut others = Vec::new();
        for _ in 1..args.streams {
            others.push(load(backend.reopen()?)?);
        }
        let model = load(backend)?;
        bench_on(&model, &others, &name, &config_json, &args)
    })
}

/// One side's measurement of one batch size.
struct Measured {
    median_s: f64,
    /// Every timed repeat, in seconds, where the side reports them.
    times_s: Vec<f64>,
    images_per_s: f64,
    tflop_per_s: f64,
    percent_of_peak: Option<f64>,
    memory_delta_bytes: Option<u64>,
}

impl Measured {
    fn new(batch: usize, median_s: f64, gflop: f64, peak: Option<f64>, mem: Option<u64>) -> Self {
        let images_per_s = batch as f64 / median_s;
        let tflop_per_s = images_per_s * gflop / 1e3;
        Measured {
            median_s,
            times_s: Vec::new(),
            images_per_s,
            tflop_per_s,
            percent_of_peak: peak.map(|p| 100.0 * tflop_per_s / p),
            memory_delta_bytes: mem,
        }
    }

    /// With the repeats' times: their spread (p90, p99 and max by nearest rank) in the JSON.
    fn with_times(mut self, times_s: Vec<f64>) -> Self {
        self.times_s = times_s;
        self
    }

    fn json(&self) -> Value {
        let spread = |p: f64| (!self.times_s.is_empty()).then(|| percentile(&self.times_s, p));
        json!({
            "median_s": self.median_s, "ms_per_batch": self.median_s * 1e3,
            "p90_s": spread(90.0), "p99_s": spread(99.0), "max_s": spread(100.0),
            "min_s": (!self.times_s.is_empty()).then(|| percentile(&self.times_s, 0.0)),
            "times_s": self.times_s,
            "images_per_s": self.images_per_s, "tflop_per_s": self.tflop_per_s,
            "percent_of_peak": self.percent_of_peak, "memory_delta_bytes": self.memory_delta_bytes,
        })
    }
}

/// One batch size's timed passes ([`measure`]).
struct Timed {
    /// Each repeat's seconds.
    times: Vec<f64>,
    /// The driver's used-memory delta over the repeats, where the backend has device memory.
    memory_delta: Option<u64>,
    /// The backend's named memory parts after the repeats ([`Backend::memory_parts`]).
    memory_parts: Vec<(&'static str, u64)>,
}

/// Times `embed_batch` with CLS pooling on one batch: each repeat's seconds, and memory as the
/// used-memory delta and its parts.
/// Times our passes at `batch`: the warm-up, then `repeats` timed passes, each followed by
/// `after_each`. With `--alternate`, `after_each` runs the peer's turn, and each of our timed
/// passes follows an untimed one, so that it finds the caches as a pass that follows our own
/// does (the peer's turn is the same two passes).
fn measure<B: Backend>(
    model: &Dinov2<B>,
    batch: usize,
    args: &BenchArgs,
    mut after_each: impl FnMut() -> Result<()>,
) -> Result<Timed> {
    let be = model.backend();
    let x = model.upload_pixels(&pixels(batch, args.image_size))?;
    be.release_cached_memory()?;
    let base = be.memory_used();
    // A recording backend records a shape's second pass: time the replays that follow.
    let warmup = if be.can_record() {
        args.warmup.max(2)
    } else {
        args.warmup
    };
    for _ in 0..warmup {
        model.embed_batch(&x, Pooling::Cls, false)?;
    }
    // The warm-up's operations are not profiled.
    be.take_op_profile()?;
    let mut times = Vec::new();
    let mut used = 0usize;
    for _ in 0..args.repeats.max(1) {
        if args.alternate {
            model.embed_batch(&x, Pooling::Cls, false)?;
        }
        let t = Instant::now();
        // The copy of [B, h] back to the host waits for the device: no separate sync needed.
        model.embed_batch(&x, Pooling::Cls, false)?;
        times.push(t.elapsed().as_secs_f64());
        if let (Some(base), Some(now)) = (base, be.memory_used()) {
            used = used.max(now.saturating_sub(base));
        }
        after_each()?;
    }
    Ok(Timed {
        times,
        memory_delta: base.map(|_| used as u64),
        memory_parts: be.memory_parts(),
    })
}

/// The copies of the model (`--streams`), each on its own thread: the warm-up of each in turn
/// (recordings are made one at a time), then `repeats` passes of each at once. Returns the
/// images per second of them together, from the common start to the last one's end.
fn measure_together<B>(models: &[&Dinov2<B>], batch: usize, args: &BenchArgs) -> Result<f64>
where
    B: Backend + Send + Sync,
    B::Tensor: Send,
{
    let mut inputs = Vec::new();
    for model in models {
        let x = model.upload_pixels(&pixels(batch, args.image_size))?;
        for _ in 0..args.warmup.max(2) {
            model.embed_batch(&x, Pooling::Cls, false)?;
        }
        inputs.push(x);
    }
    let repeats = args.repeats.max(1);
    let start = std::sync::Barrier::new(models.len());
    let started = Instant::now();
    let ends: Vec<Result<Instant>> = std::thread::scope(|scope| {
        let threads: Vec<_> = models
            .iter()
            .zip(inputs)
            .map(|(model, x)| {
                let start = &start;
                scope.spawn(move || -> Result<Instant> {
                    start.wait();
                    for _ in 0..repeats {
                        model.embed_batch(&x, Pooling::Cls, false)?;
                    }
                    Ok(Instant::now())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(CliError("a stream's thread panicked".into())))
            })
            .collect()
    });
    let mut last = started;
    for end in ends {
        last = last.max(end?);
    }
    let images = (models.len() * batch * repeats) as f64;
    Ok(images / last.duration_since(started).as_secs_f64())
}

/// Prints the device time per operation of `passes` timed passes (`DINOV2_PROFILE=1`) beside
/// the median pass, and returns it as JSON.
fn op_table(ops: &[OpTime], passes: usize, median_s: f64) -> Value {
    let passes = passes.max(1) as f64;
    let total: f64 = ops.iter().map(|o| o.ms).sum::<f64>() / passes;
    println!(
        "  device time per pass by operation ({total:.2} ms of {:.2} ms measured):",
        median_s * 1e3
    );
    let mut rows = Vec::new();
    for o in ops {
        let ms = o.ms / passes;
        println!(
            "  {:<24} {:>6} calls {:>10.3} ms {:>6.1}%",
            o.op,
            (o.calls as f64 / passes).round(),
            ms,
            100.0 * ms / total.max(1e-12)
        );
        rows.push(
            json!({"op": o.op, "calls_per_pass": o.calls as f64 / passes, "ms_per_pass": ms}),
        );
    }
    Value::Array(rows)
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |b| format!("{}", b >> 20))
}

/// `name 12.5, other 3.0`: named byte counts in MiB.
fn mib_parts<'a>(parts: impl Iterator<Item = (&'a str, f64)>) -> String {
    let parts: Vec<String> = parts
        .map(|(name, bytes)| format!("{name} {:.1}", bytes / (1u64 << 20) as f64))
        .collect();
    parts.join(", ")
}

fn bench_on<B>(
    model: &Dinov2<B>,
    others: &[Dinov2<B>],
    name: &str,
    config_json: &str,
    args: &BenchArgs,
) -> Result<()>
where
    B: Backend + Send + Sync,
    B::Tensor: Send,
{
    let config = model.config();
    let be = model.backend();
    let device = be.name();
    let device_name = be.device_name();
    let details = be.device_details();
    let on_gpu = !matches!(args.device, Device::Cpu);
    // A card's dense f16/bf16 peak from its datasheet; on the CPU, its f32 FMA ceiling measured
    // here on the bench's threads (in TFLOP/s, as both sides' rates).
    let (peak, peak_source) = if on_gpu {
        let peak =
            dense_f16_peak(&device_name).filter(|_| matches!(args.dtype, Dtype::F16 | Dtype::BF16));
        (peak, peak.map(|_| "datasheet dense f16/bf16"))
    } else {
        let peak = fma_ceiling(CEILING_TIME).map(|gflop| gflop / 1e3);
        (peak, peak.map(|_| "measured f32 FMA loop"))
    };
    let mut alternating = match (&args.peer, args.alternate) {
        (Some(python), true) => Some(peer::Alternating::start(python, config_json, args)?),
        _ => None,
    };
    // The peer's line per batch size: all at once before ours, or filled in as they alternate.
    let mut peer = match (&args.peer, &alternating) {
        (Some(python), None) => Some(peer::run_all(python, config_json, args)?),
        (Some(_), Some(_)) => Some(Vec::new()),
        (None, _) => None,
    };
    let about = match &alternating {
        Some(alt) => Some(alt.about.clone()),
        None => peer.as_ref().and_then(|p| p.first().cloned()),
    };
    let size = args.image_size;
    let gflop = flops_per_image(config, size, size) / 1e9;
    let threads = rayon::current_num_threads();
    let card_peak = if on_gpu {
        dense_f16_peak(&device_name).map_or(String::new(), |p| {
            format!("; dense f16/bf16 peak {p:.0} TFLOP/s")
        })
    } else {
        peak.map_or(String::new(), |p| {
            format!("; f32 FMA ceiling {:.0} GFLOP/s (measured)", p * 1e3)
        })
    };
    println!(
        "{name} on {device} ({device_name}, {threads} CPU threads), {} at {size}x{size}: \
         {gflop:.2} GFLOP/image{card_peak}",
        args.dtype,
    );
    if !details.is_empty() {
        let listed: Vec<String> = details.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{device}: {}", listed.join(", "));
    }
    println!(
        "timed: pixels on the device -> CLS [B, h] on the host; {} warm-up, median of {}",
        if be.can_record() {
            args.warmup.max(2)
        } else {
            args.warmup
        },
        args.repeats.max(1)
    );
    if let Some(first) = &about {
        println!(
            "peer: torch {} + transformers {}, attention {}, {} on {}",
            first["torch"].as_str().unwrap_or("?"),
            first["transformers"].as_str().unwrap_or("?"),
            first["attn"].as_str().unwrap_or("?"),
            if first["compile"].as_bool() == Some(true) {
                "torch.compile"
            } else {
                "eager"
            },
            first["device"].as_str().unwrap_or("?"),
        );
    }
    // TFLOP/s on a GPU, GFLOP/s on the CPU.
    let (unit, scale) = if on_gpu {
        ("TFLOP/s", 1.0)
    } else {
        ("GFLOP/s", 1e3)
    };
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>6} {:>7} | {:>10} {:>10} {:>9} {:>6} {:>7} | {:>6}",
        "batch",
        "ms/batch",
        "img/s",
        unit,
        "%peak",
        "MiB",
        "torch ms",
        "torch img/s",
        unit,
        "%peak",
        "MiB",
        "ratio"
    );
    let mut results = Vec::new();
    for &b in &args.batch_size {
        let mut peer_times = Vec::new();
        if let Some(alt) = alternating.as_mut() {
            alt.batch(b)?;
        }
        let timed = measure(model, b, args, || {
            if let Some(alt) = alternating.as_mut() {
                peer_times.push(alt.pass()?);
            }
            Ok(())
        })?;
        if let (Some(rows), Some(about)) = (peer.as_mut(), alternating.as_ref().map(|a| &a.about)) {
            rows.push(alternated_row(about, b, peer_times));
        }
        let profile = model.backend().take_op_profile()?;
        let med = median(timed.times.clone());
        // Alternating, each process's used-memory delta would count the other's passes.
        let memory = timed.memory_delta.filter(|_| alternating.is_none());
        let ours = Measured::new(b, med, gflop, peak, memory).with_times(timed.times);
        // The peer's line for this batch size.
        let peer_row = peer
            .as_ref()
            .and_then(|p| p.iter().find(|r| r["batch"].as_u64() == Some(b as u64)));
        let theirs = peer_row.and_then(|r| {
            let median_s = r["median_s"].as_f64()?;
            let mem = on_gpu.then(|| r["memory_delta_bytes"].as_u64()).flatten();
            let times = r["times_s"]
                .as_array()
                .map_or(Vec::new(), |t| t.iter().filter_map(Value::as_f64).collect());
            Some(Measured::new(b, median_s, gflop, peak, mem).with_times(times))
        });
        let ratio = theirs.as_ref().map(|t| ours.images_per_s / t.images_per_s);
        println!(
            "{b:>6} {:>10.2} {:>10.2} {:>9.2} {:>6} {:>7} | {:>10} {:>10} {:>9} {:>6} {:>7} | {:>6}",
            med * 1e3,
            ours.images_per_s,
            ours.tflop_per_s * scale,
            fmt_opt(ours.percent_of_peak, 1),
            mib(ours.memory_delta_bytes),
            fmt_opt(theirs.as_ref().map(|t| t.median_s * 1e3), 2),
            fmt_opt(theirs.as_ref().map(|t| t.images_per_s), 2),
            fmt_opt(theirs.as_ref().map(|t| t.tflop_per_s * scale), 2),
            fmt_opt(theirs.as_ref().and_then(|t| t.percent_of_peak), 1),
            mib(theirs.as_ref().and_then(|t| t.memory_delta_bytes)),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
        );
        if !timed.memory_parts.is_empty() {
            let parts = timed.memory_parts.iter().map(|&(name, b)| (name, b as f64));
            println!("  our memory by part (MiB): {}", mib_parts(parts));
        }
        let peer_parts = peer_row
            .and_then(|r| r["memory_parts_bytes"].as_object())
            .filter(|parts| !parts.is_empty());
        if let Some(parts) = peer_parts {
            let parts = parts
                .iter()
                .filter_map(|(name, b)| Some((name.as_str(), b.as_f64()?)));
            println!("  torch memory by part (MiB): {}", mib_parts(parts));
        }
        let together = if others.is_empty() {
            None
        } else {
            let models: Vec<&Dinov2<B>> = std::iter::once(model).chain(others).collect();
            let rate = measure_together(&models, b, args)?;
            println!(
                "  {} streams at once: {rate:.2} img/s together, {:.2}x our one stream{}",
                models.len(),
                rate / ours.images_per_s,
                theirs.as_ref().map_or(String::new(), |t| format!(
                    ", {:.2}x PyTorch's one stream",
                    rate / t.images_per_s
                )),
            );
            Some(json!({"streams": models.len(), "images_per_s": rate}))
        };
        let profile = profile.map(|ops| op_table(&ops, ours.times_s.len(), med));
        results.push(json!({
            "arch": name, "device": device, "device_name": device_name, "threads": threads,
            "dtype": args.dtype.to_string(), "batch": b, "image_size": size,
            "gflop_per_image": gflop, "peak_tflop_per_s": peak, "peak_source": peak_source,
            "pooling": "cls",
            "warmup": args.warmup, "repeats": args.repeats.max(1),
            "median_s": med, "images_per_s": ours.images_per_s,
            "ours": ours.json(),
            "torch": theirs.as_ref().map(Measured::json),
            "peer_images_per_s": theirs.as_ref().map(|t| t.images_per_s),
            "peer_compile": args.peer_compile && peer.is_some(),
            "ratio": ratio,
            "op_profile": profile,
            "streams_together": together,
            "memory_parts_bytes": timed.memory_parts.iter()
                .map(|(name, bytes)| (name.to_string(), json!(bytes)))
                .collect::<serde_json::Map<String, Value>>(),
        }));
    }
    let replays = model.replay_status();
    let graphs = if !replays.enabled {
        "off".to_string()
    } else if let Some(why) = &replays.failure {
        format!("failed, passes ran without them: {why}")
    } else {
        format!(
            "{} shape(s) recorded, {} pass(es) replayed",
            replays.recorded, replays.replays
        )
    };
    if on_gpu {
        println!("cuda graphs: {graphs}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json!({
            "results": results, "peer": peer, "cuda_graphs": on_gpu.then_some(graphs),
            // What a reader needs to reproduce the run: ours, the device's software, when.
            "dinov2_version": env!("CARGO_PKG_VERSION"),
            "device_name": device_name,
            "device_details": details
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
                .collect::<serde_json::Map<String, Value>>(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }))
        .map_err(|e| CliError(e.to_string()))?;
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The peer's line for `batch` from its alternated passes, in the shape of [`peer::run_all`]'s
/// lines (no memory: see [`peer::Alternating`]).
fn alternated_row(about: &Value, batch: usize, times: Vec<f64>) -> Value {
    let mut row = about.clone();
    if let Some(fields) = row.as_object_mut() {
        let median_s = median(times.clone());
        fields.insert("batch".into(), json!(batch));
        fields.insert("median_s".into(), json!(median_s));
        fields.insert("images_per_s".into(), json!(batch as f64 / median_s));
        fields.insert("times_s".into(), json!(times));
        fields.insert("alternated".into(), json!(true));
    }
    row
}

/// Makes the folder of `--json FILE` before the measurements (minutes on a large model), so
/// that a path the results cannot be written to fails at once instead of after them.
fn prepare_json(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(CliError(format!(
            "--json {}: is a folder, expected a file name",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError(format!(
                "--json {}: cannot make its folder {}: {e}",
                path.display(),
                dir.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_folder_is_made_or_refused_before_measuring() {
        let tmp = tempfile::tempdir().unwrap();
        let nested = tmp.path().join("runs/h100/bench.json");
        prepare_json(&nested).unwrap();
        assert!(nested.parent().unwrap().is_dir());
        prepare_json(Path::new("bench.json")).unwrap();
        let e = prepare_json(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = prepare_json(&file.join("bench.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot make its folder"), "{e}");
    }

    #[test]
    fn peaks_by_device_name() {
        assert_eq!(dense_f16_peak("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(dense_f16_peak("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(dense_f16_peak("NVIDIA H200"), Some(989.0));
        assert_eq!(dense_f16_peak("NVIDIA GeForce RTX 4090"), None);
        assert_eq!(dense_f16_peak("cpu"), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 99.0), 10.0);
        assert_eq!(percentile(&[0.5], 99.0), 0.5);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
