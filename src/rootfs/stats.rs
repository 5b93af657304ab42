//! Counters a mount keeps about reading its content, for `lazyimg stats`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Fetch latencies kept for percentiles; older samples are overwritten.
const LATENCY_SAMPLES: usize = 8192;

#[derive(Default)]
pub struct Stats {
    bytes_fetched: AtomicU64,
    requests: AtomicU64,
    bytes_served: AtomicU64,
    chunks_fetched: AtomicU64,
    cache_hits: AtomicU64,
    shared_cache_hits: AtomicU64,
    verification_failures: AtomicU64,
    fetch_failures: AtomicU64,
    whole_blob_fallbacks: AtomicU64,
    bad_layers: AtomicU64,
    latencies: Mutex<Latencies>,
}

#[derive(Default)]
struct Latencies {
    micros: Vec<u64>,
    next: usize,
}

/// What `lazyimg stats` prints; field names are the JSON keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StatsReport {
    /// Blob bytes received from the registry (ranges and whole-blob fallbacks).
    pub bytes_fetched: u64,
    /// Registry requests made for content.
    pub requests: u64,
    /// File bytes returned to readers.
    pub bytes_served: u64,
    pub chunks_fetched: u64,
    /// Chunks found already verified in the local store.
    pub cache_hits: u64,
    /// Chunks found (and verified) in the shared cache (`shared_cache_dir`).
    #[serde(default)]
    pub shared_cache_hits: u64,
    pub verification_failures: u64,
    pub fetch_failures: u64,
    /// Times a registry would not serve a range and the whole blob was fetched.
    pub whole_blob_fallbacks: u64,
    /// Layers read through a lazyimg index whose whole-layer check failed
    /// (`--background-fetch`): every read of them now fails with EIO.
    #[serde(default)]
    pub bad_layers: u64,
    pub fetch_latency_ms: Percentiles,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn fetched(&self, bytes: u64, latency: Duration) {
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut latencies = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let sample = latency.as_micros() as u64;
        if latencies.micros.len() < LATENCY_SAMPLES {
            latencies.micros.push(sample);
        } else {
            let slot = latencies.next;
            latencies.micros[slot] = sample;
        }
        latencies.next = (latencies.next + 1) % LATENCY_SAMPLES;
    }

    pub fn whole_blob_fallback(&self) {
        self.whole_blob_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn chunks_fetched(&self, count: u64) {
        self.chunks_fetched.fetch_add(count, Ordering::Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shared_cache_hit(&self) {
        self.shared_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn served(&self, bytes: u64) {
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn verification_failed(&self) {
        self.verification_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bad_layer(&self) {
        self.bad_layers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fetch_failed(&self) {
        self.fetch_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> StatsReport {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut samples = self
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .micros
            .clone();
        samples.sort_unstable();
        let at = |q: f64| match samples.len() {
            0 => 0.0,
            n => samples[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0,
        };
        StatsReport {
            bytes_fetched: get(&self.bytes_fetched),
            requests: get(&self.requests),
            bytes_served: get(&self.bytes_served),
            chunks_fetched: get(&self.chunks_fetched),
            cache_hits: get(&self.cache_hits),
            shared_cache_hits: get(&self.shared_cache_hits),
            verification_failures: get(&self.verification_failures),
            fetch_failures: get(&self.fetch_failures),
            whole_blob_fallbacks: get(&self.whole_blob_fallbacks),
            bad_layers: get(&self.bad_layers),
            fetch_latency_ms: Percentiles {
                p50: at(0.5),
                p90: at(0.9),
                p99: at(0.99),
                max: at(1.0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let stats = Stats::default();
        for ms in 1..=100 {
            stats.fetched(10, Duration::from_millis(ms));
        }
        let report = stats.report();
        assert_eq!(report.bytes_fetched, 1000);
        assert_eq!(report.requests, 100);
        assert_eq!(report.fetch_latency_ms.max, 100.0);
        assert!((50.0..=51.0).contains(&report.fetch_latency_ms.p50));
        assert!((99.0..=100.0).contains(&report.fetch_latency_ms.p99));
    }
}
