//! The bus: the one way a change gets its seq and reaches every node's engine.
//!
//! Every source (the publish API, the simulator, alerts and their acknowledgement, the
//! database feed and table-poll) publishes through a [`Bus`]; the bus delivers each
//! change, in seq order, to the engine of every node through the engine's `Inlet`, which
//! only the bus holds. `app::start` picks the implementation from the configuration, and
//! nothing else in the server asks which one it is:
//!
//! | configuration            | bus                      | seq from                 | replay beyond the ring | recovery sessions |
//! |--------------------------|--------------------------|--------------------------|------------------------|-------------------|
//! | neither                  | [`local::LocalBus`]      | this process             | none                   | this node         |
//! | `DATABASE_URL`           | [`pg::PgLogBus`]         | the change log           | the change log         | the database      |
//! | `REDIS_URL`              | [`redis::RedisBus`]      | the stream (`INCR`)      | the stream             | Redis             |
//! | both                     | [`redis::LeaderFedBus`]  | the change log, through the stream | the change log | the database     |
//!
//! Alerts the engine's rules raise on delivery come back to the bus ([`Bus::announce`]),
//! which publishes their notification once for the whole cluster (in process; stored
//! in the alerts table, which logs it; or claimed in Redis first).

pub mod local;
pub mod pg;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::alerts::Alert;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::{Change, DataType, Namespace};
use crate::fanout::{Engine, LogReplay, Subscribed};
use crate::namespace::filter::Filter;
use crate::session::{superseded, Grant, Session};
use crate::shutdown::Shutdown;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bus operation that failed: the backing service is unreachable.
#[derive(Debug, thiserror::Error)]
#[error("{service} is unreachable: {detail}")]
pub struct BusError {
    pub service: &'static str,
    /// The request reached the service and its answer did not come in time: it may
    /// have been carried out (a publish may have gone out).
    pub unanswered: bool,
    pub detail: String,
}

impl BusError {
    /// The refusal a client gets for it.
    pub fn refusal(&self) -> Refusal {
        let message = if self.unanswered {
            format!(
                "{} did not answer in time; it may have been done (a publish may have gone out: look for it in GET /changes before publishing again)",
                self.service
            )
        } else {
            format!(
                "{} is unreachable; nothing was done, try again",
                self.service
            )
        };
        Refusal::new(ErrorCode::Unavailable, message)
    }
}

/// A Socket.IO session kept for recovery (see `ws::socketio`), as a shared bus keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KeptSession {
    pub tenant: String,
    pub user_id: String,
    pub namespace: String,
    pub filters: Value,
    pub since_seq: u64,
}

/// A live node of the cluster.
pub struct Member {
    pub node: String,
    pub last_seen_ms: u64,
    /// Where its HTTP API is reached (`NODE_ADDR`).
    pub addr: Option<String>,
}

/// The nodes of a cluster, for `/clients?scope=cluster`.
pub trait Membership: Send + Sync {
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, BusError>>;
    /// The secret nodes authenticate their requests to each other with.
    fn secret(&self) -> BoxFuture<'_, Result<String, BusError>>;
}

/// What a bus needs to start following.
pub struct Start {
    pub shutdown: Shutdown,
    /// This node's name (`NODE_ID`).
    pub node_id: String,
    /// Where the other nodes reach this node's HTTP API.
    pub advertised_addr: String,
}

pub trait Bus: Send + Sync {
    /// Gives changes their seqs and delivers them to every node's engine, this node's
    /// too. Returns the seqs, in the changes' order.
    fn publish(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<u64>, BusError>>;

    /// Announces alerts the engine's rules raised: publishes each one's notification,
    /// once in the cluster. Never blocks.
    fn announce(&self, alerts: Vec<Alert>);

    /// Starts the tasks that deliver the bus's changes to this node's engine.
    fn start(self: Arc<Self>, start: Start);

    /// The changes below the ring, when the bus keeps them (a change log or a stream).
    fn log(&self) -> Option<&dyn Log> {
        None
    }

    /// Where Socket.IO sessions are kept so that any node can recover them.
    fn sessions(&self) -> Option<&dyn Sessions> {
        None
    }

    /// The cluster's members, when the bus joins nodes.
    fn membership(&self) -> Option<&dyn Membership> {
        None
    }

    /// The `niledb` and `redis` parts of `/health`; member addresses only for `staff`.
    fn health(&self, _staff: bool) -> BoxFuture<'_, (Value, Value)> {
        let disabled = || serde_json::json!({ "status": "disabled" });
        Box::pin(async move { (disabled(), disabled()) })
    }

    /// The bus's part of `/metrics` (`niledb`), if any.
    fn metrics(&self) -> Option<Value> {
        None
    }

    /// The bus's part of `/metrics/prometheus`.
    fn prometheus(&self, _text: &mut String) {}
}

/// What a bus keeps of past changes, for a `sinceSeq` replay below the ring.
pub trait Log: Send + Sync {
    /// Matching changes of `tenant` on `ns` in `(since, through]`, oldest first.
    fn replay<'a>(
        &'a self,
        engine: &'a Engine,
        tenant: &'a str,
        ns: Namespace,
        since: u64,
        through: u64,
    ) -> BoxFuture<'a, Result<LogReplay, BusError>>;
}

/// Where Socket.IO sessions are kept for recovery on any node (`ws::socketio`).
pub trait Sessions: Send + Sync {
    /// Keeps a session until `expires_ms`.
    fn keep<'a>(
        &'a self,
        pid: &'a str,
        kept: &'a KeptSession,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Takes (once) the session kept under `pid` if it belongs to `tenant` and `user_id`.
    fn take<'a>(
        &'a self,
        pid: &'a str,
        tenant: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<KeptSession>, BusError>>;
}

/// The notifications announcing `alerts`.
pub fn notifications(alerts: &[Alert]) -> Vec<Change> {
    alerts
        .iter()
        .map(|alert| Change {
            data_type: DataType::Notification,
            tenant: Arc::from(alert.tenant.as_str()),
            data: alert.notification_data(),
        })
        .collect()
}

/// Whether a `sinceSeq` replay from `since` must read the bus's log: it reaches below
/// the ring and the bus keeps one.
pub fn replays_from_log(bus: &dyn Bus, engine: &Engine, since: u64) -> bool {
    bus.log().is_some() && since < engine.ring_floor()
}

/// Subscribes with a replay that starts in the bus's log: reads the log up to the
/// ring's floor, and when the ring has moved on meanwhile, reads the rest and tries
/// again. Reads and subscribes as `grant`'s principal, and does neither once the grant
/// is no longer current.
pub async fn subscribe_from_log(
    bus: &dyn Bus,
    engine: &Engine,
    session: &Arc<Session>,
    grant: &Grant,
    mut filter: Filter,
    since: u64,
    reply: impl Fn(Subscribed) -> Option<Bytes>,
) -> Result<(), Refusal> {
    let Some(bus_log) = bus.log() else {
        return Err(Refusal::new(
            ErrorCode::Internal,
            "this deployment keeps no log to replay from",
        ));
    };
    let tenant = grant.principal.tenant.clone();
    let ns = filter.namespace();
    let mut log: Option<LogReplay> = None;
    for _ in 0..8 {
        if !session.is_current(grant) {
            return Err(superseded());
        }
        let from = log.as_ref().map_or(since, |l| l.through);
        let through = engine.ring_floor();
        let more = bus_log
            .replay(engine, &tenant, ns, from, through)
            .await
            .map_err(|e| e.refusal())?;
        let merged = match log.take() {
            None => more,
            Some(mut l) => {
                l.records.extend(more.records);
                l.through = more.through;
                l.gap |= more.gap;
                l
            }
        };
        match engine.subscribe_with_history(session, grant, filter, since, merged, &reply) {
            Ok(outcome) => return outcome.map(|_| ()),
            Err((l, f)) => (log, filter) = (Some(l), f),
        }
    }
    Err(Refusal::new(
        ErrorCode::Unavailable,
        "changes arrive faster than the replay can read them; retry",
    ))
}
