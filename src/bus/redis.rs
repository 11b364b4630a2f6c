//! The Redis buses (`REDIS_URL`): changes travel between nodes through a Redis Stream,
//! with one global seq. [`RedisBus`] without a database; [`LeaderFedBus`] with one.
//!
//! Every node reads the stream from its last id (`XREAD BLOCK`) and delivers what it
//! reads to its engine with the stream's seq (the engine's `Inlet`); a node that loses Redis keeps serving its clients, reports
//! `redis` degraded, reconnects with backoff and catches up from its last id. Nodes
//! announce themselves (id, address, heartbeat); `/health` lists the live ones and
//! `/clients?scope=cluster` asks each of them for its clients.
//!
//! What goes into the stream depends on whether there is a database:
//!
//! - Without one, a change entering any node (publish API, simulator, alerts) is
//!   appended by a Lua script that takes the next seq (`INCR`) and adds the change under
//!   the id `<seq>-1`, atomically, so stream order is seq order.
//! - With one, the change log is the source and its seqs are the seqs. One node at a
//!   time, the leader, tails the database (feed, table-poll, retention) and appends what
//!   it reads under the log's seqs ([`lead`]). It holds a lease in Redis (`SET NX PX`),
//!   renews it every third of its length, and steps down when it cannot. A standby
//!   tries for the lease every fifth of its length and, once it has it, resumes from the
//!   feed position the leader stored in the database, or from the stream's last seq
//!   when that is further. The append script checks the lease and skips seqs at or
//!   below the stream's last id in the same atomic step: a leader that lost its lease
//!   appends nothing, and a new leader re-reading what the old one already appended
//!   adds nothing twice. Both read the log in seq order without passing an unsettled
//!   hole (see `db::feed`), so they append the same sequence.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value as RValue;
use serde_json::{json, Map, Value};

use super::{BoxFuture, Bus, BusError, KeptSession, Log, Member, Membership, Sessions, Start};
use crate::alerts::Alert;
use crate::db::Db;
use crate::fanout::change::{Change, DataType, Namespace};
use crate::fanout::{Inlet, LogReplay, Logged};
use crate::shutdown::Shutdown;
use crate::time;

/// Appends changes (ARGV[2..], JSON each) with consecutive seqs, keeping about ARGV[1]
/// entries; returns the seqs.
const APPEND: &str = r"
local out = {}
for i = 2, #ARGV do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-1', 'c', ARGV[i])
  out[i - 1] = seq
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

/// Appends change-log rows (ARGV[3..], seq and JSON in turn) under their own seqs,
/// keeping about ARGV[2] entries, if this node (token ARGV[1]) holds the lease KEYS[1];
/// seqs at or below the stream's last id are skipped (already appended). Returns how
/// many were added, or -1 when the lease is not ours.
const APPEND_LOGGED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = 0
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #newest > 0 then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
local added = 0
for i = 3, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-1', 'c', ARGV[i + 1])
    last = seq
    added = added + 1
  end
end
return added
";

/// Extends the lease KEYS[1] by ARGV[2] ms if token ARGV[1] holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Gives up the lease KEYS[1] if token ARGV[1] holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How long a node counts as a member after its last heartbeat.
const MEMBER_TTL_MS: u64 = 6_000;
/// How long a Redis command may take to answer. redis-rs's default is 500 ms: a
/// loaded Redis (or node) that answered a publish's append in 600 ms had the publish
/// refused with 503 although the change went out, and a publisher that retried would
/// have published it twice. `XREAD BLOCK` (500 ms) needs more than the default too.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("redis: {message}")]
pub struct ClusterError {
    message: String,
    /// The command was sent and its answer did not come in time: Redis may have
    /// carried it out.
    pub unanswered: bool,
}

impl ClusterError {
    fn new(message: impl Into<String>) -> ClusterError {
        ClusterError {
            message: message.into(),
            unanswered: false,
        }
    }
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> ClusterError {
        ClusterError {
            message: e.to_string(),
            unanswered: e.is_timeout(),
        }
    }
}

pub struct Cluster {
    client: redis::Client,
    /// Commands (appends, heartbeats); reconnects by itself.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    /// About how many entries the stream keeps (`REDIS_STREAM_MAX_LEN`).
    stream_max_len: u64,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// The last stream seq this node published.
    pub last_seq: AtomicU64,
    /// This node's HTTP address for the other nodes (`NODE_ADDR`), once bound.
    pub addr: std::sync::OnceLock<String>,
    /// With a database: whether this node holds the lease and tails the database.
    pub leading: AtomicBool,
    /// How many times this node took the lease.
    pub takeovers: AtomicU64,
    /// `CLUSTER_SECRET`, or the one the cluster keeps in Redis (see [`Cluster::secret`]).
    secret: tokio::sync::OnceCell<String>,
}

/// The header that carries the cluster secret on a node-to-node request.
pub const SECRET_HEADER: &str = "x-nilecast-cluster-secret";

impl Cluster {
    pub fn new(
        url: &str,
        prefix: &str,
        stream_max_len: u64,
        secret: Option<String>,
    ) -> Result<Arc<Cluster>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        let configured = tokio::sync::OnceCell::new();
        if let Some(secret) = secret {
            let _ = configured.set(secret);
        }
        Ok(Arc::new(Cluster {
            secret: configured,
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
            stream_max_len,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            addr: std::sync::OnceLock::new(),
            leading: AtomicBool::new(false),
            takeovers: AtomicU64::new(0),
        }))
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The secret nodes authenticate their requests to each other with:
    /// `CLUSTER_SECRET` when set, else 256 random bits that the first node to ask
    /// stores in Redis (`SET NX`) for every node to read. Whoever reads Redis is inside
    /// the cluster already; a client of the HTTP API is not.
    pub async fn secret(&self) -> Result<String, ClusterError> {
        self.secret
            .get_or_try_init(|| async {
                let mut bytes = [0u8; 32];
                getrandom::getrandom(&mut bytes)
                    .map_err(|e| ClusterError::new(format!("random source: {e}")))?;
                let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let key = self.key("secret");
                let mut conn = self.conn().await?;
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
                let kept: Option<String> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                kept.ok_or_else(|| ClusterError::new("the cluster secret vanished from Redis"))
            })
            .await
            .cloned()
    }

    async fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
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
        invocation
            .key(self.key("seq"))
            .key(self.key("changes"))
            .arg(self.stream_max_len);
        for change in changes {
            invocation.arg(entry_json(change, time::now_ms()));
        }
        let seqs: Vec<u64> = invocation.invoke_async(&mut conn).await?;
        Ok(seqs)
    }

    /// Appends change-log rows under their own seqs, as the holder of lease `token`;
    /// rows already in the stream are skipped. Fails when the lease is not ours.
    pub async fn append_logged(
        &self,
        token: &str,
        batch: &[Logged],
    ) -> Result<usize, ClusterError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let script = redis::Script::new(APPEND_LOGGED);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.key("leader"))
            .key(self.key("changes"))
            .arg(token)
            .arg(self.stream_max_len);
        for logged in batch {
            invocation
                .arg(logged.seq)
                .arg(entry_json(&logged.change, logged.timestamp_ms));
        }
        let added: i64 = invocation.invoke_async(&mut conn).await?;
        usize::try_from(added).map_err(|_| ClusterError::new("the leader's lease was lost"))
    }

    /// The seq of the stream's newest entry (0 when it is empty).
    pub async fn stream_head(&self) -> Result<u64, ClusterError> {
        let mut conn = self.conn().await?;
        Ok(end_seq(&mut conn, &self.key("changes"), End::Newest)
            .await?
            .unwrap_or(0))
    }

    /// Takes the lease if nobody holds it.
    async fn acquire(&self, token: &str, ttl_ms: u64) -> Result<bool, ClusterError> {
        let mut conn = self.conn().await?;
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key("leader"))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Extends the lease; false when it is no longer ours.
    async fn renew(&self, token: &str, ttl_ms: u64) -> Result<bool, ClusterError> {
        let mut conn = self.conn().await?;
        let renewed: i64 = redis::Script::new(RENEW)
            .key(self.key("leader"))
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    async fn release(&self, token: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::Script::new(RELEASE)
            .key(self.key("leader"))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The node holding the lease, if any.
    async fn leader(&self) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn().await?;
        let token: Option<String> = redis::cmd("GET")
            .arg(self.key("leader"))
            .query_async(&mut conn)
            .await?;
        Ok(token.map(|t| {
            t.rsplit_once('/')
                .map_or(t.clone(), |(node, _)| node.to_string())
        }))
    }

    /// The live members, by last heartbeat: id, address and when last seen.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let mut conn = self.conn().await?;
        let since = time::now_ms().saturating_sub(MEMBER_TTL_MS);
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("nodes"))
            .arg(since)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for (node, _) in &raw {
            get.arg(self.key(&format!("node:{node}")));
        }
        let addrs: Vec<Option<String>> = get.query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .zip(addrs)
            .map(|((node, seen), addr)| Member {
                node,
                last_seen_ms: seen as u64,
                addr,
            })
            .collect())
    }

    /// The `redis` part of `/health`. Members' addresses are listed only when
    /// `addresses` (a staff caller): they are where the nodes' HTTP APIs listen.
    pub async fn health(&self, with_database: bool, addresses: bool) -> Value {
        let state = async { Ok::<_, ClusterError>((self.members().await?, self.leader().await?)) };
        let state = tokio::time::timeout(Duration::from_secs(1), state).await;
        let connected = self.connected.load(Relaxed);
        let mut body = json!({
            "status": "degraded",
            "connected": false,
            "lastSeq": self.last_seq.load(Relaxed),
            "reconnects": self.reconnects.load(Relaxed),
        });
        if let Ok(Ok((members, leader))) = state {
            body["status"] = json!(if connected { "healthy" } else { "degraded" });
            body["connected"] = json!(connected);
            body["members"] = members
                .iter()
                .map(|m| {
                    let mut member =
                        json!({ "node": m.node, "lastSeen": time::iso8601(m.last_seen_ms) });
                    if addresses {
                        member["address"] = json!(m.addr);
                    }
                    member
                })
                .collect();
            if with_database {
                body["leader"] = json!(leader);
            }
        }
        if with_database {
            body["role"] = json!(if self.leading.load(Relaxed) {
                "leader"
            } else {
                "standby"
            });
            body["takeovers"] = json!(self.takeovers.load(Relaxed));
        }
        body
    }
}

impl Cluster {
    /// Keeps a Socket.IO session for recovery on any node (cluster mode without a
    /// database), for `ttl_ms`.
    pub async fn keep_session(
        &self,
        pid: &str,
        session: &KeptSession,
        ttl_ms: u64,
    ) -> Result<(), ClusterError> {
        let text = serde_json::to_string(session).map_err(|e| ClusterError::new(e.to_string()))?;
        let mut conn = self.conn().await?;
        let _: () = redis::cmd("SET")
            .arg(self.key(&format!("sio:{pid}")))
            .arg(text)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes (once) the session kept under `pid`, if it has not expired and belongs to
    /// `tenant` and `user_id`: a pid presented by anyone else neither recovers nor
    /// removes it. Read, checked here, then deleted only if still the same value, so of
    /// two takers only one gets it.
    pub async fn take_session(
        &self,
        pid: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<KeptSession>, ClusterError> {
        let key = self.key(&format!("sio:{pid}"));
        let mut conn = self.conn().await?;
        let text: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let Ok(kept) = serde_json::from_str::<KeptSession>(&text) else {
            return Ok(None);
        };
        if kept.tenant != tenant || kept.user_id != user_id {
            return Ok(None);
        }
        let deleted: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&key)
        .arg(&text)
        .invoke_async(&mut conn)
        .await?;
        Ok((deleted == 1).then_some(kept))
    }
}

/// A change as a stream entry's JSON.
fn entry_json(change: &Change, timestamp_ms: u64) -> String {
    json!({
        "t": &*change.tenant,
        "d": change.data_type.name(),
        "p": Value::Object(change.data.clone()),
        "ts": timestamp_ms,
    })
    .to_string()
}

/// The seq of a stream id `<seq>-1`.
fn id_seq(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// One stream entry as a change with its seq.
fn entry_to_logged(id: &str, fields: &[RValue]) -> Option<Logged> {
    let seq = id_seq(id)?;
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

/// Reads the stream from the last id and delivers each change to this node's engine,
/// until shutdown; reconnects with backoff and catches up after a loss. Alerts the rules
/// raise go to `raised`. With a database (`log`), an empty stream starts at the feed's
/// stored position.
async fn follow(
    cluster: Arc<Cluster>,
    inlet: Arc<Inlet>,
    raised: tokio::sync::mpsc::UnboundedSender<Alert>,
    log: Option<Arc<Db>>,
    shutdown: Shutdown,
) {
    let key = cluster.key("changes");
    let mut started = false;
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        // With a database and an empty stream (a new deployment, or Redis lost its
        // data), the leader appends after the feed's stored position: that is where
        // this node starts, so a `sinceSeq` below it reads the change log. (Read
        // before the stream: the position only grows, and the leader appends above it.)
        let stored = match (&log, started) {
            (Some(db), false) => crate::db::feed::stored_position(db)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read the feed's stored position");
                    None
                }),
            _ => None,
        };
        let round = async {
            let config =
                redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
            let mut conn = cluster
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if !started {
                // Start at the stream's end: what came before is not news.
                let seq = end_seq(&mut conn, &key, End::Newest)
                    .await?
                    .or(stored)
                    .unwrap_or(0);
                inlet.set_floor(seq);
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
            backoff.reset();
            loop {
                if shutdown.is_triggered() {
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
                    for alert in inlet.deliver(&batch) {
                        let _ = raised.send(alert);
                    }
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
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// `XREAD` reply: `[[key, [entry, ...]]]`.
fn collect_entries(reply: &RValue, out: &mut Vec<Logged>) {
    let RValue::Array(streams) = reply else {
        return;
    };
    for stream in streams {
        if let RValue::Array(parts) = stream {
            if let Some(entries) = parts.get(1) {
                collect_range(entries, out);
            }
        }
    }
}

/// `XRANGE` reply: `[[id, [field, value, ...]], ...]`.
fn collect_range(reply: &RValue, out: &mut Vec<Logged>) {
    let RValue::Array(entries) = reply else {
        return;
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

enum End {
    Oldest,
    Newest,
}

/// The seq of the stream's oldest or newest entry, from its id (None when empty).
async fn end_seq(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    end: End,
) -> Result<Option<u64>, redis::RedisError> {
    let (command, from, to) = match end {
        End::Oldest => ("XRANGE", "-", "+"),
        End::Newest => ("XREVRANGE", "+", "-"),
    };
    let reply: RValue = redis::cmd(command)
        .arg(key)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let RValue::Array(entries) = reply else {
        return Ok(None);
    };
    let seq = match entries.first() {
        Some(RValue::Array(pair)) => match pair.first() {
            Some(RValue::BulkString(id)) => std::str::from_utf8(id).ok().and_then(id_seq),
            _ => None,
        },
        _ => None,
    };
    Ok(seq)
}

/// Announces this node every two seconds until shutdown.
async fn heartbeat(cluster: Arc<Cluster>, node_id: String, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let beat = async {
            let mut conn = cluster.conn().await?;
            let now = time::now_ms();
            let _: () = redis::cmd("ZADD")
                .arg(cluster.key("nodes"))
                .arg(now)
                .arg(&node_id)
                .query_async(&mut conn)
                .await?;
            if let Some(addr) = cluster.addr.get() {
                let _: () = redis::cmd("SET")
                    .arg(cluster.key(&format!("node:{node_id}")))
                    .arg(addr)
                    .arg("PX")
                    .arg(MEMBER_TTL_MS * 2)
                    .query_async(&mut conn)
                    .await?;
            }
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
async fn announce_alerts(
    cluster: Arc<Cluster>,
    node_id: String,
    mut raised: tokio::sync::mpsc::UnboundedReceiver<Alert>,
    shutdown: Shutdown,
) {
    loop {
        let alert = tokio::select! {
            next = raised.recv() => match next {
                Some(alert) => alert,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let claim = async {
            let mut conn = cluster.conn().await?;
            let claimed: Option<String> = redis::cmd("SET")
                .arg(cluster.key(&format!("alert:{}:{}", alert.tenant, alert.id)))
                .arg(&node_id)
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
async fn replay(
    cluster: &Cluster,
    engine: &crate::fanout::Engine,
    tenant: &str,
    ns: Namespace,
    since: u64,
    through: u64,
    max: usize,
) -> Result<LogReplay, ClusterError> {
    let mut conn = cluster.conn().await?;
    let key = cluster.key("changes");
    let oldest = end_seq(&mut conn, &key, End::Oldest).await?;
    let trimmed = oldest.is_some_and(|seq| seq > since + 1);
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
        collect_range(&reply, &mut batch);
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
    Ok(LogReplay {
        records,
        through,
        gap,
    })
}

/// With a database: stands by until this node takes the lease, then tails the database
/// into the stream (feed, table-poll, retention) for as long as it holds it; steps down
/// when it loses it, and gives it up at shutdown so a standby takes over at once.
async fn lead(
    db: Arc<Db>,
    cluster: Arc<Cluster>,
    node_id: String,
    ttl_ms: u64,
    shutdown: Shutdown,
) {
    let token = format!("{node_id}/{:016x}", fastrand::u64(..));
    loop {
        if !stand_by(&db, &cluster, &token, ttl_ms, &shutdown).await {
            return;
        }
        cluster.leading.store(true, Relaxed);
        cluster.takeovers.fetch_add(1, Relaxed);
        tracing::info!(node = %node_id, "took the leader lease: tailing the database");
        let sink = crate::db::feed::Sink::Stream {
            cluster: cluster.clone(),
            token: token.clone(),
        };
        tokio::select! {
            _ = super::pg::tail(db.clone(), sink, shutdown.clone()) => {}
            _ = keep_lease(&cluster, &token, ttl_ms) => {
                tracing::warn!(node = %node_id, "lost the leader lease: standing by");
            }
        }
        cluster.leading.store(false, Relaxed);
        db.stats.feed_connected.store(false, Relaxed);
        if shutdown.is_triggered() {
            let release = tokio::time::timeout(Duration::from_secs(1), cluster.release(&token));
            if let Ok(Err(e)) = release.await {
                tracing::debug!(error = %e, "could not give up the leader lease");
            }
            return;
        }
    }
}

/// Tries for the lease every fifth of its length until it is ours (true) or the server
/// shuts down (false). Meanwhile checks that the database answers, for `/health`.
async fn stand_by(
    db: &Db,
    cluster: &Cluster,
    token: &str,
    ttl_ms: u64,
    shutdown: &Shutdown,
) -> bool {
    let mut tick = tokio::time::interval(Duration::from_millis((ttl_ms / 5).max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return false,
        }
        match cluster.acquire(token, ttl_ms).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "could not try for the leader lease"),
        }
        if let Ok(client) = db.client().await {
            let _ = client.simple_query("SELECT 1").await;
        }
    }
}

/// Renews the lease every third of its length; returns when it is lost: taken by
/// another node, or not renewed for two thirds of its length (it may expire before
/// the next attempt).
async fn keep_lease(cluster: &Cluster, token: &str, ttl_ms: u64) {
    let every = Duration::from_millis((ttl_ms / 3).max(30));
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let attempt = tokio::time::timeout(every, cluster.renew(token, ttl_ms)).await;
        match attempt {
            Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
            Ok(Ok(false)) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the leader lease"),
            Err(_) => tracing::warn!("renewing the leader lease timed out"),
        }
        if renewed.elapsed() >= Duration::from_millis(ttl_ms * 2 / 3) {
            return;
        }
    }
}

fn unreachable(e: ClusterError) -> BusError {
    BusError {
        service: "Redis",
        unanswered: e.unanswered,
        detail: e.to_string(),
    }
}

impl Membership for Cluster {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, BusError>> {
        Box::pin(async move { Cluster::members(self).await.map_err(unreachable) })
    }

    fn secret(&self) -> BoxFuture<'_, Result<String, BusError>> {
        Box::pin(async move { Cluster::secret(self).await.map_err(unreachable) })
    }
}

/// The parts both Redis buses run: following the stream into this node's engine and
/// the membership heartbeat.
fn follow_stream(
    cluster: &Arc<Cluster>,
    inlet: &Arc<Inlet>,
    raised: &tokio::sync::mpsc::UnboundedSender<Alert>,
    log: Option<Arc<Db>>,
    start: &Start,
) {
    let _ = cluster.addr.set(start.advertised_addr.clone());
    start.shutdown.spawn(follow(
        cluster.clone(),
        inlet.clone(),
        raised.clone(),
        log,
        start.shutdown.clone(),
    ));
    start.shutdown.spawn(heartbeat(
        cluster.clone(),
        start.node_id.clone(),
        start.shutdown.clone(),
    ));
}

type Raised = (
    tokio::sync::mpsc::UnboundedSender<Alert>,
    parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Alert>>>,
);

fn raised_channel() -> Raised {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, parking_lot::Mutex::new(Some(rx)))
}

/// Redis without a database: the stream is the bus and the log. A change gets its seq
/// from the stream's counter when it is appended; alerts are raised by every node from
/// the same change and announced by the node that claims them first.
pub struct RedisBus {
    cluster: Arc<Cluster>,
    inlet: Arc<Inlet>,
    raised: Raised,
    /// `REPLAY_MAX_DB_CHANGES`: the most changes one replay reads from the stream.
    replay_max: usize,
}

impl RedisBus {
    pub fn new(cluster: Arc<Cluster>, inlet: Inlet, replay_max: usize) -> RedisBus {
        RedisBus {
            cluster,
            inlet: Arc::new(inlet),
            raised: raised_channel(),
            replay_max: replay_max.max(1),
        }
    }
}

impl Bus for RedisBus {
    fn publish(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        Box::pin(async move { self.cluster.publish(&changes).await.map_err(unreachable) })
    }

    fn announce(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            let _ = self.raised.0.send(alert);
        }
    }

    fn start(self: Arc<Self>, start: Start) {
        if let Some(raised) = self.raised.1.lock().take() {
            start.shutdown.spawn(announce_alerts(
                self.cluster.clone(),
                start.node_id.clone(),
                raised,
                start.shutdown.clone(),
            ));
        }
        follow_stream(&self.cluster, &self.inlet, &self.raised.0, None, &start);
    }

    fn log(&self) -> Option<&dyn Log> {
        Some(self)
    }

    fn sessions(&self) -> Option<&dyn Sessions> {
        Some(&*self.cluster)
    }

    fn membership(&self) -> Option<&dyn Membership> {
        Some(&*self.cluster)
    }

    fn health(&self, staff: bool) -> BoxFuture<'_, (Value, Value)> {
        Box::pin(async move {
            let redis = self.cluster.health(false, staff).await;
            (json!({ "status": "disabled" }), redis)
        })
    }
}

impl Log for RedisBus {
    fn replay<'a>(
        &'a self,
        engine: &'a crate::fanout::Engine,
        tenant: &'a str,
        ns: Namespace,
        since: u64,
        through: u64,
    ) -> BoxFuture<'a, Result<LogReplay, BusError>> {
        Box::pin(async move {
            replay(
                &self.cluster,
                engine,
                tenant,
                ns,
                since,
                through,
                self.replay_max,
            )
            .await
            .map_err(unreachable)
        })
    }
}

impl Sessions for Cluster {
    fn keep<'a>(
        &'a self,
        pid: &'a str,
        kept: &'a KeptSession,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let ttl_ms = expires_ms.saturating_sub(time::now_ms());
            self.keep_session(pid, kept, ttl_ms)
                .await
                .map_err(unreachable)
        })
    }

    fn take<'a>(
        &'a self,
        pid: &'a str,
        tenant: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<KeptSession>, BusError>> {
        Box::pin(async move {
            self.take_session(pid, tenant, user_id)
                .await
                .map_err(unreachable)
        })
    }
}

/// Redis with a database: the change log gives seqs; one node at a time (the leader)
/// tails it into the stream, and every node delivers from the stream ([`lead`]).
/// Replays and recovery sessions use the database, which keeps more than the stream.
pub struct LeaderFedBus {
    log: super::pg::ChangeLog,
    cluster: Arc<Cluster>,
    inlet: Arc<Inlet>,
    raised: Raised,
    /// `LEADER_LEASE_MS`.
    lease_ms: u64,
}

impl LeaderFedBus {
    pub fn new(db: Arc<Db>, cluster: Arc<Cluster>, inlet: Inlet, lease_ms: u64) -> LeaderFedBus {
        LeaderFedBus {
            log: super::pg::ChangeLog { db },
            cluster,
            inlet: Arc::new(inlet),
            raised: raised_channel(),
            lease_ms,
        }
    }
}

impl Bus for LeaderFedBus {
    fn publish(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        self.log.publish(changes)
    }

    fn announce(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            let _ = self.raised.0.send(alert);
        }
    }

    fn start(self: Arc<Self>, start: Start) {
        super::pg::store_alerts(&self.log.db, &self.raised.1, &start.shutdown);
        start.shutdown.spawn(lead(
            self.log.db.clone(),
            self.cluster.clone(),
            start.node_id.clone(),
            self.lease_ms,
            start.shutdown.clone(),
        ));
        follow_stream(
            &self.cluster,
            &self.inlet,
            &self.raised.0,
            Some(self.log.db.clone()),
            &start,
        );
    }

    fn log(&self) -> Option<&dyn Log> {
        Some(&self.log)
    }

    fn sessions(&self) -> Option<&dyn Sessions> {
        Some(&self.log)
    }

    fn membership(&self) -> Option<&dyn Membership> {
        Some(&*self.cluster)
    }

    fn health(&self, staff: bool) -> BoxFuture<'_, (Value, Value)> {
        Box::pin(async move {
            let niledb = self.log.db.health(self.cluster.leading.load(Relaxed));
            let redis = self.cluster.health(true, staff).await;
            (niledb, redis)
        })
    }

    fn metrics(&self) -> Option<Value> {
        Some(self.log.db.metrics())
    }

    fn prometheus(&self, text: &mut String) {
        self.log.db.prometheus(text)
    }
}
