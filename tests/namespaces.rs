//! Each namespace's subscribe / subscribed / update / unsubscribe events, the change
//! payload P and the notification N, inventory:get-current.

mod common;

use common::*;
use serde_json::{json, Value};

fn check_subscribed(d: &Value) {
    assert!(d["subscriptionId"].is_string(), "subscriptionId: {d}");
    assert!(d["filters"].is_object(), "filters: {d}");
    assert_eq!(d["replayed"], 0, "replayed: {d}");
    assert_eq!(d["gap"], false, "gap: {d}");
}

/// Checks P = {seq, type, timestamp, tenantId, data} against what was published.
fn check_payload(p: &Value, seq: u64, ptype: &str, published: &Value) {
    assert_eq!(p["seq"], seq, "{p}");
    assert_eq!(p["type"], ptype, "{p}");
    assert_iso_ms(&p["timestamp"], "P.timestamp");
    assert_eq!(p["tenantId"], "default", "{p}");
    assert_eq!(
        p["data"], published["data"],
        "P.data must be the published data unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_subscribe_update_unsubscribe() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    c.emit(
        "/inventory",
        "inventory:subscribe",
        json!({"productIds": ["p-ns-inv-1"]}),
    )
    .await;
    let sub = c.recv_event("/inventory", "inventory:subscribed").await;
    check_subscribed(&sub);
    assert_eq!(sub["filters"]["productIds"], json!(["p-ns-inv-1"]));
    let sub_id = sub["subscriptionId"].as_str().unwrap().to_string();
    let marker_sub = c
        .subscribe_id("/inventory", json!({"productIds": ["p-ns-inv-marker"]}))
        .await;

    // Unknown fields, nested values and a send timestamp survive unchanged.
    let mut change = inv("p-ns-inv-1", "w-1", 50);
    change["data"]["clientSentAt"] = json!(1_764_144_000_123_u64);
    change["data"]["nested"] = json!({"a": [1, 2, {"b": null}], "s": "x\"y"});
    change["data"]["previousQuantity"] = json!(55);
    let seq = publish_one(port, change.clone()).await;
    let (p, _) = c.recv_seq("/inventory", "inventory:update", seq).await;
    check_payload(&p, seq, "inventory_update", &change);

    // Unsubscribe by id: the reply names it.
    c.emit(
        "/inventory",
        "inventory:unsubscribe",
        json!({"subscriptionId": sub_id}),
    )
    .await;
    let un = c.recv_event("/inventory", "inventory:unsubscribed").await;
    assert_eq!(un["unsubscribed"], json!([sub_id]), "{un}");

    // The removed subscription gets nothing; the other one still works.
    let gone = publish_one(port, inv("p-ns-inv-1", "w-1", 49)).await;
    let marker = publish_one(port, inv("p-ns-inv-marker", "w-1", 49)).await;
    let seqs = c.seqs_until("/inventory", "inventory:update", marker).await;
    assert_eq!(seqs, vec![marker], "seq {gone} came after unsubscribe");

    // Unsubscribing the same id again: not_found.
    let d = c
        .request(
            "/inventory",
            "inventory:unsubscribe",
            json!({"subscriptionId": sub_id}),
        )
        .await;
    assert_ack_error(&d, "not_found");

    // With ack: the ack reply carries {unsubscribed:[id]}.
    let d = c
        .request(
            "/inventory",
            "inventory:unsubscribe",
            json!({"subscriptionId": marker_sub}),
        )
        .await;
    assert_eq!(d["unsubscribed"], json!([marker_sub]), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_id_removes_all_of_that_namespace_only() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    let a = c
        .subscribe_id("/inventory", json!({"productIds": ["p-ns-all-1"]}))
        .await;
    let b = c
        .subscribe_id("/inventory", json!({"warehouseIds": ["w-ns-all"]}))
        .await;
    c.subscribe("/orders", json!({"orderIds": ["o-ns-all-1"]}))
        .await;

    c.emit("/inventory", "inventory:unsubscribe", json!({}))
        .await;
    let un = c.recv_event("/inventory", "inventory:unsubscribed").await;
    let mut got: Vec<String> = un["unsubscribed"]
        .as_array()
        .unwrap_or_else(|| panic!("unsubscribed list: {un}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(got, want);

    // /orders is untouched.
    let o = publish_one(port, order("o-ns-all-1", "c-1", "pending")).await;
    c.recv_seq("/orders", "order:update", o).await;

    // Nothing of the removed inventory subscriptions arrives; a new one works.
    c.subscribe("/inventory", json!({"productIds": ["p-ns-all-marker"]}))
        .await;
    let gone1 = publish_one(port, inv("p-ns-all-1", "w-x", 40)).await;
    let gone2 = publish_one(port, inv("p-other", "w-ns-all", 40)).await;
    let marker = publish_one(port, inv("p-ns-all-marker", "w-x", 40)).await;
    let seqs = c.seqs_until("/inventory", "inventory:update", marker).await;
    assert_eq!(
        seqs,
        vec![marker],
        "{gone1}/{gone2} must not arrive after unsubscribe-all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_subscribe_update_unsubscribe() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    c.emit(
        "/orders",
        "orders:subscribe",
        json!({"orderIds": ["o-ns-1"]}),
    )
    .await;
    let sub = c.recv_event("/orders", "orders:subscribed").await;
    check_subscribed(&sub);
    let id = sub["subscriptionId"].as_str().unwrap().to_string();

    let mut change = order("o-ns-1", "c-ns-1", "processing");
    change["data"]["total"] = json!(99.5);
    let seq = publish_one(port, change.clone()).await;
    let (p, _) = c.recv_seq("/orders", "order:update", seq).await;
    check_payload(&p, seq, "order_update", &change);

    c.emit(
        "/orders",
        "orders:unsubscribe",
        json!({"subscriptionId": id}),
    )
    .await;
    let un = c.recv_event("/orders", "orders:unsubscribed").await;
    assert_eq!(un["unsubscribed"], json!([id]));

    c.subscribe("/orders", json!({"orderIds": ["o-ns-marker"]}))
        .await;
    publish_one(port, order("o-ns-1", "c-ns-1", "shipped")).await;
    let marker = publish_one(port, order("o-ns-marker", "c-ns-1", "shipped")).await;
    assert_eq!(
        c.seqs_until("/orders", "order:update", marker).await,
        vec![marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_subscribe_activity_unsubscribe() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    c.emit(
        "/customer",
        "customer:subscribe",
        json!({"customerId": "c-ns-1", "realtimeTracking": true}),
    )
    .await;
    let sub = c.recv_event("/customer", "customer:subscribed").await;
    check_subscribed(&sub);
    let id = sub["subscriptionId"].as_str().unwrap().to_string();

    let mut change = activity("c-ns-1", "purchase");
    change["data"]["amount"] = json!(12);
    let seq = publish_one(port, change.clone()).await;
    let (p, _) = c.recv_seq("/customer", "customer:activity", seq).await;
    check_payload(&p, seq, "customer_activity", &change);

    c.emit(
        "/customer",
        "customer:unsubscribe",
        json!({"subscriptionId": id}),
    )
    .await;
    let un = c.recv_event("/customer", "customer:unsubscribed").await;
    assert_eq!(un["unsubscribed"], json!([id]));

    c.subscribe("/customer", json!({"customerId": "c-ns-marker"}))
        .await;
    publish_one(port, activity("c-ns-1", "login")).await;
    let marker = publish_one(port, activity("c-ns-marker", "login")).await;
    assert_eq!(
        c.seqs_until("/customer", "customer:activity", marker).await,
        vec![marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_subscribe_notification_unsubscribe() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    c.emit("/notifications", "notifications:subscribe", json!({}))
        .await;
    let sub = c
        .recv_event("/notifications", "notifications:subscribed")
        .await;
    check_subscribed(&sub);
    let id = sub["subscriptionId"].as_str().unwrap().to_string();

    let change = notification("n-ns-1", "system_alert", "medium", "Disk almost full");
    let seq = publish_one(port, change.clone()).await;
    let (n, _) = c.recv_seq("/notifications", "notification", seq).await;
    assert_eq!(n["id"], "n-ns-1", "{n}");
    assert_eq!(n["seq"], seq, "{n}");
    assert_eq!(n["type"], "system_alert", "{n}");
    assert_eq!(n["priority"], "medium", "{n}");
    assert_eq!(n["message"], "Disk almost full", "{n}");
    assert_eq!(n["data"], change["data"]["data"], "{n}");
    assert_eq!(n["tenantId"], "default", "{n}");
    assert_iso_ms(&n["timestamp"], "N.timestamp");

    c.emit(
        "/notifications",
        "notifications:unsubscribe",
        json!({"subscriptionId": id}),
    )
    .await;
    let un = c
        .recv_event("/notifications", "notifications:unsubscribed")
        .await;
    assert_eq!(un["unsubscribed"], json!([id]));

    c.subscribe("/notifications", json!({"types": ["marker_type"]}))
        .await;
    publish_one(port, notification("n-ns-2", "system_alert", "high", "x")).await;
    let marker = publish_one(port, notification("n-ns-3", "marker_type", "high", "m")).await;
    assert_eq!(
        c.seqs_until("/notifications", "notification", marker).await,
        vec![marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_unknown_id_is_not_found_everywhere() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    for (ns, event) in [
        ("/inventory", "inventory:unsubscribe"),
        ("/orders", "orders:unsubscribe"),
        ("/customer", "customer:unsubscribe"),
        ("/notifications", "notifications:unsubscribe"),
        ("/dashboard", "dashboard:unsubscribe"),
    ] {
        c.emit(ns, event, json!({"subscriptionId": "no-such-subscription"}))
            .await;
        let (f, _) = c
            .recv_matching(&format!("error for {event}"), |f| f["event"] == "error")
            .await;
        assert_eq!(f["ns"], ns, "{f}");
        assert_error_obj(&f["data"], "not_found");
        assert_eq!(f["data"]["event"], event, "{f}");

        let d = c
            .request(ns, event, json!({"subscriptionId": "no-such-subscription"}))
            .await;
        assert_ack_error(&d, "not_found");
    }
}

fn item_field<'a>(item: &'a Value, key: &str) -> &'a Value {
    if item.get(key).is_some() {
        &item[key]
    } else {
        &item["data"][key]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_get_current_latest_row_per_product_and_warehouse() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    let cat = "cat-get-current-it";

    publish_one(port, inv_cat("p-gc-1", "w-gc-1", cat, 50)).await;
    publish_one(port, inv_cat("p-gc-1", "w-gc-1", cat, 40)).await;
    publish_one(port, inv_cat("p-gc-1", "w-gc-2", cat, 70)).await;
    publish_one(port, inv_cat("p-gc-2", "w-gc-1", "cat-other-it", 30)).await;

    for filters in [json!({"category": cat}), json!({"categories": [cat]})] {
        c.emit(
            "/inventory",
            "inventory:get-current",
            json!({"filters": filters}),
        )
        .await;
        let cur = c.recv_event("/inventory", "inventory:current").await;
        let items = cur["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items: {cur}"));
        let ours: Vec<&Value> = items
            .iter()
            .filter(|i| {
                let p = item_field(i, "productId");
                p == "p-gc-1" || p == "p-gc-2"
            })
            .collect();
        assert_eq!(
            ours.len(),
            2,
            "one row per product+warehouse of {cat} ({filters}): {cur}"
        );
        let w1 = ours
            .iter()
            .find(|i| item_field(i, "warehouseId") == "w-gc-1")
            .unwrap_or_else(|| panic!("row p-gc-1/w-gc-1 missing: {cur}"));
        assert_eq!(item_field(w1, "productId"), "p-gc-1");
        // A number: 40 in memory, 40.0 from a database's double precision column.
        assert_eq!(
            item_field(w1, "quantity").as_f64(),
            Some(40.0),
            "latest row: {cur}"
        );
        let w2 = ours
            .iter()
            .find(|i| item_field(i, "warehouseId") == "w-gc-2")
            .unwrap_or_else(|| panic!("row p-gc-1/w-gc-2 missing: {cur}"));
        assert_eq!(item_field(w2, "quantity").as_f64(), Some(70.0), "{cur}");
        for i in items {
            let category = item_field(i, "category");
            assert!(
                category.is_null() || category == cat,
                "item outside the category filter: {i}"
            );
        }
    }

    // With ack: same object.
    let d = c
        .request(
            "/inventory",
            "inventory:get-current",
            json!({"filters": {"category": cat}}),
        )
        .await;
    assert!(d["items"].is_array(), "{d}");
}

/// The update frame (raw bytes) for `seq` from a raw client.
async fn raw_update_bytes(c: &mut RawClient, seq: u64) -> Vec<u8> {
    loop {
        let f = c
            .read_frame(TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("waiting for seq {seq}: {e}"))
            .unwrap_or_else(|| panic!("connection ended waiting for seq {seq}"));
        if f.opcode != OP_TEXT {
            continue;
        }
        let v: Value = serde_json::from_slice(&f.payload).expect("json");
        if v["event"] == "inventory:update" && v["data"]["seq"] == seq {
            return f.payload;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_frame_is_byte_identical_for_every_subscriber() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut a = RawClient::connect(port, "/ws").await;
    a.subscribe("/inventory", json!({"productIds": ["p-ns-bytes"]}))
        .await;
    let mut b = RawClient::connect(port, "/ws").await;
    b.subscribe(
        "/inventory",
        json!({"warehouseIds": ["w-ns-bytes"], "lowStockOnly": false}),
    )
    .await;
    let mut c = RawClient::connect(port, "/ws").await;
    c.subscribe("/inventory", json!({})).await;

    let mut change = inv("p-ns-bytes", "w-ns-bytes", 77);
    change["data"]["note"] = json!("bytes ✓");
    let seq = publish_one(port, change).await;
    let fa = raw_update_bytes(&mut a, seq).await;
    let fb = raw_update_bytes(&mut b, seq).await;
    let fc = raw_update_bytes(&mut c, seq).await;
    assert_eq!(fa, fb, "frames differ between subscribers");
    assert_eq!(fa, fc, "frames differ between subscribers");

    // A replayed copy is the same frame as well.
    let mut d = RawClient::connect(port, "/ws").await;
    d.subscribe(
        "/inventory",
        json!({"productIds": ["p-ns-bytes"], "sinceSeq": seq - 1}),
    )
    .await;
    assert_eq!(
        raw_update_bytes(&mut d, seq).await,
        fa,
        "replayed frame differs"
    );
}
