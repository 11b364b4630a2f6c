//! Native protocol basics on `/`: connection:established, auth:login in open mode,
//! data:request, frame envelope rules (ns default, acks vs named events).

mod common;

use common::*;
use serde_json::{json, Value};

const ALL_NS: [&str; 5] = [
    "/inventory",
    "/orders",
    "/dashboard",
    "/customer",
    "/notifications",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_established_fields() {
    let server = spawn_server(&[("HEARTBEAT_INTERVAL_MS", "12345")]);
    let a = Client::connect(server.port).await;
    let b = Client::connect(server.port).await;

    let e = &a.established;
    let id = e["connectionId"].as_str().expect("connectionId string");
    assert!(!id.is_empty(), "empty connectionId: {e}");
    assert_ne!(
        a.connection_id(),
        b.connection_id(),
        "two connections must have distinct ids"
    );
    assert_iso_ms(&e["serverTime"], "connection:established.serverTime");
    let namespaces: Vec<&str> = e["namespaces"]
        .as_array()
        .unwrap_or_else(|| panic!("namespaces must be an array: {e}"))
        .iter()
        .map(|v| v.as_str().expect("namespace strings"))
        .collect();
    for ns in ALL_NS {
        assert!(namespaces.contains(&ns), "{ns} missing from {namespaces:?}");
    }
    assert_eq!(
        e["authenticated"], false,
        "no token seen, so authenticated is false: {e}"
    );
    assert_eq!(
        e["heartbeatMs"], 12345,
        "heartbeatMs is HEARTBEAT_INTERVAL_MS: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_root_path_serves_native_protocol() {
    let server = spawn_server(&[]);
    // Client::connect_path asserts the connection:established first frame.
    let mut c = Client::connect_path(server.port, "/").await;
    assert!(c.established["connectionId"].is_string());
    c.assert_usable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_open_mode_is_anonymous_admin_of_default() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;

    // Without ack: the named response event on /.
    c.emit(
        "/",
        "auth:login",
        json!({"token": "anything-goes-in-open-mode"}),
    )
    .await;
    let (f, _) = c
        .recv_matching("auth:success or auth:error", |f| {
            f["event"] == "auth:success" || f["event"] == "auth:error"
        })
        .await;
    assert_eq!(
        f["event"], "auth:success",
        "open mode accepts auth:login: {f}"
    );
    assert_eq!(f["ns"], "/");
    check_auth_success(&f["data"]);

    // With ack: the same object as the ack reply.
    let data = c
        .request("/", "auth:login", json!({"token": "another"}))
        .await;
    check_auth_success(&data);
}

fn check_auth_success(d: &Value) {
    assert!(d.get("error").is_none(), "auth refused: {d}");
    assert!(
        d["userId"].is_string(),
        "auth:success.userId must be a string: {d}"
    );
    assert_eq!(d["tenantId"], "default", "{d}");
    let roles = d["roles"].as_array().expect("roles array");
    assert!(
        roles.iter().any(|r| r == "admin"),
        "open mode login is an admin: {d}"
    );
    // expiresAt: a timestamp, or null for an anonymous session that never expires.
    if !d["expiresAt"].is_null() {
        assert_iso_ms_any(&d["expiresAt"], "auth:success.expiresAt");
    } else {
        assert!(
            d.get("expiresAt").is_some(),
            "auth:success must carry expiresAt: {d}"
        );
    }
}

/// ISO-8601 with ms, not necessarily close to now (an expiry may be far away).
fn assert_iso_ms_any(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    assert!(
        parse_iso_ms(s).is_some(),
        "{what}: {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_request_answers_every_data_type() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = server.connect().await;

    // Make sure some of the answers have to contain our own data.
    let product = "p-data-request-1";
    publish_one(port, inv(product, "w-dr-1", 3)).await; // low stock: item + alert
    publish_one(
        port,
        order("o-data-request-1", "c-data-request-1", "pending"),
    )
    .await;
    publish_one(port, activity("c-data-request-1", "login")).await;

    let types = [
        "inventory_summary",
        "low_stock_items",
        "order_stats",
        "recent_orders",
        "customer_activity",
        "alerts",
        "recent_changes",
    ];
    for dt in types {
        // Named response event without ack.
        c.emit(
            "/",
            "data:request",
            json!({"dataType": dt, "parameters": {}}),
        )
        .await;
        let (f, _) = c
            .recv_matching(&format!("data:response for {dt}"), |f| {
                f["event"] == "data:response" || f["event"] == "error"
            })
            .await;
        assert_eq!(f["event"], "data:response", "data:request {dt}: {f}");
        assert_eq!(f["ns"], "/");
        let d = &f["data"];
        assert_eq!(d["dataType"], dt, "{f}");
        assert!(
            d.get("data").is_some() && !d["data"].is_null(),
            "data:response.data for {dt}: {f}"
        );
        assert_iso_ms(&d["timestamp"], "data:response.timestamp");

        // Ack reply with the same shape.
        let d = c
            .request(
                "/",
                "data:request",
                json!({"dataType": dt, "parameters": {"limit": 1000}}),
            )
            .await;
        assert!(d.get("error").is_none(), "{dt}: {d}");
        assert_eq!(d["dataType"], dt, "{d}");
        assert_iso_ms(&d["timestamp"], "data:response.timestamp (ack)");
        let text = d["data"].to_string();
        match dt {
            "low_stock_items" | "alerts" | "recent_changes" => assert!(
                text.contains(product),
                "{dt} should mention {product} (published with quantity 3): {text}"
            ),
            "recent_orders" => assert!(
                text.contains("o-data-request-1"),
                "recent_orders should list o-data-request-1: {text}"
            ),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_request_unknown_type_is_not_found() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;

    c.emit(
        "/",
        "data:request",
        json!({"dataType": "no_such_type", "parameters": {}}),
    )
    .await;
    let err = c.recv_event("/", "error").await;
    assert_error_obj(&err, "not_found");
    assert_eq!(
        err["event"], "data:request",
        "error names the request: {err}"
    );

    let d = c
        .request("/", "data:request", json!({"dataType": "no_such_type"}))
        .await;
    assert_ack_error(&d, "not_found");
    c.assert_usable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_defaults_to_root() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    c.send(json!({"event": "data:request", "data": {"dataType": "inventory_summary"}, "ack": 41}))
        .await;
    let f = c.recv_ack_frame(41).await;
    assert_eq!(f["ns"], "/", "a frame without ns is on /: {f}");
    assert_eq!(f["data"]["dataType"], "inventory_summary", "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_replaces_the_named_response_event() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;

    // With ack: only the ack reply, no inventory:subscribed event.
    c.send(json!({"ns": "/inventory", "event": "inventory:subscribe",
                  "data": {"productIds": ["p-ack-1"]}, "ack": 0}))
        .await;
    let (reply, before) = c.recv_matching("ack 0", |f| f["ack"] == 0).await;
    assert_eq!(reply["ns"], "/inventory");
    let data = &reply["data"];
    assert!(data["subscriptionId"].is_string(), "{reply}");
    assert_eq!(data["replayed"], 0, "{reply}");
    assert_eq!(data["gap"], false, "{reply}");
    assert!(data["filters"].is_object(), "{reply}");

    // Then a request without ack: answered by the named event inventory:current, and
    // no inventory:subscribed may have come for the acked subscribe.
    c.emit(
        "/inventory",
        "inventory:get-current",
        json!({"filters": {}}),
    )
    .await;
    let (cur, between) = c
        .recv_matching("inventory:current", |f| f["event"] == "inventory:current")
        .await;
    assert_eq!(cur["ns"], "/inventory");
    assert!(cur["data"]["items"].is_array(), "{cur}");
    for f in before.iter().chain(between.iter()) {
        assert_ne!(
            f["event"], "inventory:subscribed",
            "a subscribe with ack must not also get inventory:subscribed: {f}"
        );
    }

    // Without ack: the named event carrying the same object.
    c.emit(
        "/inventory",
        "inventory:subscribe",
        json!({"productIds": ["p-ack-2"]}),
    )
    .await;
    let d = c.recv_event("/inventory", "inventory:subscribed").await;
    assert!(d["subscriptionId"].is_string(), "{d}");
    assert_ne!(d["subscriptionId"], data["subscriptionId"]);
    assert_eq!(d["filters"]["productIds"], json!(["p-ack-2"]), "{d}");
    assert_eq!(d["replayed"], 0);
    assert_eq!(d["gap"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_is_on_the_request_namespace() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    c.emit(
        "/orders",
        "orders:unsubscribe",
        json!({"subscriptionId": "nope-404"}),
    )
    .await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/orders", "error frame on the request's ns: {f}");
    assert_error_obj(&f["data"], "not_found");
    assert_eq!(f["data"]["event"], "orders:unsubscribe");
}

/// A published batch is written to each subscriber by the publishing pass itself, right
/// after routing (docs/protocol.md, "GET /metrics and GET /metrics/prometheus"), in
/// order, and the connection's task only writes what a full socket left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishing_pass_writes_to_subscribers_in_order() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(port).await;
        c.subscribe("/inventory", json!({"productIds": ["p-pass"]}))
            .await;
        clients.push(c);
    }
    let m = metrics(port).await;
    let before = m["websocket"]["messagesSentByPublisher"]
        .as_u64()
        .unwrap_or_else(|| panic!("no messagesSentByPublisher: {m}"));
    let batch: Vec<Value> = (0..20).map(|q| inv("p-pass", "w-pass", 100 + q)).collect();
    let seqs = publish(port, &json!(batch)).await;
    for c in &mut clients {
        for &seq in &seqs {
            c.recv_seq("/inventory", "inventory:update", seq).await;
        }
    }
    let after = metrics(port).await["websocket"]["messagesSentByPublisher"]
        .as_u64()
        .unwrap_or(0);
    // Idle sockets take a batch at once: the pass wrote (nearly) all 40 frames.
    assert!(
        after - before >= seqs.len() as u64,
        "the publishing pass wrote {} of {} frames",
        after - before,
        2 * seqs.len()
    );
}
