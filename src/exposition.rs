//! `GET /metrics`: the counters in Prometheus text format, encoded by prometheus-client.
//!
//! The request path keeps its own atomics (see `metrics`). A collector reads them at
//! scrape time, so requests never take the client library's locks.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::clock;
use crate::metrics::{Histogram, METHODS, Reason, RouteStats};
use crate::state::State;
use crate::tls;

/// The content type of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Reads the gateway's counters on each scrape.
struct GatewayCollector {
    state: Arc<State>,
}

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCollector")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter(encoder: &mut MetricEncoder<'_>, labels: &Labels<'_>, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_family(labels)?)
}

fn gauge(encoder: &mut MetricEncoder<'_>, labels: &Labels<'_>, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_family(labels)?)
}

fn histogram(
    encoder: &mut MetricEncoder<'_>,
    labels: &Labels<'_>,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let buckets = histogram.cumulative();
    encoder.encode_family(labels)?.encode_histogram::<Labels<'_>>(
        histogram.sum_seconds(),
        histogram.count(),
        &buckets,
        None,
    )
}

impl GatewayCollector {
    /// Returns each route's label and counters, with requests that matched no route
    /// under the empty label.
    fn routes(&self) -> Vec<(String, Arc<RouteStats>)> {
        let snapshot = self.state.snapshot.load();
        snapshot
            .routes
            .iter()
            .map(|route| (route.label.to_string(), route.stats.clone()))
            .collect()
    }
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.state;
        let metrics = &state.metrics;
        let snapshot = state.snapshot.load();
        let routes = self.routes();

        let mut family = encoder.encode_descriptor(
            "requests",
            "Responses sent, by route, status class and method.",
            None,
            MetricType::Counter,
        )?;
        let unrouted = ("".to_owned(), &metrics.unrouted);
        for (label, stats) in routes
            .iter()
            .map(|(l, s)| (l.clone(), &**s))
            .chain(std::iter::once(unrouted))
        {
            for (class, by_method) in STATUS_CLASSES.iter().zip(&stats.responses) {
                for (method, value) in METHODS.iter().zip(by_method) {
                    let value = value.load(Ordering::Relaxed);
                    if value > 0 {
                        let labels = vec![("route", label.as_str()), ("status_class", *class), ("method", *method)];
                        counter(&mut family, &labels, value)?;
                    }
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "request_duration",
            "Time from receiving a request head to the end of its response.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (label, stats) in &routes {
            histogram(&mut family, &vec![("route", label.as_str())], &stats.duration)?;
        }
        histogram(&mut family, &vec![("route", "")], &metrics.unrouted.duration)?;

        let mut requests = Vec::new();
        let mut errors = Vec::new();
        let mut healthy = Vec::new();
        let now = clock::now_ms();
        for route in snapshot.routes.iter() {
            for target in route.pool.targets.iter() {
                let stats = &target.stats;
                requests.push((
                    route.label.clone(),
                    target.url.clone(),
                    stats.requests.load(Ordering::Relaxed),
                ));
                for (kind, value) in [
                    ("connect", &stats.connect_errors),
                    ("timeout", &stats.timeouts),
                    ("other", &stats.other_errors),
                ] {
                    errors.push((
                        route.label.clone(),
                        target.url.clone(),
                        kind,
                        value.load(Ordering::Relaxed),
                    ));
                }
                healthy.push((
                    route.label.clone(),
                    target.url.clone(),
                    i64::from(target.health.is_available(now)),
                ));
            }
        }
        let mut family = encoder.encode_descriptor(
            "upstream_requests",
            "Requests sent to each upstream target, retries included.",
            None,
            MetricType::Counter,
        )?;
        for (route, target, value) in &requests {
            counter(&mut family, &vec![("route", &**route), ("target", &**target)], *value)?;
        }
        let mut family = encoder.encode_descriptor(
            "upstream_errors",
            "Failed upstream attempts by target and kind (connect, timeout, other).",
            None,
            MetricType::Counter,
        )?;
        for (route, target, kind, value) in &errors {
            counter(
                &mut family,
                &vec![("route", &**route), ("target", &**target), ("kind", *kind)],
                *value,
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "upstream_healthy",
            "1 when a target is in rotation, 0 while passive health checks keep it out.",
            None,
            MetricType::Gauge,
        )?;
        for (route, target, value) in &healthy {
            gauge(&mut family, &vec![("route", &**route), ("target", &**target)], *value)?;
        }

        let mut family = encoder.encode_descriptor(
            "rejections",
            "Requests and connections the gateway answered itself, by reason.",
            None,
            MetricType::Counter,
        )?;
        for reason in Reason::ALL {
            counter(
                &mut family,
                &vec![("reason", reason.as_str())],
                metrics.rejections(reason),
            )?;
        }

        let single_counters = [
            (
                "connections",
                "Client connections accepted.",
                metrics.connections_total.load(Ordering::Relaxed),
            ),
            (
                "idle_connections_closed",
                "Idle keep-alive connections closed to make room at limitMaxConn.",
                state.connections.idle_closed(),
            ),
            (
                "access_log_dropped_lines",
                "Access log lines dropped because the writer's queue was full.",
                state.access_log_dropped(),
            ),
        ];
        for (name, help, value) in single_counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family.encode_family(&Labels::new())?)?;
        }

        let handshakes = &state.registry.tls.handshakes;
        let mut family = encoder.encode_descriptor(
            "tls_handshakes",
            "TLS handshakes by result (completed, failed, timed_out).",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in [
            ("completed", &handshakes.completed),
            ("failed", &handshakes.failed),
            ("timed_out", &handshakes.timed_out),
        ] {
            counter(&mut family, &vec![("result", result)], value.load(Ordering::Relaxed))?;
        }

        let certificates = tls::certificate_figures(state);
        let mut family = encoder.encode_descriptor(
            "certificate_not_after",
            "Unix time at which each served certificate expires.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for figures in &certificates {
            gauge(
                &mut family,
                &vec![("certificate", figures.label.as_str())],
                figures.not_after_unix as i64,
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "ocsp_staple_age",
            "Seconds since thisUpdate of the OCSP staple each certificate sends; absent without a staple.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for figures in &certificates {
            if let Some(age) = figures.staple_age_seconds {
                gauge(&mut family, &vec![("certificate", figures.label.as_str())], age as i64)?;
            }
        }

        let (applied, failed) = {
            let status = state
                .reload_status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (status.applied_total, status.failed_total)
        };
        let mut family = encoder.encode_descriptor(
            "reloads",
            "Configuration reloads by result (skipped reloads are not counted).",
            None,
            MetricType::Counter,
        )?;
        counter(&mut family, &vec![("result", "applied")], applied)?;
        counter(&mut family, &vec![("result", "failed")], failed)?;

        let gauges = [
            (
                "open_connections",
                "Client connections open now.",
                state.connections.open() as i64,
            ),
            (
                "connection_limit",
                "limitMaxConn; 0 means no limit.",
                state.connections.limit() as i64,
            ),
            (
                "in_flight_requests",
                "Requests received and not yet answered in full.",
                metrics.in_flight.load(Ordering::Relaxed).max(0),
            ),
            (
                "bans",
                "Client IPs banned by CC defence now.",
                state.guards.bans().len() as i64,
            ),
            (
                "guard_entries",
                "Keys tracked by CC defence and limitReq together.",
                (state.guards.cc.len() + state.guards.limit_req.len()) as i64,
            ),
            (
                "config_generation",
                "Generation of the configuration that serves new requests.",
                snapshot.generation as i64,
            ),
            (
                "start_time_seconds",
                "Unix time at which the gateway started.",
                state
                    .started_at
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family.encode_family(&Labels::new())?)?;
        }
        Ok(())
    }
}

/// Renders every metric in Prometheus text format.
pub fn render(state: &Arc<State>) -> String {
    let mut registry = Registry::with_prefix("minigateway");
    registry.register_collector(Box::new(GatewayCollector { state: state.clone() }));
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!(error = %error, "failed to encode metrics");
    }
    text
}
