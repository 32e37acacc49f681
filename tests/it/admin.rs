//! The admin API: endpoint shapes, the bearer token, Prometheus metrics.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{RawResponse, TestGateway, Upstream, config, get, raw};

async fn admin_request(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> RawResponse {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw(
        admin,
        &format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
}

fn json(response: &RawResponse) -> serde_json::Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{}",
        response.text()
    );
    serde_json::from_slice(&response.body).unwrap_or_else(|error| panic!("invalid JSON {error}: {}", response.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqcount_has_mingateway_shape_and_counts_in_flight() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;
    let admin = gw.admin.unwrap();

    let idle = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    assert_eq!(idle.status, 200);
    assert_eq!(
        json(&idle),
        serde_json::json!({"code": 0, "msg": "success", "body": {"count": 0}})
    );

    let http = gw.http;
    let slow = tokio::spawn(async move { get(http, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    assert_eq!(json(&busy)["body"]["count"], 1);

    assert_eq!(slow.await.unwrap().status, 200);
    let after = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    assert_eq!(json(&after)["body"]["count"], 0);
}

const ENDPOINTS: [(&str, &str); 6] = [
    ("GET", "/api_status/reqcount"),
    ("GET", "/status"),
    ("GET", "/config"),
    ("GET", "/metrics"),
    ("GET", "/bans"),
    ("POST", "/reload"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_every_endpoint() {
    let upstream = Upstream::start("app").await;
    let text = config(
        "",
        &format!(
            "[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
            upstream.url()
        ),
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"",
    );
    let gw = TestGateway::start(&text).await;
    let admin = gw.admin.unwrap();

    for (method, path) in ENDPOINTS {
        let missing = admin_request(admin, method, path, None).await;
        assert_eq!(missing.status, 401, "{method} {path} without a token");
        assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
        assert!(json(&missing)["error"].is_string());

        let wrong = admin_request(admin, method, path, Some("s3cret-tokeN")).await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");

        let right = admin_request(admin, method, path, Some("s3cret-token")).await;
        assert_eq!(right.status, 200, "{method} {path} with the token: {}", right.text());
    }

    let config = json(&admin_request(admin, "GET", "/config", Some("s3cret-token")).await);
    assert!(
        !config.to_string().contains("s3cret"),
        "/config leaks the token: {config}"
    );
    assert_eq!(config["admin"]["token_required"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_shapes_and_errors() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("limitMaxConn = 77", "app.test", &[upstream.url()], "obtainMode = 2").await;
    let admin = gw.admin.unwrap();
    assert_eq!(get(gw.http, "app.test", "/").await.status, 200);

    let status = json(&admin_request(admin, "GET", "/status", None).await);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["generation"], 1);
    assert_eq!(status["connections"]["limit"], 77);
    assert!(status["connections"]["open"].is_u64());
    assert_eq!(status["in_flight"], 0);
    assert!(status["rejections"]["host_not_found"].is_u64());
    assert_eq!(status["reload"]["applied_total"], 0);
    let route = &status["routes"][0];
    assert_eq!(route["label"], "app");
    assert_eq!(route["strategy"], "round_robin");
    assert_eq!(route["requests"], 1);
    assert!(route["latency_seconds_average"].is_f64(), "{route}");
    let target = &route["targets"][0];
    assert_eq!(target["url"], upstream.url());
    assert_eq!(target["healthy"], true);
    assert_eq!(target["requests"], 1);
    assert!(target["response_seconds_average"].is_f64(), "{target}");

    let config = json(&admin_request(admin, "GET", "/config", None).await);
    assert_eq!(config["routes"][0]["hosts"][0], "app.test");
    assert_eq!(config["routes"][0]["targets"][0]["url"], upstream.url());
    assert_eq!(config["listeners"][0]["bound"], gw.http.to_string());
    assert_eq!(config["core"]["limit_max_conn"], 77);

    let reload = admin_request(admin, "POST", "/reload", None).await;
    assert_eq!(reload.status, 200);
    assert_eq!(
        json(&reload),
        serde_json::json!({"result": "unchanged", "generation": 1})
    );

    let unknown = admin_request(admin, "GET", "/nope", None).await;
    assert_eq!(unknown.status, 404);
    assert!(json(&unknown)["error"].is_string());

    for (method, path) in [
        ("POST", "/status"),
        ("GET", "/reload"),
        ("DELETE", "/metrics"),
        ("PUT", "/config"),
    ] {
        let wrong = admin_request(admin, method, path, None).await;
        assert_eq!(wrong.status, 405, "{method} {path}");
        assert!(wrong.header("allow").is_some(), "405 without Allow for {method} {path}");
        assert!(json(&wrong)["error"].is_string());
    }
}

/// Scrapes `/metrics`, checks that it parses, and returns the samples.
pub(crate) async fn scrape(admin: SocketAddr) -> Vec<prometheus_parse::Sample> {
    let response = get(admin, "127.0.0.1", "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    assert!(!scrape.samples.is_empty());
    scrape.samples
}

pub(crate) fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, want)| sample.labels.get(key) == Some(want)))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;
    let admin = gw.admin.unwrap();

    let before = scrape(admin).await;
    for sample in &before {
        assert!(sample.metric.starts_with("minigateway_"), "{}", sample.metric);
    }
    let ok = |samples: &[prometheus_parse::Sample]| {
        value(
            samples,
            "minigateway_requests_total",
            &[("route", "app"), ("status_class", "2xx"), ("method", "GET")],
        )
    };
    let not_found = |samples: &[prometheus_parse::Sample]| {
        value(samples, "minigateway_rejections_total", &[("reason", "host_not_found")])
    };
    let applied =
        |samples: &[prometheus_parse::Sample]| value(samples, "minigateway_reloads_total", &[("result", "applied")]);

    for _ in 0..3 {
        assert_eq!(get(gw.http, "app.test", "/").await.status, 200);
    }
    assert_eq!(get(gw.http, "other.test", "/").await.status, 404);
    std::fs::write(
        gw.config_path(),
        std::fs::read_to_string(gw.config_path())
            .unwrap()
            .replace("[proxyInfo.app]", "[proxyInfo.app]\nobtainMode = 2"),
    )
    .unwrap();
    gw.gateway.reload().await;
    assert_eq!(gw.gateway.generation(), 2);

    let after = scrape(admin).await;
    assert_eq!(ok(&after) - ok(&before), 3.0);
    assert_eq!(not_found(&after) - not_found(&before), 1.0);
    assert_eq!(applied(&after) - applied(&before), 1.0);
    assert_eq!(value(&after, "minigateway_config_generation", &[]), 2.0);
    assert_eq!(
        value(&after, "minigateway_upstream_requests_total", &[("route", "app")]),
        3.0
    );
    assert_eq!(value(&after, "minigateway_upstream_healthy", &[("route", "app")]), 1.0);
    assert!(value(&after, "minigateway_connections_total", &[]) >= 4.0);
    let count = after
        .iter()
        .find(|s| s.metric == "minigateway_request_duration_seconds_count" && s.labels.get("route") == Some("app"));
    assert!(count.is_some(), "the duration histogram is missing");
}
