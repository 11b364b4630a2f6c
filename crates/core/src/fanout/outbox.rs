//! A connection's outgoing queue and close state, shared by the broadcaster (which
//! pushes, then writes), the connection's task (which writes what is left when the
//! socket was full, and replies) and request handling (which pushes replies).
//!
//! Everything on its way to the socket is in the queue until the socket has taken it:
//! [`Outbox::write_queued`] writes from the front of the queue, under the queue's
//! lock, through the connection's [`Sink`], and takes off what was written (a frame
//! partly written stays at the front with its offset). So whoever writes (the
//! publishing pass right after routing, or the connection's task) writes the same
//! bytes in the same order, two writers never interleave, and the byte limits see every
//! byte not yet written.
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
//! Architecture Invariant: nothing here awaits, and the only I/O is the non-blocking
//! vectored write of [`Outbox::write_queued`] through the [`Sink`] the server provides;
//! waking the connection's task is a flag and a stored waker.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
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

impl Delivery {
    /// The frame was queued (possibly after older ones were dropped).
    pub fn is_queued(self) -> bool {
        matches!(self, Delivery::Queued | Delivery::DroppedOldest(_))
    }
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

/// Where a connection's bytes go: its socket, implemented by the server (this crate
/// knows no sockets).
pub trait Sink: Send + Sync {
    /// Writes as much of `bufs` as the socket takes now, without waiting; `WouldBlock`
    /// when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

/// Buffers per vectored write (Linux allows 1024).
const MAX_IOV: usize = 256;
/// Vectored writes per [`Outbox::write_queued`] call, so that one call holds the queue
/// lock for a bounded time: about a socket send buffer's worth of typical frames.
const WRITES_PER_CALL: usize = 4;

/// What [`Outbox::write_queued`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The queue is empty: everything queued is on the socket.
    All,
    /// The socket took no more: wait until it is writable, then call again.
    Blocked,
    /// The call wrote its share and more is queued: call again (after letting others
    /// run).
    More,
    /// A publishing pass left the frames to the connection's task, which is waiting
    /// for the socket to take more.
    LeftToTask,
    /// There is no sink (it was detached, or never attached).
    NoSink,
}

/// The queue and its size in bytes, under one lock, with the socket it is written to.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    /// Bytes of the front frame already written. A frame partly written must go out
    /// whole: it is never dropped or discarded.
    front_written: u32,
    /// Set with the close frame: nothing is queued behind it.
    sealed: bool,
    /// The count a `messages:dropped` notice waiting right behind a partly written
    /// front frame (or at the front) carries; 0 when none waits. The notice is never
    /// dropped, or its count would be lost, and a later drop adds to it.
    notice_count: u32,
    /// The last write found the socket full; only the connection's task (woken by
    /// writability) writes until it clears this, so the publishing pass does not make a
    /// syscall per change to a socket that takes nothing.
    blocked: bool,
    sink: Option<Arc<dyn Sink>>,
}

impl Queue {
    /// Whether the front frame may be dropped or discarded (nothing of it written).
    fn front_is_whole(&self) -> bool {
        self.front_written == 0
    }

    /// Frames at the front that the drop-oldest policy must keep: a partly written one
    /// and a pinned notice.
    fn pinned(&self) -> usize {
        usize::from(!self.front_is_whole()) + usize::from(self.notice_count > 0)
    }

    fn pop_front(&mut self, budget: &Budget) -> Option<Outgoing> {
        let old = self.frames.pop_front()?;
        self.bytes -= old.frame.len();
        budget.sub(old.frame.len());
        self.front_written = 0;
        Some(old)
    }
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
    /// Set by the publishing pass that queued a frame here, until it writes them.
    touched: AtomicBool,
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
            touched: AtomicBool::new(false),
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
    /// connection already has it, and wakes the connection's task to write it.
    /// `follow_up` (an alert raised by the change) goes right after it, under the same
    /// check.
    pub fn deliver(
        &self,
        ns: Namespace,
        seq: u64,
        frame: &Bytes,
        follow_up: Option<&Bytes>,
        published_us: u64,
    ) -> Delivery {
        self.wake_if_queued(self.route(ns, seq, frame, follow_up, published_us))
    }

    /// [`Outbox::deliver`] without the wake-up: the publishing pass writes what it
    /// routed itself, once per connection at its end (see [`Outbox::mark_touched`]).
    pub fn route(
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
        if let Some(extra) = follow_up.filter(|_| outcome.is_queued()) {
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

    /// Queues a reply or control frame for this connection alone, and wakes its task.
    pub fn send(&self, frame: Bytes) -> Delivery {
        self.wake_if_queued(self.push(Outgoing {
            frame,
            published_us: 0,
        }))
    }

    fn wake_if_queued(&self, outcome: Delivery) -> Delivery {
        if outcome.is_queued() {
            self.wake();
        }
        outcome
    }

    /// Marks the outbox as touched by the current publishing pass. True the first time,
    /// when the pass must remember to write it.
    pub fn mark_touched(&self) -> bool {
        !self.touched.swap(true, Ordering::AcqRel)
    }

    /// Forgets that a publishing pass touched this outbox (a pass that leaves the
    /// writing to the connection's task).
    pub fn clear_touched(&self) {
        self.touched.store(false, Ordering::Release);
    }

    fn push(&self, item: Outgoing) -> Delivery {
        if !self.is_open() {
            return Delivery::Closed;
        }
        let size = item.frame.len();
        let mut outcome = Delivery::Queued;
        let mut queue = self.queue.lock();
        if queue.sealed {
            return Delivery::Closed;
        }
        // The unwritten part of a partly written front frame is what counts.
        let full = |q: &Queue| {
            !q.frames.is_empty()
                && (q.frames.len() >= self.capacity as usize
                    || q.bytes - q.front_written as usize + size > self.max_bytes as usize)
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
                    // A partly written front frame stays (dropping it would cut a frame
                    // in two on the wire), and so does a drop notice. The oldest other
                    // frames go.
                    let keep = queue.pinned();
                    while full(&queue) && queue.frames.len() > keep {
                        let old = if keep == 0 {
                            queue.pop_front(&self.budget)
                        } else {
                            queue.frames.remove(keep).inspect(|old| {
                                queue.bytes -= old.frame.len();
                                self.budget.sub(old.frame.len());
                            })
                        };
                        if old.is_none() {
                            break;
                        }
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
        outcome
    }

    /// Lets the connection's task see the frames it was handed (the server attaches
    /// its socket when the connection starts).
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        self.queue.lock().sink = Some(sink);
    }

    /// Lets go of the socket: nothing is written after this, whoever holds the outbox.
    pub fn detach(&self) {
        let sink = self.queue.lock().sink.take();
        drop(sink);
    }

    /// Writes queued frames to the sink, oldest first, until the queue is empty, the
    /// socket takes no more, or this call's share is written; first a notice of frames
    /// the drop-oldest policy dropped, if any (`notice` builds it from the count). `written` is called with
    /// each frame once it is wholly written (the server counts it and its latency).
    /// Under the queue's lock, so writers never interleave; a push waits for at most
    /// one call.
    ///
    /// `from_publisher`: the caller is a publishing pass, which leaves a socket the
    /// last write found full to the connection's task.
    pub fn write_queued(
        &self,
        from_publisher: bool,
        notice: &dyn Fn(u64) -> Bytes,
        written: &mut impl FnMut(&Outgoing),
    ) -> std::io::Result<Written> {
        let mut queue = self.queue.lock();
        if from_publisher {
            self.touched.store(false, Ordering::Release);
            if queue.blocked {
                return Ok(Written::LeftToTask);
            }
        }
        let Some(sink) = queue.sink.clone() else {
            return Ok(Written::NoSink);
        };
        // Under the same lock as the write: the notice counts every frame dropped
        // before those written now.
        self.notify_dropped(&mut queue, notice);
        let result = self.write_locked(&mut queue, &*sink, written);
        queue.blocked = matches!(result, Ok(Written::Blocked));
        if queue.frames.is_empty() && queue.frames.capacity() > 0 {
            // An emptied queue gives its memory back, so an idle connection holds none.
            queue.frames = VecDeque::new();
        }
        self.len.store(queue.frames.len() as u32, Ordering::Relaxed);
        result
    }

    fn write_locked(
        &self,
        queue: &mut Queue,
        sink: &dyn Sink,
        written: &mut impl FnMut(&Outgoing),
    ) -> std::io::Result<Written> {
        for _ in 0..WRITES_PER_CALL {
            if queue.frames.is_empty() {
                return Ok(Written::All);
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            for (slot, item) in slices.iter_mut().zip(queue.frames.iter()) {
                let skip = if count == 0 {
                    queue.front_written as usize
                } else {
                    0
                };
                *slot = IoSlice::new(&item.frame[skip..]);
                count += 1;
            }
            let mut n = match sink.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Written::Blocked),
                Err(e) => return Err(e),
            };
            while n > 0 {
                let Some(front) = queue.frames.front() else {
                    break;
                };
                if queue.front_written == 0 {
                    // A pinned notice at the front is being written: from here on it is
                    // a partly written frame or gone.
                    queue.notice_count = 0;
                }
                let rest = front.frame.len() - queue.front_written as usize;
                if n < rest {
                    // n < rest <= the frame's length, which a u32 holds (frames
                    // are bounded by the message and reply limits).
                    queue.front_written += u32::try_from(n).unwrap_or(u32::MAX);
                    // The socket took part of what was offered: it is full.
                    return Ok(Written::Blocked);
                }
                n -= rest;
                if let Some(done) = queue.pop_front(&self.budget) {
                    written(&done);
                }
            }
        }
        Ok(if queue.frames.is_empty() {
            Written::All
        } else {
            Written::More
        })
    }

    /// Queues the close frame behind everything queued; nothing is queued after it.
    /// The connection is over once the queue is empty again.
    pub fn seal(&self, close_frame: Bytes) {
        let mut queue = self.queue.lock();
        if queue.sealed {
            return;
        }
        queue.sealed = true;
        queue.bytes += close_frame.len();
        self.budget.add(close_frame.len());
        queue.frames.push_back(Outgoing {
            frame: close_frame,
            published_us: 0,
        });
        self.len.store(queue.frames.len() as u32, Ordering::Relaxed);
    }

    /// Tells the client, ahead of every whole queued frame, how many frames the
    /// drop-oldest policy dropped since it was last told: queues the notice `notice`
    /// builds (outside the limits), or rebuilds the one still waiting with the new
    /// total.
    fn notify_dropped(&self, queue: &mut Queue, notice: &dyn Fn(u64) -> Bytes) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped == 0 || queue.sealed {
            return;
        }
        let at = usize::from(!queue.front_is_whole());
        if queue.notice_count > 0 {
            if let Some(old) = queue.frames.remove(at) {
                queue.bytes -= old.frame.len();
                self.budget.sub(old.frame.len());
            }
        }
        queue.notice_count = queue
            .notice_count
            .saturating_add(u32::try_from(dropped).unwrap_or(u32::MAX));
        let frame = notice(u64::from(queue.notice_count));
        queue.bytes += frame.len();
        self.budget.add(frame.len());
        queue.frames.insert(
            at,
            Outgoing {
                frame,
                published_us: 0,
            },
        );
    }

    /// Moves queued frames into `out`: up to `max_frames`, and no more than `max_bytes`
    /// (but always at least one frame). For benches and tests that look at what was
    /// queued without a socket; the server writes with [`Outbox::write_queued`].
    pub fn drain_into(&self, out: &mut impl Extend<Outgoing>, max_frames: usize, max_bytes: usize) {
        let mut queue = self.queue.lock();
        queue.front_written = 0;
        queue.notice_count = 0;
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

    /// Discards everything queued but the rest of a partly written frame, which must
    /// still go out whole before anything (a close frame) can follow it.
    pub fn discard(&self) {
        let mut queue = self.queue.lock();
        let keep = usize::from(!queue.front_is_whole());
        queue.notice_count = 0;
        let gone: Vec<Outgoing> = queue.frames.drain(keep..).collect();
        let bytes: usize = gone.iter().map(|o| o.frame.len()).sum();
        queue.bytes -= bytes;
        self.budget.sub(bytes);
        self.len.store(queue.frames.len() as u32, Ordering::Relaxed);
        drop(queue);
        drop(gone);
    }

    /// Frames dropped since the last call (drop-oldest policy). The writers report
    /// drops through the notice of [`Outbox::write_queued`]; tests look here.
    #[cfg(test)]
    fn take_dropped(&self) -> u64 {
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

    /// A socket that takes at most `room` bytes until it is given more.
    struct TestSocket {
        taken: Mutex<Vec<u8>>,
        room: AtomicUsize,
    }

    impl TestSocket {
        fn with_room(room: usize) -> Arc<TestSocket> {
            Arc::new(TestSocket {
                taken: Mutex::new(Vec::new()),
                room: AtomicUsize::new(room),
            })
        }

        fn taken(&self) -> Vec<u8> {
            self.taken.lock().clone()
        }
    }

    impl Sink for TestSocket {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut taken = self.taken.lock();
            let room = self.room.load(Ordering::Relaxed);
            if room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let k = buf.len().min(room - n);
                taken.extend_from_slice(&buf[..k]);
                n += k;
                if n == room {
                    break;
                }
            }
            self.room.fetch_sub(n, Ordering::Relaxed);
            Ok(n)
        }
    }

    fn no_notice(n: u64) -> Bytes {
        Bytes::from(format!("<dropped {n}>"))
    }

    fn write(outbox: &Outbox, from_publisher: bool) -> Written {
        outbox
            .write_queued(from_publisher, &no_notice, &mut |_| {})
            .expect("the test socket does not fail")
    }

    #[test]
    fn a_partly_written_frame_is_finished_first_and_never_dropped_or_discarded() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::DropOldest);
        let socket = TestSocket::with_room(3);
        outbox.attach(socket.clone());
        outbox.send(Bytes::from_static(b"aaaaa"));
        outbox.send(Bytes::from_static(b"bbbbb"));
        assert_eq!(write(&outbox, false), Written::Blocked);
        // Full: the drop-oldest policy drops "bbbbb", not the partly written "aaaaa".
        outbox.send(Bytes::from_static(b"ccccc"));
        assert_eq!(outbox.take_dropped(), 1);
        // A publishing pass leaves a blocked socket to the task.
        assert_eq!(write(&outbox, true), Written::LeftToTask);
        outbox.discard();
        outbox.seal(Bytes::from_static(b"<close>"));
        socket.room.store(100, Ordering::Relaxed);
        assert_eq!(write(&outbox, false), Written::All);
        assert_eq!(socket.taken(), b"aaaaa<close>");
        assert!(outbox.is_empty());
    }

    #[test]
    fn the_drop_notice_comes_before_later_frames_and_counts_every_drop() {
        let outbox = Outbox::new(3, SlowConsumerPolicy::DropOldest);
        let socket = TestSocket::with_room(0);
        outbox.attach(socket.clone());
        for n in 1..=4u8 {
            outbox.deliver(
                Namespace::Inventory,
                u64::from(n),
                &frame(b'0' + n),
                None,
                0,
            );
        }
        // "1" was dropped; the notice is queued ahead and is never dropped.
        assert_eq!(write(&outbox, false), Written::Blocked);
        for n in 5..=6u8 {
            outbox.deliver(
                Namespace::Inventory,
                u64::from(n),
                &frame(b'0' + n),
                None,
                0,
            );
        }
        socket.room.store(100, Ordering::Relaxed);
        assert_eq!(write(&outbox, false), Written::All);
        // The waiting notice was rebuilt with the later drops ("2", "3", "4").
        assert_eq!(socket.taken(), b"<dropped 4>56");
    }

    #[test]
    fn nothing_is_written_or_queued_after_the_close_frame_or_without_a_sink() {
        let outbox = Outbox::new(10, SlowConsumerPolicy::Disconnect);
        outbox.send(Bytes::from_static(b"x"));
        assert_eq!(write(&outbox, true), Written::NoSink);
        let socket = TestSocket::with_room(100);
        outbox.attach(socket.clone());
        outbox.seal(Bytes::from_static(b"<close>"));
        assert_eq!(outbox.send(Bytes::from_static(b"late")), Delivery::Closed);
        assert_eq!(write(&outbox, true), Written::All);
        assert_eq!(socket.taken(), b"x<close>");
        outbox.detach();
        assert_eq!(write(&outbox, false), Written::NoSink);
    }

    #[test]
    fn a_pass_marks_an_outbox_once_until_it_writes() {
        let outbox = Outbox::new(10, SlowConsumerPolicy::Disconnect);
        outbox.attach(TestSocket::with_room(100));
        assert!(outbox.mark_touched());
        assert!(!outbox.mark_touched());
        write(&outbox, true);
        assert!(outbox.mark_touched());
    }
}
