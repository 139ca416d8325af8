//! The resumable state of an embed job, kept in `OUT.partial/` beside the output: chunk files of
//! finished rows and `state.json` naming them. A chunk is written to a temporary name and renamed;
//! `state.json` is replaced the same way after it, so a job killed at any point resumes from the last
//! state it recorded and yields the same rows as one clean run.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::error::{CliError, Result};

/// One embedded image.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Position in the input list.
    pub index: usize,
    pub path: String,
    /// Size of the original image.
    pub width: u32,
    pub height: u32,
    /// The patch grid, for the outputs that follow it (patch, tokens).
    pub grid: Option<(usize, usize)>,
    /// Each output's shape (`[D]`, `[R, D]`, `[gh, gw, D]` or `[S, D]`), in the order asked.
    pub shapes: Vec<Vec<usize>>,
    /// The outputs' values, one after another.
    pub values: Vec<f32>,
}

/// One input that could not be embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub index: usize,
    pub path: String,
    /// The step that failed: `read`, `decode`, `preprocess` or `model`.
    pub stage: String,
    pub error: String,
}

/// The job's recorded progress.
#[derive(Debug)]
pub struct Job {
    /// The folder's lock, held while the job runs ([`lock`]).
    _lock: File,
    dir: PathBuf,
    /// Identifies the inputs and options; a resume must match it.
    fingerprint: String,
    /// Inputs `0..done` are embedded or failed.
    pub done: usize,
    /// The name of input `done - 1`, which a resume checks its inputs against (`None` before the
    /// first commit, and in jobs saved before it was recorded).
    pub last: Option<String>,
    chunks: Vec<String>,
    pub failures: Vec<Failure>,
    /// Rows written so far.
    pub rows: usize,
    /// The distinct output shapes of the rows so far ([`Row::shapes`]), in order of appearance.
    pub shapes: Vec<Vec<Vec<usize>>>,
    /// Whether committed rows are kept in chunk files (not when they go to a stream as they
    /// come: they are only counted then).
    keeps_rows: bool,
}

impl Row {
    /// Each output's shape and values, in order.
    pub fn outputs(&self) -> impl Iterator<Item = (&[usize], &[f32])> {
        let mut offset = 0;
        self.shapes.iter().map(move |shape| {
            let n: usize = shape.iter().product();
            let values = &self.values[offset..offset + n];
            offset += n;
            (shape.as_slice(), values)
        })
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that `path` is never partial.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io(path)))
        .inspect_err(|_| {
            // A full disk: give back what the partial file took.
            let _ = std::fs::remove_file(&tmp);
        })
}

/// A 64-bit FNV-1a digest, stable across builds (for fingerprints).
pub fn digest(parts: impl IntoIterator<Item = impl AsRef<[u8]>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_ref().iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Holds `dir/lock` locked for this process until dropped (or the process ends): a second job
/// in the same folder (two `--resume` runs of one shard) is refused instead of both writing it.
pub fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match try_lock(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(CliError(format!(
            "{} is in use by another dinov2 embed (it holds {}); wait for it to end",
            dir.display(),
            path.display()
        ))),
        Err(e) => Err(CliError(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// An exclusive advisory lock on `file` (`flock`), released when it is closed: `Ok(false)`
/// when another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` on a file descriptor this `File` owns for the call's duration.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Elsewhere no lock is taken.
#[cfg(not(unix))]
fn try_lock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}

impl Job {
    /// Starts a new job in `dir` (which must not exist).
    pub fn create(dir: &Path, fingerprint: String) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        let job = Job {
            _lock: lock,
            dir: dir.to_owned(),
            fingerprint,
            done: 0,
            last: None,
            chunks: Vec::new(),
            failures: Vec::new(),
            rows: 0,
            shapes: Vec::new(),
            keeps_rows: true,
        };
        job.save()?;
        Ok(job)
    }

    /// The job, its committed rows counted but not kept (they go to a stream as they come).
    pub fn without_rows(mut self) -> Self {
        self.keeps_rows = false;
        self
    }

    /// Reopens the job recorded in `dir`, checking that it was started with the same inputs and
    /// options.
    pub fn open(dir: &Path, fingerprint: &str) -> Result<Self> {
        let lock = lock(dir)?;
        let state = dir.join("state.json");
        let text = std::fs::read_to_string(&state).map_err(io(&state))?;
        let bad = |what: &str| {
            CliError(format!(
                "{}: {what}; remove {} to start over",
                state.display(),
                dir.display()
            ))
        };
        let v: Value = serde_json::from_str(&text).map_err(|_| bad("not valid JSON"))?;
        let found = v["fingerprint"].as_str().unwrap_or_default();
        if found != fingerprint {
            return Err(CliError(format!(
                "the interrupted job in {} was started with other inputs or options; rerun it with the same \
                 ones, or use --overwrite to start over",
                dir.display()
            )));
        }
        let chunks: Vec<String> = v["chunks"]
            .as_array()
            .ok_or_else(|| bad("no chunk list"))?
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("bad chunk name"))
            })
            .collect::<Result<_>>()?;
        let failures = v["failures"]
            .as_array()
            .ok_or_else(|| bad("no failure list"))?
            .iter()
            .map(|f| {
                Some(Failure {
                    index: f["index"].as_u64()? as usize,
                    path: f["path"].as_str()?.to_owned(),
                    // Jobs saved before stages were recorded.
                    stage: f["stage"].as_str().unwrap_or("unknown").to_owned(),
                    error: f["error"].as_str()?.to_owned(),
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("bad failure entry"))?;
        Ok(Job {
            _lock: lock,
            dir: dir.to_owned(),
            fingerprint: fingerprint.to_owned(),
            done: v["done"].as_u64().ok_or_else(|| bad("no progress count"))? as usize,
            last: v["last"].as_str().map(str::to_owned),
            rows: v["rows"].as_u64().ok_or_else(|| bad("no row count"))? as usize,
            shapes: serde_json::from_value(v["shapes"].clone())
                .map_err(|_| bad("bad row shapes"))?,
            chunks,
            failures,
            keeps_rows: true,
        })
    }

    fn save(&self) -> Result<()> {
        let failures: Vec<Value> = self
            .failures
            .iter()
            .map(|f| json!({"index": f.index, "path": f.path, "stage": f.stage, "error": f.error}))
            .collect();
        let state = json!({
            "version": 1,
            "fingerprint": self.fingerprint,
            "done": self.done,
            "last": self.last,
            "rows": self.rows,
            "shapes": self.shapes,
            "chunks": self.chunks,
            "failures": failures,
        });
        write_atomic(&self.dir.join("state.json"), state.to_string().as_bytes())
    }

    /// Records rows and failures for inputs up to `done`, durably.
    pub fn commit(&mut self, rows: &[Row], failures: Vec<Failure>, done: usize) -> Result<()> {
        let last = rows
            .iter()
            .map(|r| (r.index, &r.path))
            .chain(failures.iter().map(|f| (f.index, &f.path)))
            .max_by_key(|(index, _)| *index);
        if let Some((index, path)) = last {
            if index + 1 == done {
                self.last = Some(path.clone());
            }
        }
        if !rows.is_empty() {
            if self.keeps_rows {
                let name = format!("chunk-{:06}.safetensors", self.chunks.len());
                write_atomic(&self.dir.join(&name), &encode_chunk(rows)?)?;
                self.chunks.push(name);
            }
            self.rows += rows.len();
            for row in rows {
                if !self.shapes.contains(&row.shapes) {
                    self.shapes.push(row.shapes.clone());
                }
            }
        }
        self.failures.extend(failures);
        self.done = done;
        self.save()
    }

    /// The committed rows, chunk by chunk, in input order.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Vec<Row>>> + '_ {
        self.chunks.iter().map(|name| {
            let path = self.dir.join(name);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            decode_chunk(&bytes).map_err(|e| CliError(format!("{}: {e}", path.display())))
        })
    }

    /// The folder its state is kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What identifies the job's inputs and options ([`Job::open`] checks it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Deletes the job folder once the output is complete.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

/// A chunk file: all rows' values one after another (rows may differ in length: patch grids of
/// several sizes), and per row its index, path, original size, grid and output shapes as JSON
/// metadata.
fn encode_chunk(rows: &[Row]) -> Result<Vec<u8>> {
    let mut values = Vec::with_capacity(rows.iter().map(|r| r.values.len()).sum());
    let mut meta = Vec::with_capacity(rows.len());
    for r in rows {
        values.extend_from_slice(&r.values);
        meta.push(
            json!({"index": r.index, "path": r.path, "width": r.width, "height": r.height,
                         "grid": r.grid.map(|(h, w)| [h, w]), "shapes": r.shapes}),
        );
    }
    let view = TensorView::new(
        Dtype::F32,
        vec![values.len()],
        bytemuck::cast_slice(&values),
    )
    .map_err(|e| CliError(format!("cannot encode a chunk: {e}")))?;
    let metadata = HashMap::from([("rows".to_owned(), Value::Array(meta).to_string())]);
    safetensors::serialize([("values", view)], Some(metadata))
        .map_err(|e| CliError(format!("cannot encode a chunk: {e}")))
}

fn decode_chunk(bytes: &[u8]) -> std::result::Result<Vec<Row>, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let values = st.tensor("values").map_err(|e| e.to_string())?;
    let data: Vec<f32> = values
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let rows_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("rows"))
        .ok_or("no row metadata")?;
    let rows: Value = serde_json::from_str(rows_json).map_err(|e| e.to_string())?;
    let mut offset: usize = 0;
    rows.as_array()
        .ok_or("row metadata is not a list")?
        .iter()
        .map(|r| {
            let mut row = || -> Option<Row> {
                let shapes: Vec<Vec<usize>> = serde_json::from_value(r["shapes"].clone()).ok()?;
                if shapes.is_empty() || shapes.iter().any(Vec::is_empty) {
                    return None;
                }
                let len = shapes.iter().try_fold(0usize, |sum, s| {
                    sum.checked_add(s.iter().try_fold(1usize, |p, &d| p.checked_mul(d))?)
                })?;
                let values = data.get(offset..offset.checked_add(len)?)?.to_vec();
                offset += len;
                let grid = match r["grid"].as_array() {
                    Some(g) => Some((g.first()?.as_u64()? as usize, g.get(1)?.as_u64()? as usize)),
                    None => None,
                };
                Some(Row {
                    index: r["index"].as_u64()? as usize,
                    path: r["path"].as_str()?.to_owned(),
                    width: r["width"].as_u64()? as u32,
                    height: r["height"].as_u64()? as u32,
                    grid,
                    shapes,
                    values,
                })
            };
            row().ok_or_else(|| "bad row metadata".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: usize) -> Row {
        Row {
            index,
            path: format!("img{index}.png"),
            width: 10 + index as u32,
            height: 20,
            grid: Some((1, 2)),
            shapes: vec![vec![1, 2, 1], vec![2]],
            values: vec![index as f32, 0.5, -1.0, 2.0],
        }
    }

    #[test]
    fn commits_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("out.npy.partial");
        let mut job = Job::create(&job_dir, "fp".into()).unwrap();
        job.commit(
            &[row(0), row(2)],
            vec![Failure {
                index: 1,
                path: "bad.jpg".into(),
                stage: "decode".into(),
                error: "truncated".into(),
            }],
            3,
        )
        .unwrap();
        job.commit(&[row(3)], vec![], 4).unwrap();
        // While a job holds its folder, no other may open it.
        let held = Job::open(&job_dir, "fp").unwrap_err().0;
        assert!(held.contains("in use by another dinov2 embed"), "{held}");
        drop(job);
        let again = Job::open(&job_dir, "fp").unwrap();
        assert_eq!((again.done, again.rows, again.failures.len()), (4, 3, 1));
        let rows: Vec<Row> = again.chunks().flat_map(|c| c.unwrap()).collect();
        assert_eq!(rows, vec![row(0), row(2), row(3)]);
        drop(again);
        assert!(Job::open(&job_dir, "other")
            .unwrap_err()
            .0
            .contains("other inputs or options"));
    }
}
