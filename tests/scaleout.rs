//! Two nodes behind nginx (`ip_hash`, the shipped deploy/nginx.conf on a loopback port),
//! sharing a real PostgreSQL (each node follows the change log) or the local Redis
//! (cluster mode, a stream between the nodes): a change published on node A reaches a
//! client connected through nginx to node B; when B stops (SIGTERM) or dies (SIGKILL) in
//! the middle of a stream, its clients reconnect through nginx, land on A, and resume
//! with `sinceSeq`: nothing missing, nothing twice.
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
    Database(&'a TestDb),
    Redis(String),
}

/// A node on `bus`, named `name`, trusting nginx's forwarded addresses.
fn node_on(bus: &Bus, name: &str) -> TestServer {
    let mut env: Vec<(String, String)> = match bus {
        Bus::Database(db) => db.env("notify"),
        Bus::Redis(prefix) => vec![
            ("REDIS_URL".into(), "redis://127.0.0.1:6379".into()),
            ("REDIS_PREFIX".into(), prefix.clone()),
        ],
    };
    env.push(("NODE_ID".into(), name.into()));
    env.push(("FEED_NAME".into(), name.into()));
    env.push(("TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    // A small ring: a client failing over resumes from further back than the node
    // retains, so the replay reads the change log or the stream.
    env.push(("REPLAY_MAX_CHANGES".into(), "20".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_server(&refs)
}

/// Waits until a node follows its bus.
async fn wait_ready(bus: &Bus<'_>, server: &TestServer) {
    match bus {
        Bus::Database(_) => pg::wait_feed_connected(server.port).await,
        Bus::Redis(_) => {
            let port = server.port;
            let ok = wait_until(TIMEOUT, || async move {
                get_json(port, "/health").await["services"]["redis"]["connected"] == true
            })
            .await;
            assert!(ok, "node on Redis not ready");
        }
    }
}

/// A node on `db`, named `name`, trusting nginx's forwarded addresses.
fn node(db: &TestDb, name: &str) -> TestServer {
    let mut env = db.env("notify");
    env.push(("NODE_ID".into(), name.into()));
    env.push(("FEED_NAME".into(), name.into()));
    env.push(("TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_server(&refs)
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
    let (a, b) = (node(&db, "node-a"), node(&db, "node-b"));
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

/// A stream of changes published on A while B, serving the client, stops (`kill`:
/// SIGTERM or SIGKILL): the client reconnects through nginx, lands on A, resumes with
/// `sinceSeq`, and ends with exactly the logged changes.
async fn failover_loses_nothing(signal: &str, redis: bool) {
    const STREAM: usize = 200;
    let db = TestDb::create().await;
    db.migrate("notify");
    let prefix = format!("nilecast-scale-{}-{signal}", std::process::id());
    let bus = if redis {
        Bus::Redis(prefix.clone())
    } else {
        Bus::Database(&db)
    };
    let a = node_on(&bus, "node-a");
    let mut b = node_on(&bus, "node-b");
    wait_ready(&bus, &a).await;
    wait_ready(&bus, &b).await;
    let nginx = Nginx::start(a.port, b.port).await;
    let (from, mut client) = client_on(&nginx, "node-b").await;
    client.subscribe("/inventory", json!({})).await;

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
    if redis {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli --scan --pattern '{prefix}:*' | xargs -r redis-cli del"
            ))
            .status();
    } else {
        let pg = db.client().await;
        let logged: Vec<u64> = pg
            .query(
                "SELECT seq FROM nilecast_changes WHERE tenant_id = 'scale' AND data_type = 'inventory' ORDER BY seq",
                &[],
            )
            .await
            .expect("read the log")
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        assert_eq!(logged, published, "the log holds what was published");
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
    failover_loses_nothing("TERM", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("KILL", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_sigterm_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("TERM", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_sigkill_on_a_node_mid_stream_loses_and_doubles_nothing() {
    failover_loses_nothing("KILL", true).await;
}
