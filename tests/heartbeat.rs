//! Heartbeat: a client that never answers pings is dropped; one that does stays.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_responsive_client_stays() {
    let server = spawn_server(&[
        // A timeout of several intervals: on a busy machine the test client's pong
        // can be late by hundreds of milliseconds.
        ("HEARTBEAT_INTERVAL_MS", "300"),
        ("HEARTBEAT_TIMEOUT_MS", "1200"),
    ]);
    let port = server.port;

    // The raw client never answers pings.
    let mut raw = RawClient::connect(port, "/ws").await;
    raw.auto_pong = false;
    let silent = tokio::spawn(async move {
        let start = Instant::now();
        let ended = loop {
            match raw.read_frame(Duration::from_secs(15)).await {
                Err(_) => break false,
                Ok(None) => break true,
                Ok(Some(f)) if f.opcode == OP_CLOSE => break true,
                Ok(Some(_)) => {}
            }
        };
        (ended, raw.pings, start.elapsed())
    });

    // The tungstenite client answers pings as it reads.
    let mut c = Client::connect(port).await;
    assert_eq!(c.established["heartbeatMs"], 300, "{}", c.established);
    let start = Instant::now();
    while c.pings < 10 {
        match c.next_message(TIMEOUT).await {
            Ok(Message::Ping(_)) => c.pings += 1,
            Ok(Message::Close(cf)) => {
                panic!("a client answering pings was closed: {cf:?}")
            }
            Ok(_) => {}
            Err(e) => panic!("responsive client: {e} after {} pings", c.pings),
        }
    }
    // 10 pings at 300 ms: well past interval + timeout (1.5 s), and still connected.
    assert!(start.elapsed() >= Duration::from_millis(2400));
    c.assert_usable().await;

    let (ended, pings, elapsed) = silent.await.unwrap();
    assert!(ended, "a client that never answers pings must be dropped");
    assert!(
        pings >= 1,
        "the server should have pinged the silent client"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "dropped after {elapsed:?}"
    );
    assert!(
        wait_until(TIMEOUT, || async {
            metrics(port).await["websocket"]["activeConnections"] == 1
        })
        .await
    );
}
