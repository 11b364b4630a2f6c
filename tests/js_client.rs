//! The JavaScript client (clients/js/nilecast.js) driven from Node against the real
//! server (tests/js_client/scenarios.mjs): the seed client's API, queueing while
//! offline, reconnecting with resume, and a server restart in the middle of a stream
//! (with PostgreSQL, whose change log outlives the process): nothing missed, nothing
//! doubled.
//!
//! Needs Node.js and `npm ci` (ws); `scripts/test.sh` installs them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::pg::{self, TestDb};
use common::*;
use serde_json::Value;

fn node(scenario: &str, url: &str, arg: Option<&str>) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/ws").exists(),
        "node_modules/ws is missing: run scripts/test.sh (or npm ci) first"
    );
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/js_client/scenarios.mjs"))
        .arg(scenario)
        .arg(url)
        .current_dir(root);
    if let Some(arg) = arg {
        cmd.arg(arg);
    }
    cmd
}

async fn run(scenario: &'static str) {
    let server = spawn_server(&[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let output = tokio::task::spawn_blocking(move || node(scenario, &url, None).output())
        .await
        .expect("join")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("ok {scenario}")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_works_against_the_server() {
    run("api").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_client_utility_snippet_works_unchanged() {
    run("seed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_and_doubles_nothing() {
    let db = TestDb::create().await;
    db.migrate("notify");
    let env = db.env("notify");
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = spawn_server(&refs);
    pg::wait_feed_connected(server.port).await;
    let port = server.port;
    let url = format!("http://127.0.0.1:{port}");

    let mut child = node("restart", &url, Some("300"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (is Node.js installed?)");
    let mut lines = Lines::of(&mut child);
    lines.wait_for("streaming");

    // Restart in the middle of the stream, on the same port.
    server.sigterm();
    assert!(server.wait_exit(TIMEOUT).await.is_some(), "server stopped");
    drop(server);
    let port_text = port.to_string();
    let mut refs2 = refs.clone();
    refs2.push(("WEBSOCKET_PORT", &port_text));
    let server = spawn_server(&refs2);
    pg::wait_feed_connected(server.port).await;

    lines.wait_for("ok ");
    let status = child.wait().expect("node exit");
    assert!(status.success(), "node said: {:?}", lines.seen);
    let got = lines.json();
    let got: Vec<u64> = got["got"]
        .as_array()
        .expect("got")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let pg = db.client().await;
    let logged: Vec<u64> = pg
        .query(
            "SELECT seq FROM nilecast_changes WHERE tenant_id = 'restart' AND data_type = 'inventory' ORDER BY seq",
            &[],
        )
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    // At least the 300 publishes (one cut short by the restart may be retried).
    assert!(
        logged.len() >= 300,
        "every publish was logged: {}",
        logged.len()
    );
    assert_eq!(
        got, logged,
        "every change once, in order, across the restart"
    );
}
