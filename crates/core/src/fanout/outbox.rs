//! A connection's outgoing queue and close state, shared by the broadcaster (which
//! pushes) and the connection's task (which drains).
//!
//! The queue is a `VecDeque` behind a `parking_lot::Mutex`, bounded by
//! `QUEUE_MAX_FRAMES` and by `QUEUE_MAX_BYTES`: `push` never waits for the writer, so
//! the broadcaster never awaits a client, and when the queue is full (in frames or in
//! bytes, replies and pongs counted like broadcasts) the slow-consumer policy applies.
//! Bytes matter as much as frames: one reply can be hundreds of KB, and a client that
//! asks for many and never reads would otherwise hold the server's memory hostage.
//! Every outbox also counts its queued bytes into the server-wide [`Budget`]
//! (`SERVER_QUEUE_MAX_BYTES`), which request handling consults before doing new work.
//!
//! Why a mutex and not crossbeam's lock-free `SegQueue`: both sides hold the lock for
//! one push or one take, a few nanoseconds, never across an await, and an empty
//! `VecDeque` owns no memory. A `SegQueue` keeps a 31-slot block (about 1.3 KB) for the
//! life of every connection that ever received a frame, and its two cache-padded ends
//! cost 256 bytes more: measured, that was most of an idle connection's memory.
//! Architecture Invariant: nothing here does I/O or awaits; waking the connection's
//! task is a flag and a stored waker.

use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::Arc;
use std::task::Context;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::fanout::change::Namespace;

/// What to do with a connection whose outgoing queue is full (`SLOW_CONSUMER_POLICY`;
/// the server parses the setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1013 (try again later). The client reconnects and
    /// resumes with `sinceSeq`, so it loses nothing it can not replay.
    Disconnect,
    /// Drop the oldest queued frames and later tell the client how many with a
    /// `messages:dropped` event.
    DropOldest,
}

/// One queued frame and, for broadcast frames, when its change was published (for the
/// publish-to-write histogram; 0 for replies and control frames).
pub struct Outgoing {
    pub frame: Bytes,
    pub published_us: u64,
}

/// Close states, in the order a connection goes through them.
pub mod state {
    /// Frames are accepted.
    pub const OPEN: u8 = 0;
    /// A close was requested; the writer sends the close frame (after flushing the queue
    /// when the close asked for it). No new frames are accepted.
    pub const CLOSING: u8 = 1;
    /// The close frame is written; waiting for the client's close or the timeout.
    pub const CLOSE_SENT: u8 = 2;
    /// The connection is over: its task stops.
    pub const DONE: u8 = 3;
}

/// What became of a frame handed to [`Outbox::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The connection already has this seq (or a later one) on that namespace.
    Duplicate,
    /// The connection is closing; the frame was not queued.
    Closed,
    /// Queued, after dropping this many older frames (drop-oldest policy).
    DroppedOldest(u64),
    /// The queue was full and the connection is now closing with 1013.
    Overflow,
}

/// The server-wide budget of queued output bytes, shared by every outbox. Broadcasts
/// are never refused for it (each connection's own limits and the slow-consumer
/// policy deal with those); new request work is, while it is spent.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// Bytes queued over all connections.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_spent(&self) -> bool {
        self.used() >= self.max
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The queue and its size in bytes, under one lock.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    bytes: usize,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    /// The queue's length, readable without the lock (gauges, `/clients`).
    len: AtomicU32,
    capacity: u32,
    /// `QUEUE_MAX_BYTES`. A single frame larger than this is still queued when the
    /// queue is empty, or it could never be sent.
    max_bytes: u32,
    budget: Arc<Budget>,
    policy: SlowConsumerPolicy,
    state: AtomicU8,
    close_code: AtomicU16,
    /// Whether the close flushes queued frames first (graceful) or discards them.
    close_flush: AtomicBool,
    /// Set when the client's close frame arrived or its side of the socket ended.
    peer_closed: AtomicBool,
    /// Frames dropped by the drop-oldest policy and not yet reported to the client.
    dropped: AtomicU64,
    /// Highest seq queued per namespace. Only the broadcaster writes these, under the
    /// engine's publish lock, so relaxed ordering is enough: they exist to make "never
    /// the same seq twice on one namespace" hold when several subscriptions match.
    last_seq: [AtomicU64; 6],
    /// The connection task's wake-up: a flag (a frame was queued, or the close state
    /// changed) and the waker to call when it goes up. 25 bytes and no allocation,
    /// where a `tokio::sync::Notify` is 32 bytes and its `Notified` future, held by an
    /// idle connection for its whole life, about 60 more.
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.budget.sub(self.queue.get_mut().bytes);
    }
}

impl Outbox {
    /// An outbox bounded by `capacity` frames only (benches and unit tests).
    pub fn new(capacity: usize, policy: SlowConsumerPolicy) -> Outbox {
        Outbox::with_limits(capacity, usize::MAX, policy, Arc::new(Budget::unlimited()))
    }

    /// An outbox bounded by `capacity` frames and `max_bytes` bytes, counting into the
    /// server-wide `budget`.
    pub fn with_limits(
        capacity: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
        budget: Arc<Budget>,
    ) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            len: AtomicU32::new(0),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            budget,
            policy,
            state: AtomicU8::new(state::OPEN),
            close_code: AtomicU16::new(0),
            close_flush: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            last_seq: Default::default(),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn is_open(&self) -> bool {
        self.state() == state::OPEN
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// Wakes the connection's task. Raising an already raised flag costs one atomic
    /// swap and wakes nobody: the task has not looked yet, and will see it.
    pub fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Takes the wake flag. While it is down, `cx`'s waker is called when it goes up.
    pub fn take_wake(&self, cx: &Context<'_>) -> bool {
        // Register before looking, so a wake between the two is not missed.
        self.waker.register(cx.waker());
        self.woken.swap(false, Ordering::AcqRel)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a broadcast frame of change `seq` on namespace `ns`, unless the
    /// connection already has it. `follow_up` (an alert raised by the change) goes
    /// right after it, under the same check.
    pub fn deliver(
        &self,
        ns: Namespace,
        seq: u64,
        frame: &Bytes,
        follow_up: Option<&Bytes>,
        published_us: u64,
    ) -> Delivery {
        let last = &self.last_seq[ns as usize];
        if last.load(Ordering::Relaxed) >= seq {
            return Delivery::Duplicate;
        }
        last.store(seq, Ordering::Relaxed);
        let outcome = self.push(Outgoing {
            frame: frame.clone(),
            published_us,
        });
        if let (Some(extra), Delivery::Queued | Delivery::DroppedOldest(_)) = (follow_up, outcome) {
            self.push(Outgoing {
                frame: extra.clone(),
                published_us: 0,
            });
        }
        outcome
    }

    /// The highest seq this connection has queued on `ns`.
    pub fn last_seq(&self, ns: Namespace) -> u64 {
        self.last_seq[ns as usize].load(Ordering::Relaxed)
    }

    /// Queues a reply or control frame for this connection alone.
    pub fn send(&self, frame: Bytes) -> Delivery {
        self.push(Outgoing {
            frame,
            published_us: 0,
        })
    }

    fn push(&self, item: Outgoing) -> Delivery {
        if !self.is_open() {
            return Delivery::Closed;
        }
        let size = item.frame.len();
        let mut outcome = Delivery::Queued;
        let mut queue = self.queue.lock();
        let full = |q: &Queue| {
            !q.frames.is_empty()
                && (q.frames.len() >= self.capacity as usize
                    || q.bytes + size > self.max_bytes as usize)
        };
        if full(&queue) {
            match self.policy {
                SlowConsumerPolicy::Disconnect => {
                    drop(queue);
                    return if self.close(crate::error::close::TRY_AGAIN_LATER, false) {
                        Delivery::Overflow
                    } else {
                        Delivery::Closed
                    };
                }
                SlowConsumerPolicy::DropOldest => {
                    let mut dropped = 0;
                    while full(&queue) {
                        let Some(old) = queue.frames.pop_front() else {
                            break;
                        };
                        queue.bytes -= old.frame.len();
                        self.budget.sub(old.frame.len());
                        dropped += 1;
                    }
                    if dropped > 0 {
                        self.dropped.fetch_add(dropped, Ordering::Relaxed);
                        outcome = Delivery::DroppedOldest(dropped);
                    }
                }
            }
        }
        queue.frames.push_back(item);
        queue.bytes += size;
        self.budget.add(size);
        self.len.store(queue.frames.len() as u32, Ordering::Relaxed);
        drop(queue);
        self.wake();
        outcome
    }

    /// Moves queued frames into `out`: up to `max_frames`, and no more than `max_bytes`
    /// (but always at least one frame). An emptied queue gives its memory back, so an
    /// idle connection holds none.
    pub fn drain_into(&self, out: &mut impl Extend<Outgoing>, max_frames: usize, max_bytes: usize) {
        let mut queue = self.queue.lock();
        let (mut n, mut bytes) = (0, 0);
        for item in queue.frames.iter().take(max_frames) {
            if n > 0 && bytes + item.frame.len() > max_bytes {
                break;
            }
            n += 1;
            bytes += item.frame.len();
        }
        out.extend(queue.frames.drain(..n));
        queue.bytes -= bytes;
        self.budget.sub(bytes);
        if queue.frames.is_empty() {
            queue.frames = VecDeque::new();
        }
        self.len.store(queue.frames.len() as u32, Ordering::Relaxed);
    }

    /// Bytes queued.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Discards everything queued.
    pub fn discard(&self) {
        let taken = std::mem::take(&mut *self.queue.lock());
        self.budget.sub(taken.bytes);
        self.len.store(0, Ordering::Relaxed);
        drop(taken);
    }

    /// Frames dropped since the last call (drop-oldest policy).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Asks for the connection to close with `code`. With `flush`, frames already queued
    /// are written first. Returns false when a close was already under way.
    pub fn close(&self, code: u16, flush: bool) -> bool {
        if self
            .state
            .compare_exchange(
                state::OPEN,
                state::CLOSING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        self.close_code.store(code, Ordering::Release);
        self.close_flush.store(flush, Ordering::Release);
        self.wake();
        true
    }

    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Acquire)
    }

    pub fn close_flushes(&self) -> bool {
        self.close_flush.load(Ordering::Acquire)
    }

    pub fn mark_close_sent(&self) {
        let _ = self.state.compare_exchange(
            state::CLOSING,
            state::CLOSE_SENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The client sent its close frame, or its side of the socket ended.
    pub fn mark_peer_closed(&self) {
        self.peer_closed.store(true, Ordering::Release);
        self.wake();
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed.load(Ordering::Acquire)
    }

    /// Ends the connection at once: its task stops.
    pub fn finish(&self) {
        self.state.store(state::DONE, Ordering::Release);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_bounded_and_counted_into_the_budget() {
        let budget = Arc::new(Budget::new(250));
        let outbox = Outbox::with_limits(100, 200, SlowConsumerPolicy::Disconnect, budget.clone());
        let big = Bytes::from(vec![0u8; 90]);
        assert_eq!(outbox.send(big.clone()), Delivery::Queued);
        assert_eq!(outbox.send(big.clone()), Delivery::Queued);
        assert_eq!(budget.used(), 180);
        assert_eq!(outbox.send(big.clone()), Delivery::Overflow);
        assert_eq!(outbox.close_code(), 1013);
        outbox.discard();
        assert_eq!(budget.used(), 0);

        let drop_oldest =
            Outbox::with_limits(100, 200, SlowConsumerPolicy::DropOldest, budget.clone());
        for _ in 0..5 {
            drop_oldest.send(big.clone());
        }
        assert_eq!(drop_oldest.len(), 2);
        assert_eq!(drop_oldest.take_dropped(), 3);
        assert!(!budget.is_spent());
        drop_oldest.send(Bytes::from(vec![0u8; 100]));
        assert_eq!(budget.used(), 190);
        drop(drop_oldest);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_drain_stops_at_its_byte_limit_but_takes_one_frame_at_least() {
        let outbox = Outbox::new(100, SlowConsumerPolicy::Disconnect);
        for n in 0..4 {
            outbox.send(Bytes::from(vec![n; 100]));
        }
        let mut out = Vec::new();
        outbox.drain_into(&mut out, 10, 50);
        assert_eq!(out.len(), 1);
        outbox.drain_into(&mut out, 10, 250);
        assert_eq!(out.len(), 3);
        assert_eq!(outbox.bytes(), 100);
    }

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn never_queues_the_same_seq_twice_on_a_namespace() {
        let outbox = Outbox::new(10, SlowConsumerPolicy::Disconnect);
        assert_eq!(
            outbox.deliver(Namespace::Inventory, 5, &frame(1), None, 0),
            Delivery::Queued
        );
        assert_eq!(
            outbox.deliver(Namespace::Inventory, 5, &frame(1), None, 0),
            Delivery::Duplicate
        );
        assert_eq!(
            outbox.deliver(Namespace::Orders, 5, &frame(1), None, 0),
            Delivery::Queued
        );
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn a_full_queue_closes_with_1013_under_disconnect() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::Disconnect);
        for seq in 1..=2 {
            assert_eq!(
                outbox.deliver(Namespace::Inventory, seq, &frame(1), None, 0),
                Delivery::Queued
            );
        }
        assert_eq!(
            outbox.deliver(Namespace::Inventory, 3, &frame(1), None, 0),
            Delivery::Overflow
        );
        assert_eq!(outbox.state(), state::CLOSING);
        assert_eq!(outbox.close_code(), 1013);
        assert_eq!(
            outbox.deliver(Namespace::Inventory, 4, &frame(1), None, 0),
            Delivery::Closed
        );
    }

    #[test]
    fn drop_oldest_keeps_the_newest_frames_and_counts() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::DropOldest);
        for seq in 1..=5u8 {
            outbox.deliver(Namespace::Inventory, u64::from(seq), &frame(seq), None, 0);
        }
        let mut out = Vec::new();
        outbox.drain_into(&mut out, 10, usize::MAX);
        let kept: Vec<u8> = out.iter().map(|o| o.frame[0]).collect();
        assert_eq!(kept, vec![4, 5]);
        assert_eq!(outbox.take_dropped(), 3);
        assert!(outbox.is_empty());
    }
}
