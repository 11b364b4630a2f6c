//! Socket.IO clients, unchanged: the real npm `socket.io-client` (v4, websocket
//! transport) runs the seed README's client code against `/socket.io/`
//! (tests/socketio/scenarios.mjs, one scenario per test, each against a server of its
//! own), plus the endpoint's refusals checked over raw HTTP and WebSocket.
//!
//! Needs Node.js and `npm ci` (socket.io-client); `scripts/test.sh` installs them. The
//! tests fail, rather than skip, when they are missing.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-socketio-test-secret-long-enough-for-hs256";

/// Runs `scenario` of tests/socketio/scenarios.mjs against `server`.
async fn scenario(server: &TestServer, name: &str, arg: Option<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/socket.io-client").exists(),
        "node_modules/socket.io-client is missing: run scripts/test.sh (or npm ci) first"
    );
    let url = format!("http://127.0.0.1:{}", server.port);
    let name = name.to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.arg(root.join("tests/socketio/scenarios.mjs"))
            .arg(&name)
            .arg(&url)
            .current_dir(root);
        if let Some(arg) = arg {
            cmd.arg(arg);
        }
        cmd.output()
    })
    .await
    .expect("join the node run")
    .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ok "),
        "socket.io-client scenario failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_client_snippets_work_on_every_namespace() {
    if matches!(shape(), Shape::Database | Shape::DatabaseAndRedis) {
        // The snippets read the demo catalogue: always there in memory, while a
        // database holds only its own tables (the demo rows are written when the
        // simulator runs, which the tests keep off).
        return;
    }
    let server = spawn_server(&[]);
    scenario(&server, "seed", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_connect_error() {
    let server = spawn_server(&[("JWT_SECRET", SECRET)]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u1", "tenant_id": "acme", "roles": ["admin"], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    scenario(&server, "auth", Some(token)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_transport_recovers_every_missed_change_once() {
    let server = spawn_server(&[]);
    scenario(&server, "recovery", None).await;
    let m = metrics(server.port).await;
    assert!(
        m["websocket"]["socketioRecoveries"].as_u64() >= Some(1),
        "{m}"
    );
}

/// With a database, a Socket.IO session is kept there: a client comes back to another
/// server process (a restarted node here) and recovers, with what was committed while
/// it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_works_on_another_server_with_a_database() {
    use std::process::Stdio;

    let db = common::pg::TestDb::create().await;
    db.migrate("notify");
    let env = db.env("notify");
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut first = spawn_server(&refs);
    common::pg::wait_feed_connected(first.port).await;
    let port = first.port;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg(root.join("tests/socketio/scenarios.mjs"))
        .arg("recovery-restart")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("5")
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node (is Node.js installed?)");
    let mut lines = Lines::of(&mut child);

    // The node goes away; meanwhile the application commits five changes.
    lines.wait_for("ready");
    first.sigterm();
    assert!(first.wait_exit(TIMEOUT).await.is_some(), "server stopped");
    drop(first);
    lines.wait_for("away");
    let pg = db.client().await;
    pg.execute(
        "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
         SELECT 'default', 'inventory', 'rr-1',
                jsonb_build_object('productId', 'rr-1', 'warehouseId', 'w', 'quantity', 100 + i)
         FROM generate_series(1, 5) AS i",
        &[],
    )
    .await
    .expect("changes while away");
    let port_text = port.to_string();
    let mut refs2 = refs.clone();
    refs2.push(("WEBSOCKET_PORT", &port_text));
    let second = spawn_server(&refs2);
    common::pg::wait_feed_connected(second.port).await;

    lines.wait_for("ok ");
    assert!(
        child.wait().expect("node exit").success(),
        "node said: {:?}",
        lines.seen
    );
    let got = lines.json();
    let logged: Vec<u64> = pg
        .query(
            "SELECT seq FROM nilecast_changes WHERE entity_id = 'rr-1' ORDER BY seq",
            &[],
        )
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    let got: Vec<u64> = got["got"]
        .as_array()
        .expect("got")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(
        got, logged,
        "the change before and the five while away, once each"
    );
    let m = metrics(second.port).await;
    assert_eq!(m["websocket"]["socketioRecoveries"], 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_beyond_retention_is_a_fresh_session() {
    if shape().has_log() {
        // With a change log or a stream nothing is beyond retention at this scale: the
        // session recovers (tests/scaleout.rs recovers across nodes).
        return;
    }
    let server = spawn_server(&[("REPLAY_MAX_CHANGES", "5")]);
    scenario(&server, "recovery-gap", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_subscribing_at_connect_lose_nothing() {
    // All from one address: the per-address limits would refuse most of them.
    let server = spawn_server(&[
        ("MAX_CONNECTIONS_PER_IP", "0"),
        ("UPGRADES_PER_IP_PER_S", "0"),
    ]);
    scenario(&server, "storm", Some("2000".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_attachment_is_refused_and_the_socket_goes_on() {
    let server = spawn_server(&[]);
    scenario(&server, "binary", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_and_old_protocols_get_an_engine_io_error() {
    let server = spawn_server(&[]);
    let polling = http_get(server.port, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(polling.status, 400, "{}", polling.text());
    let body = polling.json();
    assert_eq!(body["code"], 3, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"transports: ["websocket"]"#)),
        "{body}"
    );
    let old = http_get(server.port, "/socket.io/?EIO=3&transport=websocket").await;
    assert_eq!(old.status, 400);
    assert_eq!(old.json()["code"], 5, "{}", old.text());
}

/// The wire itself, without the npm client: the open packet, CONNECT with its pid, an
/// EVENT with an ack, and a change event carrying its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_follow_engine_io_4_and_socket_io_5() {
    let server = spawn_server(&[]);
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        server.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let open = recv_text(&mut ws).await;
    assert!(open.starts_with('0'), "{open}");
    let open: Value = serde_json::from_str(&open[1..]).expect("open packet JSON");
    assert_eq!(open["upgrades"], json!([]), "{open}");
    assert!(open["pingInterval"].as_u64().is_some() && open["maxPayload"].as_u64().is_some());

    ws.send(Message::Text("40/inventory,".into()))
        .await
        .expect("send");
    let reply = recv_text(&mut ws).await;
    let body = reply
        .strip_prefix("40/inventory,")
        .unwrap_or_else(|| panic!("CONNECT reply: {reply}"));
    let body: Value = serde_json::from_str(body).expect("CONNECT reply JSON");
    assert!(body["sid"].is_string() && body["pid"].is_string(), "{body}");

    ws.send(Message::Text(
        r#"42/inventory,7["inventory:subscribe",{"productIds":["p1"]}]"#.into(),
    ))
    .await
    .expect("send");
    let ack = recv_text(&mut ws).await;
    assert!(ack.starts_with("43/inventory,7["), "{ack}");
    let seq = publish_one(server.port, inv("p1", "w1", 50)).await;
    let event = recv_text(&mut ws).await;
    let args: Value = serde_json::from_str(
        event
            .strip_prefix("42/inventory,")
            .unwrap_or_else(|| panic!("event: {event}")),
    )
    .expect("event JSON");
    assert_eq!(args[0], "inventory:update", "{args}");
    assert_eq!(args[1]["seq"], seq, "{args}");
    assert_eq!(
        args[2],
        seq.to_string(),
        "the offset is the seq, as a string"
    );

    // An unknown namespace is a CONNECT_ERROR.
    ws.send(Message::Text("40/nope,".into()))
        .await
        .expect("send");
    let refused = recv_text(&mut ws).await;
    assert!(refused.starts_with("44/nope,"), "{refused}");
}

async fn recv_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no packet: {other:?}"),
        }
    }
}
