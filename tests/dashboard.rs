//! /dashboard: subscribe, immediate dashboard:data, periodic data and live metrics,
//! metricsInterval validation, unsubscribe.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WIDGETS: [&str; 4] = [
    "inventory-summary",
    "order-stats",
    "customer-activity",
    "server-metrics",
];

fn check_data(d: &Value, dashboard_id: &str, widgets: &[&str]) {
    assert_eq!(d["dashboardId"], dashboard_id, "{d}");
    let w = d["widgets"]
        .as_object()
        .unwrap_or_else(|| panic!("widgets object: {d}"));
    for name in widgets {
        assert!(w.contains_key(*name), "widget {name} missing: {d}");
    }
    assert_iso_ms(&d["timestamp"], "dashboard:data.timestamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_then_data_at_once_then_periodic() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;

    c.emit(
        "/dashboard",
        "dashboard:subscribe",
        json!({"dashboardId": "main-dashboard", "widgets": WIDGETS, "metricsInterval": 1000}),
    )
    .await;
    let (sub, _) = c
        .recv_matching("dashboard:subscribed", |f| {
            f["event"] == "dashboard:subscribed" || f["event"] == "dashboard:data"
        })
        .await;
    assert_eq!(
        sub["event"], "dashboard:subscribed",
        "dashboard:subscribed comes before dashboard:data: {sub}"
    );
    assert_eq!(sub["ns"], "/dashboard");
    assert!(sub["data"]["subscriptionId"].is_string(), "{sub}");

    let first = c.recv_event("/dashboard", "dashboard:data").await;
    let t0 = Instant::now();
    check_data(&first, "main-dashboard", &WIDGETS);

    // Within the next intervals: another dashboard:data and dashboard:metrics:live.
    let mut second_at = None;
    let mut live = None;
    while second_at.is_none() || live.is_none() {
        let f = c.next_frame().await;
        if f["ns"] == "/dashboard" && f["event"] == "dashboard:data" && second_at.is_none() {
            check_data(&f["data"], "main-dashboard", &WIDGETS);
            second_at = Some(t0.elapsed());
        } else if f["ns"] == "/dashboard" && f["event"] == "dashboard:metrics:live" {
            assert!(f["data"].is_object(), "{f}");
            live = Some(f["data"].clone());
        }
    }
    let gap = second_at.unwrap();
    assert!(
        gap >= Duration::from_millis(500),
        "periodic dashboard:data every metricsInterval (1000 ms), got one after {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_reply_and_subset_of_widgets() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    let d = c
        .subscribe(
            "/dashboard",
            json!({"dashboardId": "d-orders", "widgets": ["order-stats"], "metricsInterval": 2000}),
        )
        .await;
    assert!(d["subscriptionId"].is_string());
    let data = c.recv_event("/dashboard", "dashboard:data").await;
    check_data(&data, "d-orders", &["order-stats"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_interval_below_1000_is_invalid_filter() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    for interval in [999, 10, 0] {
        let d = c
            .request(
                "/dashboard",
                "dashboard:subscribe",
                json!({"dashboardId": "d-bad", "widgets": WIDGETS, "metricsInterval": interval}),
            )
            .await;
        assert_ack_error(&d, "invalid_filter");
    }
    c.emit(
        "/dashboard",
        "dashboard:subscribe",
        json!({"dashboardId": "d-bad", "widgets": WIDGETS, "metricsInterval": 500}),
    )
    .await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/dashboard");
    assert_error_obj(&f["data"], "invalid_filter");
    assert_eq!(f["data"]["event"], "dashboard:subscribe");
    let un = c
        .request("/dashboard", "dashboard:unsubscribe", json!({}))
        .await;
    assert_eq!(
        un["unsubscribed"],
        json!([]),
        "no subscription was created: {un}"
    );
    // At the minimum it is accepted.
    c.subscribe(
        "/dashboard",
        json!({"dashboardId": "d-ok", "widgets": WIDGETS, "metricsInterval": 1000}),
    )
    .await;
    let data = c.recv_event("/dashboard", "dashboard:data").await;
    check_data(&data, "d-ok", &WIDGETS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_the_stream() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    let id = c
        .subscribe_id(
            "/dashboard",
            json!({"dashboardId": "d-one", "widgets": ["order-stats"], "metricsInterval": 1000}),
        )
        .await;
    c.recv_event("/dashboard", "dashboard:data").await;

    c.emit(
        "/dashboard",
        "dashboard:unsubscribe",
        json!({"subscriptionId": id}),
    )
    .await;
    let un = c.recv_event("/dashboard", "dashboard:unsubscribed").await;
    assert_eq!(un["unsubscribed"], json!([id]));

    // A second dashboard as the marker: after two of its periodic rounds (> 1 s), no
    // d-one frame may have come.
    c.subscribe(
        "/dashboard",
        json!({"dashboardId": "d-two", "widgets": ["order-stats"], "metricsInterval": 1000}),
    )
    .await;
    let mut rounds = 0;
    while rounds < 3 {
        let f = c.next_frame().await;
        if f["event"] == "dashboard:data" {
            assert_eq!(
                f["data"]["dashboardId"], "d-two",
                "dashboard:data after unsubscribe: {f}"
            );
            rounds += 1;
        }
    }
}
