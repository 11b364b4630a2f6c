//! [`PgLogBus`]: the PostgreSQL / Nile DB change log is the bus. A change gets its seq
//! when it is logged (by the publish API, a trigger, table-poll, or an alert stored
//! with its notification); the feed (`db::feed`) reads the log in seq order and
//! delivers it to this node's engine. Every node tails the same log, so every node
//! delivers the same changes with the same seqs.

use std::sync::Arc;

use serde_json::Value;

use super::{BoxFuture, Bus, BusError, KeptSession, Log, Sessions, Start};
use crate::alerts::Alert;
use crate::db::feed::{self, Sink};
use crate::db::{self, Db, DbError, Detection};
use crate::fanout::change::{Change, Namespace};
use crate::fanout::{Engine, Inlet, LogReplay};
use crate::shutdown::Shutdown;

pub struct PgLogBus {
    log: ChangeLog,
    inlet: Arc<Inlet>,
    raised: tokio::sync::mpsc::UnboundedSender<Alert>,
    /// Taken by [`Bus::start`] for the task that stores raised alerts.
    to_store: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Alert>>>,
}

impl PgLogBus {
    pub fn new(db: Arc<Db>, inlet: Inlet) -> PgLogBus {
        let (raised, to_store) = tokio::sync::mpsc::unbounded_channel();
        PgLogBus {
            log: ChangeLog { db },
            inlet: Arc::new(inlet),
            raised,
            to_store: parking_lot::Mutex::new(Some(to_store)),
        }
    }
}

fn unreachable(e: DbError) -> BusError {
    BusError {
        service: "the database",
        unanswered: false,
        detail: e.to_string(),
    }
}

/// Tails the database into `sink` until shutdown: the feed, change-log retention and,
/// in table-poll mode, the table scans that log row versions.
pub async fn tail(db: Arc<Db>, sink: Sink, shutdown: Shutdown) {
    let feed = feed::run(db.clone(), sink, shutdown.clone());
    let retention = feed::retention(db.clone(), shutdown.clone());
    if db.config.detection == Detection::TablePoll {
        let poll = db::table_poll::run(db.clone(), shutdown.clone());
        tokio::join!(feed, retention, poll);
    } else {
        tokio::join!(feed, retention);
    }
}

/// The database's parts of the buses that have one: publishing into the change log,
/// replays from it, and Socket.IO sessions kept in `nilecast_recovery`.
pub struct ChangeLog {
    pub db: Arc<Db>,
}

impl ChangeLog {
    pub(super) fn publish(
        &self,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        Box::pin(async move {
            db::store::log_changes(&self.db, &changes)
                .await
                .map_err(unreachable)
        })
    }
}

impl Log for ChangeLog {
    fn replay<'a>(
        &'a self,
        engine: &'a Engine,
        tenant: &'a str,
        ns: Namespace,
        since: u64,
        through: u64,
    ) -> BoxFuture<'a, Result<LogReplay, BusError>> {
        Box::pin(async move {
            db::queries::replay(&self.db, engine, tenant, ns, since, through)
                .await
                .map(|timed| timed.value)
                .map_err(unreachable)
        })
    }
}

impl Sessions for ChangeLog {
    fn keep<'a>(
        &'a self,
        pid: &'a str,
        kept: &'a KeptSession,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            db::store::keep_session(&self.db, pid, kept, expires_ms)
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
            db::store::take_session(&self.db, pid, tenant, user_id)
                .await
                .map_err(unreachable)
        })
    }
}

/// Starts the task that stores raised alerts (which logs their notifications once).
pub(super) fn store_alerts(
    db: &Arc<Db>,
    to_store: &parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Alert>>>,
    shutdown: &Shutdown,
) {
    if let Some(to_store) = to_store.lock().take() {
        shutdown.spawn(db::store::alert_writer(
            db.clone(),
            to_store,
            shutdown.clone(),
        ));
    }
}

impl Bus for PgLogBus {
    fn publish(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        self.log.publish(changes)
    }

    fn announce(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            let _ = self.raised.send(alert);
        }
    }

    fn start(self: Arc<Self>, start: Start) {
        let db = &self.log.db;
        store_alerts(db, &self.to_store, &start.shutdown);
        let sink = Sink::Engine {
            inlet: self.inlet.clone(),
            raised: self.raised.clone(),
        };
        start
            .shutdown
            .spawn(tail(db.clone(), sink, start.shutdown.clone()));
    }

    fn log(&self) -> Option<&dyn Log> {
        Some(&self.log)
    }

    fn sessions(&self) -> Option<&dyn Sessions> {
        Some(&self.log)
    }

    fn health(&self, _staff: bool) -> BoxFuture<'_, (Value, Value)> {
        let niledb = self.log.db.health(true);
        Box::pin(async move { (niledb, serde_json::json!({ "status": "disabled" })) })
    }

    fn metrics(&self) -> Option<Value> {
        Some(self.log.db.metrics())
    }

    fn prometheus(&self, text: &mut String) {
        self.log.db.prometheus(text)
    }
}
