//! Publishing through `POST /publish` on one keep-alive HTTP/1.1 connection, in
//! batches, at a target rate. Each change carries `sentAt` (microseconds since the
//! epoch) for publish-to-receive latency, and the seqs the server answers are kept per
//! key for the delivery check.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The product id of key `k`; the prefix keeps load-generator products apart from any
/// demo data.
pub fn product(k: usize) -> String {
    format!("lg-p-{k}")
}

pub struct Publisher {
    addr: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Publisher {
    pub async fn connect(addr: &str) -> anyhow::Result<Publisher> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            addr: addr.to_string(),
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Publishes one change per key in `keys`, stamped now; returns their seqs.
    pub async fn publish(&mut self, keys: &[usize]) -> anyhow::Result<Vec<u64>> {
        let sent_at = now_us();
        let mut body = String::with_capacity(keys.len() * 128);
        body.push('[');
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            // A quantity far above any low-stock threshold: no alerts, only updates.
            body.push_str(&format!(
                r#"{{"dataType":"inventory","tenantId":"default","data":{{"productId":"{}","warehouseId":"w-1","quantity":1000,"sentAt":{sent_at}}}}}"#,
                product(*k)
            ));
        }
        body.push(']');
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body.as_bytes()).await?;
        let (status, response) = self.read_response().await?;
        if status != 200 {
            bail!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&response)
            );
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(&response).context("publish answer is not JSON")?;
        let seqs: Vec<u64> = parsed["seqs"]
            .as_array()
            .context("no seqs in the answer")?
            .iter()
            .filter_map(|s| s.as_u64())
            .collect();
        if seqs.len() != keys.len() {
            bail!(
                "asked to publish {} changes, got {} seqs",
                keys.len(),
                seqs.len()
            );
        }
        Ok(seqs)
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("server closed the publish connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one response (Content-Length or chunked).
    async fn read_response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let head_end = loop {
            if let Some(i) = crate::client::find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.read_more().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad status line")?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        self.buf.drain(..head_end + 4);
        let body =
            if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
                while self.buf.len() < len {
                    self.read_more().await?;
                }
                self.buf.drain(..len).collect()
            } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
                let mut body = Vec::new();
                loop {
                    let line_end = loop {
                        if let Some(i) = crate::client::find(&self.buf, b"\r\n") {
                            break i;
                        }
                        self.read_more().await?;
                    };
                    let size = usize::from_str_radix(
                        String::from_utf8_lossy(&self.buf[..line_end]).trim(),
                        16,
                    )?;
                    while self.buf.len() < line_end + 2 + size + 2 {
                        self.read_more().await?;
                    }
                    body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                    self.buf.drain(..line_end + 2 + size + 2);
                    if size == 0 {
                        break body;
                    }
                }
            } else {
                bail!("response has neither Content-Length nor chunked encoding");
            };
        Ok((status, body))
    }
}

/// Publishes at `rate` changes per second for `duration`, choosing each change's key
/// with `pick`, in batches of at most `max_batch`. Returns (seq, key) of everything
/// published.
pub async fn run_at_rate(
    addr: &str,
    rate: f64,
    duration: Duration,
    max_batch: usize,
    mut pick: impl FnMut() -> usize,
) -> anyhow::Result<Vec<(u64, usize)>> {
    let mut publisher = Publisher::connect(addr).await?;
    let started = Instant::now();
    let mut published: Vec<(u64, usize)> = Vec::new();
    // A 5 ms tick: fine enough that a batch is a small slice of a second at any rate.
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (rate * started.elapsed().as_secs_f64()) as usize;
        let mut owed = due.saturating_sub(published.len());
        while owed > 0 {
            let keys: Vec<usize> = (0..owed.min(max_batch)).map(|_| pick()).collect();
            let seqs = publisher.publish(&keys).await?;
            owed -= keys.len();
            published.extend(seqs.into_iter().zip(keys));
        }
    }
    Ok(published)
}
