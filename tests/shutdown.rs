//! Graceful shutdown: SIGTERM closes every connection with 1001 and the process exits 0.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut server = spawn_server(&[("SHUTDOWN_TIMEOUT_MS", "5000")]);
    let port = server.port;
    let mut a = Client::connect(port).await;
    a.subscribe("/inventory", json!({"productIds": ["p-sd-1"]}))
        .await;
    let mut b = Client::connect(port).await;
    b.subscribe("/orders", json!({})).await;
    let mut raw = RawClient::connect(port, "/ws").await;
    raw.recv_event("/", "connection:established").await;
    // Everything works before the signal.
    let s = publish_one(port, inv("p-sd-1", "w-1", 50)).await;
    a.recv_seq("/inventory", "inventory:update", s).await;
    assert!(
        wait_until(TIMEOUT, || async {
            metrics(port).await["websocket"]["activeConnections"] == 3
        })
        .await
    );

    server.sigterm();

    assert_eq!(a.expect_close(TIMEOUT).await, Some(1001), "client a");
    assert_eq!(b.expect_close(TIMEOUT).await, Some(1001), "client b");
    assert_eq!(raw.expect_close(TIMEOUT).await, Some(1001), "raw client");
    // The raw client never answers the close handshake; the server must still exit
    // within SHUTDOWN_TIMEOUT_MS.
    let status = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("server did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_ready_exits_zero() {
    // SIGTERM right after the readiness line: a server that is "listening" must
    // already handle the signal gracefully (not die of the default action).
    let mut server = spawn_server(&[]);
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("server did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}
