//! Authentication, tenancy, roles and hostile clients, over real sockets against the
//! real binary (PROTOCOL.md sections 5 and 6). Every refusal is followed by a check
//! that a bystander on another connection still receives a published change.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "nilecast-test-secret-of-at-least-32-bytes";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn unix_now() -> i64 {
    now_ms() / 1000
}

/// Claims for `sub` of `tenant` with `roles`, expiring in an hour, with the issuer and
/// audience the servers that check them are configured with (ignored by the others).
fn claims(sub: &str, tenant: &str, roles: &[&str]) -> Value {
    json!({
        "sub": sub, "tenant_id": tenant, "roles": roles, "exp": unix_now() + 3600,
        "iss": "https://auth.example", "aud": "nilecast",
    })
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign HS256")
}

fn token(sub: &str, tenant: &str, roles: &[&str]) -> String {
    hs256(&claims(sub, tenant, roles), SECRET.as_bytes())
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).expect("read the RSA test key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA test key");
    encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign RS256")
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("ec_private.pem")).expect("read the EC test key");
    let key = EncodingKey::from_ec_pem(&pem).expect("EC test key");
    encode(&Header::new(Algorithm::ES256), claims, &key).expect("sign ES256")
}

/// A token with `alg: none` and no signature.
fn alg_none(claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Publishes with a token; returns the response.
async fn publish_as(port: u16, token: Option<&str>, changes: &Value) -> HttpResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request_with(
        port,
        "POST",
        "/publish",
        &headers,
        Some(changes.to_string().as_bytes()),
    )
    .await
}

/// Publishes one change as an admin of its tenant and returns its seq.
async fn publish_admin(port: u16, change: Value) -> u64 {
    let tenant = change["tenantId"].as_str().unwrap_or("t-a").to_string();
    let r = publish_as(
        port,
        Some(&token("publisher-1", &tenant, &["publisher"])),
        &change,
    )
    .await;
    assert_eq!(r.status, 200, "publish refused: {}", r.text());
    r.json()["seqs"][0].as_u64().expect("a seq")
}

/// A staff client of tenant `t-a` subscribed to one private product: whatever a test
/// does to the server, it must keep receiving.
struct Bystander {
    client: Client,
}

impl Bystander {
    async fn new(port: u16) -> Bystander {
        let path = format!("/ws?token={}", token("bystander", "t-a", &["staff"]));
        let mut client = Client::connect_path(port, &path).await;
        client
            .subscribe("/inventory", json!({"productIds": ["p-bystander"]}))
            .await;
        Bystander { client }
    }

    async fn assert_receives(&mut self, port: u16) {
        let seq = publish_admin(port, with_tenant(inv("p-bystander", "w-1", 500), "t-a")).await;
        let (data, _) = self
            .client
            .recv_seq("/inventory", "inventory:update", seq)
            .await;
        assert_eq!(data["data"]["productId"], "p-bystander");
    }
}

async fn hs_server(extra: &[(&str, &str)]) -> (TestServer, Bystander) {
    let mut envs = vec![("JWT_SECRET", SECRET)];
    envs.extend_from_slice(extra);
    let server = spawn_server(&envs);
    let bystander = Bystander::new(server.port).await;
    (server, bystander)
}

async fn security_count(port: u16, kind: &str) -> u64 {
    metrics(port).await["security"][kind]
        .as_u64()
        .unwrap_or_else(|| panic!("metrics.security.{kind} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_upgrade() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    assert_eq!(get_json(port, "/").await["auth"], "jwt");
    let expired =
        json!({"sub": "u", "tenant_id": "t-a", "roles": ["staff"], "exp": unix_now() - 120});
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "not-a-jwt".into(), "unauthorized"),
        (
            "wrong signature",
            hs256(
                &claims("u", "t-a", &["staff"]),
                b"another-secret-of-at-least-32-bytes!!",
            ),
            "unauthorized",
        ),
        (
            "alg none",
            alg_none(&claims("u", "t-a", &["admin"])),
            "unauthorized",
        ),
        (
            "expired",
            hs256(&expired, SECRET.as_bytes()),
            "token_expired",
        ),
        (
            "no tenant",
            hs256(
                &json!({"sub": "u", "roles": ["staff"], "exp": unix_now() + 60}),
                SECRET.as_bytes(),
            ),
            "unauthorized",
        ),
        (
            "no exp",
            hs256(&json!({"sub": "u", "tenant_id": "t-a"}), SECRET.as_bytes()),
            "unauthorized",
        ),
        (
            "too large",
            format!("{}x", "a".repeat(5000)),
            "unauthorized",
        ),
    ];
    for (what, tok, code) in &cases {
        let r = upgrade_response(port, &format!("/ws?token={tok}"), &[]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        r.assert_error(401, code);
        let auth = bearer(tok);
        let r = upgrade_response(port, "/ws", &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 401, "{what} as a bearer header: {}", r.text());
        bystander.assert_receives(port).await;
    }
    assert!(security_count(port, "token_refused").await >= cases.len() as u64 * 2);

    // A good token, in either place, is accepted and the connection says so.
    let good = token("u-1", "t-a", &["staff"]);
    let c = Client::connect_path(port, &format!("/ws?token={good}")).await;
    assert_eq!(c.established["authenticated"], true, "{}", c.established);
    let r = upgrade_response(port, "/ws", &[("Authorization", &bearer(&good))]).await;
    assert_eq!(r.status, 101, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_client_may_only_log_in() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let mut c = Client::connect(port).await;
    assert_eq!(c.established["authenticated"], false);
    let refused = c
        .request("/inventory", "inventory:subscribe", json!({}))
        .await;
    assert_ack_error(&refused, "unauthorized");

    // A bad token at login: auth:error, and still nothing allowed.
    c.emit("/", "auth:login", json!({"token": "garbage"})).await;
    let e = c.recv_event("/", "auth:error").await;
    assert_error_obj(&e, "unauthorized");

    c.emit(
        "/",
        "auth:login",
        json!({"token": token("u-7", "t-a", &["staff"])}),
    )
    .await;
    let ok = c.recv_event("/", "auth:success").await;
    assert_eq!(ok["userId"], "u-7");
    assert_eq!(ok["tenantId"], "t-a");
    assert_eq!(ok["roles"], json!(["staff"]));
    assert_iso_ms(&ok["expiresAt"], "expiresAt");
    c.subscribe("/inventory", json!({"productIds": ["p-login"]}))
        .await;
    let seq = publish_admin(port, with_tenant(inv("p-login", "w-1", 50), "t-a")).await;
    c.recv_seq("/inventory", "inventory:update", seq).await;
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithms_come_from_configuration_not_from_the_token() {
    let rsa_public = fixture("rsa_public.pem");
    let server = spawn_server(&[("JWT_PUBLIC_KEY", &rsa_public)]);
    let port = server.port;
    let good = rs256(&claims("u-1", "t-a", &["staff"]));
    let r = upgrade_response(port, &format!("/ws?token={good}"), &[]).await;
    assert_eq!(r.status, 101, "RS256: {}", r.text());

    // The classic confusion: HS256 "signed" with the RSA public key as the secret.
    let pem = std::fs::read(&rsa_public).expect("read the public key");
    let forged = hs256(&claims("u-1", "t-a", &["admin"]), &pem);
    let r = upgrade_response(port, &format!("/ws?token={forged}"), &[]).await;
    r.assert_error(401, "unauthorized");
    let r = upgrade_response(
        port,
        &format!("/ws?token={}", alg_none(&claims("u", "t-a", &["admin"]))),
        &[],
    )
    .await;
    r.assert_error(401, "unauthorized");
    // An ES256 token is not accepted by an RS256 server.
    let r = upgrade_response(
        port,
        &format!("/ws?token={}", es256(&claims("u-1", "t-a", &["staff"]))),
        &[],
    )
    .await;
    r.assert_error(401, "unauthorized");

    let es_server = spawn_server(&[("JWT_PUBLIC_KEY", &fixture("ec_public.pem"))]);
    let es = es256(&claims("u-2", "t-a", &["staff"]));
    let r = upgrade_response(es_server.port, &format!("/ws?token={es}"), &[]).await;
    assert_eq!(r.status, 101, "ES256: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_required_when_configured() {
    let (server, mut bystander) = hs_server(&[
        ("JWT_ISSUER", "https://auth.example"),
        ("JWT_AUDIENCE", "nilecast"),
    ])
    .await;
    let port = server.port;
    // `claims` carries the right issuer and audience; each case changes or drops one.
    let with = |key: &str, value: Option<&str>| {
        let mut c = claims("u-1", "t-a", &["staff"]);
        match value {
            Some(v) => c[key] = json!(v),
            None => {
                c.as_object_mut().map(|o| o.remove(key));
            }
        }
        hs256(&c, SECRET.as_bytes())
    };
    let good = token("u-1", "t-a", &["staff"]);
    assert_eq!(
        upgrade_response(port, &format!("/ws?token={good}"), &[])
            .await
            .status,
        101
    );
    for (what, tok) in [
        ("wrong issuer", with("iss", Some("https://evil.example"))),
        ("no issuer", with("iss", None)),
        ("wrong audience", with("aud", Some("other"))),
        ("no audience", with("aud", None)),
    ] {
        let r = upgrade_response(port, &format!("/ws?token={tok}"), &[]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        r.assert_error(401, "unauthorized");
    }
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_see_only_their_own_orders() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let path = format!("/ws?token={}", token("cust-1", "t-a", &["customer"]));
    let mut c = Client::connect_path(port, &path).await;
    let refused = c
        .request(
            "/orders",
            "orders:subscribe",
            json!({"customerId": "cust-2"}),
        )
        .await;
    assert_ack_error(&refused, "forbidden");
    let refused = c
        .request(
            "/dashboard",
            "dashboard:subscribe",
            json!({"widgets": ["inventory_summary"]}),
        )
        .await;
    assert_ack_error(&refused, "forbidden");
    bystander.assert_receives(port).await;

    // A wildcard orders subscription is narrowed to the customer's own.
    c.subscribe("/orders", json!({})).await;
    let other = publish_admin(port, with_tenant(order("o-2", "cust-2", "paid"), "t-a")).await;
    let own = publish_admin(port, with_tenant(order("o-1", "cust-1", "paid"), "t-a")).await;
    let seqs = c.seqs_until("/orders", "order:update", own).await;
    assert!(
        !seqs.contains(&other),
        "a customer saw another's order: {seqs:?}"
    );
    assert!(security_count(port, "forbidden").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_other() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let staff_a = token("staff-a", "t-a", &["staff"]);
    let mut a = Client::connect_path(port, &format!("/ws?token={staff_a}")).await;
    a.subscribe("/inventory", json!({})).await;
    a.subscribe("/orders", json!({})).await;
    a.subscribe("/notifications", json!({})).await;
    let mut b = Client::connect_path(
        port,
        &format!("/ws?token={}", token("staff-b", "t-b", &["staff"])),
    )
    .await;
    b.subscribe("/inventory", json!({})).await;

    let b_seq = publish_admin(port, with_tenant(inv("p-shared", "w-1", 42), "t-b")).await;
    b.recv_seq("/inventory", "inventory:update", b_seq).await;
    let b_order = publish_admin(port, with_tenant(order("o-b", "c-b", "paid"), "t-b")).await;
    // Tenant A's marker comes after B's changes: everything A receives up to it is A's.
    let marker = publish_admin(port, with_tenant(inv("p-shared", "w-1", 43), "t-a")).await;
    let (_, before) = a.recv_seq("/inventory", "inventory:update", marker).await;
    for f in &before {
        assert_ne!(
            f["data"]["tenantId"], "t-b",
            "tenant A saw tenant B's change: {f}"
        );
        assert_ne!(f["data"]["seq"], b_seq);
        assert_ne!(f["data"]["seq"], b_order);
    }

    // Naming the other tenant, in a filter or at upgrade, is refused and recorded.
    let refused = a
        .request(
            "/inventory",
            "inventory:subscribe",
            json!({"tenantId": "t-b"}),
        )
        .await;
    assert_ack_error(&refused, "forbidden");
    let r = upgrade_response(port, &format!("/ws?token={staff_a}&tenant=t-b"), &[]).await;
    r.assert_error(403, "forbidden");
    // /changes and /clients show tenant A only.
    let auth = bearer(&staff_a);
    let changes = http_request_with(
        port,
        "GET",
        "/changes/inventory",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(changes.status, 200, "{}", changes.text());
    for c in changes.json()["changes"].as_array().expect("changes") {
        assert_eq!(c["tenantId"], "t-a", "{c}");
    }
    let clients =
        http_request_with(port, "GET", "/clients", &[("Authorization", &auth)], None).await;
    for c in clients.json()["clients"].as_array().expect("clients") {
        assert_eq!(c["tenant"], "t-a", "{c}");
    }
    assert!(security_count(port, "cross_tenant").await >= 2);
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_the_role_and_stays_in_the_tenant() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let change = with_tenant(inv("p-pub", "w-1", 5), "t-a");
    publish_as(port, None, &change)
        .await
        .assert_error(401, "unauthorized");
    publish_as(port, Some(&token("c-1", "t-a", &["customer"])), &change)
        .await
        .assert_error(403, "forbidden");
    publish_as(port, Some(&token("s-1", "t-a", &["staff"])), &change)
        .await
        .assert_error(403, "forbidden");
    publish_as(port, Some(&token("p-1", "t-b", &["publisher"])), &change)
        .await
        .assert_error(403, "forbidden");
    // The staff-only endpoints refuse a publisher.
    let auth = bearer(&token("p-1", "t-a", &["publisher"]));
    http_request_with(port, "GET", "/clients", &[("Authorization", &auth)], None)
        .await
        .assert_error(403, "forbidden");
    let ok = publish_as(port, Some(&token("p-1", "t-a", &["publisher"])), &change).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    bystander.assert_receives(port).await;
}

/// A role refused by an HTTP route is a security event, as one refused on a
/// WebSocket is; a request without a token is only unauthorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_role_refusals_are_security_events() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let before = security_count(port, "forbidden").await;
    let auth = bearer(&token("c-1", "t-a", &["customer"]));
    for (method, path) in [
        ("GET", "/alerts"),
        ("POST", "/alerts/alert-1/acknowledge"),
        ("GET", "/changes/inventory"),
        ("GET", "/clients"),
        ("POST", "/publish"),
    ] {
        http_request_with(port, method, path, &[("Authorization", &auth)], None)
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(security_count(port, "forbidden").await, before + 5);
    http_request(port, "GET", "/alerts", None)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(security_count(port, "forbidden").await, before + 5);
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_listed_may_not_connect() {
    let (server, mut bystander) = hs_server(&[("CORS_ORIGIN", "https://shop.example")]).await;
    let port = server.port;
    let path = format!("/ws?token={}", token("u-1", "t-a", &["staff"]));
    let r = upgrade_response(port, &path, &[("Origin", "https://evil.example")]).await;
    r.assert_error(403, "forbidden");
    let r = upgrade_response(port, &path, &[("Origin", "https://shop.example")]).await;
    assert_eq!(r.status, 101, "{}", r.text());
    assert!(security_count(port, "origin_refused").await >= 1);
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_flood_connections() {
    let (server, mut bystander) = hs_server(&[("MAX_CONNECTIONS_PER_IP", "4")]).await;
    let port = server.port;
    let path = format!("/ws?token={}", token("u-1", "t-a", &["staff"]));
    // The bystander holds one of the four.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect_path(port, &path).await);
    }
    let r = upgrade_response(port, &path, &[]).await;
    r.assert_error(429, "rate_limited");
    // Plain HTTP counts toward the limit too, so the full address can not publish
    // either; another address can, and the bystander still receives.
    let other = Some(std::net::IpAddr::from([127, 0, 0, 2]));
    let auth = bearer(&token("publisher-1", "t-a", &["publisher"]));
    let change = with_tenant(inv("p-bystander", "w-1", 500), "t-a");
    let from_full = |from| {
        let (auth, change) = (auth.clone(), change.to_string());
        async move {
            let headers = [("Authorization", auth.as_str())];
            http_request_from(
                from,
                port,
                "POST",
                "/publish",
                &headers,
                Some(change.as_bytes()),
            )
            .await
        }
    };
    from_full(None).await.assert_error(429, "rate_limited");
    let published = from_full(other).await;
    assert_eq!(published.status, 200, "{}", published.text());
    let seq = published.json()["seqs"][0].as_u64().expect("a seq");
    bystander
        .client
        .recv_seq("/inventory", "inventory:update", seq)
        .await;
    // A closed connection frees its place.
    drop(held.pop());
    assert!(
        wait_until(Duration::from_secs(10), || async {
            upgrade_response(port, &path, &[]).await.status == 101
        })
        .await,
        "a freed place was not given back"
    );
    let metrics = http_request_from(other, port, "GET", "/metrics", &[], None).await;
    assert!(metrics.json()["security"]["address_connections"].as_u64() >= Some(2));

    let fast = spawn_server(&[("JWT_SECRET", SECRET), ("UPGRADES_PER_IP_PER_S", "3")]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(upgrade_response(fast.port, &path, &[]).await.status);
    }
    assert!(
        statuses.contains(&429),
        "no upgrade was throttled: {statuses:?}"
    );
    assert_eq!(statuses[0], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_is_cut_at_the_deadline() {
    let (server, mut bystander) = hs_server(&[("HANDSHAKE_TIMEOUT_MS", "500")]).await;
    let port = server.port;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await
        .expect("half a request head");
    // The server ends the connection (possibly after a 408); reading sees its end.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a half-sent request head was kept open past the deadline"
    );
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_frame_over_125_bytes_is_a_protocol_error() {
    let (server, mut bystander) = hs_server(&[]).await;
    let port = server.port;
    let path = format!("/ws?token={}", token("u-1", "t-a", &["staff"]));
    let mut raw = RawClient::connect(port, &path).await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(std::iter::repeat_n(b'x', 124));
    assert_eq!(payload.len(), 126);
    raw.send_frame(true, 0x8, &payload).await;
    assert_eq!(raw.expect_close(Duration::from_secs(10)).await, Some(1002));
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_token_expires_is_told_and_closed() {
    let (server, mut bystander) = hs_server(&[("JWT_LEEWAY_S", "0")]).await;
    let port = server.port;
    let short = hs256(
        &json!({"sub": "u-1", "tenant_id": "t-a", "roles": ["staff"], "exp": unix_now() + 2}),
        SECRET.as_bytes(),
    );
    let mut raw = RawClient::connect(port, &format!("/ws?token={short}")).await;
    raw.recv_event("/", "connection:established").await;
    let (e, _) = raw
        .recv_matching_within(Duration::from_secs(15), "auth:error", |f| {
            f["event"] == "auth:error"
        })
        .await;
    assert_eq!(e["ns"], "/");
    assert_error_obj(&e["data"], "token_expired");
    assert_eq!(raw.expect_close(Duration::from_secs(10)).await, Some(1008));
    bystander.assert_receives(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_refuses_to_start_without_a_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nilecast"))
        .env_remove("JWT_SECRET")
        .env_remove("JWT_PUBLIC_KEY")
        .env("NILECAST_ENV", "production")
        .env("WEBSOCKET_PORT", "0")
        .output()
        .expect("run nilecast");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nilecast"))
        .env("JWT_SECRET", "short")
        .env("WEBSOCKET_PORT", "0")
        .output()
        .expect("run nilecast");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET must be at least 32 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let path = format!("/ws?token={}", token("u-1", "t-a", &["staff"]));
    // Not trusted: X-Forwarded-For is ignored, so both upgrades come from 127.0.0.1.
    let plain = spawn_server(&[("JWT_SECRET", SECRET), ("MAX_CONNECTIONS_PER_IP", "1")]);
    let _held = RawClient::connect(plain.port, &path).await;
    let r = upgrade_response(plain.port, &path, &[("X-Forwarded-For", "198.51.100.2")]).await;
    r.assert_error(429, "rate_limited");

    // Trusted: each forwarded client has its own limit, and /clients shows its address.
    let proxied = spawn_server(&[
        ("JWT_SECRET", SECRET),
        ("MAX_CONNECTIONS_PER_IP", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let mut held = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2"] {
        let mut raw =
            RawClient::connect_with_headers(proxied.port, &path, &[("X-Forwarded-For", client)])
                .await;
        raw.recv_event("/", "connection:established").await;
        held.push(raw);
    }
    let r = upgrade_response(proxied.port, &path, &[("X-Forwarded-For", "198.51.100.1")]).await;
    r.assert_error(429, "rate_limited");
    let auth = bearer(&token("admin-1", "t-a", &["admin"]));
    let clients = http_request_with(
        proxied.port,
        "GET",
        "/clients",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    let listed: Vec<String> = clients.json()["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["remoteAddress"].as_str().map(str::to_string))
        .collect();
    for client in ["198.51.100.1", "198.51.100.2"] {
        assert!(
            listed.iter().any(|a| a.starts_with(client)),
            "{client} not in /clients: {listed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let (server, mut bystander) = hs_server(&[("MAX_HEADER_BYTES", "8192")]).await;
    let port = server.port;
    let big = "x".repeat(10_000);
    let r = http_request_with(port, "GET", "/health", &[("X-Padding", &big)], None).await;
    assert_eq!(r.status, 431, "{}", r.text());
    bystander.assert_receives(port).await;
}
