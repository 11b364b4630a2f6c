//! Output: queued frames go to the socket in batches, many frames to one vectored
//! write, from whichever side has them first.
//!
//! A loopback `write` costs about the same CPU whatever its size up to a few KB, so the
//! number of syscalls, not bytes, decides throughput. The publishing pass writes what
//! it routed right away, one `writev` per connection however many changes it queued
//! there ([`SocketWriter`], the engine's `Writer`), the way uWebSockets corks a publish
//! instead of scheduling a task per subscriber; the connection's task writes replies,
//! and what a full socket did not take once it is writable ([`flush`]). Both write
//! from the outbox's queue under its lock (`Outbox::write_queued`), so the order is the
//! queue's whoever writes. Nothing here waits.

use std::io::IoSlice;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::fanout::outbox::{Outgoing, Sink, Written};
use crate::fanout::Writer;
use crate::metrics::{LocalHistogram, Metrics};
use crate::session::Session;
use crate::time;

/// A connection's socket, shared by its task (which reads, and waits for writability)
/// and its outbox (through which the publishing pass writes).
pub struct Socket(pub TcpStream);

impl Sink for Socket {
    /// One `send` (`sendmsg` for several frames), not `writev`: a socket needs
    /// nothing of the file layer `writev` goes through first (in the sharded profile,
    /// `vfs_writev` and `fdget_pos` alone were 7% of the server's time). Through
    /// tokio's `try_io`, so a full socket still clears its write readiness and the task
    /// waits for it.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.try_io(Interest::WRITABLE, || {
            let socket = socket2::SockRef::from(&self.0);
            match bufs {
                [one] => socket.send(one),
                _ => socket.send_vectored(bufs),
            }
        })
    }
}

/// What writes counted, added to the metrics once per call.
struct Tally {
    count: u64,
    bytes: u64,
    now_us: u64,
    /// Publish-to-write time of broadcast frames.
    latency: LocalHistogram,
    stamped: bool,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            count: 0,
            bytes: 0,
            now_us: time::now_us(),
            latency: LocalHistogram::default(),
            stamped: false,
        }
    }

    fn written(&mut self, item: &Outgoing) {
        self.count += 1;
        self.bytes += item.frame.len() as u64;
        if item.published_us > 0 {
            self.latency
                .observe_us(self.now_us.saturating_sub(item.published_us));
            self.stamped = true;
        }
    }

    fn add_to(self, metrics: &Metrics) {
        if self.count == 0 {
            return;
        }
        metrics.messages_sent.fetch_add(self.count, Relaxed);
        metrics.bytes_sent.fetch_add(self.bytes, Relaxed);
        if self.stamped {
            metrics.publish_to_write.add(&self.latency);
        }
    }
}

/// Writes one connection's queue (its share of it: see `Outbox::write_queued`), headed
/// by a `messages:dropped` notice when the drop-oldest policy took frames from it.
fn write_one(
    session: &Session,
    from_publisher: bool,
    tally: &mut Tally,
) -> std::io::Result<Written> {
    let notice = |dropped: u64| {
        let data = json!({ "dropped": dropped });
        session.wire.event_frame("/", "messages:dropped", &data)
    };
    session
        .outbox
        .write_queued(from_publisher, &notice, &mut |item| tally.written(item))
}

/// The connection's task writes its queue. `Ok(Written::Blocked)`: wait until the
/// socket is writable; `Ok(Written::More)`: call again after letting others run.
pub fn flush(metrics: &Metrics, session: &Session) -> std::io::Result<Written> {
    let mut tally = Tally::new();
    let result = write_one(session, false, &mut tally);
    tally.add_to(metrics);
    result
}

/// The engine's writer: writes each connection a publishing pass touched, on the
/// publishing thread.
pub struct SocketWriter {
    pub metrics: Arc<Metrics>,
}

/// Connections one publishing pass writes on its own thread. A pass that touched more
/// hands the rest to the runtime in chunks of this many (when it has more than one
/// worker thread), so that a broadcast to tens of thousands of connections is written
/// by every worker thread, and one pass holds its thread for about this many writes.
const WRITES_PER_CHUNK: usize = 512;

impl Writer for SocketWriter {
    fn write(&self, touched: &[Arc<Session>]) {
        let (first, rest) = touched.split_at(touched.len().min(WRITES_PER_CHUNK));
        // With one worker thread the chunks would only run later on the same thread.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|r| r.metrics().num_workers() > 1);
        if !rest.is_empty() {
            if let Some(runtime) = runtime {
                for chunk in rest.chunks(WRITES_PER_CHUNK) {
                    let (chunk, metrics) = (chunk.to_vec(), self.metrics.clone());
                    runtime.spawn(async move { write_all(&metrics, &chunk) });
                }
            } else {
                write_all(&self.metrics, rest);
            }
        }
        write_all(&self.metrics, first);
    }
}

/// Writes each touched connection's queue; what a socket does not take is left to the
/// connection's task.
fn write_all(metrics: &Metrics, touched: &[Arc<Session>]) {
    let mut tally = Tally::new();
    for session in touched {
        match write_one(session, true, &mut tally) {
            Ok(Written::All | Written::LeftToTask) => {}
            // The task waits for writability, or writes the rest on its next turn;
            // without a socket (not attached yet) it writes everything.
            Ok(Written::Blocked | Written::More | Written::NoSink) => session.outbox.wake(),
            // A dead socket: the task finds out when it reads or writes, and ends.
            Err(_) => session.outbox.wake(),
        }
    }
    metrics
        .messages_sent_by_publisher
        .fetch_add(tally.count, Relaxed);
    tally.add_to(metrics);
}

/// The reason text sent with a close code.
pub fn reason(code: u16) -> &'static str {
    match code {
        1001 => "server shutting down",
        1002 => "protocol error",
        1007 => "invalid UTF-8",
        1008 => "policy violation",
        1009 => "message too big",
        1013 => "slow consumer: try again later",
        _ => "",
    }
}
