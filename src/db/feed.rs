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
//! In cluster mode the feed runs on the leader only and its sink is the Redis stream
//! ([`Sink::Stream`]): the batch is appended under the log's seqs and every node
//! delivers it from there (`bus::redis`, `LeaderFedBus`).
//!
//! # The horizon
//!
//! Seqs are taken before commit, so seq 11 can be visible while seq 10's transaction is
//! still running. The reader never reads past such a hole until it is settled. Every
//! read returns its rows together with the snapshot it was made with
//! (`pg_current_snapshot()`, in the same statement). On meeting a hole, the reader notes
//! the transactions that snapshot saw in progress; a transaction holding a missing seq
//! is among them: it got its transaction id before its seq (the trigger writes the
//! user's row first; in direct INSERTs the `xid` column's default comes before `seq`'s)
//! and its seq before seq 11 became visible. A later read whose own snapshot shows all
//! of them ended contains every missing row that committed; what is still missing then
//! was rolled back and is skipped (`gapsSkipped` in the metrics).
//!
//! "Ended" is judged by the read's own snapshot, not by `pg_xact_status`: a transaction
//! is marked committed in the commit log a moment before new snapshots see it, and a
//! read in that moment would miss its rows.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use super::{Db, DbError, Detection, FeedStart};
use crate::alerts::Alert;
use crate::backoff::Backoff;
use crate::fanout::change::{Change, DataType};
use crate::fanout::Inlet;
use crate::fanout::Logged;
use crate::shutdown::Shutdown;
use crate::time;

/// The notification channel the trigger and the publish API notify.
pub const CHANNEL: &str = "nilecast_changes";
/// The `application_name` of the listener's connection (operators and tests find its
/// backend by it).
pub const LISTENER_NAME: &str = "nilecast-listener";
/// In notify mode, how often the reader reads anyway (a lost notification, a rolled
/// back hole) when nothing is pending.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// One read: the rows after `$1` (at most `$2`), the snapshot they were read with, and
/// the next transaction id at that moment (`age()` of a recent xid counts from it:
/// transactions still running may have ids at or above the snapshot's xmax, and those
/// are not in its list).
const READ_SQL: &str = "
    WITH snap AS (SELECT pg_current_snapshot() AS s),
         base AS (
             SELECT s, pg_snapshot_xmin(s)::text::numeric AS xmin64 FROM snap),
         horizon AS (
             SELECT s::text AS s,
                    (xmin64 - (xmin64 % 4294967296) + greatest(xmin64 % 4294967296, 3)
                     + age(greatest(xmin64 % 4294967296, 3)::text::xid))::text AS next
             FROM base),
         page AS (
             SELECT seq, tenant_id, data_type, payload,
                    (extract(epoch FROM committed_at) * 1000)::int8 AS ms
             FROM nilecast_changes WHERE seq > $1 ORDER BY seq LIMIT $2)
    SELECT page.seq, page.tenant_id, page.data_type, page.payload, page.ms,
           horizon.s, horizon.next
    FROM horizon LEFT JOIN page ON true ORDER BY page.seq";

/// Where the reader publishes what it reads.
#[derive(Clone)]
pub enum Sink {
    /// This node's engine; the alerts its rules raise go to `raised` (to be stored,
    /// which logs their notifications).
    Engine {
        inlet: Arc<Inlet>,
        raised: tokio::sync::mpsc::UnboundedSender<Alert>,
    },
    /// The cluster's stream, as the holder of the leader lease `token`; every node
    /// (this one too) publishes from there.
    Stream {
        cluster: Arc<crate::bus::redis::Cluster>,
        token: String,
    },
}

/// Where the reader is.
pub struct Reader {
    sink: Sink,
    name: String,
    batch: i64,
    last: u64,
    /// Holes below this seq are settled: what is missing there is gone for good.
    settled_through: u64,
    hole: Option<Hole>,
}

/// A hole before seq `before`, waiting for the transactions that were running when it
/// was seen: those the snapshot listed, and any with an id from its xmax up to the
/// next id then.
struct Hole {
    before: u64,
    in_progress: Vec<u64>,
    xmax: u64,
    next: u64,
}

impl Hole {
    fn ended_in(&self, later: &Snapshot) -> bool {
        self.in_progress.iter().all(|&x| later.ended(x))
            && self.next <= later.xmax
            && !later
                .in_progress
                .iter()
                .any(|&x| x >= self.xmax && x < self.next)
    }
}

/// Outcome of one read.
#[derive(Debug, PartialEq, Eq)]
pub enum Caught {
    /// Everything visible was published.
    Up,
    /// Waiting for a hole to settle.
    Waiting,
}

/// The feed's stored position (`FEED_NAME`), if it has one.
pub async fn stored_position(db: &Db) -> Result<Option<u64>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT seq FROM nilecast_feed_state WHERE name = $1",
            &[&db.config.feed_name],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

impl Reader {
    /// Finds the start position (FEED_START) and, publishing to the engine, makes it
    /// the engine's floor. Publishing to the stream, starts after the stream's newest
    /// entry when that is further than the stored position (a leader that died before
    /// storing its position).
    pub async fn start(db: &Db, sink: Sink) -> Result<Reader, DbError> {
        let name = db.config.feed_name.clone();
        let stored = match db.config.feed_start {
            FeedStart::Stored => stored_position(db).await?,
            FeedStart::Now => None,
        };
        let client = db.client().await?;
        let head: i64 = client
            .query_one("SELECT coalesce(max(seq), 0) FROM nilecast_changes", &[])
            .await?
            .get(0);
        let head = head.max(0) as u64;
        drop(client);
        let last = match &sink {
            Sink::Engine { inlet, .. } => {
                let last = stored.unwrap_or(head);
                inlet.set_floor(last);
                last
            }
            Sink::Stream { cluster, .. } => {
                // A leader taking over goes on from what the stream holds (with
                // FEED_START=now too: the previous leader's changes are not old news).
                // Entries beyond the log's head are not this log's (a stream left from
                // another deployment) and do not count.
                let appended = cluster.stream_head().await.map_err(redis_error)?;
                match stored {
                    _ if appended > head => stored.unwrap_or(head),
                    Some(stored) => stored.max(appended),
                    None if appended > 0 => appended,
                    None => head,
                }
            }
        };
        db.stats.feed_seq.store(last, Relaxed);
        let reader = Reader {
            sink,
            name,
            batch: db.config.feed_batch,
            last,
            settled_through: last,
            hole: None,
        };
        reader.store_position(db).await?;
        tracing::info!(
            seq = last,
            from = if stored.is_some() {
                "stored position"
            } else {
                "the log's head"
            },
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
    pub async fn catch_up(&mut self, db: &Db) -> Result<Caught, DbError> {
        let start = self.last;
        let outcome = self.read_all(db).await;
        if self.last != start {
            self.store_position(db).await?;
        }
        outcome
    }

    async fn read_all(&mut self, db: &Db) -> Result<Caught, DbError> {
        loop {
            let client = db.client().await?;
            // The rows and the snapshot they were read with, from one statement: the
            // horizon is decided on exactly what this read could see.
            let rows = client
                .query(READ_SQL, &[&(self.last as i64), &self.batch])
                .await?;
            drop(client);
            let snapshot = rows.first().and_then(|row| {
                Snapshot::parse(
                    row.try_get::<_, &str>(5).unwrap_or(""),
                    row.try_get::<_, &str>(6).unwrap_or(""),
                )
            });
            let rows: Vec<&tokio_postgres::Row> = rows
                .iter()
                .filter(|r| r.try_get::<_, Option<i64>>(0).ok().flatten().is_some())
                .collect();
            let (Some(last_row), Some(snapshot)) = (rows.last(), snapshot) else {
                self.hole = None;
                return Ok(Caught::Up);
            };
            let head = last_row.get::<_, i64>(0) as u64;
            db.stats.log_head.fetch_max(head, Relaxed);
            let mut batch = Vec::with_capacity(rows.len());
            let mut next = self.last;
            let mut blocked = false;
            for row in &rows {
                let seq = row.get::<_, i64>(0) as u64;
                if seq != next + 1 && seq > self.settled_through && !self.settle(seq, &snapshot) {
                    blocked = true;
                    break;
                }
                if seq > next + 1 {
                    db.stats.gaps_skipped.fetch_add(seq - next - 1, Relaxed);
                }
                next = seq;
                if let Some(logged) = to_logged(seq, row) {
                    batch.push(logged);
                } else {
                    tracing::warn!(seq, "change-log row with an unknown data type or a payload that is not an object; skipped");
                }
            }
            self.publish(db, &batch, next).await?;
            if blocked {
                return Ok(Caught::Waiting);
            }
            if (rows.len() as i64) < self.batch {
                return Ok(Caught::Up);
            }
        }
    }

    async fn publish(&mut self, db: &Db, batch: &[Logged], through: u64) -> Result<(), DbError> {
        if through <= self.last {
            return Ok(());
        }
        let published = match &self.sink {
            Sink::Engine { inlet, raised } => {
                for alert in inlet.deliver(batch) {
                    let _ = raised.send(alert);
                }
                batch.len()
            }
            Sink::Stream { cluster, token } => cluster
                .append_logged(token, batch)
                .await
                .map_err(redis_error)?,
        };
        self.last = through;
        let stats = &db.stats;
        stats.feed_published.fetch_add(published as u64, Relaxed);
        stats.feed_seq.store(through, Relaxed);
        if let Some(newest) = batch.last() {
            stats
                .feed_last_change_ms
                .store(newest.timestamp_ms, Relaxed);
            stats
                .feed_lag_ms
                .store(time::now_ms().saturating_sub(newest.timestamp_ms), Relaxed);
        }
        Ok(())
    }

    /// Meeting a hole before `before` in a read made with `snapshot`: whether every seq
    /// below `before` is final in that read (true: the missing ones were rolled back).
    /// When not, remembers the transactions to wait for.
    fn settle(&mut self, before: u64, snapshot: &Snapshot) -> bool {
        if let Some(hole) = &self.hole {
            if hole.before >= before && hole.ended_in(snapshot) {
                // Everything that was running when `hole.before` was first seen has
                // ended as this read sees it: every seq below it that committed is in
                // this read.
                self.settled_through = self.settled_through.max(hole.before);
                self.hole = None;
                return before <= self.settled_through;
            }
            if hole.before >= before {
                return false;
            }
        }
        // A new hole: wait for what was running at this read.
        self.hole = Some(Hole {
            before,
            in_progress: snapshot.in_progress.clone(),
            xmax: snapshot.xmax,
            next: snapshot.next,
        });
        false
    }
}

/// A `pg_current_snapshot()` (`xmin:xmax:xip,xip,...`) and the next transaction id at
/// the time: which transactions a read saw in progress. Transactions with ids from
/// `xmax` up to `next` may be running too; the snapshot does not list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
    next: u64,
}

impl Snapshot {
    pub fn parse(text: &str, next: &str) -> Option<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse())
            .collect::<Result<_, _>>()
            .ok()?;
        let next: u64 = next.parse().ok()?;
        Some(Snapshot {
            xmin,
            xmax,
            in_progress,
            next: next.max(xmax),
        })
    }

    /// Whether transaction `xid` (seen in progress by an earlier snapshot) had ended
    /// for this one: committed and visible, or aborted.
    pub fn ended(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
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

/// A stream append that failed, as a feed error: the feed retries it with backoff.
fn redis_error(e: crate::bus::redis::ClusterError) -> DbError {
    DbError::Unavailable(e.to_string())
}

/// Runs the feed until shutdown: connects, catches up, follows; on any database (or
/// stream) error reconnects with backoff and continues from the last seq.
pub async fn run(db: Arc<Db>, sink: Sink, shutdown: Shutdown) {
    let mut backoff = Backoff::new();
    let mut reader: Option<Reader> = None;
    loop {
        let outcome = follow(&db, &sink, &shutdown, &mut reader, &mut backoff).await;
        db.stats.feed_connected.store(false, Relaxed);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                db.stats.feed_reconnects.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "change feed interrupted; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn follow(
    db: &Arc<Db>,
    sink: &Sink,
    shutdown: &Shutdown,
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
        *reader = Some(Reader::start(db, sink.clone()).await?);
    }
    let Some(reader) = reader.as_mut() else {
        return Ok(());
    };
    db.stats.feed_connected.store(true, Relaxed);
    backoff.reset();
    let poll = Duration::from_millis(db.config.poll_interval_ms);
    loop {
        let caught = reader.catch_up(db).await?;
        if lost.load(Relaxed) {
            return Err(DbError::Unavailable(
                "the listener's connection closed".into(),
            ));
        }
        let wait = match (mode, caught) {
            (Detection::Notify, Caught::Up) => SAFETY_TICK,
            _ => poll,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {
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

/// Deletes change-log rows older than the retention, in slices, every
/// `CHANGE_LOG_PRUNE_INTERVAL_MS` (a minute); never a row the feed has not published yet. Records how far it pruned (`_pruned`), so a
/// replay from before that is told it has a gap.
pub async fn retention(db: Arc<Db>, shutdown: Shutdown) {
    let hours = db.config.retention_hours;
    if hours == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(db.config.prune_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
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
    fn snapshots_tell_which_transactions_ended() {
        let s = Snapshot::parse("10:20:12,15", "22").expect("parses");
        assert_eq!(s.in_progress, vec![12, 15]);
        assert!(s.ended(9), "below xmin");
        assert!(s.ended(11) && s.ended(13), "below xmax, not in progress");
        assert!(!s.ended(12) && !s.ended(15), "in progress");
        assert!(
            !s.ended(20) && !s.ended(25),
            "not yet started for this snapshot"
        );
        assert_eq!(
            Snapshot::parse("10:10:", "10").map(|s| s.in_progress.len()),
            Some(0)
        );
        assert!(Snapshot::parse("garbage", "1").is_none());
        assert!(Snapshot::parse("10:10:", "x").is_none());
    }

    fn reader() -> Reader {
        // A stream sink that is never written to: these tests only settle holes.
        let cluster = crate::bus::redis::Cluster::new("redis://127.0.0.1:1", "t", 10, None)
            .expect("a Redis address parses");
        Reader {
            sink: Sink::Stream {
                cluster,
                token: "t".into(),
            },
            name: "t".into(),
            batch: 10,
            last: 5,
            settled_through: 5,
            hole: None,
        }
    }

    fn snap(text: &str, next: u64) -> Snapshot {
        Snapshot::parse(text, &next.to_string()).expect("parses")
    }

    #[test]
    fn a_hole_waits_for_what_was_running_when_it_was_seen() {
        let mut r = reader();
        // 103 and 107 listed; 110 and 111 running too (at or above xmax, unlisted).
        let first = snap("100:110:103,107", 112);
        assert!(!r.settle(8, &first), "seq 6 or 7 may belong to any of them");
        // 103 ended, 107 still running: still waiting.
        assert!(!r.settle(8, &snap("104:112:107,111", 113)));
        // 103 and 107 ended but 111 (unlisted at first) still runs: still waiting.
        assert!(!r.settle(8, &snap("111:113:111", 113)));
        // A hole further down is covered by the same wait.
        assert!(!r.settle(7, &snap("111:113:111", 113)));
        // All ended: settled through 8, and the read that saw it may go on.
        assert!(r.settle(8, &snap("112:115:112", 115)));
        assert_eq!(r.settled_through, 8);
        assert!(r.hole.is_none());
    }

    #[test]
    fn a_hole_is_never_settled_by_the_read_that_found_it() {
        let mut r = reader();
        // Nothing listed, but 120 was assigned and may hold the missing seq.
        assert!(!r.settle(9, &snap("120:120:", 121)));
        assert!(!r.settle(9, &snap("120:121:120", 122)));
        assert!(r.settle(9, &snap("121:122:121", 122)));
        assert_eq!(r.settled_through, 9);
    }

    #[test]
    fn a_new_hole_above_a_waiting_one_starts_its_own_wait() {
        let mut r = reader();
        assert!(!r.settle(8, &snap("100:110:103", 110)));
        // The old hole filled (the reader moved past it); a new one at 20, with 109
        // running now.
        assert!(!r.settle(20, &snap("109:112:109", 112)));
        assert_eq!(r.hole.as_ref().map(|h| h.before), Some(20));
        assert!(r.settle(20, &snap("112:112:", 112)));
    }
}
