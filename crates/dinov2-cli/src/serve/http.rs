//! A small HTTP/1.1 server for the serve verb, on the standard library, with the limits a
//! service exposed to clients needs:
//!
//! - a fixed number of connection threads; connections beyond what they and a short queue can
//!   take are answered 503 at once;
//! - deadlines, not only per-read timeouts: a connection may idle 10 s between requests, a
//!   request's head must arrive within 15 s of its first byte, its body at 64 KiB/s at least, an
//!   answer must be taken within 10 s plus 64 KiB/s; so a slow client holds a thread for
//!   seconds, not forever;
//! - bounded heads (16 KiB), bodies refused (413) from their declared length before any of them
//!   is read, strict framing (one `Content-Length` of digits; no `Transfer-Encoding`, no folded
//!   headers), so that a proxy in front cannot read a request differently.
//!
//! Keep-alive (by `Connection` tokens, HTTP/1.0 and 1.1) and `Expect: 100-continue` (curl sends
//! it for large bodies) are supported; chunked uploads are not (411).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bytes a request line and its headers may take.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// How long a kept-alive connection may wait for its next request.
const IDLE: Duration = Duration::from_secs(10);

/// How long a request's head may take from its first byte; the base of the body's and the
/// answer's deadlines.
const HEAD_TIME: Duration = Duration::from_secs(15);

/// The slowest a body may arrive, or an answer be taken, in bytes per second.
const MIN_RATE: u64 = 64 << 10;

/// The most bytes of a refused body read and dropped before the connection is closed, and for
/// how long at most.
const LINGER_BYTES: usize = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// One request, read whole.
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query, after `?` (empty without one).
    pub query: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client keeps the connection for another request.
    keep_alive: bool,
}

impl Request {
    /// The value of query parameter `name` (`?name=value&...`; the first when repeated), `%XX`
    /// escapes decoded in names and values (a `+` stays a `+`: `?pooling=cls+mean`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

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

/// Answers the requests of `listener` with `handler` on `threads` connection threads until
/// `stop` is set: then it stops accepting, lets each connection finish the request it is
/// reading or answering (and closes it after), and returns once they are done. A handler that
/// panics answers 500 and the thread goes on.
pub fn serve<H: Handler>(
    listener: TcpListener,
    threads: usize,
    limits: Limits,
    handler: H,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    // Connections accepted but not yet taken: a few per thread; past that, 503 at once.
    let (tx, rx) = sync_channel::<TcpStream>(threads * 4);
    let rx = Arc::new(Mutex::new(rx));
    // Polled, so that a stop is seen within a few milliseconds without a connection arriving.
    listener.set_nonblocking(true)?;
    std::thread::scope(|scope| {
        for i in 0..threads {
            let (rx, handler) = (rx.clone(), &handler);
            std::thread::Builder::new()
                .name(format!("dinov2-http-{i}"))
                .spawn_scoped(scope, move || connection_thread(&rx, limits, handler, stop))?;
        }
        while !stop.load(Ordering::SeqCst) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                // A connection that failed while being accepted (reset, out of descriptors).
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) => {
                    handler.refused(503);
                    busy(stream);
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        drop(tx);
        Ok(())
    })
}

/// Answers 503 on the accepting thread, without waiting on the client: the answer fits the
/// socket's send buffer; what the client already sent is read off so that closing does not
/// reset the connection before it reads the answer.
fn busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let body = super::api::ApiError::new(503, "the server is busy: retry later").body();
    let _ = write_response(
        &mut stream,
        &Response::json(503, body),
        false,
        false,
        Instant::now() + Duration::from_millis(100),
    );
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 16 << 10];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}

fn connection_thread<H: Handler>(
    rx: &Mutex<Receiver<TcpStream>>,
    limits: Limits,
    handler: &H,
    stop: &AtomicBool,
) {
    loop {
        let next = rx.lock().ok().and_then(|rx| rx.recv().ok());
        let Some(stream) = next else {
            return;
        };
        // Whatever goes wrong with one connection, the thread serves the next.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            connection(stream, limits, handler, stop)
        }));
    }
}

/// Serves the requests of one connection, one after another, while it is kept alive.
fn connection<H: Handler>(
    stream: TcpStream,
    limits: Limits,
    handler: &H,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, &mut writer, limits, stop) {
            Ok(Some(request)) => request,
            // The client closed the connection, or let it idle past the timeout.
            Ok(None) => return Ok(()),
            Err(refusal) => {
                // The body was not read: the connection cannot carry another request.
                handler.refused(refusal.status);
                let deadline = answer_deadline(refusal.body.len());
                let _ = write_response(&mut writer, &refusal, false, false, deadline);
                linger(reader.into_inner());
                return Ok(());
            }
        };
        let response = std::panic::catch_unwind(AssertUnwindSafe(|| handler.answer(&request)))
            .unwrap_or_else(|_| refuse(500, "the request made the server fail"));
        // A HEAD answer has no body: the connection closes after its head, so that no client
        // waits for the body its Content-Length announces.
        let head_only = request.method == "HEAD";
        // Stopping: this answer is the connection's last.
        let keep_alive = request.keep_alive && !head_only && !stop.load(Ordering::SeqCst);
        let deadline = answer_deadline(response.body.len());
        write_response(&mut writer, &response, keep_alive, head_only, deadline)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// When an answer of `bytes` must have been taken by the client.
fn answer_deadline(bytes: usize) -> Instant {
    Instant::now() + IDLE + Duration::from_secs(bytes as u64 / MIN_RATE)
}

/// Closes a connection whose client may still be sending a body the server refused: stops
/// writing, then reads and drops what comes for a moment (at most [`LINGER_BYTES`] within
/// [`LINGER_TIME`]), so that the client reads the answer instead of a reset (which closing
/// with unread data sends).
fn linger(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 64 << 10];
    let mut left = LINGER_BYTES;
    let mut reader = &stream;
    while left > 0 && set_deadline(&stream, deadline).is_ok() {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Sets the socket's read and write timeouts to what is left before `deadline`; an error once
/// it has passed.
fn set_deadline(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// A refusal before the handler: its status and message.
fn refuse(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, super::api::ApiError::new(status, message).body())
}

/// Whether `name` is an HTTP token (a header name).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads one request: `Ok(None)` when the connection ends (or idles out) before one starts;
/// `Err` with the answer when it is malformed, too slow or too large.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    limits: Limits,
    stop: &AtomicBool,
) -> Result<Option<Request>, Response> {
    let mut head_bytes = 0;
    let mut lines: Vec<String> = Vec::new();
    // Idle until the first byte of the request; from then on, the head's deadline.
    let mut deadline = Instant::now() + IDLE;
    let mut started = false;
    loop {
        if set_deadline(reader.get_ref(), deadline).is_err() {
            return if started {
                Err(refuse(408, "the request head came too slowly"))
            } else {
                Ok(None)
            };
        }
        if !started {
            // Wait for the first byte under the idle timeout, in slices, so that a stop closes
            // an idle connection at once; then start the head's clock.
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            if slice.is_zero() || reader.get_ref().set_read_timeout(Some(slice)).is_err() {
                return Ok(None);
            }
            match reader.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(_) => {
                    started = true;
                    deadline = Instant::now() + HEAD_TIME;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Ok(None),
            }
            continue;
        }
        let mut line = Vec::new();
        let limit = (MAX_HEAD_BYTES - head_bytes) as u64 + 1;
        match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) if lines.is_empty() => return Ok(None),
            Ok(0) => return Err(refuse(400, "the request ended inside its head")),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(refuse(408, "the request head came too slowly"))
            }
            Err(_) => return Err(refuse(400, "the request ended inside its head")),
            Ok(n) => head_bytes += n,
        }
        if head_bytes > MAX_HEAD_BYTES {
            return Err(refuse(431, "the request line and headers are too large"));
        }
        if !line.ends_with(b"\n") {
            // A partial line: the read stopped at the deadline or the head limit.
            continue;
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
    let parts: Vec<&str> = lines[0].split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(refuse(400, "a malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(refuse(505, format!("{version:?} is not supported"))),
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(refuse(400, "a malformed request line"));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        if line.starts_with([' ', '\t']) {
            return Err(refuse(400, "folded header lines are not taken"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, format!("a malformed header line: {line:?}")));
        };
        if !is_token(name) {
            return Err(refuse(400, format!("a malformed header name: {name:?}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let all = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    if !all("transfer-encoding").is_empty() {
        return Err(refuse(
            411,
            "chunked bodies are not taken: send a Content-Length",
        ));
    }
    let lengths = all("content-length");
    let length = match lengths[..] {
        [] => 0,
        [first, ..] => {
            if lengths.iter().any(|&v| v != first)
                || first.is_empty()
                || !first.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(refuse(
                    400,
                    format!("Content-Length {first:?}: not one number"),
                ));
            }
            // Digits only: too large to parse is too large to take.
            first.parse::<u64>().unwrap_or(u64::MAX)
        }
    };
    let tokens = |name: &str| -> Vec<String> {
        all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    let connection = tokens("connection");
    let keep_alive = if http10 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    };
    let expects_continue = !http10 && tokens("expect").iter().any(|t| t == "100-continue");
    if length > limits.max_body as u64 {
        return Err(refuse(
            413,
            format!(
                "the body is larger than {} bytes (--max-request-bytes)",
                limits.max_body
            ),
        ));
    }
    let mut body = Vec::new();
    if length > 0 {
        if expects_continue {
            let _ = set_deadline(writer, Instant::now() + IDLE);
            writer
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| refuse(400, "the connection failed"))?;
        }
        let deadline = Instant::now() + HEAD_TIME + Duration::from_secs(length / MIN_RATE);
        let mut chunk = [0u8; 64 << 10];
        while (body.len() as u64) < length {
            let want = ((length - body.len() as u64) as usize).min(chunk.len());
            set_deadline(reader.get_ref(), deadline)
                .map_err(|_| refuse(408, "the body came too slowly"))?;
            match reader.read(&mut chunk[..want]) {
                Ok(0) => return Err(refuse(400, "the body ended before its Content-Length")),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(refuse(408, "the body came too slowly")),
            }
        }
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        query: target.split_once('?').map_or("", |q| q.1).to_string(),
        headers,
        body,
        keep_alive,
    }))
}

/// `%XX` escapes decoded; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        406 => "Not Acceptable",
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

/// Writes `r` (its head only when `head_only`), within `deadline`.
fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
    head_only: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let body: &[u8] = if head_only { &[] } else { &r.body };
    for part in std::iter::once(head.as_bytes()).chain(body.chunks(64 << 10)) {
        set_deadline(stream, deadline)?;
        stream.write_all(part)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_unescaped() {
        let request = Request {
            method: "POST".into(),
            path: "/embed".into(),
            query: "a=1&pooling=cls%2Bmean&b&bad=%zz%4".into(),
            headers: Vec::new(),
            body: Vec::new(),
            keep_alive: false,
        };
        assert_eq!(request.query_param("pooling").as_deref(), Some("cls+mean"));
        assert_eq!(request.query_param("a").as_deref(), Some("1"));
        assert_eq!(request.query_param("b").as_deref(), Some(""));
        assert_eq!(request.query_param("bad").as_deref(), Some("%zz%4"));

        assert_eq!(request.query_param("c"), None);
        let signed = Request {
            query: "p%6fol=%+1".into(),
            ..request
        };
        assert_eq!(signed.query_param("pool").as_deref(), Some("%+1"));
    }
}
