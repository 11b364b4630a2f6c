//! The engine: one path from a change to every matching subscriber's queue.
//!
//! Changes enter only through the [`Inlet`] that [`Engine::new`] hands out once, to the
//! server's bus (`nilecast::bus`): a handler holds the engine, which subscribes and
//! lists, never the inlet, so nothing but the bus can give a change its seq. Delivering a change encodes
//! it once ([`change::Record`]), runs the domain [`Rules`] on it (key completion, the
//! read model, alert rules), appends it to the retention ring and routes it through the
//! index into per-connection outboxes. All of that happens under one
//! `parking_lot::Mutex` (the publish lock), for one reason: every connection must see
//! the changes of a namespace in seq order, and a subscribe must slot its reply and its
//! replayed changes in between two publishes. The lock is never held across an await,
//! and nothing under it waits for a client: pushing to an outbox takes its queue lock for
//! one push and never awaits.
//!
//! A publishing pass (one change, or a published batch) then writes: once the publish
//! lock is released, it hands every connection it queued frames for, each once, to the
//! server's [`Writer`], which writes each one's queue to its socket with one vectored
//! write on the publishing thread, the way uWebSockets corks a publish. Only what a
//! socket does not take is left to the connection's task, woken for it. Ordering and
//! the limits do not change: the writer writes the queue's frames, in order, under the
//! queue's lock (`outbox::Outbox::write_queued`).
//!
//! Architecture Invariant: no socket, no await and no per-subscriber encoding in here.

pub mod change;
pub mod index;
pub mod outbox;
pub mod replay;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::alert::Alert;
use crate::error::{ErrorCode, Refusal};
use crate::namespace::filter::{change_keys, Filter};
use crate::session::{Grant, Session, SubEntry, SubKind};
use crate::time;
use change::{Change, DataType, Keys, Namespace, Record};
use index::{Index, Subscription};
use outbox::Delivery;
use replay::Ring;

struct State {
    next_seq: u64,
    ring: Ring,
}

/// A change that already has its seq: a change-log row read by the database feed.
pub struct Logged {
    pub seq: u64,
    pub change: Change,
    /// When it was written to the change log.
    pub timestamp_ms: u64,
}

/// Changes read from the change log for a `sinceSeq` replay that reaches below the
/// retention ring: matching changes in `(since, through]`, oldest first.
pub struct LogReplay {
    pub records: Vec<Arc<Record>>,
    pub through: u64,
    /// Some of `(since, through]` is gone from the log too (retention, or more than
    /// `REPLAY_MAX_DB_CHANGES`).
    pub gap: bool,
}

/// What a subscribe produced, for its reply.
#[derive(Debug, Clone, Copy)]
pub struct Subscribed {
    pub id: u64,
    pub replayed: usize,
    pub gap: bool,
}

/// The domain rules the engine runs on every change it delivers, under the publish
/// lock (so they see changes in seq order): the server implements them with its read
/// model and alert rules. They must not block.
pub trait Rules: Send + Sync {
    /// Fills in what filters need and a change may not carry (a product's category and
    /// threshold, an order's customer).
    fn complete_keys(&self, tenant: &str, data_type: DataType, keys: &mut Keys);
    /// Runs before the record is shared: may attach a follow-up frame to it (the
    /// low-stock event right after a stock change) and raise an alert.
    fn inspect(&self, record: &mut Record) -> Option<Alert>;
    /// Applies the change to the read model; may raise an alert (a new order).
    fn apply(
        &self,
        record: &Arc<Record>,
        data: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Alert>;
}

/// Writes what a publishing pass queued: the server implements it with the
/// connections' sockets. `touched` holds each connection the pass queued frames for
/// once; the implementation must end with each one's touched mark cleared
/// ([`outbox::Outbox::write_queued`] clears it) and with nothing queued unless the
/// connection's task has been woken for it or is waiting for its socket.
pub trait Writer: Send + Sync {
    fn write(&self, touched: &[Arc<Session>]);
}

/// A [`Writer`] that leaves all the writing to the connections' tasks (benches and
/// tests without sockets).
pub struct WakeTasks;

impl Writer for WakeTasks {
    fn write(&self, touched: &[Arc<Session>]) {
        for session in touched {
            session.outbox.clear_touched();
            session.outbox.wake();
        }
    }
}

/// The settings the engine is built with (the server fills them from its `Config`).
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// `REPLAY_MAX_CHANGES`: the retention ring's length.
    pub replay_max_changes: usize,
    /// `REPLAY_MAX_AGE_MS`: how long a change stays in the ring.
    pub replay_max_age_ms: u64,
    /// `MAX_SUBSCRIPTIONS`: per connection.
    pub max_subscriptions: usize,
}

/// The engine's counters. The server's metrics hold the same `Arc` and render them;
/// relaxed atomics, added once per change or batch, never once per subscriber.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames queued on outboxes by routing.
    pub deliveries: AtomicU64,
    /// Frames not queued because the connection already had that seq, and logged
    /// changes skipped because they were delivered already.
    pub duplicates_suppressed: AtomicU64,
    /// Frames dropped by the drop-oldest slow-consumer policy while routing.
    pub dropped_frames: AtomicU64,
    pub changes_published: AtomicU64,
    /// Alerts the rules raised (the server adds those raised elsewhere).
    pub alerts_raised: AtomicU64,
}

pub struct Engine {
    state: Mutex<State>,
    index: Index,
    rules: Arc<dyn Rules>,
    writer: Arc<dyn Writer>,
    metrics: Arc<Counters>,
    next_subscription: AtomicU64,
    /// `MAX_SUBSCRIPTIONS`, checked where a subscription is recorded.
    max_subscriptions: usize,
}

/// The one way changes enter an engine, held by the bus. Made once, by [`Engine::new`].
pub struct Inlet {
    engine: Arc<Engine>,
}

impl Inlet {
    /// Delivers changes that already have their seqs (from a change log or a stream),
    /// in order. A seq at or below the last delivered one is skipped (it was delivered
    /// already). Returns the alerts the rules raised, for the bus to announce.
    pub fn deliver(&self, batch: &[Logged]) -> Vec<Alert> {
        let mut touched = Vec::new();
        let raised = self.engine.publish_logged(batch, &mut touched);
        self.engine.writer.write(&touched);
        raised
    }

    /// Gives changes consecutive seqs and delivers them (a bus that sequences in
    /// process). Returns the seqs and the alerts raised.
    pub fn sequence(&self, changes: &[Change]) -> (Vec<u64>, Vec<Alert>) {
        let mut touched = Vec::new();
        let done = self.engine.publish_all(changes, &mut touched);
        self.engine.writer.write(&touched);
        done
    }

    /// Makes `seq` the last one delivered: where a log or stream is followed from. The
    /// retention ring starts empty above it, so older replays read the bus's log.
    pub fn set_floor(&self, seq: u64) {
        self.engine.set_floor(seq)
    }
}

/// The id clients see for subscription `id`.
pub fn subscription_name(id: u64) -> String {
    format!("sub-{id}")
}

impl Engine {
    /// The engine, and the inlet through which changes enter it (for the bus alone).
    /// `writer` writes what each publishing pass queued.
    pub fn new(
        settings: EngineSettings,
        rules: Arc<dyn Rules>,
        writer: Arc<dyn Writer>,
        metrics: Arc<Counters>,
    ) -> (Arc<Engine>, Inlet) {
        // The first seq of a node is its start time in microseconds. A restart therefore
        // never reuses a seq that clients saw before it (as long as the average rate
        // stays under a million changes a second), and a client resuming from the
        // previous run is told about the gap instead of silently missing changes.
        let first_seq = time::now_us().max(1);
        let engine = Arc::new(Engine {
            state: Mutex::new(State {
                next_seq: first_seq,
                ring: Ring::new(
                    settings.replay_max_changes,
                    settings.replay_max_age_ms,
                    first_seq,
                ),
            }),
            index: Index::new(),
            rules,
            writer,
            metrics,
            next_subscription: AtomicU64::new(1),
            max_subscriptions: settings.max_subscriptions,
        });
        let inlet = Inlet {
            engine: engine.clone(),
        };
        (engine, inlet)
    }

    fn set_floor(&self, seq: u64) {
        let mut state = self.state.lock();
        state.next_seq = seq + 1;
        state.ring.reset(seq);
    }

    /// The highest seq a replay from the ring can not serve (evicted or before start).
    pub fn ring_floor(&self) -> u64 {
        self.state.lock().ring.evicted_up_to()
    }

    /// A record for a change that already has its seq (replay from the change log).
    pub fn build_record(&self, logged: &Logged) -> Arc<Record> {
        let change = &logged.change;
        let mut keys = Keys::extract(change.data_type, &change.data);
        self.rules
            .complete_keys(&change.tenant, change.data_type, &mut keys);
        Arc::new(Record::build(logged.seq, change, keys, logged.timestamp_ms))
    }

    fn publish_logged(&self, batch: &[Logged], touched: &mut Vec<Arc<Session>>) -> Vec<Alert> {
        let mut state = self.state.lock();
        let mut raised = Vec::new();
        for logged in batch {
            if logged.seq < state.next_seq {
                self.metrics.duplicates_suppressed.fetch_add(1, Relaxed);
                continue;
            }
            state.next_seq = logged.seq;
            self.publish_locked(
                &mut state,
                &logged.change,
                Some(logged.timestamp_ms),
                &mut raised,
                touched,
            );
        }
        raised
    }

    fn publish_all(
        &self,
        changes: &[Change],
        touched: &mut Vec<Arc<Session>>,
    ) -> (Vec<u64>, Vec<Alert>) {
        let mut state = self.state.lock();
        let mut raised = Vec::new();
        let seqs = changes
            .iter()
            .map(|c| self.publish_locked(&mut state, c, None, &mut raised, touched))
            .collect();
        (seqs, raised)
    }

    /// Delivers one change with the seq `state.next_seq`. `timestamp_ms` is the log's
    /// time of a logged change (None: now).
    fn publish_locked(
        &self,
        state: &mut State,
        change: &Change,
        timestamp_ms: Option<u64>,
        raised: &mut Vec<Alert>,
        touched: &mut Vec<Arc<Session>>,
    ) -> u64 {
        let seq = state.next_seq;
        state.next_seq += 1;
        let now = time::now_ms();
        let mut keys = Keys::extract(change.data_type, &change.data);
        self.rules
            .complete_keys(&change.tenant, change.data_type, &mut keys);
        let mut record = Record::build(seq, change, keys, timestamp_ms.unwrap_or(now));
        let inspected = self.rules.inspect(&mut record);
        let record = Arc::new(record);
        let applied = self.rules.apply(&record, &change.data);
        if let Some(alert) = inspected.or(applied) {
            self.metrics.alerts_raised.fetch_add(1, Relaxed);
            raised.push(alert);
        }
        state.ring.push(record.clone(), now);
        self.route(&record, touched);
        self.metrics.changes_published.fetch_add(1, Relaxed);
        seq
    }

    /// Queues a record's frame on every matching subscription, once per connection, and
    /// adds each connection it queued for to `touched` (once per pass).
    fn route(&self, record: &Record, touched: &mut Vec<Arc<Session>>) {
        let ns = record.namespace();
        // Overflows are counted where the connection closes, with replies' overflows.
        let (mut queued, mut duplicates, mut dropped) = (0u64, 0u64, 0u64);
        for key in change_keys(&record.tenant, record.data_type, &record.keys) {
            let Some(list) = self.index.get(key) else {
                continue;
            };
            for sub in list.iter().flat_map(|chunk| chunk.iter()) {
                if !sub.matches(record) {
                    continue;
                }
                let (frame, follow_up) = record.frames_for(sub.session.wire, sub.session.deflate);
                let outbox = &sub.session.outbox;
                let outcome = outbox.route(ns, record.seq, frame, follow_up, record.published_us);
                if outcome.is_queued() && outbox.mark_touched() {
                    touched.push(sub.session.clone());
                }
                match outcome {
                    Delivery::Queued => queued += 1,
                    Delivery::DroppedOldest(n) => {
                        queued += 1;
                        dropped += n;
                    }
                    Delivery::Duplicate => duplicates += 1,
                    Delivery::Overflow | Delivery::Closed => {}
                }
            }
        }
        for (counter, n) in [
            (&self.metrics.deliveries, queued),
            (&self.metrics.duplicates_suppressed, duplicates),
            (&self.metrics.dropped_frames, dropped),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// Registers a subscription for `grant`'s principal, if the grant is still current
    /// (None, and nothing registered or sent, when the connection closed or became
    /// someone else meanwhile). Under the publish lock, so that no change is routed in
    /// between: records the subscription, queues the reply `reply` builds (if any), then
    /// the retained matching changes after `since` (never a seq the connection already
    /// has on that namespace, so order and uniqueness hold), then `initial` (the latest
    /// tracking change for `orders:track`). Live changes follow once the lock is released.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        grant: &Grant,
        filter: Filter,
        since: Option<u64>,
        initial: Option<Arc<Record>>,
        reply: impl FnOnce(Subscribed) -> Option<Bytes>,
    ) -> Result<Subscribed, Refusal> {
        let state = self.state.lock();
        self.subscribe_locked(&state, session, grant, filter, since, None, initial, reply)
    }

    /// Like [`Engine::subscribe`] with `since`, for a replay that starts in a bus's
    /// log: `log` holds the matching changes up to `log.through`. When the ring has
    /// dropped changes above `log.through` since the log was read, nothing is
    /// subscribed and `log` (with the filter) comes back, to be extended up to
    /// [`Engine::ring_floor`].
    pub fn subscribe_with_history(
        &self,
        session: &Arc<Session>,
        grant: &Grant,
        filter: Filter,
        since: u64,
        log: LogReplay,
        reply: impl FnOnce(Subscribed) -> Option<Bytes>,
    ) -> Result<Result<Subscribed, Refusal>, (LogReplay, Filter)> {
        let state = self.state.lock();
        // A log replay that is already short (a gap) is not worth extending.
        if !log.gap && state.ring.evicted_up_to() > log.through {
            return Err((log, filter));
        }
        Ok(self.subscribe_locked(
            &state,
            session,
            grant,
            filter,
            Some(since),
            Some(log),
            None,
            reply,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe_locked(
        &self,
        state: &State,
        session: &Arc<Session>,
        grant: &Grant,
        filter: Filter,
        since: Option<u64>,
        from_log: Option<LogReplay>,
        initial: Option<Arc<Record>>,
        reply: impl FnOnce(Subscribed) -> Option<Bytes>,
    ) -> Result<Subscribed, Refusal> {
        if !session.is_current(grant) {
            return Err(crate::session::superseded());
        }
        let id = self.next_subscription.fetch_add(1, Relaxed);
        let tenant = grant.principal.tenant.clone();
        let keys = filter.index_keys(&tenant);
        let ns = filter.namespace();
        let sub = Arc::new(Subscription {
            id,
            session: session.clone(),
            tenant,
            filter,
        });
        let outbox = &session.outbox;

        let (replay, gap) = match since {
            Some(since) => {
                let floor = since.max(outbox.last_seq(ns));
                // Changes read from the log come first; the ring serves what is above.
                let (mut replay, log_gap, ring_since) = match from_log {
                    Some(log) => {
                        let records: Vec<Arc<Record>> = log
                            .records
                            .into_iter()
                            .filter(|r| r.seq > floor && sub.matches(r))
                            .collect();
                        (records, log.gap, since.max(log.through))
                    }
                    None => (Vec::new(), false, since),
                };
                let floor = floor.max(ring_since);
                let (retained, ring_gap) = state.ring.since(ring_since);
                replay.extend(
                    retained
                        .filter(|r| r.seq > floor && sub.matches(r))
                        .cloned(),
                );
                (replay, log_gap || ring_gap)
            }
            None => (Vec::new(), false),
        };
        let outcome = Subscribed {
            id,
            replayed: replay.len(),
            gap,
        };
        // Record the subscription before the reply goes out, so a client that has the
        // reply sees it in `/clients`; routing cannot see it before the reply anyway,
        // because it waits for the publish lock held here. The index first, then the
        // session, which checks the grant under its lock: a connection that closes (or
        // changes identity) in between either finds the entry and removes it from the
        // index, or is seen here, and the entry is taken out again.
        self.index.insert(&keys, &sub);
        let entry = SubEntry {
            id,
            ns,
            keys: keys.into(),
            kind: SubKind::Stream(sub),
        };
        if let Err((refusal, entry)) =
            session.add_subscription(entry, grant, self.max_subscriptions)
        {
            self.index.remove(&entry.keys, id);
            return Err(refusal);
        }
        if let Some(frame) = reply(outcome) {
            outbox.send(frame);
        }
        for record in replay.iter().chain(initial.iter()) {
            let (frame, _) = record.frames_for(session.wire, session.deflate);
            outbox.deliver(ns, record.seq, frame, None, 0);
        }
        Ok(outcome)
    }

    /// Records a subscription that lives outside the index (dashboards), so that it
    /// counts toward the limit, is listed, and can be unsubscribed. None when `grant`
    /// is no longer current or the connection is at its cap.
    pub fn register_external(
        &self,
        session: &Session,
        grant: &Grant,
        ns: Namespace,
        filters: serde_json::Value,
    ) -> Result<u64, Refusal> {
        let id = self.next_subscription.fetch_add(1, Relaxed);
        let entry = SubEntry {
            id,
            ns,
            keys: Box::new([]),
            kind: SubKind::Dashboard(Box::new(filters)),
        };
        session
            .add_subscription(entry, grant, self.max_subscriptions)
            .map(|()| id)
            .map_err(|(refusal, _)| refusal)
    }

    /// Removes a connection's subscriptions on `ns`: the one with `id`, or all of them.
    pub fn unsubscribe(
        &self,
        session: &Session,
        ns: Namespace,
        id: Option<u64>,
    ) -> Result<Vec<u64>, Refusal> {
        let removed: Vec<SubEntry> = {
            let mut subs = session.subs.lock();
            if let Some(id) = id {
                if !subs.iter().any(|s| s.id == id && s.ns == ns) {
                    return Err(Refusal::new(
                        ErrorCode::NotFound,
                        "no such subscription on this namespace",
                    ));
                }
            }
            let (gone, kept) = subs
                .drain(..)
                .partition(|s| s.ns == ns && id.is_none_or(|id| s.id == id));
            *subs = kept;
            gone
        };
        for entry in &removed {
            self.index.remove(&entry.keys, entry.id);
        }
        Ok(removed.into_iter().map(|e| e.id).collect())
    }

    /// Removes every subscription of a closed connection; nothing can subscribe on it
    /// any more, deferred work included.
    pub fn drop_session(&self, session: &Session) {
        for entry in session.close_subscriptions() {
            self.index.remove(&entry.keys, entry.id);
        }
    }

    /// The connection becomes another identity (user, tenant or roles): it loses every
    /// subscription it made as the previous one, and work deferred under the previous
    /// one does nothing.
    pub fn switch_principal(&self, session: &Session, principal: Arc<crate::auth::Principal>) {
        for entry in session.switch_principal(principal) {
            self.index.remove(&entry.keys, entry.id);
        }
    }

    /// Retained changes of one tenant and data type with a seq above `since`, newest
    /// first.
    pub fn recent(
        &self,
        tenant: &str,
        data_type: Option<DataType>,
        since: u64,
        limit: usize,
    ) -> Vec<Arc<Record>> {
        let state = self.state.lock();
        state
            .ring
            .newest_first()
            .take_while(|r| r.seq > since)
            .filter(|r| *r.tenant == *tenant && data_type.is_none_or(|t| r.data_type == t))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Drops retained changes past the age limit.
    pub fn trim(&self) {
        self.state.lock().ring.trim(time::now_ms());
    }

    /// The last seq assigned.
    pub fn last_seq(&self) -> u64 {
        self.state.lock().next_seq - 1
    }

    pub fn retained(&self) -> usize {
        self.state.lock().ring.len()
    }

    pub fn index_keys(&self) -> usize {
        self.index.key_count()
    }

    /// Subscriptions in the index, counted once per key they are registered under.
    pub fn index_entries(&self) -> usize {
        self.index.entry_count()
    }
}
