//! Counters the request path updates, kept as plain atomics.
//!
//! The request path only increments atomics that it reaches through the snapshot or
//! the shared state, so it takes no lock for metrics. `GET /metrics` and `GET /status`
//! read the atomics when asked (see `exposition`). Per-route and per-target counters
//! live in the registry, so they survive reloads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

/// The reason a request or connection was rejected: the label of the rejection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    BadRequest,
    HostNotFound,
    Blacklisted,
    Banned,
    RateLimited,
    BodyTooLarge,
    HeaderTooLarge,
    RequestTimeout,
    ConnectionLimit,
    NoHealthyTarget,
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamError,
    MalformedForwarded,
    ClientAborted,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::BadRequest,
        Reason::HostNotFound,
        Reason::Blacklisted,
        Reason::Banned,
        Reason::RateLimited,
        Reason::BodyTooLarge,
        Reason::HeaderTooLarge,
        Reason::RequestTimeout,
        Reason::ConnectionLimit,
        Reason::NoHealthyTarget,
        Reason::UpstreamConnect,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::MalformedForwarded,
        Reason::ClientAborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::HostNotFound => "host_not_found",
            Reason::Blacklisted => "blacklisted",
            Reason::Banned => "banned",
            Reason::RateLimited => "rate_limited",
            Reason::BodyTooLarge => "body_too_large",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::RequestTimeout => "request_timeout",
            Reason::ConnectionLimit => "connection_limit",
            Reason::NoHealthyTarget => "no_healthy_target",
            Reason::UpstreamConnect => "upstream_connect",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::MalformedForwarded => "malformed_forwarded",
            Reason::ClientAborted => "client_aborted",
        }
    }
}

/// Request methods with their own metric label; every other method counts as `other`.
pub const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"];

/// Returns the index of a method's label in [`METHODS`].
pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Upper bounds in seconds of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A duration histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Returns (upper bound, cumulative count) pairs, ending with +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (slot, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            let bound = DURATION_BUCKETS.get(slot).copied().unwrap_or(f64::INFINITY);
            out.push((bound, total));
        }
        out
    }
}

/// Counters of one route, keyed by its label.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by status class (1xx to 5xx) and method.
    pub responses: [[AtomicU64; METHODS.len()]; 5],
    pub duration: Histogram,
}

impl RouteStats {
    pub fn record(&self, status: u16, method: usize, duration: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class][method.min(METHODS.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(duration);
    }

    pub fn requests(&self) -> u64 {
        self.responses
            .iter()
            .flatten()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }

    /// Returns the responses with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.responses[4]
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }
}

/// Counters of one upstream target, keyed by route label and URL.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub requests: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub other_errors: AtomicU64,
    /// Responses whose head arrived, and the sum of the times until then.
    pub responses: AtomicU64,
    pub response_micros: AtomicU64,
}

impl TargetStats {
    /// Records the time from sending a request to receiving the response head.
    pub fn record_response(&self, elapsed: Duration) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        self.response_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received whose response is not complete yet.
    pub in_flight: AtomicI64,
    pub connections_total: AtomicU64,
    pub requests_total: AtomicU64,
    /// Requests rejected before a route was found (bad requests, unknown hosts, bans).
    pub unrouted: RouteStats,
    rejections: [AtomicU64; Reason::ALL.len()],
}

impl Metrics {
    pub fn reject(&self, reason: Reason) {
        self.rejections[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejections(&self, reason: Reason) -> u64 {
        self.rejections[reason as usize].load(Ordering::Relaxed)
    }

    /// Returns every rejection counter with its label.
    pub fn rejection_counts(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.iter().map(|&reason| (reason, self.rejections(reason)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(20));
        let buckets = histogram.cumulative();
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[2], (0.005, 2));
        assert_eq!(buckets.last().unwrap().1, 3);
        assert!(buckets.last().unwrap().0.is_infinite());
        assert_eq!(histogram.count(), 3);
        assert!((histogram.sum_seconds() - 20.0035).abs() < 1e-9);
    }

    #[test]
    fn route_stats_count_by_class_and_method() {
        let stats = RouteStats::default();
        stats.record(200, method_index(&Method::GET), Duration::from_millis(1));
        stats.record(503, method_index(&Method::POST), Duration::from_millis(1));
        stats.record(
            404,
            method_index(&Method::from_bytes(b"PURGE").unwrap()),
            Duration::from_millis(1),
        );
        assert_eq!(stats.requests(), 3);
        assert_eq!(stats.server_errors(), 1);
        assert_eq!(stats.responses[3][7].load(Ordering::Relaxed), 1);
    }
}
