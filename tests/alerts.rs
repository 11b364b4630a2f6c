//! Low-stock alerts: inventory:low-stock, the alert notification, GET /alerts,
//! acknowledge (idempotent), dedup while unacknowledged, thresholds.

mod common;

use common::*;
use serde_json::{json, Value};

fn check_alert(a: &Value, atype: &str, severity: &str, product: &str) {
    assert!(a["id"].is_string() || a["id"].is_number(), "alert id: {a}");
    assert_eq!(a["type"], atype, "{a}");
    assert_eq!(a["severity"], severity, "{a}");
    assert!(
        a["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {a}"
    );
    assert!(
        a["data"].to_string().contains(product),
        "alert data should name the product {product}: {a}"
    );
    assert_iso_ms(&a["timestamp"], "alert timestamp");
}

fn id_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn active_alerts(port: u16, query: &str) -> Vec<Value> {
    let b = get_json(port, &format!("/alerts{query}")).await;
    let alerts = b["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("alerts list: {b}"))
        .clone();
    assert_eq!(b["count"], alerts.len(), "{b}");
    alerts
}

fn alerts_for<'a>(alerts: &'a [Value], product: &str, warehouse: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| {
            let d = a["data"].to_string();
            d.contains(&format!("\"{product}\"")) && d.contains(&format!("\"{warehouse}\""))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_alert_event_notification_and_list() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    // lowStockOnly does not matter for inventory:low-stock.
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-al-1", "p-al-m"], "lowStockOnly": false}),
    )
    .await;
    c.subscribe("/notifications", json!({})).await;
    let mut other = server.connect().await;
    other
        .subscribe("/inventory", json!({"productIds": ["p-al-other"]}))
        .await;

    let s = publish_one(port, inv("p-al-1", "w-al-1", 3)).await;
    let a = c.recv_event("/inventory", "inventory:low-stock").await;
    check_alert(&a, "low_stock", "high", "p-al-1");
    let (n, _) = c
        .recv_matching("low_stock notification", |f| {
            f["event"] == "notification" && f["data"]["type"] == "low_stock"
        })
        .await;
    assert_eq!(n["ns"], "/notifications");
    assert_eq!(n["data"]["priority"], "high", "{n}");
    assert!(n["data"]["seq"].as_u64().is_some_and(|q| q > s), "{n}");
    assert_eq!(n["data"]["tenantId"], "default");
    assert!(n["data"]["message"].is_string());
    assert_iso_ms(&n["data"]["timestamp"], "notification timestamp");

    // A subscriber to another product does not get the alert.
    let m = publish_one(port, inv("p-al-other", "w-al-1", 50)).await;
    let (_, before) = other.recv_seq("/inventory", "inventory:update", m).await;
    assert!(
        !before.iter().any(|f| f["event"] == "inventory:low-stock"),
        "low-stock of p-al-1 reached a p-al-other subscriber: {before:?}"
    );

    wait_alert_listed(port, "", "p-al-1").await;
    let alerts = active_alerts(port, "").await;
    let mine = alerts_for(&alerts, "p-al-1", "w-al-1");
    assert_eq!(mine.len(), 1, "{alerts:?}");
    assert_eq!(id_str(&mine[0]["id"]), id_str(&a["id"]));
    check_alert(mine[0], "low_stock", "high", "p-al-1");
    assert_ne!(mine[0]["acknowledged"], true);

    // Still unacknowledged: a lower quantity, even zero, raises nothing new.
    publish_one(port, inv("p-al-1", "w-al-1", 2)).await;
    publish_one(port, inv("p-al-1", "w-al-1", 0)).await;
    let marker = publish_one(port, inv("p-al-m", "w-al-1", 50)).await;
    let (_, before) = c.recv_seq("/inventory", "inventory:update", marker).await;
    assert!(
        !before.iter().any(|f| f["event"] == "inventory:low-stock"),
        "no second alert while one is unacknowledged: {before:?}"
    );
    let alerts = active_alerts(port, "").await;
    assert_eq!(
        alerts_for(&alerts, "p-al-1", "w-al-1").len(),
        1,
        "{alerts:?}"
    );

    // Another warehouse is another alert; zero is out_of_stock / critical.
    publish_one(port, inv("p-al-1", "w-al-2", 0)).await;
    let a2 = c.recv_event("/inventory", "inventory:low-stock").await;
    check_alert(&a2, "out_of_stock", "critical", "p-al-1");
    assert_ne!(id_str(&a2["id"]), id_str(&a["id"]));
    let (n2, _) = c
        .recv_matching("out_of_stock notification", |f| {
            f["event"] == "notification" && f["data"]["type"] == "out_of_stock"
        })
        .await;
    assert_eq!(n2["data"]["priority"], "critical", "{n2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_is_idempotent_and_notifies_once() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe("/inventory", json!({"productIds": ["p-ack-1"]}))
        .await;
    c.subscribe("/notifications", json!({})).await;

    publish_one(port, inv("p-ack-1", "w-ack", 4)).await;
    let a = c.recv_event("/inventory", "inventory:low-stock").await;
    let id = id_str(&a["id"]);

    let r = http_request(port, "POST", &format!("/alerts/{id}/acknowledge"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(id_str(&body["id"]), id, "{body}");
    assert_eq!(body["acknowledged"], true, "{body}");

    let (n, _) = c
        .recv_matching("alert_acknowledged notification", |f| {
            f["event"] == "notification" && f["data"]["type"] == "alert_acknowledged"
        })
        .await;
    assert_eq!(n["data"]["priority"], "low", "{n}");
    assert_eq!(id_str(&n["data"]["data"]["alertId"]), id, "{n}");

    // Second acknowledge: same answer, no second notification.
    let r = http_request(port, "POST", &format!("/alerts/{id}/acknowledge"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["acknowledged"], true);
    let marker = publish_one(
        port,
        notification("n-ack-marker", "system_alert", "low", "marker"),
    )
    .await;
    let (_, before) = c.recv_seq("/notifications", "notification", marker).await;
    assert!(
        !before
            .iter()
            .any(|f| f["event"] == "notification" && f["data"]["type"] == "alert_acknowledged"),
        "a second acknowledge must not notify again: {before:?}"
    );

    // Gone from the active list, present with ?all=true.
    let active = active_alerts(port, "").await;
    assert!(
        !active.iter().any(|x| id_str(&x["id"]) == id),
        "acknowledged alert still active: {active:?}"
    );
    let all = active_alerts(port, "?all=true").await;
    let mine = all
        .iter()
        .find(|x| id_str(&x["id"]) == id)
        .unwrap_or_else(|| panic!("?all=true must include {id}: {all:?}"));
    assert_eq!(mine["acknowledged"], true, "{mine}");

    // Once acknowledged, a new low stock for the same product+warehouse alerts again.
    publish_one(port, inv("p-ack-1", "w-ack", 50)).await;
    publish_one(port, inv("p-ack-1", "w-ack", 2)).await;
    let again = c.recv_event("/inventory", "inventory:low-stock").await;
    assert_ne!(id_str(&again["id"]), id, "a new alert has a new id");
    check_alert(&again, "low_stock", "high", "p-ack-1");

    // Unknown id.
    http_request(port, "POST", "/alerts/no-such-alert/acknowledge", None)
        .await
        .assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_from_change_and_configuration() {
    let server = spawn_server(&[("LOW_STOCK_THRESHOLD", "5")]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-th-1", "p-th-2", "p-th-m"]}),
    )
    .await;

    publish_one(port, inv("p-th-1", "w-th", 7)).await; // above 5
    let mut own = inv("p-th-2", "w-th", 3);
    own["data"]["lowStockThreshold"] = json!(2); // above its own threshold
    publish_one(port, own).await;
    let marker = publish_one(port, inv("p-th-m", "w-th", 50)).await;
    let (_, before) = c.recv_seq("/inventory", "inventory:update", marker).await;
    assert!(
        !before.iter().any(|f| f["event"] == "inventory:low-stock"),
        "no alert above the threshold: {before:?}"
    );

    publish_one(port, inv("p-th-1", "w-th", 5)).await; // at the configured threshold
    let a = c.recv_event("/inventory", "inventory:low-stock").await;
    check_alert(&a, "low_stock", "high", "p-th-1");

    let mut own = inv("p-th-2", "w-th", 8);
    own["data"]["lowStockThreshold"] = json!(8); // at its own threshold
    publish_one(port, own).await;
    let a = c.recv_event("/inventory", "inventory:low-stock").await;
    check_alert(&a, "low_stock", "high", "p-th-2");
}

/// An alert's acknowledgement travels as an `alert_acknowledged` notification that every
/// node applies; `POST /publish` must not be a way around the staff role of
/// `POST /alerts/:id/acknowledge`. The forged one is refused, recorded, and the alert
/// stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_cannot_be_published_as_a_notification() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe("/inventory", json!({"productIds": ["p-forge"]}))
        .await;
    publish_one(port, inv("p-forge", "w-forge", 2)).await;
    let a = c.recv_event("/inventory", "inventory:low-stock").await;
    let id = id_str(&a["id"]);

    let forged = json!({
        "dataType": "notification",
        "data": {"type": "alert_acknowledged", "priority": "low", "message": "forged",
                 "data": {"alertId": id, "alertType": "low_stock", "acknowledgedBy": "x"}},
    });
    let r = http_post_json(port, "/publish", &forged).await;
    r.assert_error(403, "forbidden");
    let m = metrics(port).await;
    assert!(
        m["security"]["forbidden"].as_u64().is_some_and(|n| n >= 1),
        "recorded as a security event: {}",
        m["security"]
    );
    // A later change is delivered (the forged one took no seq), and the alert is active.
    let marker = publish_one(port, inv("p-forge", "w-forge", 3)).await;
    c.recv_seq("/inventory", "inventory:update", marker).await;
    wait_alert_listed(port, "", "p-forge").await;
    let active = active_alerts(port, "").await;
    assert!(
        active.iter().any(|x| id_str(&x["id"]) == id),
        "the alert must stay active: {active:?}"
    );
}
