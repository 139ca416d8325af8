//! The embed job's progress on stderr: a bar on a terminal; elsewhere (a log file, a cluster
//! job) a `progress:` line now and then; or, for a program watching the job (`--progress
//! jsonl`), one JSON object per line for the start, the progress, each skipped input and the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde_json::{json, Value};

use super::job::Failure;
use super::streams::Log;

/// How the job shows its progress (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal; lines elsewhere.
    Auto,
    /// A bar with the count, the rate and the time left (on a terminal).
    Bar,
    /// A `progress:` line every --progress-every seconds, for logs.
    Lines,
    /// One JSON object per line, each with an `event`: `start` (`total`, `done`), `progress`
    /// every --progress-every seconds (`done`, `total`, `failed`, `images_per_s`, `eta_s`,
    /// `elapsed_s`), `skipped` (`index`, `path`, `stage`, `error`) for each bad input,
    /// `stream_message` (`stream`, `message`) for each line a `pipe:` command writes to its
    /// stderr, `warning` and `note` (`message`) about how the job ran (CUDA graphs, device
    /// memory), and `done` (the manifest's fields and `images_per_s`) at the end.
    Jsonl,
}

/// The job's progress as it goes.
pub(super) struct Progress {
    mode: ProgressMode,
    /// Hidden unless the mode is [`ProgressMode::Bar`].
    bar: ProgressBar,
    /// The number of inputs, when known (streams are counted as they are read).
    total: Option<usize>,
    /// Where the job started, and when; when the last line was written.
    start: (usize, Instant),
    last: Instant,
    every: Duration,
}

impl Progress {
    /// Progress shown as `mode` says (`Auto` resolved by whether stderr is a terminal), of a
    /// job of `total` inputs that starts with `done` of them done.
    pub fn new(mode: ProgressMode, total: Option<usize>, done: usize, every: Duration) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            mode => mode,
        };
        let bar = if mode == ProgressMode::Bar {
            progress_bar(total, done)
        } else {
            ProgressBar::hidden()
        };
        if mode == ProgressMode::Jsonl {
            line(json!({"event": "start", "total": total, "done": done}));
        }
        let now = Instant::now();
        Progress {
            mode,
            bar,
            total,
            start: (done, now),
            last: now,
            every,
        }
    }

    /// `pos` inputs are done, `failed` of them failed.
    pub fn set(&mut self, pos: usize, failed: usize) {
        self.bar.set_position(pos as u64);
        if self.mode == ProgressMode::Bar
            || self.last.elapsed() < self.every
            || Some(pos) == self.total
        {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.1.elapsed().as_secs_f64().max(1e-9);
        let rate = (pos - self.start.0) as f64 / secs;
        let left = self
            .total
            .filter(|_| rate > 0.0)
            .map(|total| total.saturating_sub(pos) as f64 / rate);
        if self.mode == ProgressMode::Jsonl {
            line(json!({
                "event": "progress",
                "done": pos,
                "total": self.total,
                "failed": failed,
                "images_per_s": rate,
                "eta_s": left,
                "elapsed_s": secs,
            }));
            return;
        }
        let Some(total) = self.total else {
            eprintln!("progress: {pos} images, {rate:.1} images/s");
            return;
        };
        let left = left.map_or("?".into(), |s| format!("{s:.0} s"));
        eprintln!(
            "progress: {pos}/{total} images ({:.1}%), {rate:.1} images/s, {left} left",
            100.0 * pos as f64 / total.max(1) as f64
        );
    }

    /// Where a stream's command's messages (its stderr lines) go: above the bar, as lines named
    /// by the stream, or as `stream_message` events (`stream`, `message`).
    pub fn log(&self) -> Log {
        let (mode, bar) = (self.mode, self.bar.clone());
        std::sync::Arc::new(move |stream: &str, message: &str| match mode {
            ProgressMode::Jsonl => line(json!({
                "event": "stream_message",
                "stream": stream,
                "message": message,
            })),
            _ => bar.suspend(|| eprintln!("{stream}: {message}")),
        })
    }

    /// Reports something the user should know about how the job ran: `warning: ...`, or a
    /// `warning` event (`message`).
    pub fn warning(&self, message: &str) {
        match self.mode {
            ProgressMode::Jsonl => line(json!({"event": "warning", "message": message})),
            _ => eprintln!("warning: {message}"),
        }
    }

    /// Reports a fact about the job's run (the device memory it used): a line, or a `note`
    /// event (`message`).
    pub fn note(&self, message: &str) {
        match self.mode {
            ProgressMode::Jsonl => line(json!({"event": "note", "message": message})),
            _ => eprintln!("{message}"),
        }
    }

    /// Reports a bad input, skipped.
    pub fn skipped(&self, f: &Failure) {
        if self.mode == ProgressMode::Jsonl {
            line(json!({
                "event": "skipped",
                "index": f.index,
                "path": f.path,
                "stage": f.stage,
                "error": f.error,
            }));
        } else {
            self.bar
                .suspend(|| eprintln!("skipped {}: {}", f.path, f.error));
        }
    }

    /// Reports the end: `summary` as it is, or as a `done` event with the fields of `manifest`.
    pub fn done(&self, summary: &str, manifest: &Value, rate: f64) {
        if self.mode != ProgressMode::Jsonl {
            eprintln!("{summary}");
            return;
        }
        let mut event = json!({"event": "done"});
        if let (Some(event), Some(fields)) = (event.as_object_mut(), manifest.as_object()) {
            event.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            event.insert("images_per_s".into(), json!(rate));
        }
        line(event);
    }

    /// Clears the bar (before the job's last words).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Writes one JSON line on stderr.
fn line(event: Value) {
    eprintln!("{event}");
}

/// A bar of `total` inputs, or (when streams make the number unknown) a count with a spinner.
fn progress_bar(total: Option<usize>, done: usize) -> ProgressBar {
    let (pb, template) = match total {
        Some(total) => (
            ProgressBar::new(total as u64),
            "{bar:40} {pos}/{len} images  {rate}  ETA {eta}  {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} images  {rate}  {elapsed}  {msg}",
        ),
    };
    let style = ProgressStyle::with_template(template)
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
    if total.is_none() {
        pb.enable_steady_tick(Duration::from_millis(250));
    }
    pb
}
