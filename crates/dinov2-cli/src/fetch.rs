//! Images and tar streams given as `http://` or `https://` URLs: `embed`'s URL inputs, and
//! `serve --allow-urls`.
//!
//! An image has a time limit in all and a size limit; a tar stream has a time limit per read only,
//! so that a long one is not cut while it moves. Redirects are followed (a few, to http(s)
//! only). A server that fetches what a client names can be pointed at addresses only it reaches
//! (its own network, a cloud's metadata service), so `serve` fetches only when told to.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Whether `input` is a URL this module fetches: `http://` or `https://`, in any case.
pub fn is_url(input: &str) -> bool {
    let s = input.trim_start().as_bytes();
    let starts = |prefix: &[u8]| {
        s.get(..prefix.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
    };
    starts(b"http://") || starts(b"https://")
}

/// Fetches images by URL.
pub struct Fetcher {
    agent: ureq::Agent,
    /// The most bytes one image may have.
    max_bytes: usize,
    /// The most time one image may take to fetch, in all.
    deadline: Duration,
    /// Further tries after a failure that may pass (no connection, a broken transfer, 429, a
    /// 5xx), 1 s and 2 s later.
    retries: u32,
}

/// The fetcher of `embed`'s URL inputs: 10 s to connect, 60 s without progress, 120 s in all for
/// an image of at most [`JOB_MAX_BYTES`], two retries. Tar streams have no total limit.
pub fn for_jobs() -> &'static Fetcher {
    static FETCHER: OnceLock<Fetcher> = OnceLock::new();
    FETCHER.get_or_init(|| Fetcher {
        retries: 2,
        ..Fetcher::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(120),
            JOB_MAX_BYTES,
        )
    })
}

/// The largest image `embed` fetches: a URL list from the web should not have each decoding
/// thread hold gigabytes.
pub const JOB_MAX_BYTES: usize = 64 << 20;

/// An image's bytes, or why they could not be had.
pub type Fetched = Result<Vec<u8>, String>;

/// URLs fetched at once for one request.
const PARALLEL: usize = 8;

impl Fetcher {
    /// A fetcher that gives up on connecting after `connect`, on a read after `read`, on an
    /// image after `deadline` in all or past `max_bytes`, and does not retry.
    pub fn new(connect: Duration, read: Duration, deadline: Duration, max_bytes: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout_read(read)
            .timeout_write(read)
            .redirects(5)
            .user_agent(concat!("dinov2-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent,
            max_bytes,
            deadline,
            retries: 0,
        }
    }

    /// The answer to a GET of `url` (within `deadline` when given), tried again after failures
    /// that may pass; an answer other than 2xx is an error.
    fn call(&self, url: &str, deadline: Option<Duration>) -> Result<ureq::Response, String> {
        let mut attempt = 0;
        loop {
            let mut request = self.agent.get(url.trim());
            if let Some(d) = deadline {
                request = request.timeout(d);
            }
            let (error, transient) = match request.call() {
                Ok(r) if (200..300).contains(&r.status()) => return Ok(r),
                Ok(r) => (
                    format!("the server answered {} {}", r.status(), r.status_text()),
                    false,
                ),
                Err(ureq::Error::Status(code, r)) => (
                    format!("the server answered {code} {}", r.status_text()),
                    code == 429 || code >= 500,
                ),
                Err(ureq::Error::Transport(t)) => {
                    let transient = matches!(
                        t.kind(),
                        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
                    );
                    (t.to_string(), transient)
                }
            };
            if !transient || attempt >= self.retries {
                return Err(error);
            }
            attempt += 1;
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
    }

    /// The body of `url` as it arrives, without the size or total time limit: a tar stream.
    pub fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, String> {
        Ok(Box::new(self.call(url, None)?.into_reader()))
    }

    /// The body of `url`, an image of at most `max_bytes` (and of this fetcher's limit).
    pub fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        self.get_within(url, self.max_bytes)
    }

    fn get_within(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
        let max_bytes = max_bytes.min(self.max_bytes);
        let response = self.call(url, Some(self.deadline))?;
        // An error page served as 200 is no image (a missing type is taken as it comes).
        let kind = response
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if kind.starts_with("text/") {
            return Err(format!("the server answered {kind}, not an image"));
        }
        let too_large = || format!("larger than the limit of {max_bytes} bytes");
        let declared = response
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_bytes as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        response
            .into_reader()
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if body.len() > max_bytes {
            return Err(too_large());
        }
        Ok(body)
    }

    /// [`Fetcher::get`] of each URL, in order, [`PARALLEL`] at a time, the images together at
    /// most the fetcher's byte limit (`serve`'s limit on a request, so that the images a request
    /// names cannot take more memory than its body could).
    pub fn get_all(&self, urls: &[&str]) -> Vec<Fetched> {
        let budget = self.max_bytes;
        let next = AtomicUsize::new(0);
        let left = AtomicUsize::new(budget);
        let slots: Vec<Mutex<Option<Fetched>>> = urls.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(urls.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(url) = urls.get(i) else { break };
                    let over = || format!("the request's images pass its limit of {budget} bytes");
                    let room = left.load(Ordering::Relaxed);
                    let result = match self.get_within(url, room) {
                        // Larger than what is left, not than one image may be.
                        Err(e) if room < budget && e.starts_with("larger than") => Err(over()),
                        other => other,
                    };
                    let result = result.and_then(|b| {
                        left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                            l.checked_sub(b.len())
                        })
                        .map(|_| b)
                        .map_err(|_| over())
                    });
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(result);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Err("the fetch failed".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_by_their_scheme() {
        for url in [
            "http://a",
            "https://b/c.jpg",
            "  HTTPS://x",
            "http://é.example/ü.jpg",
        ] {
            assert!(is_url(url), "{url}");
        }
        for other in [
            "http:/",
            "ftp://a",
            "file:///x",
            "é",
            "",
            "pipe:curl http://a",
            "./http://a",
        ] {
            assert!(!is_url(other), "{other}");
        }
    }
}
