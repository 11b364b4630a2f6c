//! HTTP endpoints on the WebSocket port: /, /health, /metrics, /metrics/prometheus,
//! /clients, /changes/:dataType, /publish, limits and errors, /test, /echo.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const NAMESPACES: [&str; 5] = [
    "/inventory",
    "/orders",
    "/dashboard",
    "/customer",
    "/notifications",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_serves_server_info() {
    let server = spawn_server(&[]);
    let r = http_get(server.port, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .contains("application/json"),
        "{:?}",
        r.headers
    );
    let b = r.json();
    assert!(
        b["name"].as_str().is_some_and(|s| !s.is_empty()),
        "name: {b}"
    );
    assert!(
        b["version"].as_str().is_some_and(|s| !s.is_empty()),
        "version: {b}"
    );
    assert!(b["uptime"].is_number(), "uptime: {b}");
    let text = b["namespaces"].to_string();
    for ns in NAMESPACES {
        assert!(text.contains(&format!("\"{ns}\"")), "{ns} missing: {b}");
    }
    assert!(
        b["endpoints"].is_object() || b["endpoints"].is_array(),
        "endpoints: {b}"
    );
    let endpoints = b["endpoints"].to_string();
    for path in ["/health", "/metrics", "/publish"] {
        assert!(
            endpoints.contains(path),
            "{path} missing from endpoints: {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_healthy_with_disabled_backends() {
    let server = spawn_server(&[]);
    let r = http_get(server.port, "/health").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["status"], "healthy", "{b}");
    assert_iso_ms(&b["timestamp"], "/health timestamp");
    assert!(b["uptime"].is_number(), "{b}");
    assert!(b["services"]["websocket"].is_object(), "{b}");
    // Each backend the shape under test has is healthy; the others are disabled.
    let shape = shape();
    let expect = |on: bool| if on { "healthy" } else { "disabled" };
    let db = matches!(shape, Shape::Database | Shape::DatabaseAndRedis);
    let redis = matches!(shape, Shape::Redis | Shape::DatabaseAndRedis);
    assert_eq!(b["services"]["niledb"]["status"], expect(db), "{b}");
    assert_eq!(b["services"]["redis"]["status"], expect(redis), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_counts_connections_messages_and_errors() {
    let server = spawn_server(&[]);
    let port = server.port;
    let m0 = metrics(port).await;
    assert!(m0["server"]["uptime"].is_number(), "{m0}");
    if !matches!(shape(), Shape::Database | Shape::DatabaseAndRedis) {
        assert_eq!(m0["niledb"]["status"], "disabled", "{m0}");
    }
    for key in [
        "activeConnections",
        "messagesSent",
        "messagesReceived",
        "slowConsumerCloses",
        "droppedFrames",
    ] {
        assert!(m0["websocket"][key].is_number(), "websocket.{key}: {m0}");
    }
    assert!(m0["websocket"]["errors"].is_object(), "{m0}");
    assert_eq!(m0["websocket"]["activeConnections"], 0, "{m0}");
    assert_eq!(m0["websocket"]["slowConsumerCloses"], 0, "{m0}");
    assert_eq!(m0["websocket"]["droppedFrames"], 0, "{m0}");
    let recv0 = m0["websocket"]["messagesReceived"].as_u64().unwrap();
    let sent0 = m0["websocket"]["messagesSent"].as_u64().unwrap();

    let mut c = Client::connect(port).await;
    let c2 = Client::connect(port).await;
    assert!(
        wait_until(TIMEOUT, || async {
            metrics(port).await["websocket"]["activeConnections"] == 2
        })
        .await,
        "activeConnections should reach 2"
    );
    for _ in 0..3 {
        c.assert_usable().await;
    }
    c.send_text("{not json").await;
    let err = c.recv_event("/", "error").await;
    assert_error_obj(&err, "invalid_message");

    assert!(
        wait_until(TIMEOUT, || async {
            let m = metrics(port).await;
            let w = &m["websocket"];
            w["messagesReceived"].as_u64().unwrap_or(0) >= recv0 + 4
                && w["messagesSent"].as_u64().unwrap_or(0) >= sent0 + 6
                && w["errors"]["invalid_message"].as_u64().unwrap_or(0) >= 1
        })
        .await,
        "messagesReceived/messagesSent/errors.invalid_message should grow: {}",
        metrics(port).await
    );

    drop(c2);
    assert!(
        wait_until(TIMEOUT, || async {
            metrics(port).await["websocket"]["activeConnections"] == 1
        })
        .await,
        "activeConnections should drop to 1 after a close: {}",
        metrics(port).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_exposition() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = Client::connect(port).await;
    c.send_text("[1,2,3]").await;
    let err = c.recv_event("/", "error").await;
    assert_error_obj(&err, "invalid_message");

    let ok = wait_until(TIMEOUT, || async {
        let r = http_get(port, "/metrics/prometheus").await;
        let text = r.text();
        text.lines().any(|l| {
            l.starts_with("nilecast_errors_total{")
                && l.contains("code=\"invalid_message\"")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
        }) && text.lines().any(|l| {
            l.starts_with("nilecast_connections_active")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)
        })
    })
    .await;
    let r = http_get(port, "/metrics/prometheus").await;
    let text = r.text();
    assert!(
        ok,
        "expected nilecast_errors_total{{code=\"invalid_message\"}} >= 1 and nilecast_connections_active 1:\n{text}"
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "content-type: {:?}",
        r.header("content-type")
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("nilecast_messages_received_total")),
        "{text}"
    );
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            assert!(rest.starts_with("nilecast_"), "metric name: {line}");
            if line.starts_with("# TYPE ") && line.ends_with(" counter") {
                let name = rest.split_whitespace().next().unwrap();
                assert!(
                    name.ends_with("_total"),
                    "counter not ending in _total: {line}"
                );
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        assert!(line.starts_with("nilecast_"), "metric name: {line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "sample value: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_lists_connections_with_fields() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = Client::connect(port).await;
    c.subscribe("/inventory", json!({"productIds": ["p-h-cl"]}))
        .await;
    let id = c.connection_id();

    let b = get_json(port, "/clients").await;
    let clients = b["clients"].as_array().unwrap_or_else(|| panic!("{b}"));
    assert_eq!(b["count"], clients.len(), "{b}");
    let me = clients
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("connection {id} not listed: {b}"));
    assert!(
        me["remoteAddress"]
            .as_str()
            .is_some_and(|a| a.contains("127.0.0.1")),
        "remoteAddress: {me}"
    );
    assert!(me.get("user").is_some(), "user: {me}");
    assert_eq!(me["tenant"], "default", "{me}");
    assert!(
        me["namespaces"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "/inventory")),
        "namespaces should include /inventory: {me}"
    );
    assert_eq!(subscription_count(&me["subscriptions"]), 1, "{me}");
    assert!(me["queueDepth"].is_u64(), "queueDepth: {me}");
    assert_iso_ms(&me["connectedSince"], "/clients connectedSince");

    drop(c);
    assert!(
        wait_until(TIMEOUT, || async {
            let b = get_json(port, "/clients").await;
            !b["clients"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["id"] == id.as_str()))
        })
        .await,
        "a closed connection leaves /clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_newest_first_with_since_and_limit() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut s = Vec::new();
    for q in 0..5 {
        s.push(publish_one(port, inv("p-h-ch", "w-1", 100 + q)).await);
    }
    let o = publish_one(port, order("o-h-ch", "c-1", "pending")).await;
    // With a stream, /changes lists what this node has delivered: wait for the last.
    wait_delivered(port, o).await;

    let seqs_of_body = |b: &Value| -> Vec<u64> {
        let changes = b["changes"].as_array().unwrap_or_else(|| panic!("{b}"));
        assert_eq!(b["count"], changes.len(), "{b}");
        changes
            .iter()
            .map(|c| c["seq"].as_u64().unwrap_or_else(|| panic!("seq: {c}")))
            .collect()
    };

    let all = get_json(port, &format!("/changes/inventory?since={}", s[0] - 1)).await;
    assert_eq!(
        seqs_of_body(&all),
        vec![s[4], s[3], s[2], s[1], s[0]],
        "newest first: {all}"
    );
    let first = &all["changes"][0];
    assert_eq!(first["type"], "inventory_update", "{first}");
    assert_eq!(first["tenantId"], "default");
    assert_eq!(first["data"]["productId"], "p-h-ch");
    assert_eq!(first["data"]["quantity"], 104);
    assert_iso_ms(&first["timestamp"], "change timestamp");

    let b = get_json(port, "/changes/inventory").await;
    let seqs = seqs_of_body(&b);
    assert!(
        !seqs.contains(&o),
        "orders change in /changes/inventory: {b}"
    );
    assert_eq!(&seqs[..5], &[s[4], s[3], s[2], s[1], s[0]], "{b}");
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    let b = get_json(port, &format!("/changes/inventory?since={}", s[1])).await;
    assert_eq!(
        seqs_of_body(&b),
        vec![s[4], s[3], s[2]],
        "since is exclusive"
    );

    let b = get_json(port, "/changes/inventory?limit=2").await;
    assert_eq!(seqs_of_body(&b), vec![s[4], s[3]], "limit");

    let b = get_json(port, &format!("/changes/inventory?since={}&limit=1", s[0])).await;
    assert_eq!(seqs_of_body(&b), vec![s[4]], "since + limit");

    let b = get_json(port, "/changes/orders").await;
    assert_eq!(seqs_of_body(&b)[0], o, "{b}");
    assert_eq!(b["changes"][0]["type"], "order_update");

    // limit is capped at 1000, not refused.
    let b = get_json(port, "/changes/inventory?limit=5000").await;
    assert!(seqs_of_body(&b).len() <= 1000);

    http_get(port, "/changes/bogus")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_limit_defaults_to_100_and_is_capped_at_1000() {
    let server = spawn_server(&[("REPLAY_MAX_CHANGES", "2000")]);
    let port = server.port;
    let batch: Vec<Value> = (0..1200)
        .map(|i| inv(&format!("p-h-lim-{i}"), "w-1", 100))
        .collect();
    let seqs = publish(port, &Value::Array(batch)).await;
    assert_eq!(seqs.len(), 1200);
    wait_delivered(port, seqs[1199]).await;
    let newest_first = |b: &Value| -> Vec<u64> {
        b["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("{b}"))
            .iter()
            .map(|c| c["seq"].as_u64().unwrap())
            .collect()
    };
    let mut want: Vec<u64> = seqs.clone();
    want.reverse();

    let b = get_json(port, "/changes/inventory").await;
    assert_eq!(newest_first(&b), want[..100].to_vec(), "default limit 100");
    let b = get_json(port, "/changes/inventory?limit=5000").await;
    assert_eq!(
        newest_first(&b),
        want[..1000].to_vec(),
        "limit capped at 1000"
    );
    assert_eq!(b["count"], 1000);
    let b = get_json(
        port,
        &format!("/changes/inventory?since={}&limit=1000", seqs[1099]),
    )
    .await;
    assert_eq!(
        newest_first(&b),
        want[..100].to_vec(),
        "since with a large limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_single_array_and_atomic_rejection() {
    let server = spawn_server(&[]);
    let port = server.port;
    let mut c = Client::connect(port).await;
    c.subscribe("/inventory", json!({"productIds": ["p-h-pub"]}))
        .await;

    let one = publish(port, &inv("p-h-pub", "w-1", 50)).await;
    assert_eq!(one.len(), 1);

    let three = publish(
        port,
        &json!([
            inv("p-h-pub", "w-1", 51),
            order("o-h-pub", "c-1", "pending"),
            inv("p-h-pub", "w-1", 52)
        ]),
    )
    .await;
    assert_eq!(three.len(), 3);
    assert!(
        one[0] < three[0] && three.windows(2).all(|w| w[0] < w[1]),
        "{one:?} {three:?}"
    );

    assert_eq!(publish(port, &json!([])).await, Vec::<u64>::new());

    // A bad change anywhere in an array: 400, nothing published.
    for bad in [
        json!([inv("p-h-pub", "w-1", 53), {"dataType": "bogus", "data": {}}]),
        json!([inv("p-h-pub", "w-1", 53), {"dataType": "inventory", "data": "not-an-object"}]),
        json!([inv("p-h-pub", "w-1", 53), 7]),
        json!([inv("p-h-pub", "w-1", 53), {"data": {"productId": "p-h-pub"}}]),
    ] {
        let r = http_post_json(port, "/publish", &bad).await;
        r.assert_error(400, "invalid_message");
    }
    // Bad single changes and bad bodies.
    for bad in [
        json!({"dataType": "bogus", "data": {}}),
        json!("inventory"),
        json!({"dataType": "inventory", "data": [1, 2]}),
    ] {
        http_post_json(port, "/publish", &bad)
            .await
            .assert_error(400, "invalid_message");
    }
    http_request(port, "POST", "/publish", Some(b"{\"dataType\":"))
        .await
        .assert_error(400, "invalid_message");

    let marker = publish_one(port, inv("p-h-pub", "w-1", 54)).await;
    let seqs = c.seqs_until("/inventory", "inventory:update", marker).await;
    assert_eq!(
        seqs,
        vec![one[0], three[0], three[2], marker],
        "nothing of a rejected array may be published"
    );
    let b = get_json(port, &format!("/changes/inventory?since={}", three[2])).await;
    assert_eq!(
        b["count"], 1,
        "only the marker after the rejected arrays: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_413() {
    let server = spawn_server(&[("MAX_BODY_BYTES", "2048")]);
    let port = server.port;
    let mut small = inv("p-h-413", "w-1", 50);
    small["data"]["pad"] = json!("x".repeat(1500));
    assert!(small.to_string().len() < 2048);
    publish(port, &small).await;

    let mut big = inv("p-h-413", "w-1", 50);
    big["data"]["pad"] = json!("x".repeat(3000));
    http_post_json(port, "/publish", &big)
        .await
        .assert_error(413, "payload_too_large");
    // The server is fine afterwards.
    publish(port, &small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_405_and_unknown_path_404() {
    let server = spawn_server(&[]);
    let port = server.port;
    for (method, path) in [
        ("DELETE", "/publish"),
        ("GET", "/publish"),
        ("PUT", "/health"),
        ("POST", "/metrics"),
        ("DELETE", "/alerts"),
        ("POST", "/clients"),
        ("DELETE", "/changes/inventory"),
    ] {
        let r = http_request(port, method, path, None).await;
        r.assert_error(405, "method_not_allowed");
    }
    for path in ["/nope", "/health/extra", "/alerts/x/y/z", "/changes"] {
        let r = http_get(port, path).await;
        r.assert_error(404, "not_found");
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .contains("application/json"),
            "404 body is JSON: {:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_page_is_html() {
    let server = spawn_server(&[]);
    let r = http_get(server.port, "/test").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"),
        "{:?}",
        r.headers
    );
    assert!(
        r.text().to_ascii_lowercase().contains("<html"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_endpoint_is_off_by_default() {
    let server = spawn_server(&[]);
    let r = http_get(server.port, "/echo").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let url = format!("ws://127.0.0.1:{}/echo", server.port);
    assert!(
        tokio_tungstenite::connect_async(&url).await.is_err(),
        "/echo must not upgrade unless NILECAST_ECHO_ENDPOINT=true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_endpoint_echoes_text_unchanged() {
    let server = spawn_server(&[("NILECAST_ECHO_ENDPOINT", "true")]);
    let url = format!("ws://127.0.0.1:{}/echo", server.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade /echo");
    let msgs = [
        "{\"ns\" : \"/\",  \"event\":\"x\", \"data\":{\"k\":[1, 2.50, \"\\u00e9\"]}}".to_string(),
        "hello, echo".to_string(),
        "ümlaut ✓".to_string(),
        "y".repeat(30_000),
    ];
    for m in &msgs {
        ws.send(Message::Text(m.clone())).await.expect("send");
        let got = loop {
            let next = tokio::time::timeout(TIMEOUT, ws.next())
                .await
                .expect("echo within timeout")
                .expect("stream open")
                .expect("no error");
            // Anything else (e.g. a greeting) is skipped; a mangled echo times out.
            if let Message::Text(t) = next {
                if &t == m {
                    break t;
                }
            }
        };
        assert_eq!(&got, m);
    }
}
