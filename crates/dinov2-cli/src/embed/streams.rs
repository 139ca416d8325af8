//! Tar streams read as the job runs, front to back: `pipe:COMMAND` (the command's standard output,
//! as webdataset's `pipe:` URLs: `pipe:aws s3 cp s3://bucket/00042.tar -`), `-` (standard input)
//! and compressed archives (`.tar.gz`, `.tgz`, `.tar.zst`), whose members cannot be read in
//! place. Nothing is staged on disk: a reader thread parses the tar and hands each image member
//! over through a bounded channel, so memory holds a few members, whatever the stream's size.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::inputs::{is_image, Input};

/// Where a stream's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The standard output of a shell command.
    Command(String),
    /// Standard input.
    Stdin,
    /// A file read front to back (a compressed archive).
    File(PathBuf),
}

/// A tar stream among the job's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub origin: Origin,
}

impl Stream {
    /// The stream an input argument names, if it names one: `pipe:COMMAND` or `-`.
    pub fn parse(input: &str) -> Option<Stream> {
        let origin = match input {
            "-" => Origin::Stdin,
            _ => Origin::Command(input.strip_prefix("pipe:")?.to_owned()),
        };
        Some(Stream { origin })
    }

    /// How outputs and reports name it, and (followed by `/MEMBER`) its members: the argument as
    /// given (`pipe:COMMAND`, `-`) or the archive's path.
    pub fn name(&self) -> String {
        match &self.origin {
            Origin::Command(command) => format!("pipe:{command}"),
            Origin::Stdin => "-".into(),
            Origin::File(path) => path.to_string_lossy().into_owned(),
        }
    }

    /// Starts reading the stream on a thread of its own; its image members arrive in stream
    /// order, at most `buffer` of them waiting. What cannot be read (a command that cannot start
    /// or fails, a garbled or cut stream, a member too large) arrives as an [`Input::Broken`] in
    /// its place, and the members before it are kept. Dropping the receiver stops the reading
    /// (and kills the command).
    pub fn members(self, buffer: usize) -> Receiver<Input> {
        let (tx, rx) = sync_channel(buffer.max(1));
        let name = self.name();
        let spawned = std::thread::Builder::new()
            .name("dinov2-stream".into())
            .spawn({
                let tx = tx.clone();
                move || self.read(&tx)
            });
        if let Err(e) = spawned {
            let _ = tx.send(Input::Broken {
                name,
                error: format!("cannot start a thread to read it: {e}"),
            });
        }
        rx
    }

    /// Reads the stream into `tx` (the reader thread's work).
    fn read(self, tx: &SyncSender<Input>) {
        let name = self.name();
        let ended = match &self.origin {
            Origin::Stdin => read_tar(std::io::stdin().lock(), &name, tx),
            Origin::File(path) => match std::fs::File::open(path) {
                Ok(file) => read_tar(file, &name, tx),
                Err(e) => Ended::failed(format!("cannot open the archive: {e}")),
            },
            Origin::Command(command) => read_command(command, &name, tx),
        };
        if let Ended::Read {
            error: Some(error), ..
        } = ended
        {
            let _ = tx.send(Input::Broken { name, error });
        }
    }
}

/// `sh -c COMMAND` (`cmd /C` on Windows), its output piped to us, its errors to ours.
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
        .stderr(Stdio::inherit());
    c
}

/// Runs `command` and reads its output as a tar stream. When the command fails, its failure is
/// the stream's error (it explains a stream cut short or empty); when the stream is unreadable
/// while the command still writes, the command is stopped and the stream's error stands.
fn read_command(command: &str, name: &str, tx: &SyncSender<Input>) -> Ended {
    let mut child = match shell(command).spawn() {
        Ok(child) => child,
        Err(e) => return Ended::failed(format!("cannot run the command: {e}")),
    };
    let Some(stdout) = child.stdout.take() else {
        return Ended::failed("the command has no standard output".into());
    };
    let (images, error) = match read_tar(stdout, name, tx) {
        Ended::Hangup => {
            // The job stopped reading: the command is not needed any more.
            let _ = child.kill();
            let _ = child.wait();
            return Ended::Hangup;
        }
        Ended::Read { images, error } => (images, error),
    };
    let stopped = error.is_some() && stop(&mut child);
    let failure = match child.wait() {
        Ok(_) if stopped => None,
        Ok(status) if status.success() || (error.is_some() && broken_pipe(status)) => None,
        Ok(status) => Some(format!(
            "the command failed ({status}) after {images} images; its own message, if any, is \
             above"
        )),
        Err(e) => Some(format!("cannot wait for the command: {e}")),
    };
    Ended::Read {
        images,
        error: failure.or(error),
    }
}

/// Gives a command whose output is no longer read a second to end (as it does at the end of its
/// output), then kills it; whether it was killed.
fn stop(child: &mut Child) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(1) {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().is_ok()
}

/// Whether a command ended because its output was no longer read (SIGPIPE, or a shell's 141).
fn broken_pipe(status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGPIPE) {
            return true;
        }
    }
    status.code() == Some(128 + 13)
}

/// How [`read_tar`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// At the stream's end, after this many image members; with what left the stream (or its
    /// rest) unreadable, not yet sent.
    Read {
        images: usize,
        error: Option<String>,
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
fn read_tar(reader: impl Read, name: &str, tx: &SyncSender<Input>) -> Ended {
    let done = |images: usize, error: String| Ended::Read {
        images,
        error: Some(error),
    };
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let magic = match reader.fill_buf() {
        Ok(bytes) => bytes.get(..6).unwrap_or(bytes).to_vec(),
        Err(e) => return Ended::failed(format!("cannot read it: {e}")),
    };
    let compression = match &magic[..] {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        _ => None,
    };
    // What is wrong with the stream as a whole, saying how it was compressed.
    let broken = |error: String| match compression {
        Some(kind) => format!("{kind}-compressed, {error}"),
        None => error,
    };
    let plain: Box<dyn Read> = match (compression, &magic[..]) {
        (Some("gzip"), _) => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        (Some(_), _) => match zstd::stream::read::Decoder::with_buffer(reader) {
            Ok(decoder) => Box::new(decoder),
            Err(e) => return Ended::failed(broken(format!("cannot be decoded: {e}"))),
        },
        (None, [b'B', b'Z', b'h', ..] | [0xfd, b'7', b'z', b'X', b'Z', 0]) => {
            let kind = if magic[0] == b'B' { "bzip2" } else { "xz" };
            let error = format!(
                "{kind}-compressed, which is not read here (gzip, zstd and plain tar are): \
                 decompress it in a pipe: input, e.g. `pipe:{kind} -dc FILE`"
            );
            return Ended::failed(error);
        }
        (None, []) => return Ended::failed("empty: no tar archive in it".into()),
        (None, _) => Box::new(reader),
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
                    "unreadable {} ({images} images before it were taken): {e}",
                    after()
                );
                return done(images, broken(error));
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
                    return done(images, broken(error));
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
            return done(images, broken(error));
        }
    }
    Ended::Read {
        images,
        error: None,
    }
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

    /// One input a stream gives: its name, and its bytes or error.
    type Given = (String, Result<Vec<u8>, String>);

    /// What the stream `s` of `bytes` gives, `(name, Ok(bytes) | Err(error))`, and its image
    /// members.
    fn read_all(bytes: &[u8]) -> (Vec<Given>, usize) {
        let (tx, rx) = sync_channel(64);
        let Ended::Read { images, error } = read_tar(bytes, "s", &tx) else {
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

    #[test]
    fn a_command_is_read_and_its_failure_reported() {
        if cfg!(windows) {
            return;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, tar_of(&[("a.jpg", b"one")])).unwrap();
        let run = |command: String| -> Vec<Input> {
            Stream::parse(&format!("pipe:{command}"))
                .unwrap()
                .members(4)
                .into_iter()
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
        // A command that writes what is not a tar, and goes on writing: stopped, and the
        // stream's error stands.
        let got = run("yes not-a-tar".into());
        assert!(
            matches!(&got[..], [Input::Broken { error, .. }] if error.contains("unreadable")),
            "{got:?}"
        );
    }
}
