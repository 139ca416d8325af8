//! `--allow-urls`: images given as `http://` or `https://` URLs, fetched by the server.
//!
//! Off by default: a server that fetches what a client names can be pointed at addresses only it
//! reaches (its own network, a cloud's metadata service), so it is for servers whose clients are
//! trusted. Each fetch has a time limit and a size limit, and follows at most 5 redirects.

use std::io::Read;
use std::time::Duration;

/// Fetches images by URL.
pub struct Fetcher {
    agent: ureq::Agent,
    max_bytes: usize,
}

/// URLs fetched at once for one request.
const PARALLEL: usize = 8;

impl Fetcher {
    /// A fetcher giving up on a URL after `timeout` or past `max_bytes`.
    pub fn new(timeout: Duration, max_bytes: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(5)
            .user_agent(concat!("dinov2-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher { agent, max_bytes }
    }

    /// The body of `url`, or why it could not be had.
    pub fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                format!("the server answered {code} {}", r.status_text())
            }
            ureq::Error::Transport(t) => t.to_string(),
        })?;
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
