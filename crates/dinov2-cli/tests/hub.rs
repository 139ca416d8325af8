//! Models by hub id, downloaded: `dinov2` against a small local server that answers as the
//! Hugging Face Hub does for file downloads (`HF_ENDPOINT`), serving the shipped tiny checkpoint.
//! Checks the download into an empty cache, the use of the cached copy afterwards (the server
//! gone), and the message for a model the hub does not have.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/dinov2-tiny-random")
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` of repo `repo` at `/{repo}/resolve/main/{name}`, honouring `Range`; records
/// each requested path. Runs until the process ends.
fn serve(repo: &'static str, files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer(stream, repo, &files, &log);
        }
    });
    (endpoint, seen)
}

fn answer(
    mut stream: TcpStream,
    repo: &str,
    files: &HashMap<String, Vec<u8>>,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    let mut range_end = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
            range_start = a.parse::<usize>().ok();
            range_end = b.parse::<usize>().ok();
        }
    }
    log.lock().unwrap().push(path.clone());
    let prefix = format!("/{repo}/resolve/main/");
    let body = path.strip_prefix(&prefix).and_then(|name| files.get(name));
    let response = match body {
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        Some(data) => {
            let start = range_start.unwrap_or(0).min(data.len());
            let end = range_end.map_or(data.len(), |e| (e + 1).min(data.len()));
            let part = &data[start..end];
            // A content hash as the ETag, as the hub gives (it names the cached blob).
            let etag = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\n\
                 ETag: \"{etag:016x}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                part.len(),
                start,
                end.saturating_sub(1),
                data.len()
            )
            .into_bytes();
            head.extend_from_slice(part);
            head
        }
    };
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    // Drain what the client may still send, then close.
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(50)));
    let _ = reader.read(&mut [0u8; 64]);
}

fn tiny_files() -> HashMap<String, Vec<u8>> {
    [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(tiny_model().join(f)).unwrap()))
    .collect()
}

fn dinov2(args: &[&str], cache: &Path, endpoint: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn a_hub_id_is_downloaded_into_the_cache_then_used_from_it() {
    let cache = TempDir::new().unwrap();
    let (endpoint, seen) = serve("example-org/dinov2-tiny", tiny_files());
    let r = dinov2(
        &["info", "--model", "example-org/dinov2-tiny"],
        cache.path(),
        &endpoint,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("hidden 48"), "{stdout}");
    let requested = seen.lock().unwrap().clone();
    assert!(
        requested.iter().any(|p| p.ends_with("/model.safetensors")),
        "{requested:?}"
    );
    // The snapshot is where the hub's layout puts it, byte for byte.
    let snapshot = cache
        .path()
        .join("models--example-org--dinov2-tiny/snapshots")
        .join(COMMIT);
    for (name, data) in tiny_files() {
        assert_eq!(std::fs::read(snapshot.join(&name)).unwrap(), data, "{name}");
    }
    // Again, with nothing listening at the endpoint: the cached copy is used.
    let r = dinov2(
        &["info", "--model", "example-org/dinov2-tiny"],
        cache.path(),
        "http://127.0.0.1:9",
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn a_model_the_hub_lacks_is_one_clear_error() {
    let cache = TempDir::new().unwrap();
    let (endpoint, _) = serve("example-org/dinov2-tiny", tiny_files());
    let r = dinov2(
        &["info", "--model", "example-org/no-such-model"],
        cache.path(),
        &endpoint,
    );
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("example-org/no-such-model") && stderr.contains("downloading it failed"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_sharded_checkpoint_is_downloaded_shard_by_shard() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/dinov2_sharded");
    let files: HashMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name == "config.json" || name.starts_with("model")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    assert_eq!(files.len(), 6, "config, index and four shards");
    let cache = TempDir::new().unwrap();
    let (endpoint, seen) = serve("example-org/dinov2-sharded", files.clone());
    let r = dinov2(
        &["info", "--model", "example-org/dinov2-sharded"],
        cache.path(),
        &endpoint,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let snapshot = cache
        .path()
        .join("models--example-org--dinov2-sharded/snapshots")
        .join(COMMIT);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(snapshot.join(name)).unwrap(), data, "{name}");
    }
    // model.safetensors was asked for first and is absent: 404, then the index and shards.
    let requested = seen.lock().unwrap().clone();
    assert!(
        requested.iter().any(|p| p.ends_with("/model.safetensors")),
        "{requested:?}"
    );
}

#[test]
fn a_repository_with_only_pytorch_weights_is_read_from_its_pickle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/dinov2_pytorch_bin");
    let files: HashMap<String, Vec<u8>> = ["config.json", "pytorch_model.bin"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let cache = TempDir::new().unwrap();
    let (endpoint, seen) = serve("example-org/dinov2-bin", files);
    let r = dinov2(
        &["info", "--model", "example-org/dinov2-bin"],
        cache.path(),
        &endpoint,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        stdout.contains("bfloat16") && stdout.contains("classifier weights present"),
        "{stdout}"
    );
    let requested = seen.lock().unwrap().clone();
    assert!(
        requested.iter().any(|p| p.ends_with("/pytorch_model.bin")),
        "{requested:?}"
    );
}
