//! `dinov2 embed`: a folder (or list, archive, table or stream) of images to embedding vectors,
//! as a pipeline: images are decoded and preprocessed on a thread pool while the model runs the
//! previous batch; finished rows are committed in chunks so that an interrupted job resumes where
//! it stopped; bad inputs are reported and skipped.

mod batch;
mod budget;
mod feed;
mod inputs;
mod job;
mod outputs;
mod progress;
mod streams;
mod tables;
mod writers;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinov2::image::{grid_region, PreprocessConfig};
use dinov2::{Backend, Embedder};

use rayon::prelude::*;

use crate::error::{CliError, Result};
use batch::{assemble, run_batch, Batch, Decoded, Grouping, Outcome};
pub use budget::FailureBudget;
use feed::{Feed, Window};
pub(crate) use job::write_atomic;
use job::{digest, Job};
pub use outputs::Outputs;
use progress::Progress;
pub use progress::ProgressMode;
use streams::Context;
pub(crate) use writers::sibling;
pub use writers::{npy_header, Format, ValueType};
use writers::{write_output, ArrowStream, Region};

/// What to do with a bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Report it, skip it, embed the rest; exit non-zero at the end (unless --max-failures
    /// allows the bad inputs).
    Skip,
    /// Stop at the first bad input.
    Fail,
}

/// The embed job's settings.
pub struct Settings {
    /// The inputs in order (images, and streams read as the job runs).
    pub sources: Vec<Source>,
    pub output: PathBuf,
    pub format: Format,
    /// The type of the written values.
    pub output_dtype: ValueType,
    pub batch_size: usize,
    /// Inputs decoded together and grouped by patch grid into passes of `batch_size`.
    pub window: usize,
    /// The model's patch size.
    pub patch: usize,
    /// The preprocessing, for the region of each image a patch grid covers.
    pub preprocess: PreprocessConfig,
    /// The poolings written, and whether normalized.
    pub outputs: Outputs,
    pub on_error: OnError,
    /// Bad inputs the job may skip and still succeed.
    pub max_failures: FailureBudget,
    pub overwrite: bool,
    pub resume: bool,
    pub workers: usize,
    /// Windows decoded at once (`--decoders`).
    pub decoders: usize,
    pub chunk_rows: usize,
    /// How progress is shown, and the time between its lines (all but the bar's).
    pub progress: ProgressMode,
    pub progress_every: Duration,
    /// Everything else that changes the values (model, dtype, preprocessing), for the fingerprint.
    pub identity: Vec<String>,
    /// Hidden states pooled instead of the final output, and whether through the final norm.
    pub layers: Option<(Vec<usize>, bool)>,
}

pub use inputs::{expand as expand_inputs, Source, TableColumns};

/// Beside a finished output, its manifest (`OUTPUT.done.json`): what was embedded, the counts,
/// and the fingerprint of the inputs and options, which `--resume` checks. Written last.
const DONE: &str = ".done.json";

/// `--resume` of a job whose output exists: fine when its manifest shows the same inputs and
/// options (an error still when more inputs failed then than `--max-failures` allows), refused
/// when it shows others or cannot be read. An output without a manifest (written before
/// manifests were) is taken as it is, unchecked.
fn finished(s: &Settings, fingerprint: &str) -> Result<()> {
    let manifest = sibling(&s.output, DONE);
    let (out, man) = (s.output.display(), manifest.display());
    if !manifest.exists() {
        eprintln!(
            "{out} is complete; nothing to resume (it has no {DONE} to check its inputs and \
             options against: --overwrite embeds again)"
        );
        return Ok(());
    }
    let unreadable = |why: &str| {
        CliError(format!(
            "{man}: {why}; it cannot say whether {out} is this job's: --overwrite embeds again"
        ))
    };
    let bytes = std::fs::read(&manifest).map_err(|e| unreadable(&e.to_string()))?;
    let done: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| unreadable("not valid JSON"))?;
    let found = done["fingerprint"]
        .as_str()
        .ok_or_else(|| unreadable("no fingerprint"))?;
    let dtype = format!("{:?}", s.output_dtype);
    if found != fingerprint || done["output_dtype"].as_str() != Some(dtype.as_str()) {
        return Err(CliError(format!(
            "{out} was written by a job with other inputs or options ({man}): --overwrite \
             embeds again"
        )));
    }
    let failed = done["failed"].as_u64().unwrap_or(0);
    // The inputs are this job's (the fingerprint of their names matched); a stream's images are
    // counted as they are read, by the job that read them.
    let Some(inputs) = Source::count(&s.sources).or(done["inputs"].as_u64().map(|n| n as usize))
    else {
        return Err(unreadable("no input count"));
    };
    if failed == 0 {
        eprintln!(
            "{out} is complete ({man} says so, for these inputs and options); nothing to resume"
        );
        return Ok(());
    }
    s.max_failures.verdict(
        &format!("{out} is complete ({man}), but "),
        failed,
        inputs as u64,
        done["errors"].as_str().unwrap_or("its errors file"),
    )
}

/// The part of an image of `(width, height)` its patch grid covers, with this preprocessing.
fn region(
    preprocess: &PreprocessConfig,
    patch: usize,
) -> impl Fn(u32, u32) -> [f32; 4] + Sync + '_ {
    move |width, height| {
        grid_region(width, height, preprocess, patch).map_or([f32::NAN; 4], |r| r.map(|v| v as f32))
    }
}

/// Commits rows and failures for inputs up to `done`; the rows also go to `arrow` when the
/// output is one.
fn commit(
    job: &mut Job,
    arrow: &mut Option<ArrowStream<'_>>,
    rows: &[job::Row],
    failures: Vec<job::Failure>,
    done: usize,
) -> Result<()> {
    if let Some(arrow) = arrow {
        arrow.write(rows)?;
    }
    job.commit(rows, failures, done)
}

/// What a run of the job did, for the summary.
struct Run<'a> {
    elapsed: Duration,
    /// Inputs this run processed.
    processed: usize,
    timing: &'a Timing,
    /// Models (streams) that ran batches.
    streams: usize,
}

/// Time spent, for the summary.
#[derive(Default)]
struct Timing {
    read: Duration,
    prepare: Duration,
    model: Duration,
    /// Model passes, and the images they ran.
    passes: usize,
    pass_images: usize,
}

/// Opens the job for `settings`, creating, resuming or replacing it as asked.
fn open_job(s: &Settings) -> Result<Option<Job>> {
    let partial = sibling(&s.output, ".partial");
    let mut parts: Vec<String> = s.sources.iter().map(Source::name).collect();
    parts.extend([
        format!("{:?}", s.format),
        // The layout of the job's chunks, which changed with several outputs per row.
        "rows 2".into(),
        format!("{:?}", s.outputs.poolings),
        s.outputs.normalize.to_string(),
        s.batch_size.to_string(),
    ]);
    parts.extend(s.identity.iter().cloned());
    let fingerprint = digest(&parts);
    if s.format == Format::ArrowStream {
        // Nothing to resume or replace: the job's state lives in a temporary folder, its rows
        // go to standard output as they come.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "dinov2-embed-{}-{nanos}.partial",
            std::process::id()
        ));
        return Job::create(&dir, fingerprint).map(|job| Some(job.without_rows()));
    }
    if s.resume {
        if partial.is_dir() {
            return Job::open(&partial, &fingerprint).map(Some);
        }
        if s.output.exists() {
            finished(s, &fingerprint)?;
            return Ok(None);
        }
    } else if s.output.exists() || partial.exists() {
        if !s.overwrite {
            let what = if partial.exists() {
                &partial
            } else {
                &s.output
            };
            return Err(CliError(format!(
                "{} exists: use --resume to continue an interrupted job or --overwrite to replace it",
                what.display()
            )));
        }
        // Checked now, not after the whole job: a file replaces a file, and a folder only an
        // earlier output folder.
        match (s.output.is_dir(), s.format == Format::ClipRetrieval) {
            (true, true) => writers::replaceable_folder(&s.output)?,
            (true, false) => {
                return Err(CliError(format!(
                    "--output {}: a folder; name a file, or end the name with / for a folder \
                     output",
                    s.output.display()
                )))
            }
            (false, true) if s.output.exists() => {
                return Err(CliError(format!(
                    "--output {}/: a file is there; choose another name for the folder",
                    s.output.display()
                )))
            }
            _ => {}
        }
        if partial.exists() {
            // Not from under a job that still runs there.
            let held = job::lock(&partial)?;
            std::fs::remove_dir_all(&partial)
                .map_err(|e| CliError(format!("cannot remove {}: {e}", partial.display())))?;
            drop(held);
        }
    }
    Job::create(&partial, fingerprint).map(Some)
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the flag when dropped (when the collector returns, however it returns).
struct CancelOnDrop<'a>(&'a AtomicBool);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads, decodes and preprocesses a window's inputs on the current thread pool: each input's
/// pixels or the step that failed and why, with the worker time each step took.
fn decode_window<B: Backend>(embedder: &Embedder<B>, window: &Window) -> Vec<Decoded> {
    window
        .inputs
        .par_iter()
        .enumerate()
        .map(|(i, input)| {
            let t = Instant::now();
            let name = input.name();
            let bytes = input.read();
            let read = t.elapsed();
            let result = match bytes {
                Err(e) => Err(("read", e)),
                Ok(bytes) => embedder
                    .prepare_named(&bytes, &name)
                    .map(|(pixels, (width, height))| (pixels, width, height))
                    .map_err(|e| {
                        let stage = match &e {
                            dinov2::Error::Image(e) => e.stage(),
                            _ => "decode",
                        };
                        // The image errors name the input; the report names it once.
                        let message = e.to_string();
                        let message = message
                            .strip_prefix(&format!("{name}: "))
                            .map_or(message.clone(), str::to_owned);
                        (stage, message)
                    }),
            };
            Decoded {
                index: window.begin + i,
                name,
                result,
                read,
                prepare: t.elapsed() - read,
            }
        })
        .collect()
}

/// Opens the feed of the job's inputs where the job stands: past the inputs an interrupted job
/// has done, checking that they are the ones it did (a stream may give others when read again).
fn open_feed(sources: Vec<Source>, job: &Job, buffer: usize, context: Context) -> Result<Feed> {
    let mut feed = Feed::new(sources, buffer, context);
    let changed = "the inputs changed since the interrupted job (--overwrite starts again)";
    match feed.skip(job.done) {
        Err(found) => Err(CliError(format!(
            "{changed}: they hold {found} images, fewer than the {} it had done",
            job.done
        ))),
        Ok(Some(name)) if job.last.as_ref().is_some_and(|last| *last != name) => {
            Err(CliError(format!(
                "{changed}: its input {} was {}, it is now {name}",
                job.done,
                job.last.as_deref().unwrap_or_default()
            )))
        }
        Ok(_) => Ok(feed),
    }
}

/// Runs the embed job with one model per stream: `embedders[0]` also decodes. Batches go to the
/// model threads in turn (on CUDA each has its own stream, so one's uploads and host work overlap
/// the other's compute) and are committed in input order.
pub fn run<B: Backend>(embedders: &[Embedder<B>], mut s: Settings) -> Result<()> {
    let region = region(&s.preprocess, s.patch);
    // Made first: where standard output is a terminal, it refuses before the job starts.
    let mut arrow = match s.format {
        Format::ArrowStream => Some(ArrowStream::new(s.output_dtype, &s.outputs, &region)?),
        _ => None,
    };
    let Some(mut job) = open_job(&s)? else {
        return Ok(());
    };
    // A stream's job cannot be resumed: its temporary state goes however the job ends.
    let _temporary = arrow.is_some().then(|| RemoveOnDrop(job.dir().to_owned()));
    let embedder = embedders
        .first()
        .ok_or_else(|| CliError("no model to embed with".into()))?;
    let total = Source::count(&s.sources);
    let window = s.window.max(1);
    let streams: Vec<String> = s
        .sources
        .iter()
        .filter(|s| matches!(s, Source::Stream(_)))
        .map(Source::name)
        .collect();
    // Set when the collector stops early (an error, --on-error fail): the other threads then
    // stop at their next batch instead of running it, and streams stop giving members.
    let cancel = Arc::new(AtomicBool::new(false));
    let start_at = job.done;
    let mut progress = Progress::new(s.progress, total, start_at, s.progress_every);
    let context = Context {
        cancel: cancel.clone(),
        log: progress.log(),
    };
    let sources = std::mem::take(&mut s.sources);
    let feed = Mutex::new(open_feed(sources, &job, window, context)?);
    let started = Instant::now();
    let mut timing = Timing::default();
    let mut failed = job.failures.len();
    let workers = rayon::ThreadPoolBuilder::new()
        .num_threads(s.workers)
        .thread_name(|i| format!("dinov2-decode-{i}"))
        .build()
        .map_err(|e| CliError(format!("cannot start decoding threads: {e}")))?;
    let outputs = &s.outputs;
    let on_error = s.on_error;
    let result: Result<()> = std::thread::scope(|scope| {
        // One batch waiting per model thread at most: memory stays bounded whatever the number
        // of inputs.
        let (tx, rx) = sync_channel::<(usize, Batch)>(embedders.len());
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = channel::<(usize, Result<Outcome>)>();
        let cancel = &*cancel;
        let _cancel_on_return = CancelOnDrop(cancel);
        let feed = &feed;
        let grouping = Grouping {
            patch: s.patch,
            pass: s.batch_size,
        };
        // Windows are taken from the feed by `decoders` threads, each decoding its window on the
        // one worker pool: while one waits for its window's slowest image, stacks its batch or
        // waits to hand it over, the workers decode another's window.
        let (workers, decoders) = (&workers, s.decoders.max(1));
        for _ in 0..decoders {
            let tx = tx.clone();
            scope.spawn(move || loop {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                // The lock is held only to take the next window (to read it, from a stream).
                let t = Instant::now();
                let next = feed.lock().ok().and_then(|mut feed| feed.window(window));
                let waited = t.elapsed();
                let Some(w) = next else {
                    return;
                };
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let items = workers.install(|| decode_window(embedder, &w));
                let (seq, end) = (w.seq, w.begin + w.inputs.len());
                // The encoded bytes are let go before the wait to hand the batch over.
                drop(w);
                // Stacked here, so that the model threads only run the model.
                let batch = assemble(end, items, waited, on_error, grouping);
                if tx.send((seq, batch)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        for model in embedders {
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next batch.
                let next = rx.lock().ok().and_then(|rx| rx.recv().ok());
                let Some((seq, batch)) = next else {
                    return;
                };
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                // A panic becomes this batch's error, so the collector stops at once rather
                // than waiting for a batch that never comes.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_batch(model, batch, outputs, on_error)
                }))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(CliError(format!("a model thread panicked: {what}")))
                });
                let failed = outcome.is_err();
                if done_tx.send((seq, outcome)).is_err() || failed {
                    return;
                }
            });
        }
        drop(done_tx);
        // Outcomes arrive in any order; they are taken in input order.
        let mut waiting = BTreeMap::new();
        let mut next_seq = 0;
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        let mut end = start_at;
        for (seq, outcome) in done_rx {
            waiting.insert(seq, outcome);
            while let Some(outcome) = waiting.remove(&next_seq) {
                next_seq += 1;
                let outcome = outcome?;
                timing.read += outcome.read;
                timing.prepare += outcome.prepare;
                timing.model += outcome.model;
                timing.passes += outcome.passes;
                timing.pass_images += outcome.pass_images;
                for f in outcome.stop.iter().chain(&outcome.failures) {
                    progress.skipped(f);
                }
                failed += outcome.failures.len();
                if s.format.is_dense() {
                    // Fail at the first row that does not fit one dense tensor, not after the
                    // whole job.
                    let first = job
                        .shapes
                        .first()
                        .or(rows.first().map(|r: &job::Row| &r.shapes))
                        .or(outcome.rows.first().map(|r| &r.shapes))
                        .cloned();
                    if let Some(first) = first {
                        for row in &outcome.rows {
                            writers::same_shapes(&first, &row.shapes, s.format, &s.outputs)?;
                        }
                    }
                }
                rows.extend(outcome.rows);
                failures.extend(outcome.failures);
                if let Some(stop) = outcome.stop {
                    rows.retain(|r| r.index < stop.index);
                    failures.retain(|f| f.index < stop.index);
                    let failures = std::mem::take(&mut failures);
                    commit(&mut job, &mut arrow, &rows, failures, stop.index)?;
                    return Err(CliError(format!(
                        "{}: {} (--on-error fail)",
                        stop.path, stop.error
                    )));
                }
                end = outcome.end;
                progress.set(end, failed);
                if rows.len() >= s.chunk_rows {
                    let failures = std::mem::take(&mut failures);
                    commit(&mut job, &mut arrow, &rows, failures, end)?;
                    rows.clear();
                }
            }
        }
        let (ended, batches) = feed.lock().map_or((false, 0), |feed| feed.handed_out());
        if !ended || next_seq != batches {
            // A later batch's error, where the model threads stopped at it.
            if let Some(Err(e)) = waiting.into_values().find(Result::is_err) {
                return Err(e);
            }
            return Err(CliError(format!(
                "a model thread stopped after {next_seq} of {batches} batches"
            )));
        }
        if end > job.done {
            let failures = std::mem::take(&mut failures);
            commit(&mut job, &mut arrow, &rows, failures, end)?;
        }
        Ok(())
    });
    progress.finish();
    for e in embedders {
        let status = e.model().replay_status();
        if let Some(why) = status.failure {
            progress.warning(&format!(
                "CUDA graph recording failed; batches ran without graphs: {why}"
            ));
            break;
        }
        if status.too_large > 0 {
            progress.warning(&format!(
                "{} batch shape(s) ran without CUDA graphs: recording them ran out of device \
                 memory",
                status.too_large
            ));
            break;
        }
    }
    if let Some(limit) = embedders.iter().filter_map(|e| e.batch_limit()).min() {
        progress.warning(&format!(
            "the device ran out of memory; batches ran in passes of at most {limit} images from \
             then on (--batch-size {limit} avoids the retries)"
        ));
    }
    result?;
    if job.done == 0 {
        // Only streams can hold no image: an empty list of images is refused before the job.
        job.remove()?;
        return Err(CliError(format!(
            "no images found in {}",
            streams.join(", ")
        )));
    }
    // The stream-ordered allocator keeps what the passes freed, so the memory in use now is
    // close to the job's peak.
    let mut reported = Vec::new();
    for backend in embedders.iter().map(|e| e.model().backend()) {
        let name = backend.name();
        if reported.contains(&name) {
            continue;
        }
        if let Some(used) = backend.memory_used() {
            progress.note(&format!(
                "{name}: {} MiB of device memory in use at the end (all streams, close to the peak)",
                used >> 20
            ));
        }
        reported.push(name);
    }
    let run = Run {
        elapsed: started.elapsed(),
        processed: job.done - start_at,
        timing: &timing,
        streams: embedders.len(),
    };
    finish(job, &s, arrow, &region, &run, &progress)
}

/// Writes the output (or ends the stream) and the error report, removes the job folder, prints
/// the summary.
fn finish(
    job: Job,
    s: &Settings,
    arrow: Option<ArrowStream<'_>>,
    region: &Region<'_>,
    run: &Run<'_>,
    progress: &Progress,
) -> Result<()> {
    let Run {
        elapsed,
        processed,
        timing,
        streams,
    } = *run;
    let failed = job.failures.len();
    // The manifest's path, where there is one, and where the errors are told.
    let (manifest, errors) = match arrow {
        Some(arrow) => {
            arrow.finish()?;
            (None, "the skipped lines above".to_string())
        }
        None => {
            // The old manifest goes first: it never describes an output it did not come with.
            let manifest = sibling(&s.output, DONE);
            if manifest.exists() {
                std::fs::remove_file(&manifest)
                    .map_err(|e| CliError(format!("cannot remove {}: {e}", manifest.display())))?;
            }
            let (dtype, outputs) = (s.output_dtype, &s.outputs);
            write_output(&job, &s.output, s.format, dtype, outputs, region)?;
            let errors_path = sibling(&s.output, ".errors.jsonl");
            if failed > 0 {
                let mut text = String::new();
                for f in &job.failures {
                    let line =
                        serde_json::json!({"path": f.path, "stage": f.stage, "error": f.error});
                    text.push_str(&line.to_string());
                    text.push('\n');
                }
                job::write_atomic(&errors_path, text.as_bytes())?;
            } else if errors_path.exists() {
                std::fs::remove_file(&errors_path).map_err(|e| {
                    CliError(format!("cannot remove {}: {e}", errors_path.display()))
                })?;
            }
            (Some(manifest), errors_path.display().to_string())
        }
    };
    let (embedded, inputs) = (job.rows, job.done);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let passes = format!(
        "{} passes of {:.1} images on average",
        timing.passes,
        timing.pass_images as f64 / timing.passes.max(1) as f64
    );
    let model = if streams > 1 {
        format!(
            "model {:.2} s over {streams} streams, {passes}",
            timing.model.as_secs_f64()
        )
    } else {
        format!("model {:.2} s, {passes}", timing.model.as_secs_f64())
    };
    let per_image = |d: Duration| 1e3 * d.as_secs_f64() / processed.max(1) as f64;
    let rate = processed as f64 / secs;
    let summary = format!(
        "embedded {embedded}, failed {failed}, {:.1} images/s over {processed} processed in {secs:.1} s \
         (worker time: read {:.2} s, {:.2} ms/image; decode+preprocess {:.2} s, {:.1} ms/image; \
         {model}); wrote {}",
        rate,
        timing.read.as_secs_f64(),
        per_image(timing.read),
        timing.prepare.as_secs_f64(),
        per_image(timing.prepare),
        match s.format {
            Format::ArrowStream => "the Arrow stream to standard output".into(),
            _ => s.output.display().to_string(),
        }
    );
    let done = serde_json::json!({
        "output": s.output.display().to_string(),
        "format": format!("{:?}", s.format),
        "inputs": job.done,
        "embedded": embedded,
        "failed": failed,
        "errors": (failed > 0 && manifest.is_some()).then_some(&errors),
        "poolings": s.outputs.poolings.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "normalize": s.outputs.normalize,
        "layers": s.layers.as_ref().map(|(layers, norm)| {
            serde_json::json!({"hidden_states": layers, "layer_norm": norm})
        }),
        "output_dtype": format!("{:?}", s.output_dtype),
        "identity": s.identity,
        "fingerprint": job.fingerprint(),
        "dinov2_version": env!("CARGO_PKG_VERSION"),
        "finished_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "seconds_this_run": secs,
    });
    if let Some(manifest) = &manifest {
        job::write_atomic(manifest, format!("{done:#}\n").as_bytes())?;
    }
    job.remove()?;
    progress.done(&summary, &done, rate);
    s.max_failures
        .verdict("", failed as u64, inputs as u64, &errors)
}
