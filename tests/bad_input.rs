//! Bad input of every kind. Each case is followed by a check that a bystander on
//! another connection still receives a published change and, for the cases that do
//! not close the connection, that the offending connection is still usable.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Case {
    server: TestServer,
    bystander: Bystander,
}

impl Case {
    async fn new(envs: &[(&str, &str)]) -> Case {
        let server = spawn_server(envs);
        let bystander = Bystander::new(server.port, "p-bystander").await;
        Case { server, bystander }
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    async fn bystander_ok(&mut self) {
        let port = self.port();
        self.bystander.assert_receives(port).await;
    }
}

/// Sends `text` and expects one `error {invalid_message}` on `/` (or on `ns`), then
/// checks the connection and the bystander.
async fn expect_invalid_message(case: &mut Case, c: &mut Client, text: &str, ns: &str) -> Value {
    c.send_text(text).await;
    let (f, _) = c
        .recv_matching(&format!("error for {text:.80}"), |f| f["event"] == "error")
        .await;
    assert_eq!(f["ns"], ns, "error frame ns for {text:.80}: {f}");
    assert_error_obj(&f["data"], "invalid_message");
    c.assert_usable().await;
    case.bystander_ok().await;
    f["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for text in ["{\"ns\":\"/\",\"event\":", "not json at all", "{'a':1}", ""] {
        expect_invalid_message(&mut case, &mut c, text, "/").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_an_object() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for text in ["[1,2,3]", "\"data:request\"", "42", "null", "true"] {
        expect_invalid_message(&mut case, &mut c, text, "/").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_or_event_not_strings() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for frame in [
        json!({"ns": 5, "event": "data:request", "data": {"dataType": "inventory_summary"}}),
        json!({"ns": ["/"], "event": "data:request", "data": {}}),
        json!({"ns": "/", "event": 7, "data": {}}),
        json!({"ns": "/", "event": null, "data": {}}),
        json!({"ns": "/", "data": {}}),
    ] {
        expect_invalid_message(&mut case, &mut c, &frame.to_string(), "/").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_not_a_non_negative_integer() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for ack in [
        json!(-1),
        json!(1.5),
        json!("7"),
        json!(true),
        json!({"id": 1}),
    ] {
        let frame = json!({"ns": "/", "event": "data:request",
                           "data": {"dataType": "inventory_summary"}, "ack": ack});
        let err = expect_invalid_message(&mut case, &mut c, &frame.to_string(), "/").await;
        assert_eq!(
            err["event"], "data:request",
            "error names the request: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_not_an_object() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for data in [json!([1]), json!("x"), json!(3), json!(true)] {
        // Without ack: error event naming the request, on the request's ns.
        let frame = json!({"ns": "/inventory", "event": "inventory:subscribe", "data": data});
        let err = expect_invalid_message(&mut case, &mut c, &frame.to_string(), "/inventory").await;
        assert_eq!(err["event"], "inventory:subscribe", "{err}");

        // With a valid ack: the refusal is the ack reply.
        let id = c.next_ack_id();
        c.send(
            json!({"ns": "/inventory", "event": "inventory:subscribe", "data": data, "ack": id}),
        )
        .await;
        let f = c.recv_ack_frame(id).await;
        assert_eq!(f["ns"], "/inventory");
        assert_ack_error(&f["data"], "invalid_message");
        c.assert_usable().await;
        case.bystander_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_deeper_than_64() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    let deep = format!(
        "{{\"ns\":\"/\",\"event\":\"data:request\",\"data\":{{\"dataType\":\"inventory_summary\",\"parameters\":{}1{}}}}}",
        "{\"a\":".repeat(100),
        "}".repeat(100)
    );
    serde_json::from_str::<serde::de::IgnoredAny>(&deep).expect("test frame is valid JSON");
    expect_invalid_message(&mut case, &mut c, &deep, "/").await;
    let deep_array = format!(
        "{{\"ns\":\"/\",\"event\":\"data:request\",\"data\":{{\"dataType\":\"inventory_summary\",\"x\":{}{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    expect_invalid_message(&mut case, &mut c, &deep_array, "/").await;

    // Moderate nesting is fine.
    let ok = format!(
        "{{\"ns\":\"/\",\"event\":\"data:request\",\"ack\":900,\"data\":{{\"dataType\":\"inventory_summary\",\"parameters\":{}1{}}}}}",
        "{\"a\":".repeat(10),
        "}".repeat(10)
    );
    c.send_text(ok).await;
    let d = c.recv_ack(900).await;
    assert_eq!(d["dataType"], "inventory_summary", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for _ in 0..2 {
        c.send_binary(
            br#"{"ns":"/","event":"data:request","data":{"dataType":"inventory_summary"},"ack":5}"#
                .to_vec(),
        )
        .await;
        let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
        assert_eq!(f["ns"], "/");
        assert_error_obj(&f["data"], "invalid_message");
        c.assert_usable().await;
        case.bystander_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_is_not_found() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    c.emit("/bogus", "bogus:subscribe", json!({})).await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/bogus", "error on the request's ns: {f}");
    assert_error_obj(&f["data"], "not_found");
    assert_eq!(f["data"]["event"], "bogus:subscribe");
    c.assert_usable().await;
    case.bystander_ok().await;

    let d = c.request("/bogus", "inventory:subscribe", json!({})).await;
    assert_ack_error(&d, "not_found");
    c.assert_usable().await;
    case.bystander_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_event_on_wrong_namespace_is_unknown_event() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    for (ns, event) in [
        ("/orders", "inventory:subscribe"),
        ("/inventory", "orders:track"),
        ("/", "inventory:subscribe"),
        ("/inventory", "auth:login"),
        ("/notifications", "data:request"),
        ("/inventory", "inventory:explode"),
    ] {
        c.emit(ns, event, json!({})).await;
        let (f, _) = c
            .recv_matching(&format!("error for {event} on {ns}"), |f| {
                f["event"] == "error"
            })
            .await;
        assert_eq!(f["ns"], ns, "{f}");
        assert_error_obj(&f["data"], "unknown_event");
        assert_eq!(f["data"]["event"], event, "{f}");

        let d = c.request(ns, event, json!({})).await;
        assert_ack_error(&d, "unknown_event");
        c.assert_usable().await;
        case.bystander_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_filter_types_are_invalid_filter_and_create_nothing() {
    let mut case = Case::new(&[]).await;
    let mut c = Client::connect(case.port()).await;
    let cases = [
        ("/inventory", json!({"productIds": "p-1"})),
        ("/inventory", json!({"productIds": [true]})),
        ("/inventory", json!({"productIds": {"a": 1}})),
        ("/inventory", json!({"warehouseIds": [["w-1"]]})),
        ("/inventory", json!({"categories": [null]})),
        ("/inventory", json!({"lowStockOnly": "yes"})),
        ("/inventory", json!({"sinceSeq": "10"})),
        ("/orders", json!({"orderIds": "o-1"})),
        ("/orders", json!({"customerId": {"id": "c-1"}})),
        ("/orders", json!({"status": true})),
        ("/orders", json!({"trackingEnabled": "yes"})),
        ("/customer", json!({"activityTypes": "login"})),
        ("/customer", json!({"customerId": [{"x": 1}]})),
        ("/notifications", json!({"types": "low_stock"})),
        ("/notifications", json!({"priority": 7})),
    ];
    for (ns, filters) in cases {
        let prefix = ns.trim_start_matches('/');
        let event = format!("{prefix}:subscribe");
        c.emit(ns, &event, filters.clone()).await;
        let (f, _) = c
            .recv_matching(&format!("error for {filters}"), |f| f["event"] == "error")
            .await;
        assert_eq!(f["ns"], ns, "{filters}: {f}");
        assert_error_obj(&f["data"], "invalid_filter");
        assert_eq!(f["data"]["event"], event.as_str(), "{f}");

        let d = c.request(ns, &event, filters.clone()).await;
        assert_ack_error(&d, "invalid_filter");

        // No subscription was created by either attempt.
        let un = c
            .request(ns, &format!("{prefix}:unsubscribe"), json!({}))
            .await;
        assert_eq!(
            un["unsubscribed"],
            json!([]),
            "{filters} must not create a subscription: {un}"
        );
        c.assert_usable().await;
        case.bystander_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_filter_values() {
    let mut case = Case::new(&[("MAX_FILTER_VALUES", "2")]).await;
    let mut c = Client::connect(case.port()).await;
    for (ns, filters) in [
        ("/inventory", json!({"productIds": ["a", "b", "c"]})),
        ("/orders", json!({"orderIds": [1, 2, 3]})),
        ("/customer", json!({"activityTypes": ["a", "b", "c"]})),
        ("/notifications", json!({"types": ["a", "b", "c"]})),
    ] {
        let event = format!("{}:subscribe", ns.trim_start_matches('/'));
        let d = c.request(ns, &event, filters).await;
        assert_ack_error(&d, "invalid_filter");
        c.assert_usable().await;
        case.bystander_ok().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions() {
    let mut case = Case::new(&[("MAX_SUBSCRIPTIONS", "2")]).await;
    let mut c = Client::connect(case.port()).await;
    c.subscribe("/inventory", json!({})).await;
    c.subscribe("/orders", json!({})).await;
    c.emit("/customer", "customer:subscribe", json!({})).await;
    let (f, _) = c.recv_matching("error", |f| f["event"] == "error").await;
    assert_eq!(f["ns"], "/customer");
    assert_error_obj(&f["data"], "too_many_subscriptions");
    c.assert_usable().await;
    case.bystander_ok().await;
    // The bystander's own limit is separate.
    case.bystander.client.subscribe("/orders", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_max_message_bytes_closes_1009() {
    let mut case = Case::new(&[("MAX_MESSAGE_BYTES", "4096")]).await;
    let port = case.port();

    // Just under the limit is accepted.
    let mut raw = RawClient::connect(port, "/ws").await;
    raw.recv_event("/", "connection:established").await;
    let pad = "x".repeat(3800);
    let frame = json!({"ns": "/", "event": "data:request", "ack": 1,
                       "data": {"dataType": "inventory_summary", "parameters": {"pad": pad}}});
    assert!(frame.to_string().len() < 4096);
    raw.send_json(&frame).await;
    assert_eq!(raw.recv_ack(1).await["dataType"], "inventory_summary");

    // Over the limit: close 1009.
    let pad = "x".repeat(5000);
    let frame = json!({"ns": "/", "event": "data:request",
                       "data": {"dataType": "inventory_summary", "parameters": {"pad": pad}}});
    raw.send_frame(true, OP_TEXT, frame.to_string().as_bytes())
        .await;
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1009));
    case.bystander_ok().await;

    // Same through fragments each under the limit.
    let mut raw = RawClient::connect(port, "/ws").await;
    raw.recv_event("/", "connection:established").await;
    let text = frame.to_string();
    let bytes = text.as_bytes();
    let (a, rest) = bytes.split_at(2000);
    let (b, c) = rest.split_at(2000);
    raw.send_frame(false, OP_TEXT, a).await;
    raw.send_frame(false, OP_CONT, b).await;
    raw.send_frame(true, OP_CONT, c).await;
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1009));
    case.bystander_ok().await;

    // Many small fragments: the total is capped, not each fragment, so the server
    // closes once the message passes the limit however it is cut up.
    let mut raw = RawClient::connect(port, "/ws").await;
    raw.recv_event("/", "connection:established").await;
    let piece = [b'x'; 64];
    assert!(raw.send_frame(false, OP_TEXT, &piece).await);
    for _ in 0..1000 {
        if !raw.send_frame(false, OP_CONT, &piece).await {
            break;
        }
    }
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1009));
    case.bystander_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_is_reassembled() {
    let mut case = Case::new(&[]).await;
    let mut raw = RawClient::connect(case.port(), "/ws").await;
    raw.recv_event("/", "connection:established").await;
    let text = json!({"ns": "/", "event": "data:request", "ack": 3,
                      "data": {"dataType": "inventory_summary", "parameters": {}}})
    .to_string();
    let bytes = text.as_bytes();
    raw.send_frame(false, OP_TEXT, &bytes[..10]).await;
    // A ping between fragments is legal.
    raw.send_frame(true, OP_PING, b"hi").await;
    raw.send_frame(false, OP_CONT, &bytes[10..20]).await;
    raw.send_frame(true, OP_CONT, &bytes[20..]).await;
    let d = raw.recv_ack(3).await;
    assert_eq!(d["dataType"], "inventory_summary", "{d}");
    case.bystander_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_closes_1007() {
    let mut case = Case::new(&[]).await;
    let mut raw = RawClient::connect(case.port(), "/ws").await;
    raw.recv_event("/", "connection:established").await;
    raw.send_frame(true, OP_TEXT, b"{\"ns\":\"/\",\"event\":\"\xff\xfe\"}")
        .await;
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1007));
    case.bystander_ok().await;

    // Invalid UTF-8 split across fragments as well.
    let mut raw = RawClient::connect(case.port(), "/ws").await;
    raw.recv_event("/", "connection:established").await;
    raw.send_frame(false, OP_TEXT, b"{\"ns\":\"/\",\"x\":\"\xe2\x82")
        .await;
    raw.send_frame(true, OP_CONT, b"\x41\"}").await;
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1007));
    case.bystander_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_then_closes_abusers_1008() {
    let mut case = Case::new(&[
        ("RATE_LIMIT_MAX_MESSAGES", "5"),
        ("RATE_LIMIT_WINDOW_MS", "60000"),
    ])
    .await;
    let mut raw = RawClient::connect(case.port(), "/ws").await;
    raw.recv_event("/", "connection:established").await;

    // Bad frames count toward the limit.
    for _ in 0..3 {
        raw.send_text("{oops").await;
        let e = raw.recv_event("/", "error").await;
        assert_error_obj(&e, "invalid_message");
    }
    for _ in 0..2 {
        let d = raw
            .request(
                "/",
                "data:request",
                json!({"dataType": "inventory_summary"}),
            )
            .await;
        assert_eq!(d["dataType"], "inventory_summary", "{d}");
    }
    // The sixth message in the window is refused.
    raw.send_json(&json!({"ns": "/inventory", "event": "inventory:subscribe", "data": {}}))
        .await;
    let (f, _) = raw
        .recv_matching("rate_limited", |f| f["event"] == "error")
        .await;
    assert_eq!(f["ns"], "/inventory");
    assert_error_obj(&f["data"], "rate_limited");
    assert!(
        f["data"]["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 60_000),
        "retryAfterMs: {f}"
    );
    case.bystander_ok().await;

    // Keep hammering: the connection is closed with 1008.
    let mut sent = 0;
    while sent < 1000 {
        if !raw.send_frame(true, OP_TEXT, b"{oops").await {
            break;
        }
        sent += 1;
    }
    assert_eq!(raw.expect_close(Duration::from_secs(20)).await, Some(1008));
    case.bystander_ok().await;
    // A new connection from the same address is not affected.
    let mut c = Client::connect(case.port()).await;
    c.assert_usable().await;
}
