//! The PyTorch peer of `dinov2 bench` (`benches/peer_torch.py`, run by the Python that `--peer`
//! names): either all its passes at once, before ours ([`run_all`]), or one pass at a time in
//! turn with ours (`--alternate`, [`Alternating`]), so that a machine whose speed drifts over
//! minutes slows both sides alike.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::args::{BenchArgs, Device};
use crate::error::{CliError, Result};

const PEER_SCRIPT: &str = include_str!("../../../../benches/peer_torch.py");

/// The peer's script written to a folder of its own, removed when dropped.
struct Script {
    dir: PathBuf,
}

impl Script {
    fn write() -> Result<Script> {
        let dir = std::env::temp_dir().join(format!("dinov2-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError(format!("cannot create {}: {e}", dir.display())))?;
        let script = Script { dir };
        std::fs::write(script.path(), PEER_SCRIPT)
            .map_err(|e| CliError(format!("cannot write {}: {e}", script.path().display())))?;
        Ok(script)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("peer_torch.py")
    }

    /// Where the alternating peer's messages go.
    fn log(&self) -> PathBuf {
        self.dir.join("peer.log")
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peer's command line for this invocation: the same model, device, dtype, sizes and
/// thread count as ours.
fn command(python: &Path, script: &Path, config_json: &str, args: &BenchArgs) -> Command {
    let batches: Vec<String> = args.batch_size.iter().map(|b| b.to_string()).collect();
    let device = match args.device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(n) => format!("cuda:{n}"),
    };
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--config", config_json, "--device", &device])
        .args(["--dtype", &args.dtype.to_string()])
        .args(["--batch-sizes", &batches.join(",")])
        .args(["--image-size", &args.image_size.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string()]);
    if args.peer_compile {
        cmd.arg("--compile");
    }
    cmd
}

fn cannot_run(python: &Path, e: std::io::Error) -> CliError {
    CliError(format!(
        "cannot run the peer with {}: {e}",
        python.display()
    ))
}

/// Runs all of the peer's passes, every batch size, and returns its JSON line for each.
pub fn run_all(python: &Path, config_json: &str, args: &BenchArgs) -> Result<Vec<Value>> {
    let script = Script::write()?;
    let out = command(python, &script.path(), config_json, args)
        .output()
        .map_err(|e| cannot_run(python, e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no message");
        return Err(CliError(format!("the PyTorch peer failed: {last}")));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).map_err(|e| CliError(format!("the peer printed {l:?}: {e}")))
        })
        .collect()
}

/// The peer kept running for `--alternate`: asked for its warm-up at each batch size, then for
/// one timed pass after each of ours.
pub struct Alternating {
    child: Child,
    /// `None` once closed (end of input ends the peer).
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its versions, device and settings, as its first line gave them.
    pub about: Value,
    script: Script,
}

impl Alternating {
    /// Starts the peer and waits for its model (its first line).
    pub fn start(python: &Path, config_json: &str, args: &BenchArgs) -> Result<Alternating> {
        let script = Script::write()?;
        let log = File::create(script.log())
            .map_err(|e| CliError(format!("cannot create {}: {e}", script.log().display())))?;
        let mut child = command(python, &script.path(), config_json, args)
            .arg("--alternate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| cannot_run(python, e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CliError(
                "the peer's input and output were not piped".into(),
            ));
        };
        let mut peer = Alternating {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            about: Value::Null,
            script,
        };
        peer.about = peer.reply()?;
        Ok(peer)
    }

    /// Makes the input of `batch` images and runs the warm-up passes on it.
    pub fn batch(&mut self, batch: usize) -> Result<()> {
        self.ask(&format!("batch {batch}"))?;
        Ok(())
    }

    /// Runs an untimed pass of the last batch size, then times one: its time in seconds.
    pub fn pass(&mut self) -> Result<f64> {
        let reply = self.ask("pass")?;
        reply["s"]
            .as_f64()
            .ok_or_else(|| CliError(format!("the peer answered a pass with {reply}")))
    }

    fn ask(&mut self, request: &str) -> Result<Value> {
        let sent = match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{request}").and_then(|()| stdin.flush()),
            None => return Err(CliError("the peer was closed".into())),
        };
        if sent.is_err() {
            return Err(self.ended());
        }
        self.reply()
    }

    /// The peer's next line, which must be a JSON object without an `error`.
    fn reply(&mut self) -> Result<Value> {
        let line = match self.stdout.next() {
            Some(Ok(line)) => line,
            _ => return Err(self.ended()),
        };
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| CliError(format!("the peer printed {line:?}: {e}")))?;
        match value.get("error") {
            Some(error) => Err(CliError(format!("the PyTorch peer: {error}"))),
            None => Ok(value),
        }
    }

    /// The error for a peer that stopped answering: the last line of its messages.
    fn ended(&mut self) -> CliError {
        self.stdin = None;
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.script.log()).unwrap_or_default();
        let last = log.lines().last().unwrap_or("no message");
        CliError(format!("the PyTorch peer failed: {last}"))
    }
}

impl Drop for Alternating {
    fn drop(&mut self) {
        // End of input ends the peer; wait for it so that its script can go.
        self.stdin = None;
        let _ = self.child.wait();
    }
}
