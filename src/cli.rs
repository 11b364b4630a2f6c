//! The client subcommands that talk to a running server, replacing the seed's npm
//! scripts: `health`, `metrics`, `clients` and `check`. Each exits non-zero when the
//! server is down or unhealthy. And `token`, which mints an HS256 token for development.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long any one step of a client command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The server's base URL.
    #[arg(long, env = "NILECAST_URL", default_value = "http://127.0.0.1:4001")]
    pub url: String,
    /// A token to present when the server has auth on (`check` needs role admin).
    #[arg(long, env = "NILECAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The HS256 secret the server has.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user (`sub`).
    #[arg(long)]
    pub sub: String,
    /// The tenant (`tenant_id`).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Roles, comma-separated: customer, staff, admin, publisher.
    #[arg(long, value_delimiter = ',', default_value = "staff")]
    pub roles: Vec<String>,
    /// Lifetime in seconds. Servers refuse tokens that live longer than their
    /// JWT_MAX_LIFETIME_S (7 days by default).
    #[arg(long, default_value_t = 3600)]
    pub ttl_s: u64,
    /// `iss`, when the server requires one.
    #[arg(long)]
    pub issuer: Option<String>,
    /// `aud`, when the server requires one.
    #[arg(long)]
    pub audience: Option<String>,
}

/// `nilecast token`: an HS256 token for development and scripts.
pub fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + args.ttl_s;
    let mut claims = json!({
        "sub": args.sub,
        "tenant_id": args.tenant,
        "roles": args.roles,
        "exp": exp,
    });
    if let Some(iss) = &args.issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = &args.audience {
        claims["aud"] = json!(aud);
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(args.secret.as_bytes()),
    )?)
}

impl Target {
    fn host_port(&self) -> anyhow::Result<String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--url must start with http://"))?;
        Ok(rest.trim_end_matches('/').to_string())
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
async fn request(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let host = target.host_port()?;
    let exchange = async {
        let mut stream = TcpStream::connect(&host).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = target
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{host} did not answer in time"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed status line"))?;
    Ok((status, body.to_string()))
}

fn pretty(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string())
}

/// `nilecast health`: prints `/health`; fails unless the server says healthy or degraded.
pub async fn health(target: &Target) -> anyhow::Result<()> {
    let (status, body) = request(target, "GET", "/health", None).await?;
    println!("{}", pretty(&body));
    anyhow::ensure!(status == 200, "server reports unhealthy (HTTP {status})");
    Ok(())
}

/// `nilecast metrics` and `nilecast clients`: prints the endpoint's JSON.
pub async fn show(target: &Target, path: &str) -> anyhow::Result<()> {
    let (status, body) = request(target, "GET", path, None).await?;
    println!("{}", pretty(&body));
    anyhow::ensure!(status == 200, "HTTP {status}");
    Ok(())
}

/// `nilecast check`: connects over WebSocket, subscribes to a probe product, publishes a
/// change to it and reports the round trips.
pub async fn check(target: &Target) -> anyhow::Result<()> {
    let host = target.host_port()?;
    let started = Instant::now();
    let (mut ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async(match &target.token {
            Some(t) => format!("ws://{host}/ws?token={t}"),
            None => format!("ws://{host}/ws"),
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("WebSocket connect timed out"))??;
    let connected = started.elapsed();
    let probe = format!("nilecast-check-{}", std::process::id());

    let hello = recv(&mut ws).await?;
    anyhow::ensure!(
        hello["event"] == "connection:established",
        "unexpected first frame: {hello}"
    );

    let subscribe_at = Instant::now();
    let request_frame = json!({"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":[probe]},"ack":1});
    ws.send(Message::Text(request_frame.to_string())).await?;
    let subscribed = loop {
        let frame = recv(&mut ws).await?;
        if frame["ack"] == 1 {
            anyhow::ensure!(
                frame["data"].get("error").is_none(),
                "subscribe refused: {}",
                frame["data"]["error"]
            );
            break subscribe_at.elapsed();
        }
    };

    let publish_at = Instant::now();
    let change = json!({"dataType":"inventory","data":{"productId":probe,"warehouseId":"check","quantity":1000}});
    let (status, body) = request(target, "POST", "/publish", Some(&change)).await?;
    anyhow::ensure!(status == 200, "publish failed: HTTP {status} {body}");
    let delivered = loop {
        let frame = recv(&mut ws).await?;
        if frame["event"] == "inventory:update"
            && frame["data"]["data"]["productId"] == probe.as_str()
        {
            break publish_at.elapsed();
        }
    };
    let _ = ws.close(None).await;
    println!(
        "ok: connected in {:.1} ms, subscribed in {:.1} ms, publish to receive {:.1} ms",
        connected.as_secs_f64() * 1e3,
        subscribed.as_secs_f64() * 1e3,
        delivered.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn recv<S>(ws: &mut S) -> anyhow::Result<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no frame from the server in time"))?
        {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("server closed the connection"),
        }
    }
}
