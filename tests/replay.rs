//! `sinceSeq` replay: subscribed reply first, then the retained matching changes in
//! order, then live ones; `replayed` count; `gap` when retention no longer reaches back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A namespace's subscribe request, its named reply and its change event.
struct Kind {
    ns: &'static str,
    subscribe: &'static str,
    subscribed: &'static str,
    event: &'static str,
}

const INV: Kind = Kind {
    ns: "/inventory",
    subscribe: "inventory:subscribe",
    subscribed: "inventory:subscribed",
    event: "inventory:update",
};
const ORD: Kind = Kind {
    ns: "/orders",
    subscribe: "orders:subscribe",
    subscribed: "orders:subscribed",
    event: "order:update",
};
const CUST: Kind = Kind {
    ns: "/customer",
    subscribe: "customer:subscribe",
    subscribed: "customer:subscribed",
    event: "customer:activity",
};

/// Sends the subscribe (with or without ack) and reads frames until the reply and
/// `expect_updates` change frames have arrived; returns (reply data, update seqs) and
/// asserts the reply came before every update.
async fn subscribe_and_read_replay(
    c: &mut Client,
    k: &Kind,
    filters: Value,
    with_ack: bool,
    expect_updates: usize,
) -> (Value, Vec<u64>) {
    let ack = c.next_ack_id();
    let mut frame = json!({"ns": k.ns, "event": k.subscribe, "data": filters.clone()});
    if with_ack {
        frame["ack"] = json!(ack);
    }
    c.send(frame).await;
    let mut reply: Option<Value> = None;
    let mut seqs = Vec::new();
    while reply.is_none() || seqs.len() < expect_updates {
        let f = c.next_frame_within(TIMEOUT).await.unwrap_or_else(|e| {
            panic!(
                "{} {filters}: {e}; reply {reply:?}, updates so far {seqs:?}, expected {expect_updates}",
                k.subscribe
            )
        });
        let is_reply = if with_ack {
            f["ack"] == ack
        } else {
            f["event"] == k.subscribed
        };
        if is_reply {
            assert_eq!(f["ns"], k.ns, "{f}");
            assert!(f["data"].get("error").is_none(), "subscribe refused: {f}");
            reply = Some(f["data"].clone());
        } else if f["ns"] == k.ns && f["event"] == k.event {
            assert!(
                reply.is_some(),
                "replayed {} arrived before the subscribed reply: {f}",
                k.event
            );
            seqs.push(f["data"]["seq"].as_u64().expect("seq"));
        } else if f["event"] == "error" {
            panic!("subscribe refused: {f}");
        }
    }
    (reply.unwrap(), seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_replay_then_live_in_order() {
    let server = spawn_server(&[]);
    let port = server.port;

    let s1 = publish_one(port, inv("p-r-1", "w-1", 50)).await;
    let s2 = publish_one(port, inv("p-r-1", "w-1", 49)).await;
    publish_one(port, inv("p-r-other", "w-1", 48)).await; // not matching
    let s3 = publish_one(port, inv("p-r-1", "w-2", 47)).await;
    wait_delivered(port, s3).await;

    // With ack, since s1: s2 and s3 replayed after the ack reply.
    let mut c = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &INV,
        json!({"productIds": ["p-r-1"], "sinceSeq": s1}),
        true,
        2,
    )
    .await;
    assert_eq!(seqs, vec![s2, s3]);
    assert_eq!(reply["replayed"], 2, "{reply}");
    assert_eq!(reply["gap"], false, "{reply}");

    // Live changes follow, and nothing was replayed twice.
    let live = publish_one(port, inv("p-r-1", "w-1", 46)).await;
    let after = c.seqs_until("/inventory", "inventory:update", live).await;
    assert_eq!(after, vec![live]);

    // Without ack, since s1.saturating_sub(1): the named reply first, then all three.
    let mut d = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut d,
        &INV,
        json!({"productIds": ["p-r-1"], "sinceSeq": s1.saturating_sub(1)}),
        false,
        4,
    )
    .await;
    assert_eq!(seqs, vec![s1, s2, s3, live]);
    assert_eq!(reply["replayed"], 4, "{reply}");
    assert_eq!(reply["gap"], false, "{reply}");

    // sinceSeq at the newest seq: nothing to replay.
    let mut e = server.connect().await;
    let r = e
        .subscribe(
            "/inventory",
            json!({"productIds": ["p-r-1"], "sinceSeq": live}),
        )
        .await;
    assert_eq!(r["replayed"], 0, "{r}");
    assert_eq!(r["gap"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_customer_replay() {
    let server = spawn_server(&[]);
    let port = server.port;
    let o1 = publish_one(port, order("o-r-1", "c-r-1", "pending")).await;
    let o2 = publish_one(port, order("o-r-1", "c-r-1", "shipped")).await;
    publish_one(port, order("o-r-2", "c-r-2", "shipped")).await;
    let a1 = publish_one(port, activity("c-r-1", "login")).await;
    publish_one(port, activity("c-r-2", "login")).await;
    let a2 = publish_one(port, activity("c-r-1", "purchase")).await;
    wait_delivered(port, a2).await;

    let mut c = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &ORD,
        json!({"orderIds": ["o-r-1"], "sinceSeq": o1.saturating_sub(1)}),
        true,
        2,
    )
    .await;
    assert_eq!(seqs, vec![o1, o2]);
    assert_eq!(reply["replayed"], 2);

    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &CUST,
        json!({"customerId": "c-r-1", "sinceSeq": o1}),
        false,
        2,
    )
    .await;
    assert_eq!(seqs, vec![a1, a2]);
    assert_eq!(reply["replayed"], 2);
    assert_eq!(reply["gap"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_when_change_count_retention_evicted() {
    let server = spawn_server(&[("REPLAY_MAX_CHANGES", "5")]);
    let port = server.port;
    let mut s = Vec::new();
    for q in 0..10 {
        s.push(publish_one(port, inv("p-r-gap", "w-1", 100 + q)).await);
    }
    wait_delivered(port, s[9]).await;
    // Retained: the newest five, s[5..10]. With a change log or a stream the replay
    // reaches below the ring, without a gap (docs/protocol.md, "5.5 Deployment shapes").
    let log = shape().has_log();
    let retained = s[5..].to_vec();

    // A fresh connection each time: one connection never gets a seq twice on a
    // namespace, so a second replay on the same connection would skip what it has.
    for (since, gap) in [(s[0], true), (s[3], true), (s[4], false)] {
        let expected: Vec<u64> = if log {
            s.iter().copied().filter(|&seq| seq > since).collect()
        } else {
            retained.clone()
        };
        let mut c = server.connect().await;
        let (reply, seqs) = subscribe_and_read_replay(
            &mut c,
            &INV,
            json!({"productIds": ["p-r-gap"], "sinceSeq": since}),
            true,
            expected.len(),
        )
        .await;
        assert_eq!(
            seqs, expected,
            "sinceSeq {since}: retained changes replayed"
        );
        assert_eq!(
            reply["replayed"],
            expected.len(),
            "sinceSeq {since}: {reply}"
        );
        assert_eq!(reply["gap"], gap && !log, "sinceSeq {since}: {reply}");
    }
    let mut c = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &INV,
        json!({"productIds": ["p-r-gap"], "sinceSeq": s[7]}),
        false,
        2,
    )
    .await;
    assert_eq!(seqs, s[8..].to_vec());
    assert_eq!(reply["gap"], false, "{reply}");
    assert_eq!(reply["replayed"], 2, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_repeats_a_seq_the_connection_has() {
    let server = spawn_server(&[]);
    let port = server.port;
    let s1 = publish_one(port, inv("p-r-dup", "w-1", 50)).await;
    let s2 = publish_one(port, inv("p-r-dup", "w-1", 51)).await;
    let mut c = server.connect().await;
    let (_, seqs) = subscribe_and_read_replay(
        &mut c,
        &INV,
        json!({"productIds": ["p-r-dup"], "sinceSeq": s1.saturating_sub(1)}),
        true,
        2,
    )
    .await;
    assert_eq!(seqs, vec![s1, s2]);
    // A second overlapping subscription on the same namespace: nothing again.
    c.subscribe(
        "/inventory",
        json!({"warehouseIds": ["w-1"], "sinceSeq": s1.saturating_sub(1)}),
    )
    .await;
    let s3 = publish_one(port, inv("p-r-dup", "w-1", 52)).await;
    assert_eq!(
        c.seqs_until("/inventory", "inventory:update", s3).await,
        vec![s3],
        "a connection never receives the same seq twice on a namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_when_age_retention_expired() {
    let server = spawn_server(&[("REPLAY_MAX_AGE_MS", "1500")]);
    let port = server.port;
    let s1 = publish_one(port, inv("p-r-age", "w-1", 50)).await;
    let s2 = publish_one(port, inv("p-r-age", "w-1", 51)).await;
    wait_delivered(port, s2).await;

    let mut c = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &INV,
        json!({"productIds": ["p-r-age"], "sinceSeq": s1.saturating_sub(1)}),
        true,
        2,
    )
    .await;
    assert_eq!(seqs, vec![s1, s2]);
    assert_eq!(reply["gap"], false);
    drop(c);
    if shape().has_log() {
        // The change log or the stream keeps them past the ring's age: covered by
        // tests/bus_contract.rs and tests/database.rs.
        return;
    }

    // Once older than REPLAY_MAX_AGE_MS they are gone: replayed 0, gap true. There is
    // nothing to wait on but time here, so poll, each time on a fresh connection (one
    // connection never gets a seq twice, which would hide the replay).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = server.connect().await;
        let r = c
            .subscribe(
                "/inventory",
                json!({"productIds": ["p-r-age"], "sinceSeq": s1.saturating_sub(1)}),
            )
            .await;
        if r["replayed"] == 0 && r["gap"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changes older than REPLAY_MAX_AGE_MS must not be replayed (gap true); last reply {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new change is retained and replayed again.
    let s3 = publish_one(port, inv("p-r-age", "w-1", 52)).await;
    let mut c = server.connect().await;
    let (reply, seqs) = subscribe_and_read_replay(
        &mut c,
        &INV,
        json!({"productIds": ["p-r-age"], "sinceSeq": s1.saturating_sub(1)}),
        true,
        1,
    )
    .await;
    assert_eq!(seqs, vec![s3]);
    assert_eq!(reply["replayed"], 1);
    assert_eq!(reply["gap"], true, "s1 and s2 are gone: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_since_seq_is_invalid_filter() {
    let server = spawn_server(&[]);
    let mut c = server.connect().await;
    for bad in [json!("12"), json!(-1), json!(1.5), json!({"a": 1})] {
        let d = c
            .request(
                "/inventory",
                "inventory:subscribe",
                json!({"productIds": ["p-r-bad"], "sinceSeq": bad}),
            )
            .await;
        assert_ack_error(&d, "invalid_filter");
    }
}
