//! Cluster mode (`REDIS_URL`, without a database): changes travel between nodes through
//! a Redis Stream, with one global seq.
//!
//! A change entering any node (publish API, simulator, alerts) is appended by a Lua
//! script that takes the next seq (`INCR`) and adds the change to the stream under the
//! id `<seq>-1`, atomically, so stream order is seq order. Every node, the one that
//! appended included, reads the stream from its last id (`XREAD BLOCK`) and publishes
//! what it reads through the engine's one path with the stream's seq
//! (`Engine::publish_logged`); a node that loses Redis keeps serving its clients, reports
//! `redis` degraded, reconnects with backoff and catches up from its last id. Nodes
//! announce themselves with a heartbeat; `/health` lists the live ones.
//!
//! With a database, the change log is already shared by all nodes and each node follows
//! it; Redis then only carries the membership. (Redis Streams in front of the database,
//! with one node tailing it under a lease, is not built yet.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value as RValue;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::fanout::change::{Change, DataType};
use crate::fanout::Logged;
use crate::time;

/// Appends changes (ARGV, JSON each) with consecutive seqs; returns the seqs.
const APPEND: &str = r"
local out = {}
for i = 1, #ARGV do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, seq .. '-1', 'c', ARGV[i])
  out[i] = seq
end
return out
";

/// Raises the seq counter to at least ARGV[1]: a Redis that restarted without its data
/// must not hand out seqs the nodes have already published.
const FLOOR: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";

/// How long a node counts as a member after its last heartbeat.
const MEMBER_TTL_MS: u64 = 6_000;

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(String);

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> ClusterError {
        ClusterError(e.to_string())
    }
}

pub struct Cluster {
    client: redis::Client,
    /// Commands (appends, heartbeats); reconnects by itself.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// The last stream seq this node published.
    pub last_seq: AtomicU64,
}

impl Cluster {
    pub fn new(url: &str, prefix: &str) -> Result<Arc<Cluster>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Arc::new(Cluster {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
        }))
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        let conn = self
            .conn
            .get_or_try_init(|| async { ConnectionManager::new(self.client.clone()).await })
            .await?;
        Ok(conn.clone())
    }

    /// Appends changes to the stream; every node (this one too) publishes them when
    /// it reads them. Returns their seqs.
    pub async fn publish(&self, changes: &[Change]) -> Result<Vec<u64>, ClusterError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let script = redis::Script::new(APPEND);
        let mut invocation = script.prepare_invoke();
        invocation.key(self.key("seq")).key(self.key("changes"));
        for change in changes {
            let entry = json!({
                "t": &*change.tenant,
                "d": change.data_type.name(),
                "p": Value::Object(change.data.clone()),
                "ts": time::now_ms(),
            });
            invocation.arg(entry.to_string());
        }
        let seqs: Vec<u64> = invocation.invoke_async(&mut conn).await?;
        Ok(seqs)
    }

    /// The live members: node id and last heartbeat.
    pub async fn members(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut conn = self.conn().await?;
        let since = time::now_ms().saturating_sub(MEMBER_TTL_MS);
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("nodes"))
            .arg(since)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(raw.into_iter().map(|(n, s)| (n, s as u64)).collect())
    }

    /// The `redis` part of `/health`.
    pub async fn health(&self) -> Value {
        let members = tokio::time::timeout(Duration::from_secs(1), self.members()).await;
        let connected = self.connected.load(Relaxed);
        match members {
            Ok(Ok(members)) => json!({
                "status": if connected { "healthy" } else { "degraded" },
                "connected": connected,
                "lastSeq": self.last_seq.load(Relaxed),
                "reconnects": self.reconnects.load(Relaxed),
                "members": members.iter().map(|(n, at)| json!({ "node": n, "lastSeen": time::iso8601(*at) })).collect::<Vec<_>>(),
            }),
            _ => json!({
                "status": "degraded",
                "connected": false,
                "lastSeq": self.last_seq.load(Relaxed),
                "reconnects": self.reconnects.load(Relaxed),
            }),
        }
    }
}

/// One stream entry as a change with its seq.
fn entry_to_logged(id: &str, fields: &[RValue]) -> Option<Logged> {
    let seq: u64 = id.split('-').next()?.parse().ok()?;
    let text = fields.chunks(2).find_map(|kv| match (&kv[0], kv.get(1)?) {
        (RValue::BulkString(k), RValue::BulkString(v)) if k == b"c" => std::str::from_utf8(v).ok(),
        _ => None,
    })?;
    let v: Value = serde_json::from_str(text).ok()?;
    let data: Map<String, Value> = v.get("p")?.as_object()?.clone();
    Some(Logged {
        seq,
        change: Change {
            data_type: DataType::parse(v.get("d")?.as_str()?)?,
            tenant: Arc::from(v.get("t")?.as_str()?),
            data,
        },
        timestamp_ms: v
            .get("ts")
            .and_then(Value::as_u64)
            .unwrap_or_else(time::now_ms),
    })
}

/// Reads the stream from the last id and publishes each change, until shutdown;
/// reconnects with backoff and catches up after a loss.
pub async fn follow(app: Arc<App>, cluster: Arc<Cluster>) {
    let key = cluster.key("changes");
    let mut started = false;
    let mut failures = 0u32;
    loop {
        let round = async {
            // XREAD blocks up to 500 ms: the reply may take longer than the default
            // response timeout.
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)));
            let mut conn = cluster
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if !started {
                // Start at the stream's end: what came before is not news.
                let last: RValue = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                let seq = match &last {
                    RValue::Array(items) => items.first().and_then(|e| match e {
                        RValue::Array(pair) => match pair.first() {
                            Some(RValue::BulkString(id)) => std::str::from_utf8(id)
                                .ok()?
                                .split('-')
                                .next()?
                                .parse()
                                .ok(),
                            _ => None,
                        },
                        _ => None,
                    }),
                    _ => None,
                }
                .unwrap_or(0);
                app.engine.set_floor(seq);
                cluster.last_seq.store(seq, Relaxed);
                started = true;
            }
            // A Redis that lost its data (restarted without persistence) starts the seq
            // again from our last one, so new changes still come after what we have.
            let _: i64 = redis::Script::new(FLOOR)
                .key(cluster.key("seq"))
                .arg(cluster.last_seq.load(Relaxed))
                .invoke_async(&mut conn)
                .await?;
            cluster.connected.store(true, Relaxed);
            loop {
                if app.shutdown.is_triggered() {
                    return Ok::<(), redis::RedisError>(());
                }
                let from = format!("{}-1", cluster.last_seq.load(Relaxed));
                let reply: RValue = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&from)
                    .query_async(&mut conn)
                    .await?;
                let mut batch = Vec::new();
                collect_entries(&reply, &mut batch);
                if let Some(last) = batch.last() {
                    cluster.last_seq.store(last.seq, Relaxed);
                    app.engine.publish_logged(&batch);
                }
            }
        };
        tokio::select! {
            outcome = round => match outcome {
                Ok(()) => return,
                Err(e) => {
                    cluster.connected.store(false, Relaxed);
                    cluster.reconnects.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "lost Redis; serving local clients, reconnecting");
                }
            },
            _ = app.shutdown.cancelled() => return,
        }
        failures = (failures + 1).min(6);
        let delay = Duration::from_millis((100u64 << failures).min(5000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// `XREAD` reply: `[[key, [[id, [field, value, ...]], ...]]]`.
fn collect_entries(reply: &RValue, out: &mut Vec<Logged>) {
    let RValue::Array(streams) = reply else {
        return;
    };
    for stream in streams {
        let RValue::Array(parts) = stream else {
            continue;
        };
        let Some(RValue::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            let RValue::Array(pair) = entry else { continue };
            let (Some(RValue::BulkString(id)), Some(RValue::Array(fields))) =
                (pair.first(), pair.get(1))
            else {
                continue;
            };
            match std::str::from_utf8(id)
                .ok()
                .and_then(|id| entry_to_logged(id, fields))
            {
                Some(logged) => out.push(logged),
                None => tracing::warn!("a stream entry that is not a change; skipped"),
            }
        }
    }
}

/// Announces this node every two seconds until shutdown.
pub async fn heartbeat(app: Arc<App>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let beat = async {
            let mut conn = cluster.conn().await?;
            let now = time::now_ms();
            let _: () = redis::cmd("ZADD")
                .arg(cluster.key("nodes"))
                .arg(now)
                .arg(&app.node_id)
                .query_async(&mut conn)
                .await?;
            let _: () = redis::cmd("ZREMRANGEBYSCORE")
                .arg(cluster.key("nodes"))
                .arg("-inf")
                .arg(now.saturating_sub(MEMBER_TTL_MS * 10))
                .query_async(&mut conn)
                .await?;
            Ok::<(), ClusterError>(())
        };
        if let Err(e) = beat.await {
            tracing::debug!(error = %e, "heartbeat to Redis failed");
        }
    }
}

/// Announces alerts raised from stream changes: every node raises the same alert
/// (`alert-<seq>`) from the same change, and the first to claim it in Redis publishes
/// its notification.
pub async fn announce_alerts(
    app: Arc<App>,
    cluster: Arc<Cluster>,
    mut raised: tokio::sync::mpsc::UnboundedReceiver<crate::alerts::Alert>,
) {
    loop {
        let alert = tokio::select! {
            next = raised.recv() => match next {
                Some(alert) => alert,
                None => return,
            },
            _ = app.shutdown.cancelled() => return,
        };
        let claim = async {
            let mut conn = cluster.conn().await?;
            let claimed: Option<String> = redis::cmd("SET")
                .arg(cluster.key(&format!("alert:{}:{}", alert.tenant, alert.id)))
                .arg(&app.node_id)
                .arg("NX")
                .arg("PX")
                .arg(3_600_000)
                .query_async(&mut conn)
                .await?;
            if claimed.is_some() {
                cluster
                    .publish(&[Change {
                        data_type: DataType::Notification,
                        tenant: Arc::from(alert.tenant.as_str()),
                        data: alert.notification_data(),
                    }])
                    .await?;
            }
            Ok::<(), ClusterError>(())
        };
        if let Err(e) = claim.await {
            tracing::warn!(alert = %alert.id, error = %e, "could not announce an alert through Redis");
        }
    }
}

/// Reads a tenant's changes of namespace `ns` in `(since, through]` from the stream, for
/// a `sinceSeq` replay that reaches below a node's ring (a client that comes from
/// another node, or after a restart). `gap` when the stream was trimmed past `since` or
/// holds more than `max`.
pub async fn replay(
    cluster: &Cluster,
    engine: &crate::fanout::Engine,
    tenant: &str,
    ns: crate::fanout::change::Namespace,
    since: u64,
    through: u64,
    max: usize,
) -> Result<crate::fanout::LogReplay, ClusterError> {
    let mut conn = cluster.conn().await?;
    let key = cluster.key("changes");
    let first: RValue = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let mut oldest = Vec::new();
    collect_entries(
        &RValue::Array(vec![RValue::Array(vec![RValue::Nil, first])]),
        &mut oldest,
    );
    let trimmed = oldest.first().is_some_and(|e| e.seq > since + 1);
    let mut records = Vec::new();
    let mut from = since;
    let mut gap = trimmed;
    while from < through {
        let reply: RValue = redis::cmd("XRANGE")
            .arg(&key)
            .arg(format!("({from}-1"))
            .arg(format!("{through}-1"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        let mut batch = Vec::new();
        collect_entries(
            &RValue::Array(vec![RValue::Array(vec![RValue::Nil, reply])]),
            &mut batch,
        );
        let Some(last) = batch.last() else { break };
        from = last.seq;
        for logged in batch {
            if &*logged.change.tenant == tenant && logged.change.data_type.namespace() == ns {
                records.push(engine.build_record(&logged));
            }
        }
        if records.len() > max {
            records.truncate(max);
            gap = true;
            break;
        }
    }
    let through = if gap && records.len() == max {
        records.last().map_or(since, |r| r.seq)
    } else {
        through
    };
    Ok(crate::fanout::LogReplay {
        records,
        through,
        gap,
    })
}
