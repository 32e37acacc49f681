//! Counters the request path updates, kept as plain atomics.
//!
//! The request path only increments atomics that it reaches through the snapshot or
//! the shared state; the admin API reads them when asked. Per-route and per-target
//! counters live in the registry, so they survive reloads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Why a request or connection was rejected, the label of the rejection counters.
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
}

impl Reason {
    pub const ALL: [Reason; 14] = [
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
        }
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests accepted and not yet answered in full.
    pub in_flight: AtomicI64,
    pub open_connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub requests_total: AtomicU64,
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

/// Counters of one route, keyed by its label.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by status class: 1xx to 5xx.
    pub responses: [AtomicU64; 5],
    pub latency_micros: AtomicU64,
}

impl RouteStats {
    pub fn record(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.responses.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one upstream target, keyed by route label and URL.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub requests: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub other_errors: AtomicU64,
    pub latency_micros: AtomicU64,
}
