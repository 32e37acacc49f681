//! The admin API.

use std::time::Duration;

use crate::support::{TestGateway, Upstream, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqcount_has_mingateway_shape_and_counts_in_flight() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;
    let admin = gw.admin.unwrap();

    let idle = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    assert_eq!(idle.status, 200);
    assert_eq!(idle.header("content-type"), Some("application/json"));
    let value: serde_json::Value = serde_json::from_slice(&idle.body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"code": 0, "msg": "success", "body": {"count": 0}})
    );

    let http = gw.http;
    let slow = tokio::spawn(async move { get(http, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    let value: serde_json::Value = serde_json::from_slice(&busy.body).unwrap();
    assert_eq!(value["body"]["count"], 1);

    assert_eq!(slow.await.unwrap().status, 200);
    let after = get(admin, "127.0.0.1", "/api_status/reqcount").await;
    let value: serde_json::Value = serde_json::from_slice(&after.body).unwrap();
    assert_eq!(value["body"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_path_is_json_404() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let response = get(gw.admin.unwrap(), "127.0.0.1", "/nope").await;
    assert_eq!(response.status, 404);
    let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(value["error"].is_string());
}
