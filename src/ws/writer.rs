//! Output: frames move from the outbox to the socket in batches, many frames to one
//! vectored write.
//!
//! A loopback `write` costs about the same CPU whatever its size up to a few KB, so the
//! number of syscalls, not bytes, decides throughput: a subscriber that fell behind by
//! fifty frames catches up in one `writev`. Nothing here waits: [`write`] writes what
//! the socket takes and says whether anything is left, and the connection's task
//! decides when to wait for writability.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, Bytes};
use serde_json::json;
use tokio::net::TcpStream;

use crate::app::App;
use crate::fanout::outbox::{Outbox, Outgoing};
use crate::metrics::LocalHistogram;
use crate::protocol::Wire;
use crate::time;

/// Frames taken from the queue per batch. 256 frames of a typical 200-300 byte change
/// are 50-75 KB, about what a socket send buffer takes in one go; more would only make
/// one batch's latency worse.
pub const MAX_BATCH: usize = 256;
/// Bytes taken from the queue per batch (one frame at least, whatever its size). It
/// bounds what a connection whose socket is full holds outside its queue, where the
/// byte budgets do not see it, when frames are large (replies of hundreds of KB). It
/// is set not to bind for change frames: 256 frames of up to 512 bytes fit, because
/// at saturation the number of frames per `writev` decides throughput (with 64 KiB,
/// which cuts batches of ~300-byte frames short, `max-fanout` in `loadtest/compare.sh`
/// ended one or two rate steps lower in two runs of three).
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// Buffers per `writev` call (Linux allows 1024).
const MAX_IOV: usize = 256;

/// Frames on their way to the socket; the first may be partly written.
#[derive(Default)]
pub struct Pending {
    frames: VecDeque<Bytes>,
    front_started: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn push(&mut self, frame: Bytes) {
        self.frames.push_back(frame);
    }

    /// Drops everything but the rest of a partly written frame, which must still go
    /// out whole before anything else (a close frame) can follow it.
    pub fn keep_partial_front(&mut self) {
        self.frames.truncate(usize::from(self.front_started));
    }
}

/// Moves up to [`MAX_BATCH`] queued frames into `pending` and counts them as sent.
/// Returns false when nothing was queued.
pub fn take(app: &App, outbox: &Outbox, wire: Wire, pending: &mut Pending) -> bool {
    let dropped = outbox.take_dropped();
    if dropped > 0 {
        // Tell the client how much the drop-oldest policy took from it.
        pending.push(wire.event_frame("/", "messages:dropped", &json!({ "dropped": dropped })));
    }
    let mut batch = Batch {
        frames: &mut pending.frames,
        count: u64::from(dropped > 0),
        bytes: 0,
        now_us: time::now_us(),
        latency: LocalHistogram::default(),
        stamped: false,
    };
    outbox.drain_into(&mut batch, MAX_BATCH, MAX_BATCH_BYTES);
    if batch.count == 0 {
        return false;
    }
    let metrics = &app.metrics;
    metrics.messages_sent.fetch_add(batch.count, Relaxed);
    metrics.bytes_sent.fetch_add(batch.bytes, Relaxed);
    if batch.stamped {
        metrics.publish_to_write.add(&batch.latency);
    }
    true
}

/// Frames taken from the outbox, with what the metrics need to know of them.
struct Batch<'a> {
    frames: &'a mut VecDeque<Bytes>,
    count: u64,
    bytes: u64,
    now_us: u64,
    /// Publish-to-write time of broadcast frames.
    latency: LocalHistogram,
    stamped: bool,
}

impl Extend<Outgoing> for Batch<'_> {
    fn extend<I: IntoIterator<Item = Outgoing>>(&mut self, items: I) {
        for item in items {
            self.count += 1;
            self.bytes += item.frame.len() as u64;
            if item.published_us > 0 {
                self.latency
                    .observe_us(self.now_us.saturating_sub(item.published_us));
                self.stamped = true;
            }
            self.frames.push_back(item.frame);
        }
    }
}

/// Writes pending frames, as many per call as fit one `writev`, until all are written
/// (`Ok(true)`) or the socket takes no more (`Ok(false)`).
pub fn write(stream: &TcpStream, pending: &mut Pending) -> std::io::Result<bool> {
    while !pending.frames.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(pending.frames.iter()) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => consume(pending, n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    // Everything is written: give the buffer back, so an idle connection holds no
    // memory for frames.
    pending.frames = VecDeque::new();
    Ok(true)
}

/// Takes `n` written bytes off the front of `pending`.
fn consume(pending: &mut Pending, mut n: usize) {
    while n > 0 {
        let Some(front) = pending.frames.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            pending.frames.pop_front();
            pending.front_started = false;
        } else {
            front.advance(n);
            pending.front_started = true;
            n = 0;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_advances_through_whole_and_partial_frames() {
        let mut pending = Pending::default();
        for f in [&b"abc"[..], b"de", b"fgh"] {
            pending.push(Bytes::from_static(f));
        }
        consume(&mut pending, 4);
        assert!(pending.front_started);
        assert_eq!(&pending.frames[0][..], b"e");
        pending.keep_partial_front();
        assert_eq!(pending.frames.len(), 1);
        consume(&mut pending, 1);
        assert!(pending.is_empty());
        assert!(!pending.front_started);
    }
}
