//! The change feed: change-log rows in, the engine's publish path out, with seq =
//! change-log seq.
//!
//! In `notify` mode a dedicated connection `LISTEN`s on `nilecast_changes`; every
//! notification (and a safety-net tick) wakes the reader. In `poll` and `table-poll`
//! modes the tick alone does. The reader reads rows after the last seq it published, in
//! batches, and publishes them in seq order. Its position lives in memory and, after
//! every read, in `nilecast_feed_state`; a lost connection is re-opened with backoff and
//! the reader simply continues from its position, so a change is neither skipped nor
//! published twice.
//!
//! # The horizon
//!
//! Seqs are taken before commit, so seq 11 can be visible while seq 10's transaction is
//! still running. The reader never reads past such a hole until it is settled: when it
//! meets one, it takes a snapshot (`pg_current_snapshot()`) and waits until every
//! transaction that snapshot saw in progress has ended (`pg_xact_status`). A transaction
//! holding the missing seq is among them: it got its transaction id before its seq (the
//! trigger writes the user's row first; in direct INSERTs the `xid` column's default
//! comes before `seq`'s) and its seq before seq 11 became visible. Once they have all
//! ended, a new read sees every missing row that committed; what is still missing was
//! rolled back and is skipped.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::{Db, DbError, Detection, FeedStart};
use crate::app::App;
use crate::fanout::change::{Change, DataType};
use crate::fanout::Logged;
use crate::time;

/// The notification channel the trigger and the publish API notify.
pub const CHANNEL: &str = "nilecast_changes";
/// The `application_name` of the listener's connection (operators and tests find its
/// backend by it).
pub const LISTENER_NAME: &str = "nilecast-listener";
/// In notify mode, how often the reader reads anyway (a lost notification, a rolled
/// back hole) when nothing is pending.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// Where the reader is.
pub struct Reader {
    name: String,
    batch: i64,
    last: u64,
    /// Holes below this seq are settled: what is missing there is gone for good.
    settled_through: u64,
    hole: Option<Hole>,
}

/// A hole before seq `before`, waiting for the transactions in progress when it was
/// seen.
struct Hole {
    before: u64,
    in_progress: Vec<String>,
}

/// Outcome of one read.
#[derive(Debug, PartialEq, Eq)]
pub enum Caught {
    /// Everything visible was published.
    Up,
    /// Waiting for a hole to settle.
    Waiting,
}

impl Reader {
    /// Finds the start position (FEED_START) and makes it the engine's floor.
    pub async fn start(app: &App, db: &Db) -> Result<Reader, DbError> {
        let client = db.client().await?;
        let name = db.config.feed_name.clone();
        let stored: Option<i64> = match db.config.feed_start {
            FeedStart::Stored => client
                .query_opt("SELECT seq FROM nilecast_feed_state WHERE name = $1", &[&name])
                .await?
                .map(|r| r.get(0)),
            FeedStart::Now => None,
        };
        let last = match stored {
            Some(seq) => seq.max(0) as u64,
            None => {
                let head: i64 = client
                    .query_one("SELECT coalesce(max(seq), 0) FROM nilecast_changes", &[])
                    .await?
                    .get(0);
                head.max(0) as u64
            }
        };
        drop(client);
        app.engine.set_floor(last);
        db.stats.feed_seq.store(last, Relaxed);
        let reader = Reader {
            name,
            batch: db.config.feed_batch,
            last,
            settled_through: last,
            hole: None,
        };
        reader.store_position(db).await?;
        tracing::info!(
            seq = last,
            from = if stored.is_some() { "stored position" } else { "the log's head" },
            "change feed starts"
        );
        Ok(reader)
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    async fn store_position(&self, db: &Db) -> Result<(), DbError> {
        let client = db.client().await?;
        client
            .execute(
                "INSERT INTO nilecast_feed_state (name, seq) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, at = now()",
                &[&self.name, &(self.last as i64)],
            )
            .await?;
        Ok(())
    }

    /// Reads and publishes everything visible after the last seq, up to the first
    /// unsettled hole.
    pub async fn catch_up(&mut self, app: &App, db: &Db) -> Result<Caught, DbError> {
        let start = self.last;
        let outcome = self.read_all(app, db).await;
        if self.last != start {
            self.store_position(db).await?;
        }
        outcome
    }

    async fn read_all(&mut self, app: &App, db: &Db) -> Result<Caught, DbError> {
        loop {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT seq, tenant_id, data_type, payload,
                            (extract(epoch FROM committed_at) * 1000)::int8
                     FROM nilecast_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&(self.last as i64), &self.batch],
                )
                .await?;
            let Some(last_row) = rows.last() else {
                self.hole = None;
                return Ok(Caught::Up);
            };
            let head = last_row.get::<_, i64>(0) as u64;
            db.stats.log_head.fetch_max(head, Relaxed);
            let mut batch = Vec::with_capacity(rows.len());
            let mut next = self.last;
            let mut blocked = None;
            for row in &rows {
                let seq = row.get::<_, i64>(0) as u64;
                if seq != next + 1 && seq > self.settled_through {
                    blocked = Some(seq);
                    break;
                }
                next = seq;
                if let Some(logged) = to_logged(seq, row) {
                    batch.push(logged);
                } else {
                    tracing::warn!(seq, "change-log row with an unknown data type or a payload that is not an object; skipped");
                    app.metrics.error(crate::error::ErrorCode::InvalidMessage);
                }
            }
            self.publish(app, db, &batch, next);
            if let Some(before) = blocked {
                if !self.hole_settled(&client, before).await? {
                    return Ok(Caught::Waiting);
                }
                // Everything that could fill the hole has ended: read again; what is
                // still missing below `before` was rolled back.
                self.settled_through = before;
                self.hole = None;
                continue;
            }
            if (rows.len() as i64) < self.batch {
                return Ok(Caught::Up);
            }
        }
    }

    fn publish(&mut self, app: &App, db: &Db, batch: &[Logged], through: u64) {
        if through <= self.last {
            return;
        }
        let published = app.engine.publish_logged(batch);
        self.last = through;
        let stats = &db.stats;
        stats.feed_published.fetch_add(published as u64, Relaxed);
        stats.feed_seq.store(through, Relaxed);
        if let Some(newest) = batch.last() {
            stats
                .feed_last_change_ms
                .store(newest.timestamp_ms, Relaxed);
            stats.feed_lag_ms.store(
                time::now_ms().saturating_sub(newest.timestamp_ms),
                Relaxed,
            );
        }
    }

    /// Whether the hole before `before` is settled: every transaction in progress when
    /// it was first seen has ended.
    async fn hole_settled(
        &mut self,
        client: &tokio_postgres::Client,
        before: u64,
    ) -> Result<bool, DbError> {
        if self.hole.as_ref().is_none_or(|h| h.before != before) {
            let snapshot: String = client
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await?
                .get(0);
            self.hole = Some(Hole {
                before,
                in_progress: in_progress_of(&snapshot),
            });
        }
        let Some(hole) = &self.hole else {
            return Ok(true);
        };
        if hole.in_progress.is_empty() {
            return Ok(true);
        }
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM unnest($1::text[]) AS x
                 WHERE pg_xact_status(x::xid8) = 'in progress'",
                &[&hole.in_progress],
            )
            .await?
            .get(0);
        Ok(running == 0)
    }
}

/// The transaction ids in progress in a `pg_current_snapshot()` text
/// (`xmin:xmax:xip,xip,...`).
pub fn in_progress_of(snapshot: &str) -> Vec<String> {
    snapshot
        .splitn(3, ':')
        .nth(2)
        .unwrap_or("")
        .split(',')
        .filter(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        .map(String::from)
        .collect()
}

/// A change-log row (seq, tenant_id, data_type, payload, committed ms) as a change.
pub fn to_logged(seq: u64, row: &tokio_postgres::Row) -> Option<Logged> {
    let data_type = DataType::parse(row.try_get::<_, &str>(2).ok()?)?;
    let Value::Object(data) = row.try_get::<_, Value>(3).ok()? else {
        return None;
    };
    let tenant: &str = row.try_get(1).ok()?;
    let committed: i64 = row.try_get(4).ok()?;
    Some(Logged {
        seq,
        change: Change {
            data_type,
            tenant: Arc::from(tenant),
            data,
        },
        timestamp_ms: committed.max(0) as u64,
    })
}

/// Exponential backoff with jitter, 100 ms to 5 s.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 100u64 << self.0.min(6);
        self.0 += 1;
        Duration::from_millis(base.min(5000) + fastrand::u64(..base.min(5000) / 2 + 1))
    }
}

/// Runs the feed until shutdown: connects, catches up, follows; on any database error
/// reconnects with backoff and continues from the last seq.
pub async fn run(app: Arc<App>, db: Arc<Db>) {
    let mut backoff = Backoff(0);
    let mut reader: Option<Reader> = None;
    loop {
        let outcome = follow(&app, &db, &mut reader, &mut backoff).await;
        db.stats.feed_connected.store(false, Relaxed);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                db.stats.feed_reconnects.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "change feed lost the database; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

async fn follow(
    app: &Arc<App>,
    db: &Arc<Db>,
    reader: &mut Option<Reader>,
    backoff: &mut Backoff,
) -> Result<(), DbError> {
    let wake = Arc::new(Notify::new());
    let lost = Arc::new(AtomicBool::new(false));
    let mode = db.config.detection;
    // LISTEN before the first read of this connection: a change committed in between
    // is then either read or notified.
    let listener = if mode == Detection::Notify {
        Some(listen(db, &wake, &lost).await?)
    } else {
        None
    };
    if reader.is_none() {
        *reader = Some(Reader::start(app, db).await?);
    }
    let Some(reader) = reader.as_mut() else {
        return Ok(());
    };
    db.stats.feed_connected.store(true, Relaxed);
    *backoff = Backoff(0);
    let poll = Duration::from_millis(db.config.poll_interval_ms);
    loop {
        let caught = reader.catch_up(app, db).await?;
        if lost.load(Relaxed) {
            return Err(DbError::Unavailable("the listener's connection closed".into()));
        }
        let wait = match (mode, caught) {
            (Detection::Notify, Caught::Up) => SAFETY_TICK,
            _ => poll,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.cancelled() => {
                drop(listener);
                return Ok(());
            }
        }
    }
}

/// Opens the listener's connection and `LISTEN`s. The connection is driven by a task
/// that wakes the reader on every notification and marks the connection lost when it
/// ends. Dropping the returned client closes it.
async fn listen(
    db: &Db,
    wake: &Arc<Notify>,
    lost: &Arc<AtomicBool>,
) -> Result<tokio_postgres::Client, DbError> {
    let (client, mut connection) = db.connect_dedicated_named(LISTENER_NAME).await?;
    let (wake, lost) = (wake.clone(), lost.clone());
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the listener's connection failed");
                    break;
                }
                None => break,
            }
        }
        lost.store(true, Relaxed);
        wake.notify_one();
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(DbError::from)?;
    Ok(client)
}

/// Deletes change-log rows older than the retention, in slices, every minute; never a
/// row the feed has not published yet. Records how far it pruned (`_pruned`), so a
/// replay from before that is told it has a gap.
pub async fn retention(app: Arc<App>, db: Arc<Db>) {
    let hours = db.config.retention_hours;
    if hours == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        if let Err(e) = prune(&db, hours).await {
            tracing::warn!(error = %e, "change-log retention failed; will retry");
        }
    }
}

/// One retention pass. Returns the rows deleted.
pub async fn prune(db: &Db, hours: u64) -> Result<u64, DbError> {
    let published = db.stats.feed_seq.load(Relaxed) as i64;
    let mut total = 0;
    loop {
        let client = db.client().await?;
        let row = client
            .query_one(
                "WITH gone AS (
                     DELETE FROM nilecast_changes WHERE seq IN (
                         SELECT seq FROM nilecast_changes
                         WHERE committed_at < now() - make_interval(hours => $1) AND seq <= $2
                         ORDER BY seq LIMIT 10000)
                     RETURNING seq)
                 SELECT count(*), coalesce(max(seq), 0) FROM gone",
                &[&(hours as i32), &published],
            )
            .await?;
        let (n, max): (i64, i64) = (row.get(0), row.get(1));
        if n == 0 {
            return Ok(total);
        }
        client
            .execute(
                "INSERT INTO nilecast_feed_state (name, seq) VALUES ('_pruned', $1)
                 ON CONFLICT (name) DO UPDATE
                 SET seq = greatest(nilecast_feed_state.seq, EXCLUDED.seq), at = now()",
                &[&max],
            )
            .await?;
        total += n as u64;
        db.stats.pruned.fetch_add(n as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_in_progress_ids() {
        assert_eq!(in_progress_of("10:20:12,15"), vec!["12", "15"]);
        assert!(in_progress_of("10:10:").is_empty());
        assert!(in_progress_of("garbage").is_empty());
    }

    #[test]
    fn backoff_grows_to_five_seconds() {
        let mut b = Backoff(0);
        let first = b.next();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(151));
        for _ in 0..10 {
            b.next();
        }
        let late = b.next();
        assert!(late >= Duration::from_millis(5000) && late <= Duration::from_millis(7501));
    }
}
