//! Slow consumers: a client that stops reading while changes keep flowing is closed
//! with 1013 (policy `disconnect`) or has its oldest frames dropped and is told so
//! (policy `drop-oldest`); a fast client on the same key loses nothing either way.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PRODUCT: &str = "p-slow-1";
/// Below QUEUE_MAX_FRAMES so that one batch never overflows a client that keeps up.
const BATCH: usize = 48;
const QUEUE: &str = "64";

struct Fast {
    seqs: Arc<Mutex<Vec<u64>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fast {
    fn last(&self) -> Option<u64> {
        self.seqs.lock().unwrap().last().copied()
    }
    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }
}

/// Reads the fast client continuously in a task, recording update seqs.
fn spawn_fast_reader(mut c: Client) -> Fast {
    let seqs = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(Mutex::new(None));
    let (s, e) = (seqs.clone(), ended.clone());
    let task = tokio::spawn(async move {
        loop {
            match c.next_frame_within(Duration::from_secs(3600)).await {
                Ok(f) => {
                    if f["event"] == "inventory:update" {
                        s.lock().unwrap().push(f["data"]["seq"].as_u64().unwrap());
                    }
                }
                Err(err) => {
                    *e.lock().unwrap() = Some(err);
                    break;
                }
            }
        }
    });
    Fast { seqs, ended, task }
}

/// Publishes batches of ~1 KB changes until `done(metrics)`; waits for the fast
/// client to have every batch before the next. Returns all published seqs.
async fn pump_until(port: u16, fast: &Fast, done: impl Fn(&Value) -> bool) -> Vec<u64> {
    let pad = "x".repeat(1024);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut published = Vec::new();
    loop {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| {
                let mut c = inv(PRODUCT, "w-slow", 500);
                c["data"]["pad"] = json!(pad);
                c["data"]["i"] = json!(i);
                c
            })
            .collect();
        let seqs = publish(port, &Value::Array(batch)).await;
        assert_eq!(seqs.len(), BATCH);
        published.extend_from_slice(&seqs);
        let last = *seqs.last().unwrap();
        let caught_up = wait_until(TIMEOUT, move || async move { fast.last() == Some(last) }).await;
        assert!(
            caught_up,
            "the fast client fell behind (last {:?}, want {last}; ended: {:?})",
            fast.last(),
            fast.ended()
        );
        let m = metrics(port).await;
        if done(&m) {
            return published;
        }
        assert!(
            Instant::now() < deadline,
            "slow consumer never detected after {} changes: {m}",
            published.len()
        );
    }
}

async fn setup(policy: &str) -> (TestServer, Fast, RawClient) {
    let server = spawn_server(&[
        ("QUEUE_MAX_FRAMES", QUEUE),
        ("SLOW_CONSUMER_POLICY", policy),
        ("HEARTBEAT_INTERVAL_MS", "3600000"),
        ("HEARTBEAT_TIMEOUT_MS", "3600000"),
    ]);
    let port = server.port;
    let mut fast = Client::connect(port).await;
    fast.subscribe("/inventory", json!({"productIds": [PRODUCT]}))
        .await;
    let fast = spawn_fast_reader(fast);

    // Small receive buffer so the kernel absorbs less before the queue fills.
    let mut slow = RawClient::connect_with(port, "/ws", Some(4096)).await;
    slow.recv_event("/", "connection:established").await;
    slow.subscribe("/inventory", json!({"productIds": [PRODUCT]}))
        .await;
    (server, fast, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnected_with_1013_fast_one_loses_nothing() {
    let (server, fast, mut slow) = setup("disconnect").await;
    let port = server.port;

    let published = pump_until(port, &fast, |m| {
        m["websocket"]["slowConsumerCloses"].as_u64().unwrap_or(0) >= 1
    })
    .await;

    // Now read the slow client: a prefix of the changes in order, then close 1013.
    let mut got = Vec::new();
    let code = loop {
        match slow.read_frame(Duration::from_secs(30)).await {
            Err(e) => panic!("slow client: {e} after {} updates", got.len()),
            Ok(None) => break None,
            Ok(Some(f)) if f.opcode == OP_CLOSE => break f.close_code(),
            Ok(Some(f)) if f.opcode == OP_TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).expect("json");
                if v["event"] == "inventory:update" {
                    got.push(v["data"]["seq"].as_u64().unwrap());
                }
            }
            Ok(Some(_)) => {}
        }
    };
    assert_eq!(code, Some(1013), "slow consumer close code");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "slow client frames out of order"
    );
    assert!(
        got.len() < published.len(),
        "the slow client cannot have received everything"
    );

    // The fast client received every seq in order, and still works.
    let marker = publish_one(port, inv(PRODUCT, "w-slow", 501)).await;
    assert!(
        wait_until(TIMEOUT, || async { fast.last() == Some(marker) }).await,
        "fast client missed the marker; ended: {:?}",
        fast.ended()
    );
    let mut want = published.clone();
    want.push(marker);
    assert_eq!(
        *fast.seqs.lock().unwrap(),
        want,
        "fast client: every seq, in order"
    );
    assert_eq!(fast.ended(), None);

    let m = metrics(port).await;
    assert!(m["websocket"]["slowConsumerCloses"].as_u64().unwrap() >= 1);
    assert!(
        wait_until(TIMEOUT, || async {
            metrics(port).await["websocket"]["activeConnections"] == 1
        })
        .await,
        "only the fast client is left: {}",
        metrics(port).await
    );
    fast.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_slow_consumer_and_reports_drops() {
    let (server, fast, mut slow) = setup("drop-oldest").await;
    let port = server.port;

    let published = pump_until(port, &fast, |m| {
        m["websocket"]["droppedFrames"].as_u64().unwrap_or(0) > 0
    })
    .await;

    // The slow client stays connected, gets messages:dropped and then live changes.
    let marker = publish_one(port, inv(PRODUCT, "w-slow", 501)).await;
    let mut got = Vec::new();
    let mut dropped_total = 0u64;
    let mut dropped_frames = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.last() != Some(&marker) || dropped_frames == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = slow.next_json(left).await.unwrap_or_else(|e| {
            panic!(
                "slow client (drop-oldest) must stay connected: {e}; {} updates, {dropped_frames} drop notices",
                got.len()
            )
        });
        if v["event"] == "inventory:update" {
            got.push(v["data"]["seq"].as_u64().unwrap());
        } else if v["event"] == "messages:dropped" {
            assert_eq!(v["ns"], "/", "{v}");
            let n = v["data"]["dropped"]
                .as_u64()
                .unwrap_or_else(|| panic!("dropped count: {v}"));
            assert!(n >= 1, "{v}");
            dropped_total += n;
            dropped_frames += 1;
        }
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, gaps allowed"
    );
    assert!(
        (got.len() as u64) < published.len() as u64 + 1,
        "something must have been dropped"
    );
    assert!(
        got.len() as u64 + dropped_total > published.len() as u64,
        // i.e. >= published.len() + 1 (the marker)
        "received {} + dropped {dropped_total} must account for {} published",
        got.len(),
        published.len() + 1
    );

    // The fast client lost nothing.
    assert!(
        wait_until(TIMEOUT, || async { fast.last() == Some(marker) }).await,
        "fast client missed the marker; ended: {:?}",
        fast.ended()
    );
    let mut want = published.clone();
    want.push(marker);
    assert_eq!(*fast.seqs.lock().unwrap(), want);

    let m = metrics(port).await;
    assert_eq!(m["websocket"]["slowConsumerCloses"], 0, "{m}");
    assert!(m["websocket"]["droppedFrames"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["websocket"]["activeConnections"], 2, "{m}");

    // Still a usable connection.
    let d = slow
        .request(
            "/",
            "data:request",
            json!({"dataType": "inventory_summary"}),
        )
        .await;
    assert_eq!(d["dataType"], "inventory_summary");
    fast.task.abort();
}
