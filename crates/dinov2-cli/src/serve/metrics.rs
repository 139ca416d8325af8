//! The server's counters, in Prometheus' text format at `/metrics`: requests by endpoint and
//! status, images embedded, passes and their sizes, time spent decoding and in the model, the
//! queue, and the model threads alive.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counters shared by the HTTP and model threads.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by (endpoint, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Seconds spent answering requests, in microseconds.
    request_us: AtomicU64,
    /// Images decoded and preprocessed, and the time that took (µs, summed over threads).
    decoded: AtomicU64,
    decode_us: AtomicU64,
    /// Model passes, the images they ran, and their time (µs).
    passes: AtomicU64,
    pass_images: AtomicU64,
    pass_us: AtomicU64,
    /// Model threads running.
    pub workers: AtomicUsize,
    /// Whether the warm-up pass succeeded.
    pub ready: std::sync::atomic::AtomicBool,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

impl Metrics {
    /// One request answered.
    pub fn record_request(&self, endpoint: &str, status: u16, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
        self.request_us.fetch_add(micros(took), Ordering::Relaxed);
    }

    /// `n` images decoded and preprocessed in `took`.
    pub fn record_decode(&self, n: usize, took: Duration) {
        self.decoded.fetch_add(n as u64, Ordering::Relaxed);
        self.decode_us.fetch_add(micros(took), Ordering::Relaxed);
    }

    /// One model pass over `images` images in `took`.
    pub fn record_pass(&self, images: usize, took: Duration) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.pass_images.fetch_add(images as u64, Ordering::Relaxed);
        self.pass_us.fetch_add(micros(took), Ordering::Relaxed);
    }

    /// Whether the server can embed: warmed up, with a model thread running.
    pub fn healthy(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.workers.load(Ordering::SeqCst) > 0
    }

    /// The text exposition, with `in_flight` images admitted and not yet answered.
    pub fn render(&self, in_flight: usize) -> String {
        let mut out = String::new();
        let secs = |us: &AtomicU64| us.load(Ordering::Relaxed) as f64 / 1e6;
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let requests = family("dinov2_requests_total", "counter", "Requests answered.");
        let mut lines = String::new();
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    lines,
                    "{requests}{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(&lines);
        let rows = [
            (
                "dinov2_request_seconds_total",
                "counter",
                "Time spent answering requests.",
                secs(&self.request_us),
            ),
            (
                "dinov2_images_decoded_total",
                "counter",
                "Images decoded and preprocessed.",
                self.decoded.load(Ordering::Relaxed) as f64,
            ),
            (
                "dinov2_decode_seconds_total",
                "counter",
                "Time spent decoding and preprocessing, summed over threads.",
                secs(&self.decode_us),
            ),
            (
                "dinov2_passes_total",
                "counter",
                "Model passes.",
                self.passes.load(Ordering::Relaxed) as f64,
            ),
            (
                "dinov2_pass_images_total",
                "counter",
                "Images run by the model passes (over dinov2_passes_total: the mean batch).",
                self.pass_images.load(Ordering::Relaxed) as f64,
            ),
            (
                "dinov2_pass_seconds_total",
                "counter",
                "Time spent in model passes.",
                secs(&self.pass_us),
            ),
            (
                "dinov2_images_in_flight",
                "gauge",
                "Images admitted and not yet answered (decoding, waiting or running).",
                in_flight as f64,
            ),
            (
                "dinov2_model_threads",
                "gauge",
                "Model threads running.",
                self.workers.load(Ordering::SeqCst) as f64,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters() {
        let m = Metrics::default();
        m.record_request("/v1/embeddings", 200, Duration::from_millis(5));
        m.record_request("/v1/embeddings", 200, Duration::from_millis(5));
        m.record_request("/embed", 422, Duration::from_millis(1));
        m.record_pass(3, Duration::from_millis(20));
        let text = m.render(4);
        assert!(
            text.contains("dinov2_requests_total{endpoint=\"/v1/embeddings\",status=\"200\"} 2")
        );
        assert!(text.contains("dinov2_requests_total{endpoint=\"/embed\",status=\"422\"} 1"));
        assert!(text.contains("dinov2_pass_images_total 3"));
        assert!(text.contains("dinov2_images_in_flight 4"));
        assert!(text.contains("dinov2_request_seconds_total 0.011"));
        assert!(!m.healthy(), "not warmed up, no model thread");
    }
}
