//! Filter semantics: AND across fields, OR within, absent/empty = everything, numbers
//! compared as strings, bare strings refused, lowStockOnly, priority threshold, status
//! exact, tracking, one delivery per seq, subscription and value limits.
//!
//! "Must not arrive" checks publish a later marker change that must arrive on the same
//! connection and look at everything received before it (one namespace is in seq order).

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn and_across_fields_or_within_a_field() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-f-and-a", "p-f-and-b"], "warehouseIds": ["w-f-1"]}),
    )
    .await;

    let s1 = publish_one(port, inv("p-f-and-a", "w-f-1", 50)).await;
    let s2 = publish_one(port, inv("p-f-and-b", "w-f-1", 50)).await;
    publish_one(port, inv("p-f-and-a", "w-f-2", 50)).await; // wrong warehouse
    publish_one(port, inv("p-f-and-c", "w-f-1", 50)).await; // wrong product
    let marker = publish_one(port, inv("p-f-and-b", "w-f-1", 51)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![s1, s2, marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_field_matches_everything_and_empty_array_is_absent() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut all = server.connect().await;
    all.subscribe("/inventory", json!({})).await;
    let mut empty = server.connect().await;
    empty
        .subscribe(
            "/inventory",
            json!({"productIds": [], "categories": [], "warehouseIds": ["w-f-e1"]}),
        )
        .await;

    let s1 = publish_one(port, inv_cat("p-f-e1", "w-f-e1", "cat-a", 50)).await;
    let s2 = publish_one(port, inv_cat("p-f-e2", "w-f-e2", "cat-b", 50)).await;
    let s3 = publish_one(port, inv_cat("p-f-e3", "w-f-e1", "cat-c", 50)).await;
    assert_eq!(
        all.seqs_until("/inventory", "inventory:update", s3).await,
        vec![s1, s2, s3],
        "{{}} matches every change"
    );
    assert_eq!(
        empty.seqs_until("/inventory", "inventory:update", s3).await,
        vec![s1, s3],
        "[] is like an absent field; warehouseIds still applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_and_strings_compare_as_strings() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe("/inventory", json!({"productIds": [90123, "90456"]}))
        .await;

    let mut a = inv("x", "w-1", 50);
    a["data"]["productId"] = json!("90123");
    let mut b = inv("x", "w-1", 50);
    b["data"]["productId"] = json!(90456);
    let mut no = inv("x", "w-1", 50);
    no["data"]["productId"] = json!(90789);
    let s1 = publish_one(port, a.clone()).await;
    let s2 = publish_one(port, b).await;
    publish_one(port, no).await;
    let marker = publish_one(port, a).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![s1, s2, marker]
    );

    // Same on /orders orderIds.
    c.subscribe("/orders", json!({"orderIds": [777001]})).await;
    let mut o = order("x", "c-1", "pending");
    o["data"]["orderId"] = json!("777001");
    let so = publish_one(port, o).await;
    c.recv_seq("/orders", "order:update", so).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_string_in_plural_field_is_invalid_and_creates_nothing() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    // Without ack: error event naming the request, on its namespace.
    c.emit(
        "/inventory",
        "inventory:subscribe",
        json!({"productIds": "p-f-bare"}),
    )
    .await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/inventory");
    assert_error_obj(&f["data"], "invalid_filter");
    assert_eq!(f["data"]["event"], "inventory:subscribe");

    // With ack: the ack reply.
    let d = c
        .request(
            "/inventory",
            "inventory:subscribe",
            json!({"productIds": "p-f-bare"}),
        )
        .await;
    assert_ack_error(&d, "invalid_filter");

    // No subscription was created: a change of p-f-bare does not arrive (a
    // subscription that ignored the bad field would match everything).
    let marker_sub = c
        .subscribe_id("/inventory", json!({"productIds": ["p-f-bare-marker"]}))
        .await;
    publish_one(port, inv("p-f-bare", "w-1", 50)).await;
    let marker = publish_one(port, inv("p-f-bare-marker", "w-1", 50)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![marker]
    );
    let un = c
        .request("/inventory", "inventory:unsubscribe", json!({}))
        .await;
    assert_eq!(
        un["unsubscribed"],
        json!([marker_sub]),
        "only one subscription existed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_only_uses_change_then_configured_threshold() {
    let server = spawn_server(&[("LOW_STOCK_THRESHOLD", "20")]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-f-ls-1"], "lowStockOnly": true}),
    )
    .await;

    publish_one(port, inv("p-f-ls-1", "w-1", 50)).await; // above 20
    publish_one(port, inv("p-f-ls-1", "w-1", 21)).await; // above 20
    let s20 = publish_one(port, inv("p-f-ls-1", "w-1", 20)).await; // at threshold
    let s15 = publish_one(port, inv("p-f-ls-1", "w-1", 15)).await;
    // The change's own threshold wins over the configured one.
    let mut own_low = inv("p-f-ls-1", "w-1", 25);
    own_low["data"]["lowStockThreshold"] = json!(30);
    let s25 = publish_one(port, own_low).await;
    let mut own_high = inv("p-f-ls-1", "w-1", 12);
    own_high["data"]["lowStockThreshold"] = json!(5);
    publish_one(port, own_high).await; // 12 > 5: not low
    let marker = publish_one(port, inv("p-f-ls-1", "w-1", 0)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![s20, s15, s25, marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_only_default_threshold_is_ten() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-f-ls-d"], "lowStockOnly": true}),
    )
    .await;
    publish_one(port, inv("p-f-ls-d", "w-1", 11)).await;
    let s10 = publish_one(port, inv("p-f-ls-d", "w-1", 10)).await;
    publish_one(port, inv("p-f-ls-d", "w-1", 100)).await;
    let marker = publish_one(port, inv("p-f-ls-d", "w-1", 1)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![s10, marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_priority_is_a_threshold_and_types_filter() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut high = server.connect().await;
    high.subscribe("/notifications", json!({"priority": "high"}))
        .await;
    let mut typed = server.connect().await;
    typed
        .subscribe(
            "/notifications",
            json!({"types": ["order_update", "system_alert"]}),
        )
        .await;

    let first = publish_one(port, notification("n-f-1", "system_alert", "low", "l")).await;
    publish_one(port, notification("n-f-2", "low_stock", "medium", "m")).await;
    let h = publish_one(port, notification("n-f-3", "low_stock", "high", "h")).await;
    let cr = publish_one(port, notification("n-f-4", "order_update", "critical", "c")).await;
    let marker = publish_one(port, notification("n-f-5", "system_alert", "high", "x")).await;

    assert_eq!(
        high.seqs_until("/notifications", "notification", marker)
            .await,
        vec![h, cr, marker],
        "priority high = high + critical"
    );
    assert_eq!(
        typed
            .seqs_until("/notifications", "notification", marker)
            .await,
        vec![first, cr, marker],
        "types filter: system_alert and order_update only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_status_matches_exactly_and_customer_filter() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut one = server.connect().await;
    one.subscribe("/orders", json!({"status": "shipped"})).await;
    let mut many = server.connect().await;
    many.subscribe(
        "/orders",
        json!({"status": ["shipped", "delivered"], "customerId": "c-f-st-1"}),
    )
    .await;
    let mut cust = server.connect().await;
    cust.subscribe("/orders", json!({"customerId": ["c-f-st-2", "c-f-st-3"]}))
        .await;

    let a = publish_one(port, order("o-f-st-1", "c-f-st-1", "shipped")).await;
    let b = publish_one(port, order("o-f-st-2", "c-f-st-1", "delivered")).await;
    let c = publish_one(port, order("o-f-st-3", "c-f-st-2", "shipped_partially")).await;
    let d = publish_one(port, order("o-f-st-4", "c-f-st-3", "processing")).await;
    let e = publish_one(port, order("o-f-st-5", "c-f-st-2", "shipped")).await;
    let marker = publish_one(port, order("o-f-st-6", "c-f-st-1", "shipped")).await;

    assert_eq!(
        one.seqs_until("/orders", "order:update", marker).await,
        vec![a, e, marker]
    );
    assert_eq!(
        many.seqs_until("/orders", "order:update", marker).await,
        vec![a, b, marker]
    );
    let m2 = publish_one(port, order("o-f-st-7", "c-f-st-3", "x")).await;
    assert_eq!(
        cust.seqs_until("/orders", "order:update", m2).await,
        vec![c, d, e, m2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_activity_types_filter() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe(
        "/customer",
        json!({"customerId": "c-f-act", "activityTypes": ["login", "purchase"]}),
    )
    .await;
    let a = publish_one(port, activity("c-f-act", "login")).await;
    publish_one(port, activity("c-f-act", "browse")).await;
    publish_one(port, activity("c-f-other", "login")).await;
    let marker = publish_one(port, activity("c-f-act", "purchase")).await;
    assert_eq!(
        c.seqs_until("/customer", "customer:activity", marker).await,
        vec![a, marker]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_matching_subscriptions_deliver_once() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;
    c.subscribe("/inventory", json!({"productIds": ["p-f-once"]}))
        .await;
    c.subscribe("/inventory", json!({"warehouseIds": ["w-f-once"]}))
        .await;
    c.subscribe("/inventory", json!({})).await;

    let s = publish_one(port, inv("p-f-once", "w-f-once", 50)).await;
    let marker = publish_one(port, inv("p-f-once-m", "w-other", 50)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", marker).await,
        vec![s, marker],
        "one seq is delivered once per connection"
    );

    // Same for notifications.
    c.subscribe("/notifications", json!({"priority": "low"}))
        .await;
    c.subscribe("/notifications", json!({"types": ["t-once"]}))
        .await;
    let n = publish_one(port, notification("n-once", "t-once", "high", "x")).await;
    let nm = publish_one(port, notification("n-once-m", "t-other", "high", "y")).await;
    assert_eq!(
        c.seqs_until("/notifications", "notification", nm).await,
        vec![n, nm]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_needs_tracking_enabled() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut plain = server.connect().await;
    plain
        .subscribe("/orders", json!({"orderIds": ["o-f-tr"]}))
        .await;
    let mut tracked = server.connect().await;
    tracked
        .subscribe(
            "/orders",
            json!({"orderIds": ["o-f-tr"], "trackingEnabled": true}),
        )
        .await;

    let change = tracking("o-f-tr", "Berlin hub");
    let t = publish_one(port, change.clone()).await;
    let (p, _) = tracked.recv_seq("/orders", "order:tracking", t).await;
    assert_eq!(p["type"], "order_tracking");
    assert_eq!(p["data"], change["data"]);
    assert_iso_ms(&p["timestamp"], "tracking P.timestamp");

    // The subscriber without trackingEnabled gets the order update but not tracking.
    let marker = publish_one(port, order("o-f-tr", "c-1", "shipped")).await;
    let (_, before) = plain.recv_seq("/orders", "order:update", marker).await;
    assert!(
        seqs_of(&before, "/orders", "order:tracking").is_empty(),
        "order:tracking without trackingEnabled: {before:?}"
    );
    // The tracked one gets order updates too.
    tracked.recv_seq("/orders", "order:update", marker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_track_with_and_without_ack() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    // Nothing tracked yet: null.
    let d = c
        .request("/orders", "orders:track", json!({"orderId": "o-f-track"}))
        .await;
    assert_eq!(d["orderId"], "o-f-track", "{d}");
    assert!(
        d.get("tracking").is_some() && d["tracking"].is_null(),
        "tracking null: {d}"
    );

    publish_one(port, tracking("o-f-track", "Leipzig")).await;
    let latest = publish_one(port, tracking("o-f-track", "Hamburg")).await;
    publish_one(port, tracking("o-f-track-other", "Paris")).await;

    let d = c
        .request("/orders", "orders:track", json!({"orderId": "o-f-track"}))
        .await;
    assert_eq!(d["orderId"], "o-f-track");
    assert_eq!(d["tracking"]["seq"], latest, "latest tracking change: {d}");
    assert_eq!(d["tracking"]["type"], "order_tracking");
    assert_eq!(d["tracking"]["data"]["location"], "Hamburg");

    // Without ack, on a fresh connection: the latest comes as order:tracking...
    let mut t = server.connect().await;
    t.emit("/orders", "orders:track", json!({"orderId": "o-f-track"}))
        .await;
    let p = t.recv_event("/orders", "order:tracking").await;
    assert_eq!(p["seq"], latest, "{p}");
    // ...and later tracking changes of that order follow, other orders do not.
    publish_one(port, tracking("o-f-track-other", "Rome")).await;
    let next = publish_one(port, tracking("o-f-track", "Munich")).await;
    let (p, before) = t.recv_seq("/orders", "order:tracking", next).await;
    assert_eq!(p["data"]["location"], "Munich");
    assert!(
        seqs_of(&before, "/orders", "order:tracking").is_empty(),
        "only o-f-track tracking follows: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_counts_all_namespaces() {
    let server = spawn_server(&[("MAX_SUBSCRIPTIONS", "3")]);
    let mut c = server.connect().await;
    let first = c
        .subscribe_id("/inventory", json!({"productIds": ["p-1"]}))
        .await;
    c.subscribe("/inventory", json!({"productIds": ["p-2"]}))
        .await;
    c.subscribe("/orders", json!({})).await;

    let d = c
        .request("/customer", "customer:subscribe", json!({}))
        .await;
    assert_ack_error(&d, "too_many_subscriptions");
    c.emit("/notifications", "notifications:subscribe", json!({}))
        .await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/notifications");
    assert_error_obj(&f["data"], "too_many_subscriptions");
    assert_eq!(f["data"]["event"], "notifications:subscribe");

    // Freeing one makes room again.
    c.request(
        "/inventory",
        "inventory:unsubscribe",
        json!({"subscriptionId": first}),
    )
    .await;
    c.subscribe("/customer", json!({})).await;
    let d = c
        .request("/notifications", "notifications:subscribe", json!({}))
        .await;
    assert_ack_error(&d, "too_many_subscriptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_filter_values_per_field() {
    let server = spawn_server(&[("MAX_FILTER_VALUES", "3")]);
    let port = server.port;
    let mut c = server.connect().await;
    let d = c
        .request(
            "/inventory",
            "inventory:subscribe",
            json!({"productIds": ["a", "b", "c", "d"]}),
        )
        .await;
    assert_ack_error(&d, "invalid_filter");
    let d = c
        .request(
            "/orders",
            "orders:subscribe",
            json!({"status": ["a", "b", "c", "d"]}),
        )
        .await;
    assert_ack_error(&d, "invalid_filter");
    // At the limit is fine.
    c.subscribe(
        "/inventory",
        json!({"productIds": ["p-f-mv-1", "b", "c"], "warehouseIds": ["w-1", "w-2", "w-3"]}),
    )
    .await;
    let s = publish_one(port, inv("p-f-mv-1", "w-2", 50)).await;
    let seqs = c.seqs_until("/inventory", "inventory:update", s).await;
    assert_eq!(seqs, vec![s], "only the accepted subscription exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_only_must_be_a_boolean_in_every_request() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    assert_low_stock_only_takes_only_booleans(&mut c).await;
}
