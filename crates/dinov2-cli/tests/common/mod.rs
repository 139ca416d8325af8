//! What the CLI's test files share: where the repository and its sample model are, and a small
//! HTTP server of files.

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped sample checkpoint, as a command-line argument.
pub fn model() -> String {
    root()
        .join("assets/models/dinov2-tiny-random")
        .display()
        .to_string()
}

/// A one-thread HTTP server of the files in `dir`: `/NAME` answers the file (`.html` as
/// `text/html`), `/redirect/NAME` a 302 to `/NAME`, `/flaky/NAME` a 503 the first time and the
/// file after; anything else 404. Returns its base URL.
#[allow(dead_code)] // Not every test file serves files.
pub fn file_host(dir: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut failed_once = std::collections::HashSet::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/");
            let name = path.split('?').next().unwrap_or("").trim_start_matches('/');
            let empty = |status: &str, extra: &str| {
                format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .into_bytes()
            };
            let response = if let Some(target) = name.strip_prefix("redirect/") {
                empty("302 Found", &format!("Location: /{target}\r\n"))
            } else if name
                .strip_prefix("flaky/")
                .is_some_and(|f| failed_once.insert(f.to_string()))
            {
                empty("503 Service Unavailable", "")
            } else {
                let name = name.strip_prefix("flaky/").unwrap_or(name);
                match std::fs::read(dir.join(name)) {
                    Ok(body) if !name.is_empty() => {
                        let kind = if name.ends_with(".html") {
                            "Content-Type: text/html\r\n"
                        } else {
                            ""
                        };
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\n{kind}Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    _ => empty("404 Not Found", ""),
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    base
}
