//! A fleet of subscribed connections, one task each, recording what they receive.
//! Connections can be told to drop and reconnect (resuming with `sinceSeq`) or to stop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::client::{Client, Event, Protocol};
use crate::publisher::{now_us, product};
use crate::stats::Receipts;

/// Where and how the fleet connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server, or the nodes of a cluster: connection i goes to node i mod n.
    pub addrs: Vec<String>,
    pub protocol: Protocol,
    pub ws_path: String,
    /// Offer permessage-deflate on every connection.
    pub deflate: bool,
}

impl Target {
    /// Where changes are published: the first node.
    pub fn publish_addr(&self) -> &str {
        self.addrs.first().map_or("127.0.0.1:4001", String::as_str)
    }

    /// The node connection `i` goes to.
    pub fn addr_for(&self, i: usize) -> &str {
        match self.addrs.len() {
            0 => self.publish_addr(),
            n => &self.addrs[i % n],
        }
    }
}

/// Handshakes in flight at once: enough to open thousands of connections in seconds
/// without overflowing the server's listen backlog.
const CONCURRENT_HANDSHAKES: usize = 256;

#[derive(Default)]
pub struct Control {
    reconnect: Notify,
    stop: Notify,
    /// Connections subscribed (counted again after each reconnect).
    pub subscribed: AtomicUsize,
    /// Connections that gave up (handshake refused, connection lost).
    pub failed: AtomicUsize,
    pub delivered: AtomicU64,
}

pub struct Conn {
    pub key: usize,
    pub receipts: Arc<Mutex<Receipts>>,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Whether the connection's task has ended (it failed or was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

pub struct Fleet {
    pub conns: Vec<Conn>,
    pub control: Arc<Control>,
}

impl Fleet {
    /// Opens `n` connections, connection i subscribed to key `key_of(i)`, and waits until
    /// every one is subscribed or has failed (or `timeout` passes).
    pub async fn open(
        target: &Target,
        n: usize,
        key_of: impl Fn(usize) -> usize,
        timeout: Duration,
    ) -> Fleet {
        let control = Arc::new(Control::default());
        let gate = Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES));
        let conns = (0..n)
            .map(|i| {
                let key = key_of(i);
                let receipts = Arc::new(Mutex::new(Receipts::default()));
                let task = tokio::spawn(run(
                    target.clone(),
                    target.addr_for(i).to_string(),
                    key,
                    receipts.clone(),
                    control.clone(),
                    gate.clone(),
                ));
                Conn {
                    key,
                    receipts,
                    task,
                }
            })
            .collect();
        let fleet = Fleet { conns, control };
        fleet.wait_subscribed(n, timeout).await;
        fleet
    }

    /// Waits until `n` subscriptions have completed (or failed) since the last reset.
    pub async fn wait_subscribed(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.control.subscribed.load(Relaxed) + self.control.failed.load(Relaxed) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn subscribed(&self) -> usize {
        self.control.subscribed.load(Relaxed)
    }

    pub fn failed(&self) -> usize {
        self.control.failed.load(Relaxed)
    }

    /// Waits until `expected` deliveries have arrived in total, or `timeout` passes.
    pub async fn wait_delivered(&self, expected: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.control.delivered.load(Relaxed) < expected {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Every connection drops its socket at once and reconnects with `sinceSeq`.
    pub fn reconnect_all(&self) {
        self.control.subscribed.store(0, Relaxed);
        self.control.reconnect.notify_waiters();
    }

    /// Takes every connection's receipts, leaving them empty, and resets the counter.
    pub fn take_receipts(&self) -> Vec<(usize, Receipts)> {
        self.control.delivered.store(0, Relaxed);
        self.conns
            .iter()
            .map(|c| {
                (
                    c.key,
                    std::mem::take(&mut *c.receipts.lock().unwrap_or_else(|e| e.into_inner())),
                )
            })
            .collect()
    }

    pub async fn close(self) {
        self.control.stop.notify_waiters();
        for c in self.conns {
            c.task.abort();
            let _ = c.task.await;
        }
    }
}

async fn run(
    target: Target,
    addr: String,
    key: usize,
    receipts: Arc<Mutex<Receipts>>,
    control: Arc<Control>,
    gate: Arc<Semaphore>,
) {
    let products = [product(key)];
    let mut since: Option<u64> = None;
    loop {
        let permit = gate.acquire().await;
        let setup = async {
            let mut client =
                Client::connect(&addr, target.protocol, &target.ws_path, target.deflate).await?;
            client.subscribe(&products, since).await?;
            let mut early = Vec::new();
            client
                .run(|events| {
                    let mut subscribed = false;
                    for event in events {
                        match event {
                            Event::Subscribed => subscribed = true,
                            Event::Update(u) => early.push(*u),
                            _ => {}
                        }
                    }
                    !subscribed
                })
                .await?;
            anyhow::Ok((client, early))
        };
        let (mut client, early) = match setup.await {
            Ok(ok) => ok,
            Err(e) => {
                if since.is_none() {
                    eprintln!("connection to {addr} failed: {e:#}");
                }
                control.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        drop(permit);
        control.subscribed.fetch_add(1, Relaxed);

        let record = |u: crate::client::Update, r: &mut Receipts| {
            r.seqs.push(u.seq);
            if let Some(sent) = u.sent_at_us {
                r.latencies_us.push(now_us().saturating_sub(sent));
            }
        };
        {
            control.delivered.fetch_add(early.len() as u64, Relaxed);
            let mut r = receipts.lock().unwrap_or_else(|e| e.into_inner());
            for u in early {
                record(u, &mut r);
            }
        }
        let reading = client.run(|events| {
            // One clock read and one lock per batch: frames of one read arrived together.
            let now = now_us();
            let mut r = receipts.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for event in events {
                if let Event::Update(u) = event {
                    r.seqs.push(u.seq);
                    if let Some(sent) = u.sent_at_us {
                        r.latencies_us.push(now.saturating_sub(sent));
                    }
                    n += 1;
                }
            }
            if n > 0 {
                control.delivered.fetch_add(n, Relaxed);
            }
            true
        });
        tokio::select! {
            result = reading => {
                if let Err(e) = result {
                    eprintln!("connection lost: {e:#}");
                }
                control.failed.fetch_add(1, Relaxed);
                return;
            }
            _ = control.reconnect.notified() => {
                since = receipts.lock().unwrap_or_else(|e| e.into_inner()).seqs.iter().max().copied().or(since);
            }
            _ = control.stop.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_the_nodes_and_changes_to_the_first() {
        let target = Target {
            addrs: vec!["a:1".into(), "b:2".into()],
            protocol: Protocol::Native,
            ws_path: "/ws".into(),
            deflate: false,
        };
        let spread: Vec<&str> = (0..4).map(|i| target.addr_for(i)).collect();
        assert_eq!(spread, ["a:1", "b:2", "a:1", "b:2"]);
        assert_eq!(target.publish_addr(), "a:1");
    }
}
