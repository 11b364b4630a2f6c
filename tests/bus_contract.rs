//! One contract in every shape of deployment. The same black-box behaviours run against
//! each bus (`src/bus/`): in memory (one node), the PostgreSQL change log (two nodes on
//! one database), the Redis stream (two nodes), and the stream fed by the database's
//! leader (two nodes). Each behaviour publishes on node A and watches node B (in memory,
//! A and B are the same node), and every shape must give the same answers.
//!
//! Needs the local PostgreSQL and Redis that `scripts/test.sh` starts.

mod common;

use std::time::Duration;

use common::pg::{self, TestDb};
use common::*;
use serde_json::{json, Value};

/// A deployment under test: its nodes, and what must outlive them.
struct Shape {
    a: TestServer,
    b: Option<TestServer>,
    _db: Option<TestDb>,
    prefix: Option<String>,
}

impl Shape {
    fn a(&self) -> u16 {
        self.a.port
    }

    fn b(&self) -> u16 {
        self.b.as_ref().map_or(self.a.port, |b| b.port)
    }
}

impl Drop for Shape {
    fn drop(&mut self) {
        if let Some(prefix) = &self.prefix {
            delete_redis_keys(prefix);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Memory,
    Database,
    Redis,
    DatabaseAndRedis,
}

fn spawn(env: &[(String, String)]) -> TestServer {
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_server(&refs)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until `port`'s `/health` lists `n` cluster members with its stream reader up.
async fn wait_members(port: u16, n: usize) {
    let ok = wait_until(Duration::from_secs(30), || async move {
        let redis = &get_json(port, "/health").await["services"]["redis"];
        redis["connected"] == true && redis["members"].as_array().is_some_and(|m| m.len() >= n)
    })
    .await;
    assert!(ok, "{}", get_json(port, "/health").await);
}

async fn shape(mode: Mode) -> Shape {
    let prefix = format!(
        "nilecast-contract-{}-{}",
        std::process::id(),
        now_ms() as u64 * 1000 + u64::from(fastrand::u16(..1000))
    );
    let redis = |node: &str| {
        pairs(&[
            ("REDIS_URL", &format!("redis://{}", redis_addr())),
            ("REDIS_PREFIX", &prefix),
            ("NODE_ID", node),
        ])
    };
    match mode {
        Mode::Memory => Shape {
            a: spawn(&[]),
            b: None,
            _db: None,
            prefix: None,
        },
        Mode::Database => {
            let db = TestDb::create().await;
            db.migrate("notify");
            let node = |name: &str| {
                let mut env = db.env("notify");
                env.extend(pairs(&[("NODE_ID", name), ("FEED_NAME", name)]));
                spawn(&env)
            };
            let (a, b) = (node("node-a"), node("node-b"));
            pg::wait_feed_connected(a.port).await;
            pg::wait_feed_connected(b.port).await;
            Shape {
                a,
                b: Some(b),
                _db: Some(db),
                prefix: None,
            }
        }
        Mode::Redis => {
            let (a, b) = (spawn(&redis("node-a")), spawn(&redis("node-b")));
            wait_members(a.port, 2).await;
            wait_members(b.port, 2).await;
            Shape {
                a,
                b: Some(b),
                _db: None,
                prefix: Some(prefix),
            }
        }
        Mode::DatabaseAndRedis => {
            let db = TestDb::create().await;
            db.migrate("notify");
            let node = |name: &str| {
                let mut env = db.env("notify");
                env.extend(redis(name));
                env.extend(pairs(&[("LEADER_LEASE_MS", "1500")]));
                spawn(&env)
            };
            let (a, b) = (node("node-a"), node("node-b"));
            wait_members(a.port, 2).await;
            wait_members(b.port, 2).await;
            let led = wait_until(Duration::from_secs(30), || async {
                let role = |h: Value| h["services"]["redis"]["role"] == "leader";
                role(get_json(a.port, "/health").await) || role(get_json(b.port, "/health").await)
            })
            .await;
            assert!(led, "no node took the leader lease");
            Shape {
                a,
                b: Some(b),
                _db: Some(db),
                prefix: Some(prefix),
            }
        }
    }
}

/// Changes published on either node reach clients of both, once each, in one seq order.
async fn every_node_delivers_every_change_once_in_seq_order(mode: Mode) {
    let s = shape(mode).await;
    let mut on_a = Client::connect(s.a()).await;
    let mut on_b = Client::connect(s.b()).await;
    on_a.subscribe("/inventory", json!({})).await;
    on_b.subscribe("/inventory", json!({})).await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        let port = if i % 2 == 0 { s.a() } else { s.b() };
        seqs.push(publish_one(port, inv(&format!("p-order-{i}"), "w1", 100 + i)).await);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{mode:?}: {seqs:?}");
    let last = *seqs.last().expect("published");
    for client in [&mut on_a, &mut on_b] {
        let got = client
            .seqs_until("/inventory", "inventory:update", last)
            .await;
        assert_eq!(got, seqs, "{mode:?}: every change once, in seq order");
    }
}

/// A stock level published through the API is in the current inventory of every node.
async fn a_published_stock_level_is_in_the_current_inventory(mode: Mode) {
    let s = shape(mode).await;
    let seq = publish_one(s.a(), inv("p-current", "w-current", 7)).await;
    let mut on_b = Client::connect(s.b()).await;
    on_b.subscribe("/inventory", json!({"sinceSeq": seq - 1}))
        .await;
    // Node B has delivered the change (the replay ends with it); its read model has it.
    on_b.recv_seq("/inventory", "inventory:update", seq).await;
    let current = on_b
        .request(
            "/inventory",
            "inventory:get-current",
            json!({"filters": {"productIds": ["p-current"]}}),
        )
        .await;
    let shown = current["items"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|r| r["warehouseId"] == "w-current" && r["quantity"] == 7.0)
    });
    assert!(shown, "{mode:?}: published stock missing: {current}");
}

/// A tracking change that names no customer reaches the order's customer's subscription:
/// the order published a moment before made the customer its owner.
async fn a_published_order_makes_its_customer_the_owner(mode: Mode) {
    let s = shape(mode).await;
    let mut on_b = Client::connect(s.b()).await;
    on_b.subscribe(
        "/orders",
        json!({"customerIds": ["c-owner"], "trackingEnabled": true}),
    )
    .await;
    let placed = publish_one(s.a(), order("o-owner", "c-owner", "paid")).await;
    on_b.recv_seq("/orders", "order:update", placed).await;
    let tracked = publish_one(s.a(), tracking("o-owner", "Lyon")).await;
    let (frame, _) = on_b
        .recv_matching(&format!("tracking seq {tracked}"), |f| {
            f["event"] == "order:tracking" && f["data"]["seq"] == tracked
        })
        .await;
    assert_eq!(
        frame["data"]["data"]["location"], "Lyon",
        "{mode:?}: {frame}"
    );
}

/// Acknowledging an alert on node A: every node's `/notifications` subscribers get the
/// `alert_acknowledged` notification with one seq, every node lists the alert as
/// acknowledged, and changes after it keep arriving on every node (a node that took the
/// seq for itself would drop the next change that comes with it).
async fn an_acknowledgement_reaches_every_node(mode: Mode) {
    let s = shape(mode).await;
    let mut on_a = Client::connect(s.a()).await;
    let mut on_b = Client::connect(s.b()).await;
    for c in [&mut on_a, &mut on_b] {
        c.subscribe("/notifications", json!({})).await;
        c.subscribe("/inventory", json!({})).await;
    }
    publish_one(s.a(), inv("p-ack", "w-ack", 1)).await;
    // Node B's clients get the alert's notification once it is announced; then B
    // lists it.
    let (raised, _) = on_b
        .recv_matching("the low_stock alert", |f| {
            f["event"] == "notification" && f["data"]["type"] == "low_stock"
        })
        .await;
    let alert_id = raised["data"]["data"]["alertId"]
        .as_str()
        .unwrap_or_else(|| panic!("{mode:?}: an alert id in {raised}"))
        .to_string();
    let r = http_request(
        s.a(),
        "POST",
        &format!("/alerts/{alert_id}/acknowledge"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{mode:?}: {}", r.text());
    let mut acks = Vec::new();
    for client in [&mut on_a, &mut on_b] {
        let (frame, _) = client
            .recv_matching("alert_acknowledged", |f| {
                f["event"] == "notification" && f["data"]["type"] == "alert_acknowledged"
            })
            .await;
        acks.push(frame["data"]["seq"].as_u64().expect("a seq"));
    }
    assert_eq!(
        acks[0], acks[1],
        "{mode:?}: one seq for the acknowledgement"
    );
    let next = publish_one(s.b(), inv("p-after-ack", "w1", 500)).await;
    assert!(next > acks[0], "{mode:?}");
    for client in [&mut on_a, &mut on_b] {
        client
            .recv_seq("/inventory", "inventory:update", next)
            .await;
    }
    let acknowledged = wait_until(TIMEOUT, || async {
        let alerts = get_json(s.b(), "/alerts?all=true").await;
        alerts["alerts"].as_array().is_some_and(|list| {
            list.iter()
                .any(|a| a["id"] == alert_id.as_str() && a["acknowledged"] == true)
        })
    })
    .await;
    assert!(
        acknowledged,
        "{mode:?}: node B does not list the acknowledgement"
    );
}

/// The behaviours, as tests of one mode (module `$module`, `Mode::$mode`).
macro_rules! in_mode {
    ($module:ident, $mode:ident, $($behaviour:ident),+) => {
        mod $module {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                super::$behaviour(super::Mode::$mode).await;
            })+
        }
    };
}

/// The behaviours on every bus.
macro_rules! in_every_mode {
    ($($behaviour:ident),+ $(,)?) => {
        in_mode!(memory, Memory, $($behaviour),+);
        in_mode!(database, Database, $($behaviour),+);
        in_mode!(redis_stream, Redis, $($behaviour),+);
        in_mode!(database_and_redis, DatabaseAndRedis, $($behaviour),+);
    };
}

in_every_mode!(
    every_node_delivers_every_change_once_in_seq_order,
    a_published_stock_level_is_in_the_current_inventory,
    a_published_order_makes_its_customer_the_owner,
    an_acknowledgement_reaches_every_node,
);
