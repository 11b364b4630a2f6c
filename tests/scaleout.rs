//! Two nodes behind nginx (`ip_hash`, the shipped deploy/nginx.conf on a loopback port),
//! sharing a real PostgreSQL (each node follows the change log), the local Redis
//! (cluster mode, a stream between the nodes), or both (the node holding the leader
//! lease tails the database into the stream): a change published on node A reaches a
//! client connected through nginx to node B; when B stops (SIGTERM) or dies (SIGKILL) in
//! the middle of a stream, its clients reconnect through nginx, land on A, and resume
//! with `sinceSeq`: nothing missing, nothing twice. With both, B is the leader, and A
//! takes over its lease.
//!
//! nginx's `ip_hash` keys on the first three octets of the client's address, so the
//! clients bind source addresses in different /24s of 127.0.0.0/8 (127.0.1.1,
//! 127.0.2.1, ...). Needs nginx (Debian's `nginx-light`; `scripts/test.sh` installs it).

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::pg::{self, TestDb};
use common::*;
use serde_json::{json, Value};

/// nginx with the shipped configuration, pointed at the two nodes; stopped on drop.
struct Nginx {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    async fn start(node_a: u16, node_b: u16) -> Nginx {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("nilecast-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        // Worker processes may run as another user: let them write their temp files.
        let _ = Command::new("chmod").arg("0777").arg(&dir).status();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .expect("read deploy/nginx.conf");
        let site = shipped
            .replace("nilecast-a:4001", &format!("127.0.0.1:{node_a}"))
            .replace("nilecast-b:4001", &format!("127.0.0.1:{node_b}"))
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(
            site, shipped,
            "the shipped configuration names nilecast-a, nilecast-b and port 8080"
        );
        std::fs::write(dir.join("nilecast.conf"), site).expect("write the site");
        let d = dir.display();
        let main = format!(
            "worker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/nilecast.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-g")
            .arg("daemon off;")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run nginx (scripts/test.sh installs Debian's nginx-light)");
        let up = wait_until(TIMEOUT, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(
            up,
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Nginx { port, child, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What the nodes share.
enum Bus<'a> {
    /// Each node follows the change log.
    Database(&'a TestDb),
    /// Cluster mode without a database: a Redis Stream, seqs from Redis.
    Redis(String),
    /// Cluster mode with a database: the lease holder tails the log into the stream.
    Both(&'a TestDb, String),
}

impl Bus<'_> {
    fn redis_prefix(&self) -> Option<&str> {
        match self {
            Bus::Database(_) => None,
            Bus::Redis(prefix) | Bus::Both(_, prefix) => Some(prefix),
        }
    }
}

/// A node on `bus`, named `name`, trusting nginx's forwarded addresses.
fn node_on(bus: &Bus, name: &str) -> TestServer {
    let mut env: Vec<(String, String)> = Vec::new();
    match bus {
        // Each node follows the log from its own position.
        Bus::Database(db) => {
            env.extend(db.env("notify"));
            env.push(("FEED_NAME".into(), name.into()));
        }
        // One position, the leader's.
        Bus::Both(db, _) => {
            env.extend(db.env("notify"));
            env.push(("LEADER_LEASE_MS".into(), LEASE_MS.into()));
        }
        Bus::Redis(_) => {}
    }
    if let Some(prefix) = bus.redis_prefix() {
        env.push(("REDIS_URL".into(), redis_url()));
        env.push(("REDIS_PREFIX".into(), prefix.into()));
    }
    env.push(("NODE_ID".into(), name.into()));
    env.push(("TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    // A small ring: a client failing over resumes from further back than the node
    // retains, so the replay reads the change log or the stream.
    env.push(("REPLAY_MAX_CHANGES".into(), "20".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_server(&refs)
}

/// The leader's lease in the tests: a standby takes over within about 1.5 s.
const LEASE_MS: &str = "1500";

/// Waits until a node follows its bus.
async fn wait_ready(bus: &Bus<'_>, server: &TestServer) {
    let port = server.port;
    let ok = match bus {
        Bus::Database(_) => {
            pg::wait_feed_connected(port).await;
            true
        }
        Bus::Redis(_) => {
            wait_until(TIMEOUT, || async move {
                get_json(port, "/health").await["services"]["redis"]["connected"] == true
            })
            .await
        }
        Bus::Both(..) => {
            wait_until(TIMEOUT, || async move {
                let services = &get_json(port, "/health").await["services"];
                services["redis"]["connected"] == true
                    && services["redis"]["leader"].is_string()
                    && services["niledb"]["status"] == "healthy"
            })
            .await
        }
    };
    assert!(ok, "node not ready: {}", get_json(port, "/health").await);
}

/// Waits until the node on `port` holds the leader lease.
async fn wait_leader(port: u16) {
    let ok = wait_until(Duration::from_secs(30), || async move {
        get_json(port, "/health").await["services"]["redis"]["role"] == "leader"
    })
    .await;
    assert!(
        ok,
        "never became the leader: {}",
        get_json(port, "/health").await
    );
}

/// The test Redis: `NILECAST_TEST_REDIS` (default `127.0.0.1:6379`).
fn redis_url() -> String {
    format!(
        "redis://{}",
        std::env::var("NILECAST_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
    )
}

/// Deletes a test's Redis keys when dropped: declared before the nodes, it drops after
/// them, so no heartbeat writes a key again.
struct Keys(String);

impl Drop for Keys {
    fn drop(&mut self) {
        delete_keys(&self.0);
    }
}

fn delete_keys(prefix: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -u {url} --scan --pattern '{prefix}:*' | xargs -r redis-cli -u {url} del",
            url = redis_url()
        ))
        .status();
}

/// A source address whose connections nginx sends to `wanted`, and its client.
async fn client_on(nginx: &Nginx, wanted: &str) -> (IpAddr, Client) {
    for third in 1..=60u8 {
        let from = IpAddr::from([127, 0, third, 1]);
        let client = Client::connect_from(from, nginx.port, "/ws?tenant=scale")
            .await
            .unwrap_or_else(|e| panic!("connect through nginx from {from}: {e}"));
        if client.established["node"] == wanted {
            return (from, client);
        }
    }
    panic!("no source address in 127.0.1-60.1 lands on {wanted}");
}

async fn publish_to(port: u16, i: usize) -> u64 {
    publish_one(
        port,
        with_tenant(inv(&format!("s-{i}"), "w1", 100), "scale"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_published_on_one_node_reaches_a_client_on_the_other() {
    let db = TestDb::create().await;
    db.migrate("notify");
    let bus = Bus::Database(&db);
    let (a, b) = (node_on(&bus, "node-a"), node_on(&bus, "node-b"));
    pg::wait_feed_connected(a.port).await;
    pg::wait_feed_connected(b.port).await;
    let nginx = Nginx::start(a.port, b.port).await;
    let (_, mut on_b) = client_on(&nginx, "node-b").await;
    let (_, mut on_a) = client_on(&nginx, "node-a").await;
    on_b.subscribe("/inventory", json!({})).await;
    on_a.subscribe("/inventory", json!({})).await;
    let seq = publish_to(a.port, 1).await;
    let (data, _) = on_b.recv_seq("/inventory", "inventory:update", seq).await;
    assert_eq!(data["data"]["productId"], "s-1", "{data}");
    on_a.recv_seq("/inventory", "inventory:update", seq).await;
    // And the other way round.
    let seq = publish_to(b.port, 2).await;
    on_a.recv_seq("/inventory", "inventory:update", seq).await;
    on_b.recv_seq("/inventory", "inventory:update", seq).await;
}

/// The seqs of the test's changes in the change log.
async fn logged_seqs(db: &TestDb) -> Vec<u64> {
    db.client()
        .await
        .query(
            "SELECT seq FROM nilecast_changes WHERE tenant_id = 'scale' AND data_type = 'inventory' ORDER BY seq",
            &[],
        )
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

/// Which bus a failover test runs on.
#[derive(Clone, Copy, PartialEq)]
enum On {
    Database,
    Redis,
    Both,
}

/// A stream of changes published on A while B, serving the client, stops (`kill`:
/// SIGTERM or SIGKILL): the client reconnects through nginx, lands on A, resumes with
/// `sinceSeq`, and ends with exactly the logged changes; a client connected to A all
/// along gets them too. With both a database and Redis, B is the leader tailing the
/// database, and A takes over.
async fn failover_loses_nothing(signal: &str, on: On) {
    const STREAM: usize = 200;
    let db = TestDb::create().await;
    db.migrate("notify");
    let prefix = format!("nilecast-scale-{}-{signal}", std::process::id());
    let _keys = Keys(prefix.clone());
    let bus = match on {
        On::Database => Bus::Database(&db),
        On::Redis => Bus::Redis(prefix.clone()),
        On::Both => Bus::Both(&db, prefix.clone()),
    };
    let mut b = node_on(&bus, "node-b");
    wait_ready(&bus, &b).await;
    if on == On::Both {
        wait_leader(b.port).await;
    }
    let a = node_on(&bus, "node-a");
    wait_ready(&bus, &a).await;
    let nginx = Nginx::start(a.port, b.port).await;
    let (from, mut client) = client_on(&nginx, "node-b").await;
    client.subscribe("/inventory", json!({})).await;
    let mut watcher = Client::connect_path(a.port, "/ws?tenant=scale").await;
    watcher.subscribe("/inventory", json!({})).await;

    let a_port = a.port;
    let mut publisher = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..STREAM {
            seqs.push(publish_to(a_port, i).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seqs
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut stopped = false;
    let mut last_published = None;
    let mut landed_on = Vec::new();
    loop {
        if last_published.is_none() && publisher.is_finished() {
            last_published = Some((&mut publisher).await.expect("publisher"));
        }
        if let Some(published) = &last_published {
            if published.last().is_some_and(|last| seen.contains(last)) {
                break;
            }
        }
        match client.next_frame_within(Duration::from_secs(5)).await {
            Ok(frame) if frame["event"] == "inventory:update" => {
                seen.push(frame["data"]["seq"].as_u64().expect("seq"));
                if !stopped && seen.len() == STREAM / 4 {
                    stopped = true;
                    match signal {
                        "TERM" => b.sigterm(),
                        _ => {
                            let _ = b.child.kill();
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                let since = seen.last().copied().unwrap_or(0);
                client = reconnect(&nginx, from, since, &mut landed_on).await;
            }
        }
    }
    assert!(stopped, "node-b was stopped mid-stream");
    let published: Vec<u64> = last_published.unwrap_or_default();
    let last = published.last().copied().unwrap_or(0);
    let watched = watcher
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    match on {
        On::Redis => {}
        On::Database | On::Both => {
            assert_eq!(
                logged_seqs(&db).await,
                published,
                "the log holds what was published"
            );
        }
    }
    if on == On::Both {
        let redis = &get_json(a.port, "/health").await["services"]["redis"];
        assert_eq!(
            redis["role"], "leader",
            "node-a took over the lease: {redis}"
        );
    }
    assert!(
        landed_on.iter().any(|n| n == "node-a"),
        "after SIG{signal} the client reconnected to node-a: {landed_on:?}"
    );
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no change twice");
    assert_eq!(published.len(), STREAM);
    assert_eq!(
        seen, published,
        "every change once, in order, across the failover"
    );
    assert_eq!(
        watched, published,
        "node-a's own client got every change once, in order"
    );
}

/// Reconnects through nginx from `from` (retrying while nginx finds a live node) and
/// resubscribes after `since`.
async fn reconnect(nginx: &Nginx, from: IpAddr, since: u64, landed_on: &mut Vec<String>) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_from(from, nginx.port, "/ws?tenant=scale").await {
            Ok(mut client) => {
                landed_on.push(
                    client.established["node"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
                let reply = client
                    .subscribe("/inventory", json!({ "sinceSeq": since }))
                    .await;
                assert_eq!(reply["gap"], Value::Bool(false), "{reply}");
                return client;
            }
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "could not reconnect: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("TERM", On::Database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("KILL", On::Database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_sigterm_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("TERM", On::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_sigkill_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("KILL", On::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_leader_stopped_mid_stream_hands_over_without_loss() {
    failover_loses_nothing("TERM", On::Both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_leader_killed_mid_stream_a_standby_takes_over_without_loss() {
    failover_loses_nothing("KILL", On::Both).await;
}

/// With a database and Redis, only the leader reads the change log: the standby's
/// feed does not run, and its clients get the changes through the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_database_only_the_leader_tails_it() {
    let db = TestDb::create().await;
    db.migrate("notify");
    let prefix = format!("nilecast-scale-{}-one-reader", std::process::id());
    let _keys = Keys(prefix.clone());
    let bus = Bus::Both(&db, prefix.clone());
    let a = node_on(&bus, "node-a");
    wait_ready(&bus, &a).await;
    wait_leader(a.port).await;
    let b = node_on(&bus, "node-b");
    wait_ready(&bus, &b).await;
    let mut on_b = Client::connect_path(b.port, "/ws?tenant=scale").await;
    on_b.subscribe("/inventory", json!({})).await;
    let seq = publish_to(b.port, 1).await;
    on_b.recv_seq("/inventory", "inventory:update", seq).await;

    let health_b = get_json(b.port, "/health").await;
    let services = &health_b["services"];
    assert_eq!(services["redis"]["role"], "standby", "{health_b}");
    assert_eq!(services["redis"]["leader"], "node-a", "{health_b}");
    assert_eq!(services["niledb"]["feedRole"], "standby", "{health_b}");
    assert_eq!(services["niledb"]["status"], "healthy", "{health_b}");
    let admin = pg::connect(&pg::admin_url()).await;
    let listeners = pg::backends(&admin, &db.name, "nilecast-listener").await;
    assert_eq!(
        listeners.len(),
        1,
        "one LISTEN connection, the leader's: {listeners:?}"
    );
    let published = |port| async move {
        metrics(port).await["niledb"]["feed"]["published"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        published(a.port).await >= 1,
        "the leader's feed read the change"
    );
    assert_eq!(
        published(b.port).await,
        0,
        "the standby's feed read nothing"
    );

    // Stopped, the leader gives the lease up on its way out (it does not wait to
    // expire), and the standby takes it.
    let mut a = a;
    a.sigterm();
    assert!(
        a.wait_exit(TIMEOUT).await.is_some(),
        "node-a exits on SIGTERM"
    );
    let holder = Command::new("redis-cli")
        .args(["-u", &redis_url(), "GET", &format!("{prefix}:leader")])
        .output()
        .expect("redis-cli");
    let holder = String::from_utf8_lossy(&holder.stdout).to_string();
    assert!(
        !holder.starts_with("node-a/"),
        "node-a still holds the lease: {holder}"
    );
    wait_leader(b.port).await;
}

/// An existing Socket.IO client behind nginx: its node is stopped (SIGTERM) while
/// changes are published on the other; socket.io-client reconnects through nginx, lands
/// on the other node and is recovered there (the session kept in the database, or in
/// Redis without one) with every change it missed, once, in order.
async fn socketio_failover(on: On) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/socket.io-client").exists(),
        "node_modules/socket.io-client is missing: run scripts/test.sh (or npm ci) first"
    );
    let db = TestDb::create().await;
    db.migrate("notify");
    let prefix = format!(
        "nilecast-scale-{}-socketio-{}",
        std::process::id(),
        on as u8
    );
    let _keys = Keys(prefix.clone());
    let bus = match on {
        On::Database => Bus::Database(&db),
        On::Redis => Bus::Redis(prefix.clone()),
        On::Both => Bus::Both(&db, prefix.clone()),
    };
    let a = node_on(&bus, "node-a");
    let b = node_on(&bus, "node-b");
    wait_ready(&bus, &a).await;
    wait_ready(&bus, &b).await;
    let nginx = Nginx::start(a.port, b.port).await;
    // Where nginx sends 127.0.0.1 (Node's source address).
    let probe = Client::connect_from(IpAddr::from([127, 0, 0, 1]), nginx.port, "/ws")
        .await
        .expect("connect through nginx");
    let (mut victim, survivor) = if probe.established["node"] == "node-a" {
        (a, b)
    } else {
        (b, a)
    };
    drop(probe);
    let mut child = Command::new("node")
        .arg(root.join("tests/socketio/scenarios.mjs"))
        .arg("failover")
        .arg(format!("http://127.0.0.1:{}", nginx.port))
        .arg(format!("http://127.0.0.1:{}", survivor.port))
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run node (is Node.js installed?)");
    let mut lines = Lines::of(&mut child);
    lines.wait_for("ready");
    victim.sigterm();
    assert!(
        victim.wait_exit(TIMEOUT).await.is_some(),
        "the node stopped"
    );
    lines.wait_for("ok ");
    let status = child.wait().expect("node exit");
    assert!(status.success(), "node said: {:?}", lines.seen);
    assert!(
        lines.seen.iter().any(|l| l == "ok failover"),
        "node said: {:?}",
        lines.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_recovers_on_the_other_node() {
    socketio_failover(On::Both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_only_a_socketio_client_recovers_on_the_other_node() {
    socketio_failover(On::Redis).await;
}
