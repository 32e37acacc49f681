//! Host routing: normalisation, rule kinds, precedence and rejections.

use crate::support::{TestGateway, Upstream, config, get, raw};

/// Starts one upstream per route label, each naming itself by its label.
async fn upstreams(labels: &[&str]) -> Vec<Upstream> {
    let mut list = Vec::new();
    for label in labels {
        list.push(Upstream::start(label).await);
    }
    list
}

fn routes(pairs: &[(&str, &str)], upstreams: &[Upstream]) -> String {
    pairs
        .iter()
        .zip(upstreams)
        .map(|((label, host), upstream)| {
            format!(
                "[proxyInfo.{label}]\nhost = \"{host}\"\ntarget = [\"{}\"]\n\n",
                upstream.url()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_follow_precedence_order() {
    let pairs = [
        ("exact", "api.example.com"),
        ("prefix", "api."),
        ("prefix_long", "api.eu."),
        ("suffix", ".example.com"),
        ("suffix_long", ".eu.example.com"),
        ("shop", "shop.test"),
        ("v6", "[::1]"),
        ("fallback", "default"),
    ];
    let labels: Vec<&str> = pairs.iter().map(|(label, _)| *label).collect();
    let servers = upstreams(&labels).await;
    let gw = TestGateway::start(&config("", &routes(&pairs, &servers))).await;
    assert_eq!(gw.gateway.http_addrs(), vec![gw.http]);

    let cases = [
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("api.example.com:8080", "exact"),
        ("example.com.", "fallback"),
        ("api.example.com.", "exact"),
        ("api.other.net", "prefix"),
        ("api.eu.other.net", "prefix_long"),
        ("api.eu.example.com", "prefix_long"),
        ("x.example.com", "suffix"),
        ("x.eu.example.com", "suffix_long"),
        ("example.com", "fallback"),
        ("www.shop.test", "shop"),
        ("WWW.SHOP.TEST.", "shop"),
        ("[::1]:8080", "v6"),
        ("[0:0::1]", "v6"),
        ("unknown.test", "fallback"),
    ];
    for (host, expected) in cases {
        let response = get(gw.http, host, "/").await;
        assert_eq!(response.status, 200, "host {host}");
        assert_eq!(response.text(), expected, "host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_routes_on_uri_authority() {
    let servers = upstreams(&["a", "b"]).await;
    let gw = TestGateway::start(&config("", &routes(&[("a", "a.test"), ("b", "b.test")], &servers))).await;

    let response = raw(
        gw.http,
        "GET http://a.test/path?q=1 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "a");

    let seen = servers[0].last_request();
    assert_eq!(seen.headers["host"], "a.test", "Host is rewritten to the URI authority");
    assert_eq!(seen.uri, "/path?q=1", "the upstream gets origin-form");
    assert_eq!(servers[1].request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_without_default_is_404() {
    let servers = upstreams(&["a"]).await;
    let gw = TestGateway::start(&config("", &routes(&[("a", "a.test")], &servers))).await;

    let response = get(gw.http, "nowhere.test", "/").await;
    assert_eq!(response.status, 404);
    assert!(response.text().contains("no route"), "{}", response.text());
    assert_eq!(servers[0].request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_duplicate_host_is_400() {
    let servers = upstreams(&["fallback"]).await;
    let gw = TestGateway::start(&config("", &routes(&[("fallback", "default")], &servers))).await;

    let missing = raw(gw.http, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(missing.status, 400);
    assert!(missing.text().contains("missing Host"));

    let twice = raw(
        gw.http,
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(twice.status, 400);
    assert!(twice.text().contains("more than one Host"));

    let invalid = raw(gw.http, "GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n").await;
    assert_eq!(invalid.status, 400);

    assert_eq!(
        servers[0].request_count(),
        0,
        "rejected requests never reach an upstream"
    );

    let http10 = raw(gw.http, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(http10.status, 200, "HTTP/1.0 without Host goes to the default route");
    assert_eq!(http10.text(), "fallback");
}
