//! A connection's writer: drains everything queued and writes it with one vectored
//! write, then waits for more.
//!
//! A loopback `write` costs about the same CPU whatever its size up to a few KB, so the
//! number of syscalls, not bytes, decides throughput: a subscriber that fell behind by
//! fifty frames catches up in one `writev`. The writer is the only task that writes to
//! the socket, which keeps frames whole: a close that arrives mid-write waits until the
//! partly written frame is finished.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use serde_json::json;
use tokio::net::TcpStream;

use super::frame;
use crate::app::App;
use crate::fanout::outbox::{state, Outbox, Outgoing};
use crate::metrics::LocalHistogram;
use crate::protocol::native;
use crate::session::Session;
use crate::time;

/// Frames taken from the queue per batch. 256 frames of a typical 200-300 byte change
/// are 50-75 KB, about what a socket send buffer takes in one go; more would only make
/// one batch's latency worse.
const MAX_BATCH: usize = 256;
/// Buffers per `writev` call (Linux allows 1024).
const MAX_IOV: usize = 256;

/// Frames on their way to the socket; the first may be partly written.
#[derive(Default)]
struct Pending {
    frames: VecDeque<Bytes>,
    front_started: bool,
}

enum Written {
    All,
    /// The connection is closing without flush, or over: stop writing data.
    Interrupted,
}

pub async fn run(app: Arc<App>, stream: Arc<TcpStream>, session: Arc<Session>) {
    let outbox = &session.outbox;
    let mut pending = Pending::default();
    loop {
        let st = outbox.state();
        if st == state::DONE {
            return;
        }
        if st == state::OPEN || (st == state::CLOSING && outbox.close_flushes()) {
            match drain(&app, outbox, &mut pending, &stream).await {
                Some(true) => continue,
                Some(false) => {}
                None => {
                    outbox.finish();
                    return;
                }
            }
        }
        match outbox.state() {
            state::OPEN => outbox.writer_wake.notified().await,
            state::CLOSING => {
                close(&app, outbox, &mut pending, &stream).await;
                return;
            }
            _ => return,
        }
    }
}

/// Takes what is queued and writes it. Returns Some(true) when it wrote something (so
/// the caller looks again), Some(false) when the queue was empty, None on a dead socket.
async fn drain(
    app: &App,
    outbox: &Outbox,
    pending: &mut Pending,
    stream: &TcpStream,
) -> Option<bool> {
    let dropped = outbox.take_dropped();
    if dropped > 0 {
        // Tell the client how much the drop-oldest policy took from it.
        pending.frames.push_back(native::event_frame(
            "/",
            "messages:dropped",
            &json!({ "dropped": dropped }),
        ));
    }
    let mut batch: Vec<Outgoing> = Vec::new();
    outbox.drain_into(&mut batch, MAX_BATCH);
    if batch.is_empty() && pending.frames.is_empty() {
        return Some(false);
    }
    let frames = batch.len() as u64 + u64::from(dropped > 0);
    let mut bytes = 0u64;
    let stamps: Vec<u64> = batch
        .iter()
        .map(|o| o.published_us)
        .filter(|&us| us > 0)
        .collect();
    for item in batch {
        bytes += item.frame.len() as u64;
        pending.frames.push_back(item.frame);
    }
    match write(stream, pending, Some(outbox)).await {
        Ok(Written::All) => {
            // Everything is written: give the buffer back, so an idle connection holds
            // no memory for frames.
            pending.frames = VecDeque::new();
            let metrics = &app.metrics;
            metrics.messages_sent.fetch_add(frames, Relaxed);
            metrics.bytes_sent.fetch_add(bytes, Relaxed);
            if !stamps.is_empty() {
                let now = time::now_us();
                let mut local = LocalHistogram::default();
                for us in stamps {
                    local.observe_us(now.saturating_sub(us));
                }
                metrics.publish_to_write.add(&local);
            }
            Some(true)
        }
        Ok(Written::Interrupted) => Some(false),
        Err(_) => None,
    }
}

/// Sends the close frame (after the rest of a partly written frame), half-closes the
/// socket, and waits for the client's close or the timeout.
async fn close(app: &App, outbox: &Outbox, pending: &mut Pending, stream: &TcpStream) {
    if !outbox.close_flushes() {
        outbox.discard();
        pending.frames.truncate(usize::from(pending.front_started));
    }
    let code = outbox.close_code();
    pending
        .frames
        .push_back(frame::close_frame(code, reason(code)));
    let timeout = app.config.close_timeout();
    if let Ok(Ok(Written::All)) = tokio::time::timeout(timeout, write(stream, pending, None)).await
    {
        app.metrics.messages_sent.fetch_add(1, Relaxed);
        // FIN after the close frame: the client reads it even if unread input on our
        // side would otherwise turn our close into a reset.
        let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
        outbox.mark_close_sent();
        let _ = tokio::time::timeout(timeout, async {
            while !outbox.peer_closed() {
                outbox.writer_wake.notified().await;
            }
        })
        .await;
    }
    outbox.finish();
}

fn reason(code: u16) -> &'static str {
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

/// Writes every pending frame. With `outbox`, the write gives up (keeping any partly
/// written frame) when the connection starts closing without flush.
async fn write(
    stream: &TcpStream,
    pending: &mut Pending,
    outbox: Option<&Outbox>,
) -> std::io::Result<Written> {
    while !pending.frames.is_empty() {
        let slices: Vec<IoSlice<'_>> = pending
            .frames
            .iter()
            .take(MAX_IOV)
            .map(|b| IoSlice::new(b))
            .collect();
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                drop(slices);
                while n > 0 {
                    let Some(front) = pending.frames.front_mut() else {
                        break;
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
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                drop(slices);
                match outbox {
                    Some(outbox) => {
                        tokio::select! {
                            ready = stream.writable() => ready?,
                            _ = outbox.writer_wake.notified() => {
                                let st = outbox.state();
                                if st == state::DONE || (st == state::CLOSING && !outbox.close_flushes()) {
                                    return Ok(Written::Interrupted);
                                }
                            }
                        }
                    }
                    None => stream.writable().await?,
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Written::All)
}
