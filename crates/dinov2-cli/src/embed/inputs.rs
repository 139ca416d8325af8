//! The embed verb's inputs: files, directories walked recursively for image files (sorted by
//! path), `@list.txt` files naming one path per line, tar archives (webdataset shards), whose
//! image members are read in place, Parquet tables of images, read row group by row group, and
//! tar streams (`pipe:COMMAND`, `-`, compressed archives), read as the job runs.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::streams::{compression, Origin, Stream};
use super::tables::{Cache, Table};
use crate::error::{CliError, Result};

/// File extensions taken from directories and archives (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff",
];

/// One image to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An image file.
    File(PathBuf),
    /// `size` bytes at `offset` in the tar `archive`: its member `member`.
    Member {
        archive: Arc<PathBuf>,
        member: String,
        offset: u64,
        size: u64,
    },
    /// Row `row` of row group `group` in a Parquet table: the table's row `index`.
    Row {
        table: Arc<Table>,
        group: usize,
        row: usize,
        index: usize,
    },
    /// An image member of a tar stream, read: `NAME/MEMBER`.
    Bytes { name: String, bytes: Vec<u8> },
    /// An image at an `http(s)://` URL, fetched when it is read.
    Url(String),
    /// An archive, table or stream, or its rest, that cannot be read: reported as a failed input
    /// named `name`.
    Broken { name: String, error: String },
}

/// One of the job's inputs as the command line expands it: an image known up front, or a tar
/// stream, whose images are known only as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Image(Input),
    Stream(Stream),
}

impl Source {
    /// The image's name, or the stream's.
    pub fn name(&self) -> String {
        match self {
            Source::Image(input) => input.name(),
            Source::Stream(stream) => stream.name(),
        }
    }

    /// The images in `sources`, when none is a stream.
    pub fn count(sources: &[Source]) -> Option<usize> {
        let streams = sources.iter().any(|s| matches!(s, Source::Stream(_)));
        (!streams).then_some(sources.len())
    }
}

impl Input {
    /// How outputs and reports name it: the file's path, `ARCHIVE/MEMBER`, or `TABLE#ROW` (rows
    /// counted from 0).
    pub fn name(&self) -> String {
        match self {
            Input::File(path) => path.to_string_lossy().into_owned(),
            Input::Member {
                archive, member, ..
            } => format!("{}/{member}", archive.display()),
            Input::Row { table, index, .. } => table.name(*index),
            Input::Bytes { name, .. } | Input::Broken { name, .. } | Input::Url(name) => {
                name.clone()
            }
        }
    }

    /// Its encoded bytes; what cannot be read, or is larger than
    /// [`dinov2::image::MAX_FILE_BYTES`], is an error (before anything is allocated for it).
    pub fn read(&self) -> std::result::Result<Cow<'_, [u8]>, String> {
        match self {
            Input::File(path) => {
                dinov2::image::read_file(path)
                    .map(Cow::Owned)
                    .map_err(|e| match e {
                        dinov2::image::ImageError::Io { source, .. } => source.to_string(),
                        other => other.to_string(),
                    })
            }
            Input::Member {
                archive,
                offset,
                size,
                ..
            } => {
                let limit = dinov2::image::MAX_FILE_BYTES;
                if *size > limit {
                    return Err(format!(
                        "{size} bytes, more than the limit of {limit} for an image file"
                    ));
                }
                let mut file = File::open(archive.as_path()).map_err(|e| e.to_string())?;
                let archive_len = file.metadata().map_err(|e| e.to_string())?.len();
                if offset.saturating_add(*size) > archive_len {
                    return Err("the archive ends inside this member".into());
                }
                file.seek(SeekFrom::Start(*offset))
                    .map_err(|e| e.to_string())?;
                let mut bytes = vec![0; *size as usize];
                file.read_exact(&mut bytes).map_err(|e| e.to_string())?;
                Ok(Cow::Owned(bytes))
            }
            Input::Row {
                table, group, row, ..
            } => table
                .read(*group, *row, dinov2::image::MAX_FILE_BYTES)
                .map(Cow::Owned),
            Input::Bytes { bytes, .. } => Ok(Cow::Borrowed(bytes)),
            Input::Url(url) => crate::fetch::for_jobs().get(url).map(Cow::Owned),
            Input::Broken { error, .. } => Err(error.clone()),
        }
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_archive(path: &Path) -> bool {
    has_extension(path, &["tar"])
}

/// A compressed tar archive (`.tar.gz`, `.tgz`, `.tar.zst`, `.tar.zstd`): read as a stream.
fn is_compressed_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    [".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"]
        .iter()
        .any(|end| name.ends_with(end))
}

/// The image members of the tar archive at `path`, in archive order, read in place. What cannot
/// be read (a garbled archive, or the rest of one cut short) becomes an [`Input::Broken`], so that
/// the job reports it and embeds everything else. A compressed archive, whose members cannot be
/// read in place, is read as a stream.
fn archive_members(path: &Path, out: &mut Vec<Source>) {
    let broken = |error: String| {
        Source::Image(Input::Broken {
            name: path.to_string_lossy().into_owned(),
            error,
        })
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return out.push(broken(format!("cannot open the archive: {e}"))),
    };
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).unwrap_or(0);
    if compression(&magic[..n]).is_some() {
        // The stream names what it does not read.
        return out.push(Source::Stream(Stream {
            origin: Origin::File(path.to_path_buf()),
        }));
    }
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Err(e) = file.rewind() {
        return out.push(broken(format!("cannot read the archive: {e}")));
    }
    let archive_path = Arc::new(path.to_path_buf());
    let mut archive = tar::Archive::new(file);
    let entries = match archive.entries_with_seek() {
        Ok(entries) => entries,
        Err(e) => return out.push(broken(format!("not a readable tar archive: {e}"))),
    };
    let before = out.len();
    let (mut last, mut last_end) = (None, 0u64);
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let after = last
                    .as_ref()
                    .map_or("at its start".to_string(), |m: &String| {
                        format!("after member {m}")
                    });
                let images = out.len() - before;
                return out.push(broken(format!(
                    "unreadable {after} ({images} images before it were taken): {e}"
                )));
            }
        };
        last_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let Ok(member) = entry.path().map(|m| m.to_string_lossy().into_owned()) else {
            continue;
        };
        last = Some(member.clone());
        let kind = entry.header().entry_type();
        if !(kind == tar::EntryType::Regular || kind == tar::EntryType::Continuous)
            || !is_image(Path::new(&member))
        {
            continue;
        }
        out.push(Source::Image(Input::Member {
            archive: archive_path.clone(),
            member,
            offset: entry.raw_file_position(),
            size: entry.size(),
        }));
    }
    // A tar ends with two zero blocks: an archive that stops without room for them after its
    // last member was cut there, and may have held more.
    if let Some(member) = last {
        if last_end + 1024 > len {
            out.push(broken(format!(
                "the archive ends after member {member} without its end-of-archive blocks: it \
                 was probably cut short"
            )));
        }
    }
}

fn is_table(path: &Path) -> bool {
    has_extension(path, &["parquet"])
}

/// The rows of the Parquet table at `path`, in order; a table that cannot be read, or has no
/// image column, is one [`Input::Broken`].
fn table_rows(path: &Path, columns: &TableColumns, cache: &Arc<Cache>, out: &mut Vec<Source>) {
    let table = match Table::open(
        path,
        columns.image.as_deref(),
        columns.id.as_deref(),
        cache.clone(),
    ) {
        Ok(table) => Arc::new(table),
        Err(error) => {
            return out.push(Source::Image(Input::Broken {
                name: path.to_string_lossy().into_owned(),
                error,
            }))
        }
    };
    let mut index = 0;
    for (group, rows) in table.row_groups().enumerate() {
        for row in 0..rows {
            out.push(Source::Image(Input::Row {
                table: table.clone(),
                group,
                row,
                index,
            }));
            index += 1;
        }
    }
}

pub(super) fn is_image(path: &Path) -> bool {
    has_extension(path, IMAGE_EXTENSIONS)
}

/// The image files and archives under `dir`, recursively, sorted by path.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError(format!("cannot list {}: {e}", dir.display())))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError(format!("cannot list {}: {e}", dir.display())))?;
        let path = entry.path();
        // Follow symlinks to files and folders alike.
        if path.is_dir() {
            let mut sub = Vec::new();
            walk(&path, &mut sub)?;
            found.extend(sub);
        } else if is_image(&path) || is_archive(&path) || is_compressed_archive(&path) {
            found.push(path);
        }
    }
    found.sort();
    out.extend(found);
    Ok(())
}

/// The columns of Parquet inputs: the images (found when `None`), and the rows' names (`TABLE#ROW`
/// when `None`).
#[derive(Debug, Clone, Default)]
pub struct TableColumns {
    pub image: Option<String>,
    pub id: Option<String>,
}

/// Expands the command line's inputs into the ordered list of images to embed.
///
/// Files are taken as given (whatever their extension, so a bad file is reported, not skipped);
/// directories contribute their image files, recursively, sorted by path; `@FILE` contributes
/// the paths listed in FILE, one per line (blank lines and lines starting with `#` ignored).
/// A `.tar` archive, given or found, contributes its image members in archive order. A
/// `.parquet` table, given or listed (not found in folders, where the embeddings of an earlier
/// job may be), contributes its rows in order, each the image in `columns.image`, named by
/// `columns.id`. `pipe:COMMAND`, `-`, compressed archives and the URLs of tar archives are tar
/// streams, read as the job runs ([`Stream`]); other `http(s)://` URLs, given or listed, are
/// images fetched when they are read.
pub fn expand(inputs: &[String], columns: &TableColumns) -> Result<Vec<Source>> {
    // Paths, and streams and URLs in their place among them.
    let mut paths: Vec<std::result::Result<PathBuf, Source>> = Vec::new();
    if inputs.iter().filter(|i| *i == "-").count() > 1 {
        return Err(CliError(
            "- (standard input) is given more than once; it can be read once".into(),
        ));
    }
    let mut given = Vec::with_capacity(inputs.len());
    for input in inputs {
        // A path that exists is taken as it is, braces and all.
        if input.contains('{') && !Path::new(input).exists() {
            given.extend(braces(input)?);
        } else {
            given.push(input.clone());
        }
    }
    for input in &given {
        if let Some(source) = remote(input) {
            paths.push(Err(source));
        } else if let Some(list) = input.strip_prefix('@') {
            let text = std::fs::read_to_string(list)
                .map_err(|e| CliError(format!("cannot read list {list}: {e}")))?;
            paths.extend(
                text.lines()
                    .map(str::trim_end)
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    // A list holds paths and URLs (not `pipe:` commands or `-`).
                    .map(
                        |l| match crate::fetch::is_url(l).then(|| remote(l)).flatten() {
                            Some(source) => Err(source),
                            None => Ok(PathBuf::from(l)),
                        },
                    ),
            );
        } else {
            let path = PathBuf::from(input);
            if path.is_dir() {
                let mut found = Vec::new();
                walk(&path, &mut found)?;
                paths.extend(found.into_iter().map(Ok));
            } else {
                paths.push(Ok(path));
            }
        }
    }
    let mut out = Vec::with_capacity(paths.len());
    let cache = Arc::new(Cache::default());
    for path in paths {
        let path = match path {
            Ok(path) => path,
            Err(source) => {
                out.push(source);
                continue;
            }
        };
        if is_archive(&path) && path.is_file() {
            archive_members(&path, &mut out);
        } else if is_compressed_archive(&path) && path.is_file() {
            out.push(Source::Stream(Stream {
                origin: Origin::File(path),
            }));
        } else if is_table(&path) && path.is_file() {
            table_rows(&path, columns, &cache, &mut out);
        } else {
            out.push(Source::Image(Input::File(path)));
        }
    }
    if out.is_empty() {
        return Err(CliError(format!(
            "no images found in {}",
            inputs.join(", ")
        )));
    }
    Ok(out)
}

/// What an argument or list line names that is not a path: a tar stream (`pipe:`, `-`, a tar
/// archive's URL) or an image's URL.
fn remote(input: &str) -> Option<Source> {
    match Stream::parse(input) {
        Some(stream) => Some(Source::Stream(stream)),
        None if crate::fetch::is_url(input) => Some(Source::Image(Input::Url(input.trim().into()))),
        None => None,
    }
}

/// Inputs a brace pattern stands for, as webdataset (and the shell) expand shard names:
/// `{00000..00999}` a range of numbers (zero-padded to the width of its ends where one is),
/// `{a,b}` alternatives; several groups combine, left to right. Braces without `..` or `,`, or
/// with white space in them (a shell command's `{ ...; }`, an awk program), are kept as they are.
fn braces(input: &str) -> Result<Vec<String>> {
    const LIMIT: usize = 10_000_000;
    let mut done = vec![String::new()];
    let mut rest = input;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        let (head, group) = (&rest[..open], &rest[open + 1..close]);
        let choices: Vec<String> = if group.contains(char::is_whitespace) {
            vec![format!("{{{group}}}")]
        } else if let Some((a, b)) = group.split_once("..") {
            let bad = || {
                CliError(format!(
                    "{input}: {{{group}}}: expected a range such as {{00000..00999}}"
                ))
            };
            let (from, to) = (
                a.parse::<u64>().map_err(|_| bad())?,
                b.parse::<u64>().map_err(|_| bad())?,
            );
            let padded = |n: &str| n.len() > 1 && n.starts_with('0');
            let width = if padded(a) || padded(b) {
                a.len().max(b.len())
            } else {
                0
            };
            let count = from.abs_diff(to).saturating_add(1);
            if count.saturating_mul(done.len() as u64) > LIMIT as u64 {
                return Err(CliError(format!(
                    "{input}: expands to more than {LIMIT} inputs"
                )));
            }
            let range: Box<dyn Iterator<Item = u64>> = if from <= to {
                Box::new(from..=to)
            } else {
                Box::new((to..=from).rev())
            };
            range.map(|n| format!("{n:0width$}")).collect()
        } else if group.contains(',') {
            group.split(',').map(str::to_owned).collect()
        } else {
            vec![format!("{{{group}}}")]
        };
        if choices.len().saturating_mul(done.len()) > LIMIT {
            return Err(CliError(format!(
                "{input}: expands to more than {LIMIT} inputs"
            )));
        }
        done = done
            .iter()
            .flat_map(|d| choices.iter().map(move |c| format!("{d}{head}{c}")))
            .collect();
        rest = &rest[close + 1..];
    }
    Ok(done.into_iter().map(|d| d + rest).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_patterns_expand_as_webdataset_shard_names() {
        let expand = |s: &str| braces(s).unwrap();
        assert_eq!(
            expand("s/{000..002}.tar"),
            ["s/000.tar", "s/001.tar", "s/002.tar"]
        );
        assert_eq!(expand("{8..10}"), ["8", "9", "10"]);
        assert_eq!(expand("{3..1}"), ["3", "2", "1"]);
        assert_eq!(
            expand("pipe:cat {a,b}/{0..1}.tar"),
            [
                "pipe:cat a/0.tar",
                "pipe:cat a/1.tar",
                "pipe:cat b/0.tar",
                "pipe:cat b/1.tar"
            ]
        );
        assert_eq!(expand("x{}y{z}.tar"), ["x{}y{z}.tar"]);
        let awk = "pipe:cat a.tar | awk '{print $1, $2}'";
        assert_eq!(expand(awk), [awk]);
        assert_eq!(expand("no-braces"), ["no-braces"]);
        for bad in ["{a..3}", "{1..}", "{0..99999999}"] {
            assert!(braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn walks_lists_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        for f in ["a.JPG", "b/z.png", "b/c/y.webp", "b/notes.txt", "b/a.gif"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("list.txt"), "one.jpg\n\n# comment\ntwo.png\n").unwrap();
        let got = expand(
            &[
                d.to_string_lossy().into_owned(),
                format!("@{}", d.join("list.txt").display()),
                "file.bin".into(),
            ],
            &TableColumns::default(),
        )
        .unwrap();
        let rel: Vec<String> = got
            .iter()
            .map(|input| {
                let Source::Image(Input::File(p)) = input else {
                    panic!("no archive here: {input:?}")
                };
                p.strip_prefix(d)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            rel,
            [
                "a.JPG",
                "b/a.gif",
                "b/c/y.webp",
                "b/z.png",
                "one.jpg",
                "two.png",
                "file.bin"
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(expand(
            &[empty.path().to_string_lossy().into_owned()],
            &TableColumns::default()
        )
        .unwrap_err()
        .0
        .contains("no images"));
    }
}
