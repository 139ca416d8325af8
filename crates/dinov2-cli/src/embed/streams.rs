//! Tar streams read as the job runs, front to back: `pipe:COMMAND` (the command's standard output,
//! as webdataset's `pipe:` URLs: `pipe:aws s3 cp s3://bucket/00042.tar -`), `-` (standard input)
//! and compressed archives (`.tar.gz`, `.tgz`, `.tar.zst`), whose members cannot be read in
//! place. Nothing is staged on disk: a reader thread parses the tar and hands each image member
//! over through a bounded channel, so memory holds a window of members, whatever the stream's
//! size. A command is killed, with what it started, when the job stops before its end.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::inputs::{is_image, Input};
use crate::fetch::is_url;

/// Where a command's own messages go: its stream's name and each line it wrote to stderr.
pub type Log = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What reading a stream shares with the job.
#[derive(Clone)]
pub struct Context {
    /// Set when the job stops: members stop coming.
    pub cancel: Arc<AtomicBool>,
    /// Where a command's stderr lines go (the job's progress display).
    pub log: Log,
}

/// Where a stream's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The standard output of a shell command.
    Command(String),
    /// Standard input.
    Stdin,
    /// A file read front to back (a compressed archive).
    File(PathBuf),
    /// A tar archive at an `http(s)://` URL, read as it downloads.
    Url(String),
}

/// A tar stream among the job's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub origin: Origin,
}

impl Stream {
    /// The stream an input argument names, if it names one: `pipe:COMMAND`, `-`, or the URL
    /// of a tar archive (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`, before any `?query`).
    pub fn parse(input: &str) -> Option<Stream> {
        let origin = match input {
            "-" => Origin::Stdin,
            url if is_url(url) => {
                let url = url.trim();
                let path = url.split(['?', '#']).next().unwrap_or_default();
                let tar = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"];
                let lower = path.to_ascii_lowercase();
                if !tar.iter().any(|t| lower.ends_with(t)) {
                    return None;
                }
                Origin::Url(url.to_owned())
            }
            _ => Origin::Command(input.strip_prefix("pipe:")?.to_owned()),
        };
        Some(Stream { origin })
    }

    /// How outputs and reports name it, and (followed by `/MEMBER`) its members: the argument as
    /// given (`pipe:COMMAND`, `-`, a URL) or the archive's path.
    pub fn name(&self) -> String {
        match &self.origin {
            Origin::Command(command) => format!("pipe:{command}"),
            Origin::Stdin => "-".into(),
            Origin::File(path) => path.to_string_lossy().into_owned(),
            Origin::Url(url) => url.clone(),
        }
    }

    /// Starts reading the stream on a thread of its own; its image members arrive in stream
    /// order, at most `buffer` of them waiting. What cannot be read (a command that cannot start
    /// or fails, a garbled or cut stream, a member too large) arrives as an [`Input::Broken`] in
    /// its place, and the members before it are kept. The members end early once the job's
    /// cancel flag is set; dropping them before the stream's end stops the reading and kills the
    /// command. A command's stderr lines go to the context's log.
    pub fn members(self, buffer: usize, context: Context) -> Members {
        let (tx, rx) = sync_channel(buffer.max(1));
        let name = self.name();
        let child = Arc::new(Mutex::new(None));
        let spawned = std::thread::Builder::new()
            .name("dinov2-stream".into())
            .spawn({
                let (tx, child, log) = (tx.clone(), child.clone(), context.log);
                move || self.read(&tx, &child, log)
            });
        if let Err(e) = spawned {
            let _ = tx.send(Input::Broken {
                name,
                error: format!("cannot start a thread to read it: {e}"),
            });
        }
        Members {
            rx,
            cancel: context.cancel,
            child,
        }
    }

    /// Reads the stream into `tx` (the reader thread's work); a command's process waits in
    /// `child` while it is read, for [`Members`] to kill.
    fn read(self, tx: &SyncSender<Input>, child: &Running, log: Log) {
        let name = self.name();
        let ended = match &self.origin {
            Origin::Stdin => read_tar(std::io::stdin().lock(), &name, tx),
            Origin::File(path) => match std::fs::File::open(path) {
                Ok(file) => read_tar(file, &name, tx),
                Err(e) => Ended::failed(format!("cannot open the archive: {e}")),
            },
            Origin::Command(command) => read_command(command, &name, tx, child, log),
            Origin::Url(url) => match crate::fetch::for_jobs().open(url) {
                Ok(body) => read_tar(body, &name, tx),
                Err(e) => Ended::failed(format!("cannot fetch the archive: {e}")),
            },
        };
        if let Ended::Read {
            error: Some(error), ..
        } = ended
        {
            let _ = tx.send(Input::Broken { name, error });
        }
    }
}

/// A command being read, until its reader takes it back to wait for it (or [`Members`] kills
/// it).
type Running = Arc<Mutex<Option<Child>>>;

/// A stream's members as they are read ([`Stream::members`]).
pub struct Members {
    rx: Receiver<Input>,
    cancel: Arc<AtomicBool>,
    child: Running,
}

impl Iterator for Members {
    type Item = Input;

    fn next(&mut self) -> Option<Input> {
        // A stream may stall (a download): the job's cancellation is checked while waiting.
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(input) => return Some(input),
                Err(RecvTimeoutError::Timeout) if !self.cancel.load(Ordering::Relaxed) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Members {
    /// Kills a command still being read: the job no longer needs its output.
    fn drop(&mut self) {
        let taken = self.child.lock().ok().and_then(|mut child| child.take());
        if let Some(mut child) = taken {
            kill(&mut child);
        }
    }
}

/// Kills a command, and on Unix the processes it started (its process group: a shell's
/// `sleep`, the parts of a pipeline), and waits for it.
fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(group) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative id signals that process group, which the command
        // leads (`shell` made it so), and touches no memory.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `sh -c COMMAND` (`cmd /C` on Windows), its output and its errors piped to us. On Unix it
/// leads a process group of its own, so that [`kill`] stops what it started too; on Linux it is
/// killed when the job's process dies, whatever kills it (Ctrl-C, SIGTERM, SIGKILL).
fn shell(command: &str) -> Command {
    let mut c = if cfg!(windows) {
        let mut c = Command::new("cmd");
        c.arg("/C");
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c");
        c
    };
    c.arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: the hook runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe. The signal comes when the thread that started the command
        // ends, and that thread (the stream's reader) waits for the command first.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    c
}

/// Runs `command` and reads its output as a tar stream. Where the stream was read to its end,
/// a failure of the command is the stream's error (it explains a stream cut short or empty);
/// where the stream was unreadable before its end, the command is stopped and the stream's error
/// stands.
fn read_command(
    command: &str,
    name: &str,
    tx: &SyncSender<Input>,
    running: &Running,
    log: Log,
) -> Ended {
    let mut child = match shell(command).spawn() {
        Ok(child) => child,
        Err(e) => return Ended::failed(format!("cannot run the command: {e}")),
    };
    // Its messages go to the job's display line by line, named by the stream, on a thread of
    // their own (until the command closes its stderr); the last is kept for a failure's report.
    let said = Arc::new(Mutex::new(None::<String>));
    let logger = child.stderr.take().and_then(|stderr| {
        let (name, said) = (name.to_owned(), said.clone());
        std::thread::Builder::new()
            .name("dinov2-stream-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
                    let line = printable(String::from_utf8_lossy(&line).trim_end());
                    log(&name, &line);
                    if !line.is_empty() {
                        if let Ok(mut said) = said.lock() {
                            *said = Some(line);
                        }
                    }
                }
            })
            .ok()
    });
    let Some(stdout) = child.stdout.take() else {
        kill(&mut child);
        return Ended::failed("the command has no standard output".into());
    };
    match running.lock() {
        Ok(mut slot) => *slot = Some(child),
        Err(_) => return Ended::Hangup,
    }
    let ended = read_tar(stdout, name, tx);
    // Taken back, unless the job has killed it.
    let Some(mut child) = running.lock().ok().and_then(|mut slot| slot.take()) else {
        return Ended::Hangup;
    };
    let (images, error, at_end) = match ended {
        Ended::Hangup => {
            // The job stopped reading: the command is not needed any more.
            kill(&mut child);
            return Ended::Hangup;
        }
        Ended::Read {
            images,
            error,
            at_end,
        } => (images, error, at_end),
    };
    if !at_end {
        stop(&mut child);
    }
    let failure = match child.wait() {
        // Stopped, or cut off by the closed pipe: the stream's error says what went wrong.
        Ok(_) if !at_end => None,
        Ok(status) if status.success() => None,
        Ok(status) => {
            // Its last words, once its stderr closes (a second at most: what it started in
            // the background may hold it open).
            let start = std::time::Instant::now();
            while logger.as_ref().is_some_and(|l| !l.is_finished())
                && start.elapsed() < Duration::from_secs(1)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let said = said.lock().ok().and_then(|said| said.clone());
            Some(format!(
                "the command failed ({status}) after {images} images{}",
                said.map_or(String::new(), |said| format!(": {said}"))
            ))
        }
        Err(e) => Some(format!("cannot wait for the command: {e}")),
    };
    Ended::Read {
        images,
        error: failure.or(error),
        at_end,
    }
}

/// Gives a command whose output is no longer read a second to end (as it does when its output
/// closes), then kills it; either way, what it started is stopped too.
fn stop(child: &mut Child) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(child);
}

/// How [`read_tar`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// After this many image members; with what left the stream (or its rest) unreadable, not
    /// yet sent, and whether the stream was read to its end.
    Read {
        images: usize,
        error: Option<String>,
        at_end: bool,
    },
    /// The receiver is gone: the job stopped.
    Hangup,
}

impl Ended {
    /// A stream that could not be read at all.
    fn failed(error: String) -> Self {
        Ended::Read {
            images: 0,
            error: Some(error),
            at_end: false,
        }
    }
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Parses the tar stream `reader` (plain, gzip or zstd), sending each image member as an
/// [`Input::Bytes`] named `NAME/MEMBER` (a member cut short as an [`Input::Broken`]), to the
/// stream's end (through archives one after another). What leaves the stream, or its rest,
/// unreadable is returned, not sent.
fn read_tar(mut reader: impl Read, name: &str, tx: &SyncSender<Input>) -> Ended {
    let done = |images: usize, error: String, at_end: bool| Ended::Read {
        images,
        error: Some(error),
        at_end,
    };
    // The first bytes say how it is compressed; a pipe may give them a few at a time.
    let mut magic = Vec::with_capacity(6);
    if let Err(e) = (&mut reader).take(6).read_to_end(&mut magic) {
        return Ended::failed(format!("cannot read it: {e}"));
    }
    let reader =
        BufReader::with_capacity(1 << 16, std::io::Cursor::new(magic.clone()).chain(reader));
    let compression = compression(&magic);
    // What is wrong with the stream as a whole, saying how it was compressed.
    let broken = |error: String| match compression {
        Some(kind) => format!("{kind}-compressed, {error}"),
        None => error,
    };
    let plain: Box<dyn Read> = match compression {
        Some("gzip") => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Some("zstd") => match zstd::stream::read::Decoder::with_buffer(reader) {
            Ok(decoder) => Box::new(decoder),
            Err(e) => return Ended::failed(broken(format!("cannot be decoded: {e}"))),
        },
        Some(kind) => {
            let error = format!(
                "{kind}-compressed, which is not read here (gzip, zstd and plain tar are): \
                 decompress it in a pipe: input, e.g. `pipe:{kind} -dc FILE`"
            );
            return Ended::failed(error);
        }
        None if magic.is_empty() => return done(0, "empty: no tar archive in it".into(), true),
        None => Box::new(reader),
    };
    let mut archive = tar::Archive::new(Counted {
        inner: plain,
        bytes: 0,
    });
    // Past end-of-archive blocks: archives one after another (`pipe:cat a.tar b.tar`) are read
    // through, as `tar --ignore-zeros` does.
    archive.set_ignore_zeros(true);
    let mut images = 0;
    // The end of the last member (its data padded to whole blocks), and its name.
    let mut last: Option<(u64, String)> = None;
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => return Ended::failed(broken(format!("not a readable tar archive: {e}"))),
    };
    for entry in entries {
        let after = || {
            last.as_ref().map_or("at its start".to_string(), |(_, m)| {
                format!("after member {m}")
            })
        };
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let error = format!(
                    "unreadable {} ({images} images before it were taken): {}",
                    after(),
                    printable(&e.to_string())
                );
                let at_end = e.kind() == std::io::ErrorKind::UnexpectedEof;
                return done(images, broken(error), at_end);
            }
        };
        let size = entry.size();
        let end = entry.raw_file_position() + size.div_ceil(512) * 512;
        let Ok(member) = entry.path().map(|m| m.to_string_lossy().into_owned()) else {
            continue;
        };
        last = Some((end, member.clone()));
        let kind = entry.header().entry_type();
        if !(kind == tar::EntryType::Regular || kind == tar::EntryType::Continuous)
            || !is_image(Path::new(&member))
        {
            continue;
        }
        let member_name = format!("{name}/{member}");
        let limit = dinov2::image::MAX_FILE_BYTES;
        let input = if size > limit {
            Input::Broken {
                name: member_name,
                error: format!("{size} bytes, more than the limit of {limit} for an image file"),
            }
        } else {
            // Grown as the data comes, not sized by a header that may lie.
            let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
            // The tar reader ends a member's data quietly where the stream ends.
            let read = match entry.read_to_end(&mut bytes) {
                Ok(n) if n as u64 == size => Ok(()),
                Ok(n) => Err(format!("{n} of its {size} bytes")),
                Err(e) => Err(e.to_string()),
            };
            match read {
                Ok(()) => Input::Bytes {
                    name: member_name,
                    bytes,
                },
                Err(e) => {
                    let error = format!("the stream ends inside this member: {e}");
                    let cut = Input::Broken {
                        name: member_name,
                        error,
                    };
                    if tx.send(cut).is_err() {
                        return Ended::Hangup;
                    }
                    let error = format!("cut short inside member {member}");
                    return done(images, broken(error), true);
                }
            }
        };
        if tx.send(input).is_err() {
            return Ended::Hangup;
        }
        images += 1;
    }
    // A tar ends with zero blocks: a stream that ends right after its last member's data was cut
    // there, and may have held more.
    let counted = archive.into_inner();
    if let Some((end, member)) = last {
        if counted.bytes <= end {
            let error = format!(
                "the stream ends after member {member} without the end-of-archive blocks: it \
                 was probably cut short"
            );
            return done(images, broken(error), true);
        }
    }
    Ended::Read {
        images,
        error: None,
        at_end: true,
    }
}

/// The compression a stream's first bytes (up to 6) show: `gzip`, `zstd`, `bzip2` or `xz`.
pub(super) fn compression(magic: &[u8]) -> Option<&'static str> {
    match magic {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [b'B', b'Z', b'h', ..] => Some("bzip2"),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Some("xz"),
        _ => None,
    }
}

/// `text` with its control characters replaced and cut to 200 characters: what a garbled stream
/// puts in an error message stays readable in a terminal and in a JSON line.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(200).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A temporary folder holding `a.tar`, of one member `a.jpg`; and that archive's path.
    #[cfg(unix)]
    fn one_member_tar() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, tar_of(&[("a.jpg", b"one")])).unwrap();
        (dir, path)
    }

    /// A context with `cancel` whose log is dropped.
    fn context(cancel: Arc<AtomicBool>) -> Context {
        Context {
            cancel,
            log: Arc::new(|_: &str, _: &str| {}),
        }
    }

    /// A command's stderr lines reach the log, named by the stream.
    #[cfg(unix)]
    #[test]
    fn a_command_s_messages_go_to_the_log() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log: Log = {
            let lines = lines.clone();
            Arc::new(move |name: &str, line: &str| {
                lines.lock().unwrap().push(format!("{name}: {line}"))
            })
        };
        let context = Context {
            cancel: Arc::new(AtomicBool::new(false)),
            log,
        };
        let got: Vec<Input> = Stream::parse("pipe:echo 'no such key' >&2; exit 1")
            .unwrap()
            .members(4, context)
            .collect();
        // The failure quotes its last words.
        assert!(
            matches!(&got[..], [Input::Broken { error, .. }]
                if error.ends_with("after 0 images: no such key")),
            "{got:?}"
        );
        // The log thread ends with the command's stderr.
        let start = std::time::Instant::now();
        while lines.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            *lines.lock().unwrap(),
            ["pipe:echo 'no such key' >&2; exit 1: no such key"]
        );
    }

    /// One input a stream gives: its name, and its bytes or error.
    type Given = (String, Result<Vec<u8>, String>);

    /// What the stream `s` of `bytes` gives, `(name, Ok(bytes) | Err(error))`, and its image
    /// members.
    fn read_all(bytes: &[u8]) -> (Vec<Given>, usize) {
        read_from(bytes)
    }

    /// [`read_all`] of what `reader` gives.
    fn read_from(reader: impl Read) -> (Vec<Given>, usize) {
        let (tx, rx) = sync_channel(64);
        let Ended::Read { images, error, .. } = read_tar(reader, "s", &tx) else {
            panic!("the receiver is there")
        };
        if let Some(error) = error {
            tx.send(Input::Broken {
                name: "s".into(),
                error,
            })
            .unwrap();
        }
        drop(tx);
        let got = rx
            .into_iter()
            .map(|input| match input {
                Input::Bytes { name, bytes } => (name, Ok(bytes)),
                Input::Broken { name, error } => (name, Err(error)),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        (got, images)
    }

    #[test]
    fn parses_the_forms_of_a_stream_argument() {
        assert_eq!(Stream::parse("-").unwrap().origin, Origin::Stdin);
        let s = Stream::parse("pipe:cat a.tar").unwrap();
        assert_eq!(s.origin, Origin::Command("cat a.tar".into()));
        assert_eq!(s.name(), "pipe:cat a.tar");
        assert_eq!(Stream::parse("a.tar"), None);
        assert_eq!(Stream::parse("./-"), None);
    }

    #[test]
    fn image_members_in_order_others_skipped() {
        let tar = tar_of(&[
            ("a.jpg", b"one"),
            ("a.json", b"{}"),
            ("dir/b.PNG", b"two"),
            ("c.txt", b"x"),
        ]);
        // Two archives one after another are read through.
        let (got, images) = read_all(&[tar.clone(), tar_of(&[("d.jpg", b"3")])].concat());
        assert_eq!(images, 3);
        assert_eq!(got[2], ("s/d.jpg".into(), Ok(b"3".to_vec())));
        let (got, images) = read_all(&tar);
        assert_eq!(
            got,
            vec![
                ("s/a.jpg".into(), Ok(b"one".to_vec())),
                ("s/dir/b.PNG".into(), Ok(b"two".to_vec())),
            ]
        );
        assert_eq!(images, 2);
    }

    #[test]
    fn gzip_and_zstd_streams_are_decompressed() {
        use std::io::Write;
        let tar = tar_of(&[("a.jpg", b"one"), ("b.webp", b"two")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 1).unwrap();
        for compressed in [gz, zst] {
            let (got, images) = read_all(&compressed);
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[1], ("s/b.webp".into(), Ok(b"two".to_vec())));
            assert_eq!(images, 2);
        }
    }

    #[test]
    fn cut_and_garbled_streams_keep_what_came_before() {
        let tar = tar_of(&[("a.jpg", &[7u8; 600]), ("b.jpg", &[8u8; 600])]);
        // Inside the second member's data: the member and the stream are reported.
        let (got, _) = read_all(&tar[..512 * 5]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].1.is_ok());
        assert_eq!(got[1].0, "s/b.jpg");
        assert!(got[1].1.as_ref().unwrap_err().contains("ends inside"));
        assert_eq!(got[2].0, "s");
        assert!(got[2]
            .1
            .as_ref()
            .unwrap_err()
            .contains("cut short inside member b.jpg"));
        // Right after the second member's data, on a block boundary.
        let (got, _) = read_all(&tar[..512 * 6]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2].0, "s");
        assert!(got[2].1.as_ref().unwrap_err().contains("cut short"));
        // Not a tar at all, empty, and compressed in a way not read here.
        for (bytes, says) in [
            (&[b'x'; 1024][..], "unreadable at its start"),
            (&[][..], "empty"),
            (&b"BZh91AY&SY"[..], "bzip2"),
        ] {
            let (got, images) = read_all(bytes);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].1.as_ref().unwrap_err().contains(says), "{got:?}");
            assert_eq!(images, 0);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_command_is_read_and_its_failure_reported() {
        let (_dir, path) = one_member_tar();
        let run = |command: String| -> Vec<Input> {
            Stream::parse(&format!("pipe:{command}"))
                .unwrap()
                .members(4, context(Arc::new(AtomicBool::new(false))))
                .collect()
        };
        let got = run(format!("cat '{}'", path.display()));
        assert!(
            matches!(&got[..], [Input::Bytes { name, .. }] if name.ends_with("/a.jpg")),
            "{got:?}"
        );
        // The members are kept; the failure follows them.
        let got = run(format!("cat '{}'; exit 3", path.display()));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[1], Input::Broken { error, .. } if error.contains("failed")
                && error.contains("after 1 images")),
            "{got:?}"
        );
        // A command that fails with no output: its failure, not the empty stream.
        let got = run("exit 5".into());
        assert!(
            matches!(&got[..], [Input::Broken { error, .. }] if error.contains("status: 5")),
            "{got:?}"
        );
        // A command that writes what is not a tar, and goes on writing (even past a closed
        // pipe): stopped, and the stream's error stands.
        for command in ["yes not-a-tar", "trap '' PIPE; yes not-a-tar"] {
            let got = run(command.into());
            assert!(
                matches!(&got[..], [Input::Broken { error, .. }] if error.contains("unreadable")),
                "{command}: {got:?}"
            );
        }
    }

    /// Members dropped before their stream's end kill its command; a stalled stream gives no
    /// more once the job is cancelled.
    #[cfg(unix)]
    #[test]
    fn a_stopping_job_stops_its_commands() {
        let (dir, path) = one_member_tar();
        let mark = dir.path().join("mark");
        let command = format!(
            "pipe:cat '{}'; sleep 1; touch '{}'",
            path.display(),
            mark.display()
        );
        let cancel = Arc::new(AtomicBool::new(false));
        let mut members = Stream::parse(&command)
            .unwrap()
            .members(4, context(cancel.clone()));
        assert!(matches!(members.next(), Some(Input::Bytes { .. })));
        drop(members);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!mark.exists(), "the command was killed");

        let mut members = Stream::parse("pipe:sleep 20")
            .unwrap()
            .members(4, context(cancel.clone()));
        let t = std::time::Instant::now();
        cancel.store(true, Ordering::Relaxed);
        assert!(members.next().is_none());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// A reader that gives one byte at a time, as a slow pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(b) => *b = first,
                None => return Ok(0),
            }
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn compression_is_found_from_a_trickle_and_garbage_stays_printable() {
        use std::io::Write;
        let tar = tar_of(&[("a.jpg", b"one")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let (got, images) = read_from(Trickle(&gz.finish().unwrap()));
        assert_eq!(images, 1, "{got:?}");
        let garbage: Vec<u8> = (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect();
        let (got, _) = read_all(&garbage);
        let error = got[0].1.as_ref().unwrap_err();
        assert!(!error.contains(char::is_control), "{error:?}");
        assert!(error.len() < 400, "{error}");
    }
}
