//! Images and tar streams given as `http://` or `https://` URLs: `embed`'s URL inputs, and
//! `serve --allow-urls`.
//!
//! Each fetch has a time limit (per read, so that a long stream is not cut while it moves) and a
//! size limit, and follows at most 5 redirects. A server that fetches what a client names can be
//! pointed at addresses only it reaches (its own network, a cloud's metadata service), so `serve`
//! fetches only when told to.

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether `input` is a URL this module fetches.
pub fn is_url(input: &str) -> bool {
    let head = input
        .trim_start()
        .get(..8)
        .unwrap_or_default()
        .to_ascii_lowercase();
    head.starts_with("http://") || head.starts_with("https://")
}

/// Fetches images by URL.
pub struct Fetcher {
    agent: ureq::Agent,
    max_bytes: usize,
    /// Further tries after a failure that may pass (no answer, 429, 5xx), 1 s and 2 s apart.
    retries: u32,
}

/// The fetcher of `embed`'s URL inputs: 60 s per read, images up to
/// [`dinov2::image::MAX_FILE_BYTES`], two retries.
pub fn for_jobs() -> &'static Fetcher {
    static FETCHER: OnceLock<Fetcher> = OnceLock::new();
    FETCHER.get_or_init(|| {
        let mut f = Fetcher::new(
            Duration::from_secs(60),
            dinov2::image::MAX_FILE_BYTES as usize,
        );
        f.retries = 2;
        f
    })
}

/// URLs fetched at once for one request.
const PARALLEL: usize = 8;

impl Fetcher {
    /// A fetcher giving up on a URL after `timeout` without progress, or past `max_bytes`.
    pub fn new(timeout: Duration, max_bytes: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .redirects(5)
            .user_agent(concat!("dinov2-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent,
            max_bytes,
            retries: 0,
        }
    }

    /// The answer to a GET of `url`, tried again after failures that may pass.
    fn call(&self, url: &str) -> Result<ureq::Response, String> {
        let mut attempt = 0;
        loop {
            let (error, transient) = match self.agent.get(url.trim()).call() {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(code, r)) => (
                    format!("the server answered {code} {}", r.status_text()),
                    code == 429 || code >= 500,
                ),
                Err(ureq::Error::Transport(t)) => (t.to_string(), true),
            };
            if !transient || attempt >= self.retries {
                return Err(error);
            }
            attempt += 1;
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
    }

    /// The body of `url` as it arrives, without the size limit: a tar stream.
    pub fn open(&self, url: &str) -> Result<Box<dyn Read + Send>, String> {
        Ok(Box::new(self.call(url)?.into_reader()))
    }

    /// The body of `url`, or why it could not be had.
    pub fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self.call(url)?;
        let too_large = || format!("larger than {} bytes (--max-request-bytes)", self.max_bytes);
        if let Some(len) = response
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok())
        {
            if len > self.max_bytes as u64 {
                return Err(too_large());
            }
        }
        let mut body = Vec::new();
        response
            .into_reader()
            .take(self.max_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if body.len() > self.max_bytes {
            return Err(too_large());
        }
        Ok(body)
    }

    /// [`Fetcher::get`] of each URL, [`PARALLEL`] at a time, in order.
    pub fn get_all(&self, urls: &[&str]) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::with_capacity(urls.len());
        for chunk in urls.chunks(PARALLEL) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk.iter().map(|u| s.spawn(|| self.get(u))).collect();
                for h in handles {
                    out.push(h.join().unwrap_or_else(|_| Err("the fetch failed".into())));
                }
            });
        }
        out
    }
}
