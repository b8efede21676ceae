//! Prometheus metrics in the text exposition format, with NVIDIA Triton's names where they fit
//! (`nv_inference_*`, cumulative microseconds as Triton counts them), a latency histogram, the
//! batch sizes actually sent, and the process's resident memory.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Triton's `reason` labels of `nv_inference_request_failure`.
const REASONS: [&str; 4] = ["REJECTED", "CANCELED", "BACKEND", "OTHER"];

pub(crate) struct Metrics {
    labels: String,
    success: AtomicU64,
    failure: [AtomicU64; 4],
    inference_count: AtomicU64,
    exec_count: AtomicU64,
    request_us: AtomicU64,
    queue_us: AtomicU64,
    input_us: AtomicU64,
    infer_us: AtomicU64,
    output_us: AtomicU64,
    pending: AtomicI64,
    cancelled: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    /// `batch_sizes[n]`: backend calls of n images.
    batch_sizes: Vec<AtomicU64>,
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Decrements the pending-request gauge when dropped (however the request ends).
pub(crate) struct PendingGuard<'a>(&'a Metrics);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn new(model: &str, version: &str, max_batch_images: usize) -> Self {
        Self {
            labels: format!("model=\"{model}\",version=\"{version}\""),
            success: AtomicU64::new(0),
            failure: Default::default(),
            inference_count: AtomicU64::new(0),
            exec_count: AtomicU64::new(0),
            request_us: AtomicU64::new(0),
            queue_us: AtomicU64::new(0),
            input_us: AtomicU64::new(0),
            infer_us: AtomicU64::new(0),
            output_us: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            cancelled: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            batch_sizes: (0..=max_batch_images).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn pending(&self) -> PendingGuard<'_> {
        self.pending.fetch_add(1, Relaxed);
        PendingGuard(self)
    }

    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }

    pub fn batch_executed(&self, images: usize, infer: Duration) {
        self.exec_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(images as u64, Relaxed);
        if let Some(slot) = self.batch_sizes.get(images) {
            slot.fetch_add(1, Relaxed);
        }
        self.infer_us.fetch_add(us(infer), Relaxed);
    }

    /// One inference request's end: its reason label if it failed, and how long it took.
    pub fn request_done(&self, failure: Option<&str>, total: Duration) {
        match failure {
            None => self.success.fetch_add(1, Relaxed),
            Some(reason) => {
                let i = REASONS.iter().position(|r| *r == reason).unwrap_or(REASONS.len() - 1);
                self.failure[i].fetch_add(1, Relaxed)
            }
        };
        self.request_us.fetch_add(us(total), Relaxed);
        let seconds = total.as_secs_f64();
        for (bucket, &bound) in self.latency_buckets.iter().zip(&LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(us(total), Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Parsing, decoding and preprocessing one request (Triton's compute input).
    pub fn input_time(&self, d: Duration) {
        self.input_us.fetch_add(us(d), Relaxed);
    }
    pub fn queue_time(&self, d: Duration) {
        self.queue_us.fetch_add(us(d), Relaxed);
    }
    /// Building one answer (Triton's compute output).
    pub fn output_time(&self, d: Duration) {
        self.output_us.fetch_add(us(d), Relaxed);
    }

    pub fn render(&self) -> String {
        let l = &self.labels;
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {value}");
        };
        counter("nv_inference_request_success", "Successful inference requests", self.success.load(Relaxed));
        counter(
            "nv_inference_count",
            "Images inferred (a request of N images counts N)",
            self.inference_count.load(Relaxed),
        );
        counter(
            "nv_inference_exec_count",
            "Backend calls (batches); nv_inference_count / nv_inference_exec_count is the mean batch size",
            self.exec_count.load(Relaxed),
        );
        counter(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration, from admission to the answer",
            self.request_us.load(Relaxed),
        );
        counter(
            "nv_inference_queue_duration_us",
            "Cumulative time requests waited in the batch queue",
            self.queue_us.load(Relaxed),
        );
        counter(
            "nv_inference_compute_input_duration_us",
            "Cumulative time parsing, decoding and preprocessing requests",
            self.input_us.load(Relaxed),
        );
        counter(
            "nv_inference_compute_infer_duration_us",
            "Cumulative backend time, per batch",
            self.infer_us.load(Relaxed),
        );
        counter(
            "nv_inference_compute_output_duration_us",
            "Cumulative time building answers (outputs, overlays)",
            self.output_us.load(Relaxed),
        );
        counter(
            "medpatch_requests_cancelled",
            "Queued requests dropped because their client went away or timed out",
            self.cancelled.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP nv_inference_request_failure Failed inference requests, by reason\n# TYPE nv_inference_request_failure counter"
        );
        for (reason, n) in REASONS.iter().zip(&self.failure) {
            let _ = writeln!(out, "nv_inference_request_failure{{{l},reason=\"{reason}\"}} {}", n.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP nv_inference_pending_request_count Inference requests admitted and not yet answered\n\
             # TYPE nv_inference_pending_request_count gauge\nnv_inference_pending_request_count{{{l}}} {}",
            self.pending.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP medpatch_request_duration_seconds Inference request latency\n# TYPE medpatch_request_duration_seconds histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_S) {
            let _ = writeln!(
                out,
                "medpatch_request_duration_seconds_bucket{{{l},le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "medpatch_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "medpatch_request_duration_seconds_sum{{{l}}} {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "medpatch_request_duration_seconds_count{{{l}}} {count}");
        let _ = writeln!(
            out,
            "# HELP medpatch_batch_size_total Backend calls by images in the batch\n# TYPE medpatch_batch_size_total counter"
        );
        for (size, n) in self.batch_sizes.iter().enumerate().skip(1) {
            let _ = writeln!(out, "medpatch_batch_size_total{{{l},images=\"{size}\"}} {}", n.load(Relaxed));
        }
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        out
    }
}

/// The process's resident set size (Linux: /proc/self/status VmRSS); None elsewhere.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_triton_names_and_consistent_histograms() {
        let m = Metrics::new("medpatch", "1", 4);
        {
            let _pending = m.pending();
            m.batch_executed(3, Duration::from_millis(30));
            m.request_done(None, Duration::from_millis(40));
            m.request_done(Some("REJECTED"), Duration::from_micros(10));
        }
        let text = m.render();
        for line in [
            "nv_inference_request_success{model=\"medpatch\",version=\"1\"} 1",
            "nv_inference_request_failure{model=\"medpatch\",version=\"1\",reason=\"REJECTED\"} 1",
            "nv_inference_count{model=\"medpatch\",version=\"1\"} 3",
            "nv_inference_exec_count{model=\"medpatch\",version=\"1\"} 1",
            "nv_inference_compute_infer_duration_us{model=\"medpatch\",version=\"1\"} 30000",
            "nv_inference_pending_request_count{model=\"medpatch\",version=\"1\"} 0",
            "medpatch_request_duration_seconds_bucket{model=\"medpatch\",version=\"1\",le=\"0.005\"} 1",
            "medpatch_request_duration_seconds_bucket{model=\"medpatch\",version=\"1\",le=\"0.05\"} 2",
            "medpatch_request_duration_seconds_bucket{model=\"medpatch\",version=\"1\",le=\"+Inf\"} 2",
            "medpatch_batch_size_total{model=\"medpatch\",version=\"1\",images=\"3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Every sample line is `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
    }
}
