//! Shared helpers for the black-box integration tests.
//!
//! Every test starts its own `nilecast serve` process (see [`spawn_server`]) and talks
//! to it only over the network: a native-protocol client built on tokio-tungstenite
//! ([`Client`]), a hand-rolled WebSocket client that can send anything at all
//! ([`RawClient`]), and a minimal HTTP/1.1 client ([`http_get`], [`http_post_json`],
//! [`http_request`]).
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod pg;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for anything that should happen (busy 2-core CI machine).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables that could leak configuration into the server from the
/// environment the tests run in; they are removed before the test's own are set.
const SCRUBBED_ENV: &[&str] = &[
    "WEBSOCKET_PORT",
    "SIMULATE_RATE",
    "MAX_MESSAGE_BYTES",
    "MAX_BODY_BYTES",
    "MAX_SUBSCRIPTIONS",
    "MAX_FILTER_VALUES",
    "REPLAY_MAX_CHANGES",
    "REPLAY_MAX_AGE_MS",
    "RATE_LIMIT_MAX_MESSAGES",
    "RATE_LIMIT_WINDOW_MS",
    "QUEUE_MAX_FRAMES",
    "QUEUE_MAX_BYTES",
    "SERVER_QUEUE_MAX_BYTES",
    "AUTH_TIMEOUT_MS",
    "CLUSTER_SECRET",
    "ALERTS_MAX_PER_TENANT",
    "SLOW_CONSUMER_POLICY",
    "HEARTBEAT_INTERVAL_MS",
    "HEARTBEAT_TIMEOUT_MS",
    "SHUTDOWN_TIMEOUT_MS",
    "LOW_STOCK_THRESHOLD",
    "NILECAST_ECHO_ENDPOINT",
    "PERMESSAGE_DEFLATE",
    "NILECAST_ENV",
    "BIND_ADDRESS",
    "MAX_CONNECTIONS",
    "HANDSHAKE_TIMEOUT_MS",
    "CLOSE_TIMEOUT_MS",
    "OUT_OF_STOCK_THRESHOLD",
    "CORS_ORIGIN",
    "NODE_ENV",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY",
    "JWT_LEEWAY_SECONDS",
    "JWT_LEEWAY_S",
    "JWT_ALGORITHMS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_MAX_BYTES",
    "RATE_LIMIT_CLOSE_MULTIPLE",
    "MAX_CONNECTIONS_PER_IP",
    "UPGRADES_PER_IP_PER_S",
    "TRUSTED_PROXIES",
    "MAX_HEADER_BYTES",
    "REDIS_URL",
    "DATABASE_URL",
    "NILEDB_CONNECTION_STRING",
    "NILEDB_HOST",
    "NILEDB_USER",
    "NILEDB_PASSWORD",
    "NILEDB_DATABASE",
    "NILEDB_PORT",
    "NILEDB_SSLMODE",
    "NILECAST_MIGRATE",
    "CHANGE_DETECTION",
    "POLL_INTERVAL_MS",
    "FEED_START",
    "FEED_NAME",
    "FEED_BATCH",
    "TABLE_POLL_TABLES",
    "TABLE_POLL_LOOKBACK_MS",
    "CHANGE_LOG_RETENTION_HOURS",
    "CHANGE_LOG_PRUNE_INTERVAL_MS",
    "REPLAY_MAX_DB_CHANGES",
    "NILE_TENANT_CONTEXT",
    "DB_POOL_SIZE",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "SLOW_QUERY_MS",
    "REDIS_PREFIX",
    "NODE_ID",
    "JWT_MAX_LIFETIME_S",
    "BODY_TIMEOUT_MS",
];

static SERVER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The server binary under test: the one this build made, or `NILECAST_TEST_BIN` (to
/// run the same black-box tests against another build, e.g. the one before a fix).
pub fn server_bin() -> PathBuf {
    std::env::var_os("NILECAST_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nilecast")))
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// A running `nilecast serve` child process; killed (and its temp dir removed) on drop.
pub struct TestServer {
    pub port: u16,
    pub child: Child,
    dir: PathBuf,
    /// The server's stderr (its log), line by line as it comes.
    log: mpsc::Receiver<String>,
    /// What the shape under test put behind this server, removed with it.
    _backing: Option<Backing>,
}

/// The deployment shape the black-box tests run against (docs/protocol.md, "5.5
/// Deployment shapes"): `NILECAST_TEST_SHAPE` = `memory` (the default), `database`,
/// `redis` or `database+redis`. `scripts/test.sh` runs the protocol tests once in each.
/// A test that configures a database or Redis itself keeps its own configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    Memory,
    Database,
    Redis,
    DatabaseAndRedis,
}

/// Waits until the server has delivered `seq` to its engine. In memory that is done when
/// the publish returns; with a change log or a stream the change is accepted first and
/// delivered a moment later (docs/protocol.md, "5.5 Deployment shapes"), so a test that
/// needs the change in the retention ring or the read model waits for it.
pub async fn wait_delivered(port: u16, seq: u64) {
    if !shape().has_log() {
        return;
    }
    let ok = wait_until(TIMEOUT, || async move {
        metrics(port).await["changes"]["lastSeq"]
            .as_u64()
            .is_some_and(|last| last >= seq)
    })
    .await;
    assert!(ok, "seq {seq} was not delivered: {}", metrics(port).await);
}

/// Waits until `GET /alerts{query}` lists an alert about `product`. In memory an alert is
/// listed once its change is delivered; with a database it is listed once the alert
/// writer has stored it, a moment after its change reached clients.
pub async fn wait_alert_listed(port: u16, query: &str, product: &str) {
    let path = format!("/alerts{query}");
    let listed = wait_until(TIMEOUT, || {
        let path = path.clone();
        async move {
            get_json(port, &path).await["alerts"]
                .as_array()
                .is_some_and(|list| list.iter().any(|a| a["data"]["productId"] == product))
        }
    })
    .await;
    assert!(
        listed,
        "no alert about {product} in {path}: {}",
        get_json(port, &path).await
    );
}

pub fn shape() -> Shape {
    match std::env::var("NILECAST_TEST_SHAPE").as_deref() {
        Ok("database") => Shape::Database,
        Ok("redis") => Shape::Redis,
        Ok("database+redis") => Shape::DatabaseAndRedis,
        _ => Shape::Memory,
    }
}

impl Shape {
    /// Whether changes below the retention ring can be replayed (a change log or a stream).
    pub fn has_log(self) -> bool {
        self != Shape::Memory
    }
}

/// A fresh database and Redis key prefix behind one server of a non-memory shape.
struct Backing {
    _db: Option<pg::TestDb>,
    redis_prefix: Option<String>,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Some(prefix) = &self.redis_prefix {
            delete_redis_keys(prefix);
        }
    }
}

/// The local Redis the tests use: `NILECAST_TEST_REDIS` (default `127.0.0.1:6379`,
/// which `scripts/test.sh` starts when it is not running).
pub fn redis_addr() -> String {
    std::env::var("NILECAST_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// Deletes a test's Redis keys (`<prefix>:*`); for clean-up in `Drop`.
pub fn delete_redis_keys(prefix: &str) {
    let prefix = prefix.to_string();
    block_on_detached(async move {
        let Ok(client) = redis::Client::open(format!("redis://{}", redis_addr())) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    });
}

/// Runs `fut` on a runtime of its own, in a thread of its own, and returns its output.
fn block_on_thread<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for test set-up")
            .block_on(fut)
    })
    .join()
    .expect("test set-up thread")
}

/// The environment and backing of the shape under test, for a server whose options do
/// not configure a database or Redis themselves.
fn shape_backing(options: &ServerOptions) -> Option<(Vec<(String, String)>, Backing)> {
    let shape = shape();
    let own = options.envs.iter().any(|(k, _)| {
        matches!(
            *k,
            "NILEDB_CONNECTION_STRING" | "NILEDB_HOST" | "DATABASE_URL" | "REDIS_URL"
        )
    });
    if shape == Shape::Memory || own {
        return None;
    }
    let mut env = Vec::new();
    let db = match shape {
        Shape::Database | Shape::DatabaseAndRedis => {
            let db = block_on_thread(pg::TestDb::create());
            db.migrate("notify");
            env.extend(db.env("notify"));
            Some(db)
        }
        _ => None,
    };
    let redis_prefix = match shape {
        Shape::Redis | Shape::DatabaseAndRedis => {
            let n = SERVER_COUNTER.fetch_add(1, Ordering::SeqCst);
            let prefix = format!("nilecast-shape-{}-{n}-{}", std::process::id(), now_ms());
            env.push(("REDIS_URL".into(), format!("redis://{}", redis_addr())));
            env.push(("REDIS_PREFIX".into(), prefix.clone()));
            env.push(("LEADER_LEASE_MS".into(), "1500".into()));
            Some(prefix)
        }
        _ => None,
    };
    Some((
        env,
        Backing {
            _db: db,
            redis_prefix,
        },
    ))
}

/// Waits until a server of the shape under test follows its bus: the feed listens (a
/// change logged before would be taken for history), the stream reader is connected,
/// and with both, the node leads.
fn wait_backing_ready(port: u16) {
    let shape = shape();
    let ready = block_on_thread(async move {
        wait_until(Duration::from_secs(30), || async move {
            let h = get_json(port, "/health").await;
            let services = &h["services"];
            let feed = services["niledb"]["listenerConnected"] == true;
            let stream = services["redis"]["connected"] == true;
            let leading = services["redis"]["role"] == "leader";
            match shape {
                Shape::Memory => true,
                Shape::Database => feed,
                Shape::Redis => stream,
                Shape::DatabaseAndRedis => stream && leading && feed,
            }
        })
        .await
    });
    assert!(
        ready,
        "the server on port {port} did not get ready in shape {shape:?}"
    );
}

/// How [`spawn_server_with`] and [`run_server_to_exit`] start the server, beyond what
/// [`spawn_server`] does.
#[derive(Default, Clone, Copy)]
pub struct ServerOptions<'a> {
    /// Variables set after the defaults (they win).
    pub envs: &'a [(&'a str, &'a str)],
    /// Defaults of [`spawn_server`] to leave unset, e.g. `SIMULATE_RATE` to see the
    /// server's own default.
    pub unset: &'a [&'a str],
    /// Written to `.env` in the server's working directory before it starts.
    pub dotenv: Option<&'a str>,
    /// Arguments after `serve`.
    pub args: &'a [&'a str],
}

/// A fresh temporary working directory for one server process.
fn server_dir() -> PathBuf {
    let n = SERVER_COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "nilecast-it-{}-{}-{}",
        std::process::id(),
        n,
        nanos
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir for the server");
    dir
}

/// `nilecast serve` in `dir` with the scrubbed environment and the options applied.
fn server_command(dir: &std::path::Path, options: &ServerOptions) -> Command {
    if let Some(contents) = options.dotenv {
        std::fs::write(dir.join(".env"), contents).expect("write the server's .env");
    }
    let mut cmd = Command::new(server_bin());
    cmd.arg("serve")
        .args(options.args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in [
        ("WEBSOCKET_PORT", "0"),
        ("SIMULATE_RATE", "0"),
        ("RUST_LOG", "warn"),
    ] {
        if !options.unset.contains(&k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in options.envs {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the server with `WEBSOCKET_PORT=0 SIMULATE_RATE=0 RUST_LOG=warn` plus `envs`,
/// in a fresh temporary working directory, and waits (30 s) for its
/// `nilecast listening on <ip>:<port>` line.
pub fn spawn_server(envs: &[(&str, &str)]) -> TestServer {
    spawn_server_with(ServerOptions {
        envs,
        ..ServerOptions::default()
    })
}

/// [`spawn_server`] with more control: defaults left unset, a `.env` file, arguments.
pub fn spawn_server_with(options: ServerOptions) -> TestServer {
    let dir = server_dir();
    let backing = shape_backing(&options);
    let mut command = server_command(&dir, &options);
    if let Some((env, _)) = &backing {
        for (k, v) in env {
            command.env(k, v);
        }
    }
    let mut child = command.spawn().expect("spawn the nilecast binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    // Server logs go through the test's captured output: shown only when a test fails
    // (threads spawned from a test thread inherit its output capture). They also go to
    // a channel, for the tests that wait for a log line.
    let (log_tx, log) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[nilecast] {line}");
            let _ = log_tx.send(line);
        }
    });

    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Keep draining stdout for the whole life of the process so the pipe never fills.
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("nilecast listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });

    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(e) => {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "server did not print `nilecast listening on <ip>:<port>` ({e:?}); exit status: {status:?}"
            );
        }
    };
    let addr = line.trim_start_matches("nilecast listening on ").trim();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse a port from {line:?}"));
    assert_ne!(port, 0, "server reported port 0: {line:?}");
    let server = TestServer {
        port,
        child,
        dir,
        log,
        _backing: backing.map(|(_, backing)| backing),
    };
    if server._backing.is_some() {
        wait_backing_ready(port);
    }
    server
}

/// How a server process that was expected to exit ended.
#[derive(Debug)]
pub struct ServerExit {
    /// None when it was still running at the deadline (it is killed then).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the server with `options` and waits up to `timeout` for it to exit on its own
/// (start-up refusals, `--help`); a server still running then is killed.
pub fn run_server_to_exit(options: ServerOptions, timeout: Duration) -> ServerExit {
    let dir = server_dir();
    let mut child = server_command(&dir, &options)
        .spawn()
        .expect("spawn the nilecast binary");
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exit = ServerExit {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    exit
}

impl TestServer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to the server process.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status:?}");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.port).await
    }

    /// Waits up to `timeout` for a log line (stderr) containing `needle` and returns
    /// it; Err with the lines seen meanwhile when none came. Blocks the calling thread:
    /// use it from a multi-thread runtime.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => return Err(seen),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `fut` to completion on a runtime of its own, in a thread of its own: for clean-up
/// in `Drop`, which cannot await and may run inside a test's runtime.
pub fn block_on_detached<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(fut);
        }
    })
    .join();
}

/// A child process's stdout, line by line as it comes (the Node scenarios that print
/// progress while a test acts on the server).
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    /// Takes `child`'s piped stdout.
    pub fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits (60 s) for a line starting with `prefix`, or with `FAIL`.
    pub fn wait_for(&mut self, prefix: &str) {
        loop {
            let line = self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!("waiting for {prefix:?}; the process said: {:?}", self.seen)
                });
            let hit = line.starts_with(prefix) || line.starts_with("FAIL");
            self.seen.push(line);
            if hit {
                return;
            }
        }
    }

    /// The first JSON object line seen.
    pub fn json(&self) -> Value {
        self.seen
            .iter()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no JSON line: {:?}", self.seen))
    }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `f` every 50 ms until it yields true (returns true) or `timeout` passes
/// (returns false).
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Assertions on values
// ---------------------------------------------------------------------------

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` to milliseconds since the epoch.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, se, ms) = (
        digits(11..13)?,
        digits(14..16)?,
        digits(17..19)?,
        digits(20..23)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + ms)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Asserts `v` is an ISO-8601 UTC timestamp with milliseconds
/// (`2026-11-26T08:00:00.000Z`) within a day of now.
pub fn assert_iso_ms(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected an ISO-8601 string, got {v}"));
    let ms =
        parse_iso_ms(s).unwrap_or_else(|| panic!("{what}: {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"));
    let diff = (ms - now_ms()).abs();
    assert!(
        diff < 86_400_000,
        "{what}: {s:?} is not a current time (off by {diff} ms)"
    );
}

/// Asserts `data` is an error object `{code, message, ...}` with the given code.
pub fn assert_error_obj(err: &Value, code: &str) {
    assert_eq!(err["code"], code, "expected error code {code}, got {err}");
    assert!(
        err["message"].is_string(),
        "error object must carry a string message: {err}"
    );
}

/// Asserts an ack reply's data is `{"error":{"code":code,"message":..}}`.
pub fn assert_ack_error(data: &Value, code: &str) {
    assert!(
        data.get("error").is_some(),
        "expected an ack reply carrying an error {code}, got {data}"
    );
    assert_error_obj(&data["error"], code);
}

/// `lowStockOnly` that is not a boolean is `invalid_filter` wherever it is read: in a
/// subscribe filter, in `inventory:get-current` (in `filters` or in `data` itself) and
/// in `data:request low_stock_items`; `true` is taken.
pub async fn assert_low_stock_only_takes_only_booleans(c: &mut Client) {
    let yes = json!({"lowStockOnly": "yes"});
    let asks = [
        ("/inventory", "inventory:subscribe", yes.clone()),
        (
            "/inventory",
            "inventory:get-current",
            json!({"filters": yes}),
        ),
        ("/inventory", "inventory:get-current", yes.clone()),
        (
            "/",
            "data:request",
            json!({"dataType": "low_stock_items", "parameters": yes}),
        ),
    ];
    for (ns, event, data) in asks {
        let reply = c.request(ns, event, data.clone()).await;
        assert!(reply.get("error").is_some(), "{event} {data}: {reply}");
        assert_error_obj(&reply["error"], "invalid_filter");
    }
    let taken = json!({"dataType": "low_stock_items", "parameters": {"lowStockOnly": true}});
    let low = c.request("/", "data:request", taken).await;
    assert!(low["data"].is_array(), "{low}");
}

/// Seqs of the `event` frames on `ns` among `frames`, in arrival order.
pub fn seqs_of(frames: &[Value], ns: &str, event: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["ns"] == ns && f["event"] == event)
        .map(|f| {
            f["data"]["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{event} without numeric data.seq: {f}"))
        })
        .collect()
}

/// Number of subscriptions in a `/clients` entry (a number or a list).
pub fn subscription_count(v: &Value) -> usize {
    if let Some(n) = v.as_u64() {
        n as usize
    } else if let Some(a) = v.as_array() {
        a.len()
    } else if let Some(o) = v.as_object() {
        o.len()
    } else {
        panic!("cannot count subscriptions in {v}")
    }
}

fn sub_prefix(ns: &str) -> &'static str {
    match ns {
        "/inventory" => "inventory",
        "/orders" => "orders",
        "/customer" => "customer",
        "/notifications" => "notifications",
        "/dashboard" => "dashboard",
        other => panic!("no subscribe event for namespace {other}"),
    }
}

// ---------------------------------------------------------------------------
// Change builders
// ---------------------------------------------------------------------------

pub fn inv(product: &str, warehouse: &str, quantity: i64) -> Value {
    inv_cat(product, warehouse, "it-test-category", quantity)
}

pub fn inv_cat(product: &str, warehouse: &str, category: &str, quantity: i64) -> Value {
    json!({
        "dataType": "inventory",
        "tenantId": "default",
        "data": {
            "productId": product,
            "warehouseId": warehouse,
            "category": category,
            "quantity": quantity
        }
    })
}

pub fn order(order_id: &str, customer_id: &str, status: &str) -> Value {
    json!({
        "dataType": "orders",
        "tenantId": "default",
        "data": {"orderId": order_id, "customerId": customer_id, "status": status}
    })
}

pub fn tracking(order_id: &str, location: &str) -> Value {
    json!({
        "dataType": "order_tracking",
        "tenantId": "default",
        "data": {"orderId": order_id, "location": location}
    })
}

pub fn activity(customer_id: &str, activity_type: &str) -> Value {
    json!({
        "dataType": "customer_activity",
        "tenantId": "default",
        "data": {"customerId": customer_id, "activityType": activity_type}
    })
}

pub fn notification(id: &str, ntype: &str, priority: &str, message: &str) -> Value {
    json!({
        "dataType": "notification",
        "tenantId": "default",
        "data": {
            "id": id,
            "type": ntype,
            "priority": priority,
            "message": message,
            "data": {"source": "integration-test", "ref": id}
        }
    })
}

/// Returns `change` with `tenantId` replaced.
pub fn with_tenant(mut change: Value, tenant: &str) -> Value {
    change["tenantId"] = json!(tenant);
    change
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts the status and the `{"error":{"code","message"}}` body.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status} {code}, got {} {}",
            self.status,
            self.text()
        );
        let body = self.json();
        assert!(
            body["error"].is_object(),
            "error body must be {{\"error\":{{..}}}}: {body}"
        );
        assert_error_obj(&body["error"], code);
    }
}

/// One HTTP/1.1 request with `Connection: close`; `body` is sent as application/json.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> HttpResponse {
    http_request_with(port, method, path, &[], body).await
}

/// [`http_request`] with extra request headers.
pub async fn http_request_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    http_request_from(None, port, method, path, headers, body).await
}

/// [`http_request_with`] from source address `from` (another loopback address, e.g.
/// 127.0.0.2, is another client for the per-address limits).
pub async fn http_request_from(
    from: Option<std::net::IpAddr>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let fut = async {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(from) = from {
            socket
                .bind(std::net::SocketAddr::new(from, 0))
                .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        }
        let mut stream = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect for HTTP");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: */*\r\n"
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(b) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        } else if method != "GET" && method != "HEAD" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        // The server may answer (e.g. 413) and close before reading everything.
        let _ = stream.write_all(&bytes).await;
        let _ = stream.flush().await;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) if !raw.is_empty() => break,
                Err(e) => panic!("HTTP {method} {path}: read error {e}"),
            }
        }
        parse_http_response(&raw, method, path)
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path}: no complete response within {TIMEOUT:?}"))
}

/// The length of the first complete response in `raw`: its head and its
/// `Content-Length` body (a 101 has none); None while more is to come.
pub fn complete_response_len(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    if head.starts_with("HTTP/1.1 101") {
        return Some(end + 4);
    }
    let len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (raw.len() >= end + 4 + len).then_some(end + 4 + len)
}

/// Parses a complete HTTP response (panics on an incomplete one).
pub fn parse_http_response(raw: &[u8], method: &str, path: &str) -> HttpResponse {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "HTTP {method} {path}: incomplete response {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        decode_chunked(rest)
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn decode_chunked(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..pos]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[pos + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        if data.starts_with(b"\r\n") {
            data = &data[2..];
        }
    }
    out
}

pub async fn http_get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path, None).await
}

pub async fn http_post_json(port: u16, path: &str, body: &Value) -> HttpResponse {
    http_request(port, "POST", path, Some(body.to_string().as_bytes())).await
}

/// A WebSocket upgrade request to `path` with extra `headers`, answered in full: the
/// response's status, headers and body (for refusals), connection closed after.
pub async fn upgrade_response(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    all.extend_from_slice(headers);
    // `Connection: close` from http_request_with is replaced: an upgrade needs
    // `Connection: Upgrade`.
    let fut = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect for upgrade");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n");
        for (name, value) in &all {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            if complete_response_len(&raw).is_some() {
                break;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        parse_http_response(&raw, "GET", path)
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("upgrade {path}: no response within {TIMEOUT:?}"))
}

/// GET that must answer 200 with a JSON body.
pub async fn get_json(port: u16, path: &str) -> Value {
    let r = http_get(port, path).await;
    assert_eq!(r.status, 200, "GET {path}: {} {}", r.status, r.text());
    r.json()
}

pub async fn metrics(port: u16) -> Value {
    get_json(port, "/metrics").await
}

/// `POST /publish` (one change or an array); asserts 200 and returns the seqs.
pub async fn publish(port: u16, changes: &Value) -> Vec<u64> {
    let r = http_post_json(port, "/publish", changes).await;
    assert_eq!(r.status, 200, "POST /publish: {} {}", r.status, r.text());
    let body = r.json();
    body["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("POST /publish: no seqs array in {body}"))
        .iter()
        .map(|s| {
            s.as_u64()
                .unwrap_or_else(|| panic!("non-integer seq in {body}"))
        })
        .collect()
}

/// Publishes one change and returns its seq.
pub async fn publish_one(port: u16, change: Value) -> u64 {
    let seqs = publish(port, &change).await;
    assert_eq!(seqs.len(), 1, "one change must give one seq, got {seqs:?}");
    seqs[0]
}

// ---------------------------------------------------------------------------
// Native protocol client (tokio-tungstenite)
// ---------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Native protocol client. Reading answers pings automatically (tungstenite).
pub struct Client {
    pub ws: Ws,
    /// `data` of the `connection:established` frame.
    pub established: Value,
    /// Pings seen while reading.
    pub pings: usize,
    next_ack: u64,
}

impl Client {
    pub async fn connect(port: u16) -> Client {
        Self::connect_path(port, "/ws").await
    }

    /// Like [`Client::connect_path`], from source address `from` (nginx's `ip_hash`
    /// keys on it). Err when the connection or the handshake fails.
    pub async fn connect_from(
        from: std::net::IpAddr,
        port: u16,
        path: &str,
    ) -> Result<Client, String> {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(std::net::SocketAddr::new(from, 0))
            .map_err(|e| format!("bind {from}: {e}"))?;
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(([127, 0, 0, 1], port).into()))
            .await
            .map_err(|_| "connect: timeout".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(&url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .map_err(|_| "handshake: timeout".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
        let mut c = Client {
            ws,
            established: Value::Null,
            pings: 0,
            next_ack: 1,
        };
        let first = c.next_frame_within(TIMEOUT).await?;
        if first["event"] != "connection:established" {
            return Err(format!("first frame: {first}"));
        }
        c.established = first["data"].clone();
        Ok(c)
    }

    /// Connects to `path` (may carry a query, e.g. `/ws?tenant=t2`) and reads the
    /// mandatory first frame, `connection:established` on `/`.
    pub async fn connect_path(port: u16, path: &str) -> Client {
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _resp) =
            match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(&url)).await {
                Err(_) => panic!("connect {url}: timeout"),
                Ok(Err(e)) => panic!("connect {url}: {e}"),
                Ok(Ok(pair)) => pair,
            };
        let mut c = Client {
            ws,
            established: Value::Null,
            pings: 0,
            next_ack: 1,
        };
        let first = c.next_frame().await;
        assert_eq!(
            first["event"], "connection:established",
            "first frame must be connection:established, got {first}"
        );
        assert_eq!(
            first["ns"], "/",
            "connection:established must be on /: {first}"
        );
        c.established = first["data"].clone();
        c
    }

    pub fn connection_id(&self) -> String {
        self.established["connectionId"]
            .as_str()
            .unwrap_or_else(|| panic!("connectionId missing: {}", self.established))
            .to_string()
    }

    pub fn next_ack_id(&mut self) -> u64 {
        let id = self.next_ack;
        self.next_ack += 1;
        id
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send text frame");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes))
            .await
            .expect("send binary frame");
    }

    /// Next WebSocket message, or Err on timeout / stream end / error.
    pub async fn next_message(&mut self, dur: Duration) -> Result<Message, String> {
        match tokio::time::timeout(dur, self.ws.next()).await {
            Err(_) => Err(format!("timeout after {dur:?}")),
            Ok(None) => Err("stream ended".into()),
            Ok(Some(Err(e))) => Err(format!("websocket error: {e}")),
            Ok(Some(Ok(m))) => Ok(m),
        }
    }

    /// Next JSON frame (pings/pongs skipped). Checks every frame is an object with a
    /// string `ns`.
    pub async fn next_frame_within(&mut self, dur: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left).await? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t)
                        .map_err(|e| format!("server sent non-JSON text ({e}): {t:?}"))?;
                    assert!(v.is_object(), "server frame is not an object: {t}");
                    assert!(v["ns"].is_string(), "server frame without string ns: {t}");
                    return Ok(v);
                }
                Message::Ping(_) => self.pings += 1,
                Message::Pong(_) => {}
                Message::Close(cf) => return Err(format!("closed by server: {cf:?}")),
                Message::Binary(b) => return Err(format!("unexpected binary frame {b:?}")),
                Message::Frame(_) => {}
            }
        }
    }

    pub async fn next_frame(&mut self) -> Value {
        self.next_frame_within(TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("waiting for a frame: {e}"))
    }

    /// Waits for `event` on `ns` whose `data.seq == seq`; returns (data, skipped frames).
    pub async fn recv_seq(&mut self, ns: &str, event: &str, seq: u64) -> (Value, Vec<Value>) {
        let (f, skipped) = self
            .recv_matching(&format!("{event} seq {seq} on {ns}"), |f| {
                f["ns"] == ns && f["event"] == event && f["data"]["seq"] == seq
            })
            .await;
        (f["data"].clone(), skipped)
    }

    /// Seqs of `event` on `ns` received up to and including the `marker` seq.
    pub async fn seqs_until(&mut self, ns: &str, event: &str, marker: u64) -> Vec<u64> {
        let (_, skipped) = self.recv_seq(ns, event, marker).await;
        let mut seqs = seqs_of(&skipped, ns, event);
        seqs.push(marker);
        seqs
    }

    /// Waits for the ack reply `{"ns":..,"ack":id,"data":..}` and returns the whole frame.
    pub async fn recv_ack_frame(&mut self, id: u64) -> Value {
        let (f, _) = self
            .recv_matching(&format!("ack {id}"), |f| f["ack"] == id)
            .await;
        assert!(
            f.get("event").is_none() || f["event"].is_null(),
            "an ack reply carries no event: {f}"
        );
        f
    }

    /// Waits for the ack reply with `id` and returns its `data`.
    pub async fn recv_ack(&mut self, id: u64) -> Value {
        self.recv_ack_frame(id).await["data"].clone()
    }

    /// Sends `event` on `ns` with a fresh ack id and returns the ack reply's data
    /// (checking the reply's ns is the request's).
    pub async fn request(&mut self, ns: &str, event: &str, data: Value) -> Value {
        let id = self.next_ack_id();
        self.send(json!({"ns": ns, "event": event, "data": data, "ack": id}))
            .await;
        let f = self.recv_ack_frame(id).await;
        assert_eq!(f["ns"], ns, "ack reply on the request's ns: {f}");
        f["data"].clone()
    }

    /// Sends `event` on `ns` without ack.
    pub async fn emit(&mut self, ns: &str, event: &str, data: Value) {
        self.send(json!({"ns": ns, "event": event, "data": data}))
            .await;
    }

    /// `<ns>:subscribe` with ack; asserts success and returns the reply
    /// `{subscriptionId, filters, replayed, gap}`.
    pub async fn subscribe(&mut self, ns: &str, filters: Value) -> Value {
        let event = format!("{}:subscribe", sub_prefix(ns));
        let data = self.request(ns, &event, filters.clone()).await;
        assert!(
            data.get("error").is_none(),
            "{event} {filters} refused: {data}"
        );
        assert!(
            data["subscriptionId"].is_string(),
            "{event} reply without string subscriptionId: {data}"
        );
        data
    }

    /// Like [`Client::subscribe`], returning only the subscription id.
    pub async fn subscribe_id(&mut self, ns: &str, filters: Value) -> String {
        self.subscribe(ns, filters).await["subscriptionId"]
            .as_str()
            .expect("subscriptionId")
            .to_string()
    }

    /// Round trip on `/` proving the connection still works.
    pub async fn assert_usable(&mut self) {
        let data = self
            .request(
                "/",
                "data:request",
                json!({"dataType": "inventory_summary", "parameters": {}}),
            )
            .await;
        assert!(
            data.get("error").is_none(),
            "connection should still be usable, got {data}"
        );
        assert_eq!(data["dataType"], "inventory_summary", "{data}");
    }

    /// Reads until the server's close frame; returns its code (None if the stream
    /// ended without one). Panics on timeout.
    pub async fn expect_close(&mut self, dur: Duration) -> Option<u16> {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no close from the server within {dur:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(cf)))) => {
                    return Some(cf.map(|c| u16::from(c.code)).unwrap_or(1005))
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode != OP_CLOSE {
            return None;
        }
        if self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            Some(1005)
        }
    }
}

/// A WebSocket client over a plain TCP stream with a hand-made handshake: it can send
/// any frame at all and reports frames and close codes exactly as they arrive.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Answer pings with pongs while reading (true by default).
    pub auto_pong: bool,
    /// Pings seen while reading.
    pub pings: usize,
    next_ack: u64,
    /// The upgrade response's status line and headers.
    pub upgrade_head: String,
}

impl RawClient {
    pub async fn connect(port: u16, path: &str) -> RawClient {
        Self::connect_with(port, path, None).await
    }

    /// Connects; `rcvbuf` shrinks the kernel receive buffer (slow-consumer tests).
    /// Connects with extra headers on the upgrade request.
    pub async fn connect_with_headers(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RawClient {
        Self::connect_full(port, path, None, headers).await
    }

    pub async fn connect_with(port: u16, path: &str, rcvbuf: Option<u32>) -> RawClient {
        Self::connect_full(port, path, rcvbuf, &[]).await
    }

    async fn connect_full(
        port: u16,
        path: &str,
        rcvbuf: Option<u32>,
        headers: &[(&str, &str)],
    ) -> RawClient {
        let fut = async {
            let socket = TcpSocket::new_v4().expect("socket");
            if let Some(size) = rcvbuf {
                socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
            }
            let stream = socket
                .connect(([127, 0, 0, 1], port).into())
                .await
                .expect("raw connect");
            let mut c = RawClient {
                stream,
                buf: Vec::new(),
                auto_pong: true,
                pings: 0,
                next_ack: 1,
                upgrade_head: String::new(),
            };
            c.handshake(port, path, headers).await;
            c
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .expect("raw websocket connect timed out")
    }

    async fn handshake(&mut self, port: u16, path: &str, headers: &[(&str, &str)]) {
        let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        self.stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade request");
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut tmp = [0u8; 4096];
            let n = self
                .stream
                .read(&mut tmp)
                .await
                .expect("read upgrade response");
            assert!(
                n > 0,
                "connection closed during the upgrade: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade of {path} refused: {head}"
        );
        let mut hasher = Sha1::new();
        hasher.update(key.as_bytes());
        hasher.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let expected = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
        let accept = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_string());
        assert_eq!(
            accept.as_deref(),
            Some(expected.as_str()),
            "bad Sec-WebSocket-Accept in {head}"
        );
        self.upgrade_head = head;
    }

    /// An upgrade response header's value, if it has that header.
    pub fn upgrade_header(&self, name: &str) -> Option<&str> {
        self.upgrade_head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    pub fn next_ack_id(&mut self) -> u64 {
        let id = self.next_ack;
        self.next_ack += 1;
        id
    }

    /// Encodes one masked client frame.
    pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Writes raw bytes; returns false if the connection is gone.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> bool {
        let bytes = Self::encode_frame(fin, opcode, payload);
        self.send_bytes(&bytes).await
    }

    pub async fn send_text(&mut self, text: &str) {
        assert!(
            self.send_frame(true, OP_TEXT, text.as_bytes()).await,
            "send text frame: connection gone"
        );
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends `event` on `ns` with a fresh ack id; returns the ack reply's data.
    pub async fn request(&mut self, ns: &str, event: &str, data: Value) -> Value {
        let id = self.next_ack_id();
        self.send_json(&json!({"ns": ns, "event": event, "data": data, "ack": id}))
            .await;
        self.recv_ack(id).await
    }

    pub async fn subscribe(&mut self, ns: &str, filters: Value) -> Value {
        let event = format!("{}:subscribe", sub_prefix(ns));
        let data = self.request(ns, &event, filters.clone()).await;
        assert!(
            data.get("error").is_none() && data["subscriptionId"].is_string(),
            "{event} {filters} refused: {data}"
        );
        data
    }

    fn try_parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let rsv1 = b[0] & 0x40 != 0;
        let masked = b[1] & 0x80 != 0;
        let len7 = (b[1] & 0x7f) as usize;
        let mut pos = 2;
        let len = match len7 {
            126 => {
                if b.len() < 4 {
                    return None;
                }
                pos = 4;
                u16::from_be_bytes([b[2], b[3]]) as usize
            }
            127 => {
                if b.len() < 10 {
                    return None;
                }
                pos = 10;
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize
            }
            n => n,
        };
        let mut mask = [0u8; 4];
        if masked {
            if b.len() < pos + 4 {
                return None;
            }
            mask.copy_from_slice(&b[pos..pos + 4]);
            pos += 4;
        }
        if b.len() < pos + len {
            return None;
        }
        let mut payload = b[pos..pos + len].to_vec();
        if masked {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= mask[i % 4];
            }
        }
        self.buf.drain(..pos + len);
        Some(Frame {
            fin,
            rsv1,
            opcode,
            payload,
        })
    }

    /// Next frame as sent by the server; Ok(None) when the connection ended (EOF or
    /// reset), Err on timeout. Pings are answered when `auto_pong` is set.
    pub async fn read_frame(&mut self, dur: Duration) -> Result<Option<Frame>, String> {
        let deadline = Instant::now() + dur;
        loop {
            if let Some(f) = self.try_parse() {
                if f.opcode == OP_PING {
                    self.pings += 1;
                    if self.auto_pong {
                        let _ = self.send_frame(true, OP_PONG, &f.payload.clone()).await;
                    }
                }
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut tmp = vec![0u8; 65536];
            match tokio::time::timeout(left, self.stream.read(&mut tmp)).await {
                Err(_) => return Err(format!("timeout after {dur:?}")),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Next JSON text frame (control frames skipped); Err on close, end, timeout.
    pub async fn next_json(&mut self, dur: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await? {
                None => return Err("connection ended".into()),
                Some(f) if f.opcode == OP_TEXT => {
                    assert!(f.fin, "server sent a fragmented frame; not expected");
                    let v: Value = serde_json::from_slice(&f.payload).map_err(|e| {
                        format!(
                            "non-JSON text from server ({e}): {:?}",
                            String::from_utf8_lossy(&f.payload)
                        )
                    })?;
                    assert!(v["ns"].is_string(), "server frame without string ns: {v}");
                    return Ok(v);
                }
                Some(f) if f.opcode == OP_CLOSE => {
                    return Err(format!("closed by server with {:?}", f.close_code()))
                }
                Some(f) if f.opcode == OP_PING || f.opcode == OP_PONG => {}
                Some(f) => return Err(format!("unexpected frame {f:?}")),
            }
        }
    }

    pub async fn recv_ack(&mut self, id: u64) -> Value {
        let (f, _) = self
            .recv_matching(&format!("ack {id}"), |f| f["ack"] == id)
            .await;
        f["data"].clone()
    }

    /// Reads (discarding data frames) until the server's close frame and returns its
    /// code; None when the connection ended without a close frame. Panics on timeout.
    pub async fn expect_close(&mut self, dur: Duration) -> Option<u16> {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                Err(e) => panic!("waiting for a close frame: {e}"),
                Ok(None) => return None,
                Ok(Some(f)) if f.opcode == OP_CLOSE => return f.close_code(),
                Ok(Some(_)) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bystander: a second connection that must keep working whatever a test does.
// ---------------------------------------------------------------------------

/// A client on its own connection subscribed to one private product.
pub struct Bystander {
    pub client: Client,
    pub product: String,
}

impl Bystander {
    pub async fn new(port: u16, product: &str) -> Bystander {
        let mut client = Client::connect(port).await;
        client
            .subscribe("/inventory", json!({"productIds": [product]}))
            .await;
        Bystander {
            client,
            product: product.to_string(),
        }
    }

    /// Publishes a change of the bystander's product and asserts it arrives.
    pub async fn assert_receives(&mut self, port: u16) {
        let seq = publish_one(port, inv(&self.product, "w-bystander", 500)).await;
        let (data, _) = self
            .client
            .recv_seq("/inventory", "inventory:update", seq)
            .await;
        assert_eq!(data["data"]["productId"], self.product.as_str());
    }
}

/// Waiting for frames, shared by both clients: each supplies how it reads one JSON frame.
// The trait is test-only and never used across threads, so `async fn` needs no `Send`.
#[allow(async_fn_in_trait)]
pub trait JsonFrames {
    async fn next_json_frame(&mut self, dur: Duration) -> Result<Value, String>;

    /// Waits for a frame matching `pred`; returns it and the frames skipped before it.
    async fn recv_matching_within(
        &mut self,
        dur: Duration,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + dur;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_json_frame(left).await {
                Ok(f) if pred(&f) => return (f, skipped),
                Ok(f) => skipped.push(f),
                Err(e) => panic!("waiting for {what}: {e}; frames seen meanwhile: {skipped:?}"),
            }
        }
    }

    async fn recv_matching(
        &mut self,
        what: &str,
        pred: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        self.recv_matching_within(TIMEOUT, what, pred).await
    }

    /// Waits for the next `event` on `ns` (skipping others) and returns its `data`.
    async fn recv_event(&mut self, ns: &str, event: &str) -> Value {
        let (f, _) = self
            .recv_matching(&format!("{event} on {ns}"), |f| {
                f["ns"] == ns && f["event"] == event
            })
            .await;
        f["data"].clone()
    }
}

impl JsonFrames for Client {
    async fn next_json_frame(&mut self, dur: Duration) -> Result<Value, String> {
        self.next_frame_within(dur).await
    }
}

impl JsonFrames for RawClient {
    async fn next_json_frame(&mut self, dur: Duration) -> Result<Value, String> {
        self.next_json(dur).await
    }
}
