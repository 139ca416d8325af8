//! `dinov2 embed`: a folder (or list) of images to embedding vectors, as a pipeline: images are
//! decoded and preprocessed on a thread pool while the model runs the previous batch; finished rows
//! are committed in chunks so that an interrupted job resumes where it stopped; bad inputs are
//! reported and skipped.

mod inputs;
mod job;
mod writers;

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use dinov2::image::PixelValues;
use dinov2::{Backend, Embedder, ModelError, Pooling};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use rayon::prelude::*;

use crate::error::{CliError, Result};
use job::{digest, Failure, Job, Row};
pub use writers::Format;
use writers::{sibling, write_output};

/// An image ready for the model.
struct Prepared {
    pixels: PixelValues,
    /// Size of the original image.
    width: u32,
    height: u32,
}

/// What to do with a bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Report it, skip it, embed the rest; exit non-zero at the end.
    Skip,
    /// Stop at the first bad input.
    Fail,
}

/// The embed job's settings.
pub struct Settings {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub format: Format,
    pub batch_size: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub on_error: OnError,
    pub overwrite: bool,
    pub resume: bool,
    pub workers: usize,
    pub chunk_rows: usize,
    /// Everything else that changes the values (model, dtype, preprocessing), for the fingerprint.
    pub identity: Vec<String>,
}

pub use inputs::expand as expand_inputs;

/// Time spent, for the summary.
#[derive(Default)]
struct Timing {
    prepare: Duration,
    model: Duration,
}

/// Opens the job for `settings`, creating, resuming or replacing it as asked.
fn open_job(s: &Settings) -> Result<Option<Job>> {
    let partial = sibling(&s.output, ".partial");
    let mut parts: Vec<String> = s
        .inputs
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    parts.extend([
        format!("{:?}", s.format),
        s.pooling.to_string(),
        s.normalize.to_string(),
        s.batch_size.to_string(),
    ]);
    parts.extend(s.identity.iter().cloned());
    let fingerprint = digest(&parts);
    if s.resume {
        if partial.is_dir() {
            return Job::open(&partial, &fingerprint).map(Some);
        }
        if s.output.exists() {
            eprintln!("{} is complete; nothing to resume", s.output.display());
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
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(|e| CliError(format!("cannot remove {}: {e}", partial.display())))?;
        }
    }
    Job::create(&partial, fingerprint).map(Some)
}

fn progress_bar(total: usize, done: usize) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {rate}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} images/s", state.per_sec());
                },
            );
    pb.set_style(style);
    pb.set_position(done as u64);
    pb.reset_eta();
    pb
}

/// Runs the model on images that share one shape; per-image failures when the model rejects them.
fn embed_group<B: Backend>(
    embedder: &Embedder<B>,
    group: Vec<(usize, Prepared)>,
    paths: &[PathBuf],
    rows: &mut Vec<Row>,
    failures: &mut Vec<Failure>,
) -> Result<()> {
    // The pixels move to the model (a batch is tens of megabytes: no copy).
    let (images, pixels): (Vec<(usize, u32, u32)>, Vec<PixelValues>) = group
        .into_iter()
        .map(|(index, p)| ((index, p.width, p.height), p.pixels))
        .unzip();
    match embedder.embed_prepared(&pixels) {
        Ok(embeddings) => {
            for ((index, width, height), e) in images.into_iter().zip(embeddings) {
                rows.push(Row {
                    index,
                    path: paths[index].to_string_lossy().into_owned(),
                    width,
                    height,
                    grid: e.grid,
                    values: e.values,
                });
            }
        }
        Err(dinov2::Error::Model(ModelError::Input { reason, .. })) => {
            for (index, _, _) in images {
                failures.push(Failure {
                    index,
                    path: paths[index].to_string_lossy().into_owned(),
                    error: reason.clone(),
                });
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Runs the embed job with `model`.
pub fn run<B: Backend>(embedder: &Embedder<B>, s: Settings) -> Result<()> {
    let Some(mut job) = open_job(&s)? else {
        return Ok(());
    };
    let total = s.inputs.len();
    let start_at = job.done;
    let started = Instant::now();
    let mut timing = Timing::default();
    let pb = progress_bar(total, start_at);
    let workers = rayon::ThreadPoolBuilder::new()
        .num_threads(s.workers)
        .thread_name(|i| format!("dinov2-decode-{i}"))
        .build()
        .map_err(|e| CliError(format!("cannot start decoding threads: {e}")))?;
    let paths = &s.inputs;
    let result: Result<()> = std::thread::scope(|scope| {
        // Two batches in flight at most: memory stays bounded whatever the number of inputs.
        let (tx, rx) = sync_channel(2);
        let batch = s.batch_size;
        scope.spawn(move || {
            for begin in (start_at..total).step_by(batch) {
                let end = (begin + batch).min(total);
                let items: Vec<(usize, std::result::Result<Prepared, String>, Duration)> = workers
                    .install(|| {
                        (begin..end)
                            .into_par_iter()
                            .map(|i| {
                                let t = Instant::now();
                                let r = embedder
                                    .prepare_path(&paths[i])
                                    .map(|(pixels, (width, height))| Prepared {
                                        pixels,
                                        width,
                                        height,
                                    })
                                    .map_err(|e| {
                                        // The image errors name the file; the report names it once.
                                        let message = e.to_string();
                                        let prefix = format!("{}: ", paths[i].display());
                                        message
                                            .strip_prefix(&prefix)
                                            .map_or(message.clone(), str::to_owned)
                                    });
                                (i, r, t.elapsed())
                            })
                            .collect()
                    });
                if tx.send((end, items)).is_err() {
                    return;
                }
            }
        });
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        for (end, items) in rx {
            let mut group: Vec<(usize, Prepared)> = Vec::new();
            let mut stop = None;
            let t = Instant::now();
            for (index, prepared, spent) in items {
                timing.prepare += spent;
                match prepared {
                    Ok(p) => {
                        if group
                            .first()
                            .is_some_and(|g| g.1.pixels.shape != p.pixels.shape)
                        {
                            embed_group(
                                embedder,
                                std::mem::take(&mut group),
                                paths,
                                &mut rows,
                                &mut failures,
                            )?;
                        }
                        group.push((index, p));
                    }
                    Err(error) => {
                        let path = paths[index].to_string_lossy().into_owned();
                        pb.suspend(|| eprintln!("skipped {path}: {error}"));
                        failures.push(Failure { index, path, error });
                        if s.on_error == OnError::Fail {
                            stop = Some(index);
                            break;
                        }
                    }
                }
            }
            if !group.is_empty() {
                embed_group(embedder, group, paths, &mut rows, &mut failures)?;
            }
            timing.model += t.elapsed();
            if let Some(index) = stop {
                rows.retain(|r| r.index < index);
                let failure = failures.pop();
                job.commit(&rows, std::mem::take(&mut failures), index)?;
                let f = failure.expect("a failure was recorded");
                return Err(CliError(format!(
                    "{}: {} (--on-error fail)",
                    f.path, f.error
                )));
            }
            pb.set_position(end as u64);
            if rows.len() >= s.chunk_rows || end == total {
                job.commit(&rows, std::mem::take(&mut failures), end)?;
                rows.clear();
                if s.format != Format::Parquet {
                    // Fail now, not after the whole job, when rows stop fitting one dense tensor.
                    writers::dense_shape(&job, s.format)?;
                }
            }
        }
        Ok(())
    });
    pb.finish_and_clear();
    if let Some(why) = embedder.model().replay_status().failure {
        eprintln!("warning: CUDA graph recording failed; batches ran without graphs: {why}");
    }
    result?;
    finish(job, &s, started.elapsed(), total - start_at, &timing)
}

/// Writes the output and the error report, removes the job folder, prints the summary.
fn finish(
    job: Job,
    s: &Settings,
    elapsed: Duration,
    processed: usize,
    timing: &Timing,
) -> Result<()> {
    write_output(&job, &s.output, s.format)?;
    let errors_path = sibling(&s.output, ".errors.jsonl");
    let failed = job.failures.len();
    if failed > 0 {
        let mut text = String::new();
        for f in &job.failures {
            text.push_str(&serde_json::json!({"path": f.path, "error": f.error}).to_string());
            text.push('\n');
        }
        job::write_atomic(&errors_path, text.as_bytes())?;
    } else if errors_path.exists() {
        std::fs::remove_file(&errors_path)
            .map_err(|e| CliError(format!("cannot remove {}: {e}", errors_path.display())))?;
    }
    let embedded = job.rows;
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "embedded {embedded}, failed {failed}, {:.1} images/s over {processed} processed in {secs:.1} s \
         (decode+preprocess {:.2} s of worker time, {:.1} ms/image; model {:.2} s); wrote {}",
        processed as f64 / secs,
        timing.prepare.as_secs_f64(),
        1e3 * timing.prepare.as_secs_f64() / processed.max(1) as f64,
        timing.model.as_secs_f64(),
        s.output.display()
    );
    job.remove()?;
    if failed > 0 {
        return Err(CliError(format!(
            "{failed} of {} inputs could not be embedded; see {}",
            s.inputs.len(),
            errors_path.display()
        )));
    }
    Ok(())
}
