//! Regression tests for the configuration and door hardening of issue 13: start-up
//! refusals (environment, `.env`), the simulator's default, secrets in `--help`, CORS,
//! JWT `crit` and lifetime, and the per-address limits and body deadline of plain HTTP.
//! Each runs the real binary and talks to it over real sockets.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "nilecast-hardening-secret-of-32-bytes-or-more";

fn unix_now() -> i64 {
    now_ms() / 1000
}

fn signed(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign HS256")
}

/// A staff token of tenant `t-a` that expires `lifetime_s` from now.
fn token_for(lifetime_s: i64) -> String {
    signed(&json!({
        "sub": "u-1", "tenant_id": "t-a", "roles": ["staff"], "exp": unix_now() + lifetime_s,
    }))
}

/// An HS256 token whose header carries `crit`, an extension this server does not know.
fn token_with_crit() -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = json!({"alg": "HS256", "typ": "JWT", "crit": ["x-must"], "x-must": "yes"});
    let claims =
        json!({"sub": "u-1", "tenant_id": "t-a", "roles": ["staff"], "exp": unix_now() + 600});
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign the crit token");
    format!("{message}.{signature}")
}

/// Runs a server that is expected to refuse to start, and returns its stderr.
fn refused_start(options: ServerOptions) -> String {
    let exit = run_server_to_exit(options, TIMEOUT);
    let status = exit.status.unwrap_or_else(|| {
        panic!(
            "the server did not exit within {TIMEOUT:?} (it started); stderr: {}",
            exit.stderr
        )
    });
    assert!(
        !status.success(),
        "the server exited 0; stderr: {}",
        exit.stderr
    );
    exit.stderr
}

// ---------------------------------------------------------------------------
// 1. The environment is development or production; anything else stops start-up.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_environment_is_refused_naming_its_variable() {
    let stderr = refused_start(ServerOptions {
        envs: &[("NILECAST_ENV", "prod"), ("JWT_SECRET", SECRET)],
        ..ServerOptions::default()
    });
    assert!(
        stderr.contains("NILECAST_ENV") && stderr.contains("prod"),
        "the refusal must name NILECAST_ENV and the value: {stderr}"
    );
    let stderr = refused_start(ServerOptions {
        envs: &[("NODE_ENV", "staging"), ("JWT_SECRET", SECRET)],
        ..ServerOptions::default()
    });
    assert!(
        stderr.contains("NODE_ENV") && stderr.contains("staging"),
        "the refusal must name NODE_ENV and the value: {stderr}"
    );

    // NODE_ENV=test (what test runners set) is development: the test page is served.
    let server = spawn_server(&[("NODE_ENV", "test")]);
    assert_eq!(http_get(server.port, "/test").await.status, 200);
    // NILECAST_ENV=production (any case) is production: the test page is gone.
    let server = spawn_server(&[("NILECAST_ENV", "Production"), ("JWT_SECRET", SECRET)]);
    assert_eq!(http_get(server.port, "/test").await.status, 404);
}

// ---------------------------------------------------------------------------
// 2. A malformed `.env` stops start-up, naming the file and the line.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_dotenv_line_stops_start_up() {
    let stderr = refused_start(ServerOptions {
        dotenv: Some("NODE_ID=from-dotenv\nTHIS IS NOT A SETTING\nCORS_ORIGIN=https://a.example\n"),
        ..ServerOptions::default()
    });
    assert!(
        stderr.contains(".env") && stderr.contains("line 2"),
        "the refusal must name the .env file and line 2: {stderr}"
    );

    // A well-formed .env is loaded (and a missing one, as in every other test, is fine).
    let server = spawn_server_with(ServerOptions {
        dotenv: Some("# a comment\nNODE_ID=from-dotenv\n"),
        ..ServerOptions::default()
    });
    assert_eq!(get_json(server.port, "/").await["node"], "from-dotenv");
}

// ---------------------------------------------------------------------------
// 3. The simulator is on by default only without production, database or Redis.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_is_on_by_default_only_in_development() {
    let changes_published = |port: u16| async move {
        metrics(port).await["changes"]["published"]
            .as_u64()
            .expect("metrics.changes.published")
    };

    // Production, no SIMULATE_RATE: the start log says the simulator is off.
    let mut production = spawn_server_with(ServerOptions {
        envs: &[
            ("NILECAST_ENV", "production"),
            ("JWT_SECRET", SECRET),
            ("RUST_LOG", "info"),
        ],
        unset: &["SIMULATE_RATE"],
        ..ServerOptions::default()
    });
    let line = production
        .wait_for_log("simulator is", TIMEOUT)
        .unwrap_or_else(|seen| panic!("no `simulator is ...` line in the start log: {seen:#?}"));
    assert!(line.contains("simulator is off"), "{line}");
    assert_eq!(changes_published(production.port).await, 0);

    // No configuration at all: the simulator runs (what `cargo run` shows).
    let mut plain = spawn_server_with(ServerOptions {
        envs: &[("RUST_LOG", "info")],
        unset: &["SIMULATE_RATE"],
        ..ServerOptions::default()
    });
    let line = plain
        .wait_for_log("simulator is", TIMEOUT)
        .unwrap_or_else(|seen| panic!("no `simulator is ...` line in the start log: {seen:#?}"));
    assert!(line.contains("simulator is on"), "{line}");
    let port = plain.port;
    assert!(
        wait_until(TIMEOUT, || async move { changes_published(port).await > 0 }).await,
        "the default development server published no simulated change"
    );

    // An explicit SIMULATE_RATE wins, even in production.
    let explicit = spawn_server(&[
        ("NILECAST_ENV", "production"),
        ("JWT_SECRET", SECRET),
        ("SIMULATE_RATE", "50"),
    ]);
    let port = explicit.port;
    assert!(
        wait_until(TIMEOUT, || async move { changes_published(port).await > 0 }).await,
        "SIMULATE_RATE=50 in production published no simulated change"
    );
}

// ---------------------------------------------------------------------------
// 4. `serve --help` shows no credentials.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_does_not_print_credentials() {
    let exit = run_server_to_exit(
        ServerOptions {
            envs: &[
                ("REDIS_URL", "redis://:redis-s3cret@127.0.0.1:6379/0"),
                (
                    "NILEDB_CONNECTION_STRING",
                    "postgres://nile:pg-s3cret@127.0.0.1:5432/app",
                ),
                ("NILEDB_PASSWORD", "nile-s3cret"),
                ("DB_PASSWORD", "mysql-s3cret"),
                ("JWT_SECRET", "jwt-s3cret-jwt-s3cret-jwt-s3cret-jwt"),
            ],
            args: &["--help"],
            ..ServerOptions::default()
        },
        TIMEOUT,
    );
    assert!(
        exit.status.is_some_and(|s| s.success()),
        "serve --help failed: {exit:?}"
    );
    assert!(exit.stdout.contains("REDIS_URL"), "{}", exit.stdout);
    let leaked: Vec<&str> = exit
        .stdout
        .lines()
        .filter(|l| l.contains("s3cret"))
        .collect();
    assert!(
        leaked.is_empty(),
        "serve --help shows credentials: {leaked:#?}"
    );
}

// ---------------------------------------------------------------------------
// 5. CORS: `*` is anonymous; listed origins, compared without case, get credentials.
// ---------------------------------------------------------------------------

async fn preflight(port: u16, origin: &str) -> HttpResponse {
    http_request_with(
        port,
        "OPTIONS",
        "/publish",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_star_never_allows_credentials() {
    let server = spawn_server(&[("CORS_ORIGIN", "*")]);
    let port = server.port;
    let origin = [("Origin", "https://anyone.example")];
    let r = http_request_with(port, "GET", "/health", &origin, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
    assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    let r = preflight(port, "https://anyone.example").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
    assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_listed_origins_get_credentials_whatever_their_case() {
    let server = spawn_server(&[("CORS_ORIGIN", "https://shop.example,https://Admin.Example")]);
    let port = server.port;
    for origin in [
        "https://shop.example",
        "https://SHOP.Example",
        "https://admin.example",
    ] {
        let r = http_request_with(port, "GET", "/health", &[("Origin", origin)], None).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{origin}: {r:?}"
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{origin}: {r:?}"
        );
        assert!(
            r.header("vary").is_some_and(|v| v.contains("Origin")),
            "{origin}: {r:?}"
        );
        let r = preflight(port, origin).await;
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{r:?}"
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        // The WebSocket Origin check compares the same way.
        let r = upgrade_response(port, "/ws", &[("Origin", origin)]).await;
        assert_eq!(r.status, 101, "upgrade from {origin}: {}", r.text());
    }
    let r = http_request_with(
        port,
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    assert_eq!(r.header("access-control-allow-credentials"), None, "{r:?}");
    let r = upgrade_response(port, "/ws", &[("Origin", "https://evil.example")]).await;
    r.assert_error(403, "forbidden");
}

// ---------------------------------------------------------------------------
// 6. JWT: `crit` headers and lifetimes beyond JWT_MAX_LIFETIME_S are refused.
// ---------------------------------------------------------------------------

/// The token is refused `unauthorized` at the upgrade (401) and at `auth:login`;
/// returns the upgrade's message.
async fn refused_everywhere(port: u16, token: &str, what: &str) -> String {
    let r = upgrade_response(port, &format!("/ws?token={token}"), &[]).await;
    assert_eq!(r.status, 401, "{what} at the upgrade: {}", r.text());
    r.assert_error(401, "unauthorized");
    let mut c = Client::connect(port).await;
    c.emit("/", "auth:login", json!({ "token": token })).await;
    let e = c.recv_event("/", "auth:error").await;
    assert_error_obj(&e, "unauthorized");
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_crit_headers_and_far_expiries_are_refused() {
    let server = spawn_server(&[("JWT_SECRET", SECRET)]);
    let port = server.port;
    refused_everywhere(port, &token_with_crit(), "a crit header").await;

    // The default bound is 7 days: 30 days is refused, with a message that says why.
    let message = refused_everywhere(port, &token_for(30 * 86_400), "a 30-day token").await;
    assert!(
        message.contains("JWT_MAX_LIFETIME_S"),
        "the refusal should say which limit: {message}"
    );
    let r = upgrade_response(
        port,
        &format!("/ws?token={}", token_for(u32::MAX as i64)),
        &[],
    )
    .await;
    r.assert_error(401, "unauthorized");
    // What the project mints (`nilecast token`: an hour) and a week still pass.
    for lifetime in [3600, 7 * 86_400 - 60] {
        let r = upgrade_response(port, &format!("/ws?token={}", token_for(lifetime)), &[]).await;
        assert_eq!(r.status, 101, "a token for {lifetime} s: {}", r.text());
    }

    // The bound is a setting.
    let short = spawn_server(&[("JWT_SECRET", SECRET), ("JWT_MAX_LIFETIME_S", "600")]);
    refused_everywhere(
        short.port,
        &token_for(3600),
        "an hour over a 10-minute bound",
    )
    .await;
    let r = upgrade_response(short.port, &format!("/ws?token={}", token_for(300)), &[]).await;
    assert_eq!(r.status, 101, "{}", r.text());
}

// ---------------------------------------------------------------------------
// 8. Plain HTTP: a body deadline, and the per-address connection limit.
// ---------------------------------------------------------------------------

/// Reads one HTTP response (head and a Content-Length body) from `stream` within
/// `within`; None when nothing complete came (a timeout, or the connection ended first).
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<HttpResponse> {
    let read = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(len) = complete_response_len(&raw) {
                return Some(parse_http_response(&raw[..len], "", ""));
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A keep-alive `GET /health` on an open connection; the response's status, or None.
async fn health_on(stream: &mut TcpStream, port: u16) -> Option<u16> {
    let req = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    read_response(stream, TIMEOUT).await.map(|r| r.status)
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_publish_body_is_cut_at_the_body_deadline() {
    let server = spawn_server(&[("BODY_TIMEOUT_MS", "1000")]);
    let port = server.port;
    let mut stream = connect(port).await;
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One byte of whitespace every 100 ms: the body keeps moving, but would take
    // 100 s to finish. The deadline is for the whole body, not for each read.
    let trickle = tokio::spawn(async move {
        for _ in 0..999 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if raw.windows(4).any(|w| w == b"\r\n\r\n") && raw.ends_with(b"}}") {
                break;
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        read.is_ok(),
        "no answer to a trickled body within 8 s (BODY_TIMEOUT_MS=1000); got {:?}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "expected 408 after {:?}: {text}",
        started.elapsed()
    );
    let body = &text[text.find("\r\n\r\n").map_or(0, |p| p + 4)..];
    let body: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_error_obj(&body["error"], "timeout");
    // And the server goes on serving.
    assert_eq!(http_get(port, "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_connections_count_toward_the_per_address_limit() {
    let server = spawn_server(&[
        ("MAX_CONNECTIONS_PER_IP", "3"),
        ("HANDSHAKE_TIMEOUT_MS", "60000"),
    ]);
    let port = server.port;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(port).await);
    }
    let mut extra = connect(port).await;
    let refusal = read_response(&mut extra, Duration::from_secs(5))
        .await
        .expect("a fourth idle connection with MAX_CONNECTIONS_PER_IP=3 was not refused");
    refusal.assert_error(429, "rate_limited");
    // The three admitted ones are served.
    for stream in &mut idle {
        assert_eq!(health_on(stream, port).await, Some(200));
    }
    drop(idle);

    // WebSocket upgrades share the count without counting an upgraded connection
    // twice, and give their place back exactly once.
    let limited = spawn_server(&[
        ("MAX_CONNECTIONS_PER_IP", "2"),
        ("HANDSHAKE_TIMEOUT_MS", "60000"),
    ]);
    let port = limited.port;
    let first = RawClient::connect(port, "/ws").await;
    let _second = RawClient::connect(port, "/ws").await;
    let mut plain = connect(port).await;
    read_response(&mut plain, Duration::from_secs(5))
        .await
        .expect("a plain connection beside two WebSockets was not refused")
        .assert_error(429, "rate_limited");
    drop(first);
    // Polls (every 50 ms, like `wait_until`) until a plain connection is served.
    let deadline = Instant::now() + TIMEOUT;
    let held = loop {
        let mut stream = connect(port).await;
        if health_on(&mut stream, port).await == Some(200) {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "a closed WebSocket's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut over = connect(port).await;
    read_response(&mut over, Duration::from_secs(5))
        .await
        .expect("a place was given back twice: a third connection was let in")
        .assert_error(429, "rate_limited");
    drop(held);
}
