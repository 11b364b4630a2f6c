//! Cluster mode without a database (`REDIS_URL`): two nodes and the local Redis. A
//! change published on either node reaches clients on both with one seq; an alert both
//! nodes raise from the same change is announced once; a node that loses Redis while
//! the other goes on catches up from the stream when it is back.
//!
//! Each test uses a key prefix of its own (`REDIS_PREFIX`), so tests do not share
//! streams. Redis is `NILECAST_TEST_REDIS` (default `127.0.0.1:6379`, which
//! `scripts/test.sh` starts when it is not running).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::pg;
use common::*;
use serde_json::json;

fn prefix() -> String {
    format!(
        "nilecast-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Deletes the test's keys when dropped.
struct Keys(String);

impl Drop for Keys {
    fn drop(&mut self) {
        delete_redis_keys(&self.0);
    }
}

fn node(name: &str, redis: &str, prefix: &str) -> TestServer {
    let url = format!("redis://{redis}");
    spawn_server(&[
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix),
        ("NODE_ID", name),
    ])
}

/// Waits until `server`'s `/health` lists `n` members and its stream reader is up.
async fn wait_members(server: &TestServer, n: usize) {
    let port = server.port;
    let ok = wait_until(TIMEOUT, || async move {
        let h = get_json(port, "/health").await;
        let redis = &h["services"]["redis"];
        redis["connected"] == true && redis["members"].as_array().is_some_and(|m| m.len() >= n)
    })
    .await;
    assert!(ok, "{}", get_json(server.port, "/health").await);
}

/// Nodes `node-a` and `node-b` on the local Redis under `prefix`, each seeing both.
async fn two_nodes(prefix: &str) -> (TestServer, TestServer) {
    let a = node("node-a", &redis_addr(), prefix);
    let b = node("node-b", &redis_addr(), prefix);
    wait_members(&a, 2).await;
    wait_members(&b, 2).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_either_node_reaches_both_with_one_seq() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let (a, b) = two_nodes(&prefix).await;
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    for c in [&mut on_a, &mut on_b] {
        c.subscribe("/inventory", json!({})).await;
        c.subscribe("/notifications", json!({})).await;
    }
    let first = publish_one(a.port, inv("p1", "w1", 100)).await;
    let second = publish_one(b.port, inv("p2", "w1", 100)).await;
    assert!(
        second > first,
        "one seq for the cluster: {first} then {second}"
    );
    for c in [&mut on_a, &mut on_b] {
        let got = c.seqs_until("/inventory", "inventory:update", second).await;
        assert_eq!(got, vec![first, second], "both changes, once, in order");
    }

    // Both nodes raise the same low-stock alert from one change; it is announced once.
    // (The announcement is appended after the node reads the change, so it may come
    // after changes published meanwhile: wait for it, then for a marker published
    // after it, and count.)
    let low = publish_one(a.port, inv("p3", "w1", 2)).await;
    let mut alerts = [Vec::new(), Vec::new()];
    for (c, seen) in [&mut on_a, &mut on_b].into_iter().zip(alerts.iter_mut()) {
        let (alert, _) = c
            .recv_matching("the low-stock notification", |f| {
                f["event"] == "notification" && f["data"]["type"] == "low_stock"
            })
            .await;
        seen.push(alert);
    }
    let marker = publish_one(
        a.port,
        notification("marker", "system_alert", "low", "after the alert"),
    )
    .await;
    for (c, seen) in [&mut on_a, &mut on_b].into_iter().zip(alerts.iter_mut()) {
        let (_, skipped) = c.recv_seq("/notifications", "notification", marker).await;
        seen.extend(
            skipped
                .into_iter()
                .filter(|f| f["event"] == "notification" && f["data"]["type"] == "low_stock"),
        );
        assert_eq!(seen.len(), 1, "one low-stock notification: {seen:?}");
        assert_eq!(
            seen[0]["data"]["data"]["alertId"],
            format!("alert-{low}"),
            "named after the change"
        );
    }
}

/// Forwards connections to Redis while `open`; cutting drops them and refuses new ones.
/// Redis's answers are held back `delay_ms` before they go on.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    cut: Arc<tokio::sync::Notify>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gate");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (o, d, c) = (open.clone(), delay_ms.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let (d, c) = (d.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(redis_addr()).await else {
                        return;
                    };
                    let (mut from_node, mut to_node) = inbound.into_split();
                    let (mut from_redis, mut to_redis) = outbound.into_split();
                    let requests = tokio::io::copy(&mut from_node, &mut to_redis);
                    let answers = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from_redis.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let delay = d.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            if to_node.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = answers => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Gate {
            port,
            open,
            delay_ms,
            cut,
        }
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Two nodes of one cluster, both members: node-a on Redis directly, node-b through a
/// gate; the Redis keys go with the returned guard.
async fn gated_pair() -> (Keys, Gate, TestServer, TestServer) {
    let prefix = prefix();
    let keys = Keys(prefix.clone());
    let gate = Gate::start().await;
    let a = node("node-a", &redis_addr(), &prefix);
    let b = node("node-b", &format!("127.0.0.1:{}", gate.port), &prefix);
    wait_members(&a, 2).await;
    wait_members(&b, 2).await;
    (keys, gate, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_redis_catches_up_when_it_is_back() {
    let (_keys, gate, a, b) = gated_pair().await;
    let mut on_b = b.connect().await;
    on_b.subscribe("/inventory", json!({})).await;
    let before = publish_one(a.port, inv("c0", "w1", 100)).await;
    on_b.recv_seq("/inventory", "inventory:update", before)
        .await;

    // B loses Redis; A goes on publishing.
    gate.close();
    let lost = wait_until(TIMEOUT, || async {
        get_json(b.port, "/health").await["services"]["redis"]["connected"] == false
    })
    .await;
    assert!(lost, "node-b noticed the loss");
    let health = get_json(b.port, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    on_b.assert_usable().await;
    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(publish_one(a.port, inv(&format!("c{i}"), "w1", 100)).await);
    }

    // Back: B reads on from where it stopped.
    gate.reopen();
    let got = on_b
        .seqs_until(
            "/inventory",
            "inventory:update",
            *missed.last().expect("seqs"),
        )
        .await;
    assert_eq!(
        got, missed,
        "each change published while away, once, in order"
    );
    let back = wait_until(TIMEOUT, || async {
        get_json(b.port, "/health").await["services"]["redis"]["connected"] == true
    })
    .await;
    assert!(back, "node-b reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_a_slow_redis_is_answered_truthfully() {
    let (_keys, gate, a, b) = gated_pair().await;
    let mut on_a = a.connect().await;
    on_a.subscribe("/inventory", json!({})).await;

    // Redis answers node-b 800 ms late: slower than redis-rs's default response
    // timeout, which refused such a publish with 503 although the change went out.
    gate.delay_ms.store(800, Ordering::SeqCst);
    let answer = http_post_json(b.port, "/publish", &inv("slow-1", "w1", 100)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seq = answer.json()["seqs"][0].as_u64().expect("a seq");
    let got = on_a.seqs_until("/inventory", "inventory:update", seq).await;
    assert_eq!(
        got,
        vec![seq],
        "delivered once, under the seq the publisher was given"
    );

    // Later than the publish waits (5 s): refused, and not with "nothing was done",
    // because the change does go out.
    gate.delay_ms.store(6_000, Ordering::SeqCst);
    let answer = http_post_json(b.port, "/publish", &inv("slow-2", "w1", 100)).await;
    gate.delay_ms.store(0, Ordering::SeqCst);
    answer.assert_error(503, "unavailable");
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("may have been done"), "{message}");
    let (late, _) = on_a
        .recv_matching("the late change", |f| {
            f["event"] == "inventory:update" && f["data"]["data"]["productId"] == "slow-2"
        })
        .await;
    assert!(late["data"]["seq"].as_u64() > Some(seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_lists_the_clients_of_every_node() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let (a, b) = two_nodes(&prefix).await;
    // Both members have announced where they are reached.
    let addressed = wait_until(TIMEOUT, || async {
        get_json(a.port, "/health").await["services"]["redis"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["address"].is_string()))
    })
    .await;
    assert!(addressed, "{}", get_json(a.port, "/health").await);
    let mut on_a = Client::connect_path(a.port, "/ws?tenant=t1").await;
    on_a.subscribe("/inventory", json!({})).await;
    let _on_b1 = Client::connect_path(b.port, "/ws?tenant=t1").await;
    let _on_b2 = Client::connect_path(b.port, "/ws?tenant=t1").await;
    let _other_tenant = Client::connect_path(b.port, "/ws?tenant=t2").await;

    let local = get_json(a.port, "/clients?tenant=t1").await;
    assert_eq!(
        local["count"], 1,
        "without scope, this node's only: {local}"
    );
    let all = get_json(a.port, "/clients?scope=cluster&tenant=t1").await;
    assert_eq!(all["count"], 3, "{all}");
    let clients = all["clients"].as_array().expect("clients");
    let on = |node: &str| clients.iter().filter(|c| c["node"] == node).count();
    assert_eq!((on("node-a"), on("node-b")), (1, 2), "{all}");
    assert!(
        clients.iter().all(|c| c["tenant"] == "t1"),
        "the caller's tenant only, on every node: {all}"
    );
    let mine = clients
        .iter()
        .find(|c| c["node"] == "node-a")
        .expect("node-a's client");
    assert_eq!(mine["namespaces"], json!(["/inventory"]), "{mine}");
    let nodes = all["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{all}");
    assert!(nodes.iter().all(|n| n["status"] == "ok"), "{all}");
    // The operator's command asks the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nilecast"))
        .args(["clients", "--cluster", "--url"])
        .arg(format!("http://127.0.0.1:{}", a.port))
        .output()
        .expect("run nilecast clients --cluster");
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("nilecast clients prints JSON");
    assert_eq!(
        printed["nodes"].as_array().map(Vec::len),
        Some(2),
        "{printed}"
    );

    // A member that stops answering is reported, not hidden, while it is still listed.
    let mut b = b;
    let _ = b.child.kill();
    let _ = b.child.wait();
    let partial = get_json(a.port, "/clients?scope=cluster&tenant=t1").await;
    assert_eq!(partial["count"], 1, "{partial}");
    let gone = partial["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == "node-b").cloned())
        .expect("node-b is still a member for a few seconds");
    assert_eq!(gone["status"], "unreachable", "{partial}");
}

/// A node on `db` in cluster mode, with a short leader lease.
fn node_with_db(db: &pg::TestDb, name: &str, redis: &str, prefix: &str) -> TestServer {
    node_with_db_from(db, name, redis, prefix, "stored")
}

/// [`node_with_db`] with `FEED_START`.
fn node_with_db_from(
    db: &pg::TestDb,
    name: &str,
    redis: &str,
    prefix: &str,
    feed_start: &str,
) -> TestServer {
    let mut env = db.env("notify");
    env.extend([
        ("REDIS_URL".to_string(), format!("redis://{redis}")),
        ("REDIS_PREFIX".to_string(), prefix.to_string()),
        ("NODE_ID".to_string(), name.to_string()),
        ("LEADER_LEASE_MS".to_string(), "1500".to_string()),
        ("FEED_START".to_string(), feed_start.to_string()),
    ]);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_server(&refs)
}

/// A node's cluster role: `leader` or `standby`.
async fn role(port: u16) -> String {
    get_json(port, "/health").await["services"]["redis"]["role"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The seqs of a tenant's changes in the change log.
async fn logged_seqs(db: &pg::TestDb, tenant: &str) -> Vec<u64> {
    db.client()
        .await
        .query(
            "SELECT seq FROM nilecast_changes WHERE tenant_id = $1 ORDER BY seq",
            &[&tenant],
        )
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

async fn publish_t1(port: u16, i: usize) -> u64 {
    publish_one(port, with_tenant(inv(&format!("g{i}"), "w1", 100), "t1")).await
}

/// Node A leading (reaching Redis at `a_redis`), node B standing by, a `t1` client on
/// each, and five changes published on B that A's client has received.
struct LedPair {
    a: TestServer,
    b: TestServer,
    on_a: Client,
    on_b: Client,
    published: Vec<u64>,
}

async fn led_pair(db: &pg::TestDb, prefix: &str, a_redis: &str, feed_start: &str) -> LedPair {
    let a = node_with_db_from(db, "node-a", a_redis, prefix, feed_start);
    let led = wait_until(TIMEOUT, || async { role(a.port).await == "leader" }).await;
    assert!(led, "{}", get_json(a.port, "/health").await);
    let b = node_with_db_from(db, "node-b", &redis_addr(), prefix, feed_start);
    wait_members(&b, 2).await;
    let mut on_a = Client::connect_path(a.port, "/ws?tenant=t1").await;
    let mut on_b = Client::connect_path(b.port, "/ws?tenant=t1").await;
    on_a.subscribe("/inventory", json!({})).await;
    on_b.subscribe("/inventory", json!({})).await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(publish_t1(b.port, i).await);
    }
    on_a.recv_seq("/inventory", "inventory:update", published[4])
        .await;
    LedPair {
        a,
        b,
        on_a,
        on_b,
        published,
    }
}

/// With a database: the leader (node A, behind a gate) loses Redis. It steps down,
/// node B takes the lease over and goes on tailing the database from the stored
/// position; when A is back it catches up from the stream. Clients on both nodes end
/// with every logged change once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_is_replaced_and_catches_up() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let db = pg::TestDb::create().await;
    db.migrate("notify");
    let gate = Gate::start().await;
    // FEED_START=now: a new leader still goes on from what the stream holds.
    let gated = format!("127.0.0.1:{}", gate.port);
    let LedPair {
        a,
        b,
        mut on_a,
        mut on_b,
        mut published,
    } = led_pair(&db, &prefix, &gated, "now").await;

    gate.close();
    // Published while A still holds the lease but cannot append: B must start from
    // the stored position, not from the log's head.
    for i in 5..10 {
        published.push(publish_t1(b.port, i).await);
    }
    let took_over = wait_until(TIMEOUT, || async {
        role(b.port).await == "leader" && role(a.port).await == "standby"
    })
    .await;
    assert!(
        took_over,
        "b leads, a stands by: {} {}",
        get_json(a.port, "/health").await,
        get_json(b.port, "/health").await
    );
    for i in 5..15 {
        published.push(publish_t1(b.port, i).await);
    }
    let last = *published.last().expect("seqs");
    let got_b = on_b
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(
        got_b, published,
        "node-b's client: every change once, in order"
    );
    gate.reopen();
    let got_a = on_a
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(
        got_a,
        published[5..].to_vec(),
        "node-a's client: what was published while A was cut off, once, in order"
    );
    assert_eq!(logged_seqs(&db, "t1").await, published);
}

/// With a database, Redis losing its data (the stream and the lease gone, as after a
/// restart without persistence) loses nothing: the leader's appends are refused, it
/// steps down, a node takes the lease again and appends from the stored position into
/// a new stream, every node reads on from its last seq, and a node started meanwhile
/// replays from the change log what came before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_database_redis_losing_its_data_loses_nothing() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let db = pg::TestDb::create().await;
    db.migrate("notify");
    let LedPair {
        a,
        b: _b,
        mut on_a,
        mut on_b,
        mut published,
    } = led_pair(&db, &prefix, &redis_addr(), "stored").await;
    on_b.recv_seq("/inventory", "inventory:update", published[4])
        .await;

    let client = redis::Client::open(format!("redis://{}", redis_addr())).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:changes"))
        .arg(format!("{prefix}:leader"))
        .query_async(&mut conn)
        .await
        .expect("delete the stream and the lease");
    // A node starting on the empty stream starts at the feed's stored position, so a
    // client resuming from before it reads the change log.
    let c = node_with_db(&db, "node-c", &redis_addr(), &prefix);
    wait_members(&c, 3).await;
    let mut on_c = Client::connect_path(c.port, "/ws?tenant=t1").await;
    let reply = on_c
        .subscribe("/inventory", json!({ "sinceSeq": published[2] }))
        .await;
    assert_eq!(reply["replayed"], 2, "{reply}");
    assert_eq!(reply["gap"], false, "{reply}");
    for i in 5..15 {
        published.push(publish_t1(a.port, i).await);
    }
    let last = *published.last().expect("seqs");
    for c in [&mut on_a, &mut on_b] {
        let got = c.seqs_until("/inventory", "inventory:update", last).await;
        assert_eq!(
            got,
            published[5..].to_vec(),
            "every later change once, in order"
        );
    }
    let got = on_c
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(
        got,
        published[3..].to_vec(),
        "node-c's client: the replay, then the rest"
    );
    assert_eq!(logged_seqs(&db, "t1").await, published);
}

/// Without a database, a replay beyond a node's ring reads the stream, as far back as
/// the stream reaches (`REDIS_STREAM_MAX_LEN`); from before that, the reply says `gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_reach_as_far_back_as_the_stream_keeps() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let url = format!("redis://{}", redis_addr());
    let server = spawn_server(&[
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("REDIS_STREAM_MAX_LEN", "1000"),
        ("REPLAY_MAX_CHANGES", "20"),
    ]);
    wait_members(&server, 1).await;
    let mut seqs = Vec::new();
    for batch in 0..6 {
        let changes: Vec<_> = (0..500)
            .map(|i| inv(&format!("r{}", batch * 500 + i), "w1", 100))
            .collect();
        seqs.extend(publish(server.port, &json!(changes)).await);
    }
    let last = *seqs.last().expect("seqs");
    let caught_up = wait_until(TIMEOUT, || async {
        get_json(server.port, "/health").await["services"]["redis"]["lastSeq"] == last
    })
    .await;
    assert!(caught_up, "{}", get_json(server.port, "/health").await);

    // 50 back: beyond the ring of 20, within the stream.
    let mut recent = server.connect().await;
    let reply = recent
        .subscribe("/inventory", json!({ "sinceSeq": seqs[seqs.len() - 51] }))
        .await;
    assert_eq!(
        (reply["replayed"].clone(), reply["gap"].clone()),
        (json!(50), json!(false)),
        "{reply}"
    );
    let got = recent
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(got, seqs[seqs.len() - 50..].to_vec());

    // From the first change: the stream was trimmed to about 1,000 since.
    let mut old = server.connect().await;
    let reply = old
        .subscribe("/inventory", json!({ "sinceSeq": seqs[0] }))
        .await;
    assert_eq!(reply["gap"], true, "{reply}");
}

/// `/clients?scope=cluster`, however the query spells `scope`, asks each member once,
/// with a fixed node-to-node request that cannot fan out again; that route refuses a
/// caller without the cluster secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_listing_asks_each_member_once() {
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let (a, b) = two_nodes(&prefix).await;
    let _on_b = Client::connect_path(b.port, "/ws?tenant=t1").await;
    let requests = |port: u16| async move {
        get_json(port, "/metrics").await["server"]["totalRequests"]
            .as_u64()
            .expect("totalRequests")
    };
    for path in [
        "/clients?scope=cluster&tenant=t1",
        "/clients?%73cope=cluster&tenant=t1",
        "/clients?%73%63%6f%70%65=%63luster&tenant=t1",
    ] {
        let before = requests(b.port).await;
        let listed = tokio::time::timeout(TIMEOUT, get_json(a.port, path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer"));
        let after = requests(b.port).await;
        // One request from node a, and the /metrics read that measures `after`.
        assert!(
            after - before <= 2,
            "{path}: node b served {} requests for one listing",
            after - before
        );
        assert_eq!(listed["count"], 1, "{path}: {listed}");
        assert!(
            listed["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["status"] == "ok")),
            "{path}: {listed}"
        );
    }
    let refused = http_get(b.port, "/cluster/clients?tenant=t1").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let forged = http_request_with(
        b.port,
        "GET",
        "/cluster/clients?tenant=t1",
        &[("x-nilecast-cluster-secret", "guess")],
        None,
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.text());
}

/// With auth on, `/health` lists the members' addresses only to staff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_addresses_are_shown_to_staff_only() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "nilecast-test-secret-of-at-least-32-bytes";
    let prefix = prefix();
    let _keys = Keys(prefix.clone());
    let url = format!("redis://{}", redis_addr());
    let a = spawn_server(&[
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("NODE_ID", "node-a"),
        ("JWT_SECRET", SECRET),
    ]);
    wait_members(&a, 1).await;
    let members = |h: &serde_json::Value| h["services"]["redis"]["members"].clone();
    let anonymous = get_json(a.port, "/health").await;
    assert!(
        members(&anonymous)
            .as_array()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|m| m.get("address").is_none())),
        "{anonymous}"
    );
    let claims =
        json!({"sub": "ops", "tenant_id": "t1", "roles": ["staff"], "exp": now_ms() / 1000 + 3600});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let auth = format!("Bearer {token}");
    let addressed = wait_until(TIMEOUT, || {
        let auth = auth.clone();
        async move {
            let staff = http_request_with(
                a.port,
                "GET",
                "/health",
                &[("Authorization", auth.as_str())],
                None,
            )
            .await;
            members(&staff.json())
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["address"].is_string()))
        }
    })
    .await;
    assert!(addressed, "staff see the addresses");
}
