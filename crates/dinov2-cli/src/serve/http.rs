//! A small HTTP/1.1 server for the serve verb, on the standard library, with the limits a
//! service exposed to clients needs: a fixed number of connection threads, connections beyond
//! what they can take answered 503 at once, read and write timeouts (a slow client holds a
//! thread for seconds, not forever), bounded request heads, and bodies refused (413) from their
//! declared length before any of them is read. Keep-alive, `Expect: 100-continue` (curl sends it
//! for large bodies) and `Content-Length` bodies are supported; chunked uploads are not (411).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bytes a request line and its headers may take.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// How long a read or a write may stall, and an idle keep-alive connection wait.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, read whole.
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }
}

/// What the server refuses before the handler sees a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes a body may hold.
    pub max_body: usize,
}

/// What the server does with requests: answers them, and hears of those it refused itself
/// (their status) before they reached the handler.
pub trait Handler: Sync {
    fn answer(&self, request: &Request) -> Response;
    fn refused(&self, status: u16);
}

/// Answers the requests of `listener` with `handler` on `threads` connection threads, until the
/// listener fails. A handler that panics answers 500 and the thread goes on.
pub fn serve<H: Handler>(
    listener: TcpListener,
    threads: usize,
    limits: Limits,
    handler: H,
) -> std::io::Result<()> {
    // Connections accepted but not yet taken: a few per thread; past that, 503 at once.
    let (tx, rx) = sync_channel::<TcpStream>(threads * 4);
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|scope| {
        for i in 0..threads {
            let (rx, handler) = (rx.clone(), &handler);
            std::thread::Builder::new()
                .name(format!("dinov2-http-{i}"))
                .spawn_scoped(scope, move || connection_thread(&rx, limits, handler))?;
        }
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                // A connection that failed while being accepted (reset, out of descriptors).
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(mut stream)) => {
                    handler.refused(503);
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let busy = Response::json(
                        503,
                        super::api::ApiError::new(503, "the server is busy: retry later").body(),
                    );
                    let _ = write_response(&mut stream, &busy, false);
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        drop(tx);
        Ok(())
    })
}

fn connection_thread<H: Handler>(rx: &Mutex<Receiver<TcpStream>>, limits: Limits, handler: &H) {
    loop {
        let next = rx.lock().ok().and_then(|rx| rx.recv().ok());
        let Some(stream) = next else {
            return;
        };
        let _ = connection(stream, limits, handler);
    }
}

/// Serves the requests of one connection, one after another, while it is kept alive.
fn connection<H: Handler>(stream: TcpStream, limits: Limits, handler: &H) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, &mut writer, limits) {
            Ok(Some(request)) => request,
            // The client closed the connection, or let it idle past the timeout.
            Ok(None) => return Ok(()),
            Err(refusal) => {
                // The body was not read: the connection cannot carry another request.
                handler.refused(refusal.status);
                let _ = write_response(&mut writer, &refusal, false);
                linger(reader.into_inner());
                return Ok(());
            }
        };
        let keep_alive = match request.header("connection") {
            Some(v) if v.eq_ignore_ascii_case("close") => false,
            // HTTP/1.1 keeps connections alive by default (HTTP/1.0 requests were given
            // `Connection: close` when read).
            _ => true,
        };
        let response = std::panic::catch_unwind(AssertUnwindSafe(|| handler.answer(&request)))
            .unwrap_or_else(|_| {
                Response::json(
                    500,
                    super::api::ApiError::new(500, "the request made the server fail").body(),
                )
            });
        write_response(&mut writer, &response, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Closes a connection whose client may still be sending a body the server refused: stops
/// writing, then reads and drops what comes for a moment (at most [`LINGER_BYTES`]), so that
/// the client reads the answer instead of a reset (which closing with unread data sends).
fn linger(stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64 << 10];
    let mut left = LINGER_BYTES;
    let mut reader = &stream;
    while left > 0 {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The most bytes of a refused body read and dropped before the connection is closed.
const LINGER_BYTES: usize = 64 << 20;

/// A refusal before the handler: its status and message.
fn refuse(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, super::api::ApiError::new(status, message).body())
}

/// Reads one request: `Ok(None)` when the connection ends before one starts; `Err` with the
/// answer when it is malformed or too large.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    limits: Limits,
) -> Result<Option<Request>, Response> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - head.len().min(MAX_HEAD_BYTES)) as u64 + 1)
            .read_until(b'\n', &mut line);
        match n {
            Ok(0) if head.is_empty() => return Ok(None),
            Err(_) if head.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(refuse(400, "the request ended inside its head")),
            Ok(_) => {}
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD_BYTES {
            return Err(refuse(431, "the request line and headers are too large"));
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // Blank lines before a request are allowed.
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split_ascii_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "a malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(refuse(505, format!("{version} is not supported")));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, format!("a malformed header line: {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(refuse(
            411,
            "chunked bodies are not taken: send a Content-Length",
        ));
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| refuse(400, format!("Content-Length {v:?} is not a number")))?,
    };
    if length > limits.max_body as u64 {
        return Err(refuse(
            413,
            format!(
                "the body is larger than {} bytes (--max-request-bytes)",
                limits.max_body
            ),
        ));
    }
    if length > 0 {
        if request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| refuse(400, "the connection failed"))?;
        }
        let mut body = vec![0; length as usize];
        reader
            .read_exact(&mut body)
            .map_err(|_| refuse(400, "the body ended before its Content-Length"))?;
        request.body = body;
    }
    // HTTP/1.0 closes by default: keep the version where the keep-alive rule can see it.
    if version == "HTTP/1.0" && request.header("connection").is_none() {
        request.headers.push(("connection".into(), "close".into()));
    }
    Ok(Some(request))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response, keep_alive: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&r.body)?;
    stream.flush()
}
