//! The server's counters and their Prometheus text form (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::pipeline::CacheStats;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default)]
struct Histogram {
    /// Count per bucket (not cumulative), then the +Inf bucket.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// (route, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route -> latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// batch size -> batches run, per kind ("transfer", "invert").
    batches: Mutex<BTreeMap<(&'static str, usize), u64>>,
    pub in_flight: AtomicU64,
}

/// What the metrics read from elsewhere at the time of a scrape.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Requests whose client left before the answer, dropped from the queue or the
    /// running batch.
    pub cancelled: u64,
    /// Step scheduling: steps run, by the number of jobs each advanced.
    pub step_batches: BTreeMap<usize, u64>,
    pub cache: CacheStats,
    pub device_peak_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub ready: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Label values escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        *lock(&self.requests).entry((route.to_string(), status)).or_default() += 1;
        let secs = took.as_secs_f64();
        let mut l = lock(&self.latency);
        let h = l.entry(route.to_string()).or_default();
        let b = LATENCY_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(LATENCY_BUCKETS.len());
        h.counts[b] += 1;
        h.sum += secs;
    }

    pub fn batch(&self, kind: &'static str, size: usize) {
        *lock(&self.batches).entry((kind, size)).or_default() += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut o, "diffstyle_requests_total", "counter", "HTTP requests answered, by route and status.");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(o, "diffstyle_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", esc(route));
        }
        head(&mut o, "diffstyle_request_duration_seconds", "histogram", "Time from request to response, by route.");
        for (route, h) in lock(&self.latency).iter() {
            let r = esc(route);
            let mut cum = 0;
            for (k, le) in LATENCY_BUCKETS.iter().enumerate() {
                cum += h.counts[k];
                let _ = writeln!(o, "diffstyle_request_duration_seconds_bucket{{route=\"{r}\",le=\"{le}\"}} {cum}");
            }
            cum += h.counts[LATENCY_BUCKETS.len()];
            let _ = writeln!(o, "diffstyle_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {cum}");
            let _ = writeln!(o, "diffstyle_request_duration_seconds_sum{{route=\"{r}\"}} {}", h.sum);
            let _ = writeln!(o, "diffstyle_request_duration_seconds_count{{route=\"{r}\"}} {cum}");
        }
        head(&mut o, "diffstyle_requests_in_flight", "gauge", "Requests being answered now.");
        let _ = writeln!(o, "diffstyle_requests_in_flight {}", self.in_flight.load(Relaxed));
        head(&mut o, "diffstyle_queue_depth", "gauge", "Jobs waiting for the engine.");
        let _ = writeln!(o, "diffstyle_queue_depth {}", g.queue_depth);
        head(&mut o, "diffstyle_queue_capacity", "gauge", "The most jobs that may wait (--max-queue).");
        let _ = writeln!(o, "diffstyle_queue_capacity {}", g.queue_capacity);
        head(
            &mut o,
            "diffstyle_batches_total",
            "counter",
            "Batches run by the engine, by kind and size (jobs in the batch). Step scheduling: transfers and inversions answered, by the most jobs that shared their steps; kind \"step\": the steps run, by the jobs each advanced.",
        );
        for ((kind, size), n) in lock(&self.batches).iter() {
            let _ = writeln!(o, "diffstyle_batches_total{{kind=\"{kind}\",size=\"{size}\"}} {n}");
        }
        // Step scheduling: one "batch" per denoising step, sized by the jobs it advanced.
        for (size, n) in &g.step_batches {
            let _ = writeln!(o, "diffstyle_batches_total{{kind=\"step\",size=\"{size}\"}} {n}");
        }
        head(
            &mut o,
            "diffstyle_cancelled_total",
            "counter",
            "Requests dropped because their client left before the answer: from the queue before they ran, or from the running batch at the next step.",
        );
        let _ = writeln!(o, "diffstyle_cancelled_total {}", g.cancelled);
        let c = &g.cache;
        for (name, kind, help, v) in [
            ("diffstyle_inversion_cache_hits_total", "counter", "Inversions found in the cache.", c.hits),
            ("diffstyle_inversion_cache_misses_total", "counter", "Inversions looked for and not found.", c.misses),
            ("diffstyle_inversion_cache_evictions_total", "counter", "Inversions evicted to make room.", c.evictions),
            ("diffstyle_inversion_cache_entries", "gauge", "Inversions held.", c.entries as u64),
            ("diffstyle_inversion_cache_bytes", "gauge", "Bytes held by cached inversions.", c.bytes as u64),
            (
                "diffstyle_inversion_cache_capacity_bytes",
                "gauge",
                "The cache's bound (--cache-mib).",
                c.capacity as u64,
            ),
        ] {
            head(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
        if let Some(b) = g.device_peak_bytes {
            head(&mut o, "diffstyle_device_memory_peak_bytes", "gauge", "Peak device memory of the engine.");
            let _ = writeln!(o, "diffstyle_device_memory_peak_bytes {b}");
        }
        if let Some(b) = g.resident_bytes {
            head(&mut o, "process_resident_memory_bytes", "gauge", "Resident set size of the server process.");
            let _ = writeln!(o, "process_resident_memory_bytes {b}");
        }
        head(&mut o, "diffstyle_ready", "gauge", "1 while the engine runs and the server accepts work.");
        let _ = writeln!(o, "diffstyle_ready {}", u8::from(g.ready));
        o
    }
}

/// The process's resident set size, from /proc (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.request("/v1/transfer", 200, Duration::from_millis(3));
        m.request("/v1/transfer", 200, Duration::from_millis(70));
        m.request("/v1/transfer", 400, Duration::from_secs(1000));
        m.batch("transfer", 2);
        let g = Gauges {
            queue_depth: 1,
            queue_capacity: 8,
            cancelled: 3,
            step_batches: BTreeMap::from([(2, 5)]),
            cache: CacheStats::default(),
            device_peak_bytes: None,
            resident_bytes: Some(4096),
            ready: true,
        };
        let t = m.render(&g);
        for want in [
            "diffstyle_requests_total{route=\"/v1/transfer\",status=\"200\"} 2",
            "diffstyle_requests_total{route=\"/v1/transfer\",status=\"400\"} 1",
            "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"0.005\"} 1",
            "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"0.05\"} 1",
            "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"0.1\"} 2",
            "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"300\"} 2",
            "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"+Inf\"} 3",
            "diffstyle_request_duration_seconds_count{route=\"/v1/transfer\"} 3",
            "diffstyle_batches_total{kind=\"transfer\",size=\"2\"} 1",
            "diffstyle_batches_total{kind=\"step\",size=\"2\"} 5",
            "diffstyle_cancelled_total 3",
            "diffstyle_queue_depth 1",
            "process_resident_memory_bytes 4096",
        ] {
            assert!(t.lines().any(|l| l == want), "missing `{want}` in\n{t}");
        }
        assert!(!t.contains("diffstyle_device_memory_peak_bytes"));
    }
}
