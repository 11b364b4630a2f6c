//! One WebSocket connection: one task from the upgrade to the end, which reads the
//! client's frames and writes everything queued for it.
//!
//! One task rather than a reader and a writer: an idle connection is one small future
//! waiting on three things at once, polled by hand ([`Conn::wait`]): the socket
//! readable, the socket writable (only while output is pending), and the outbox's wake
//! flag. Waiting that way holds no waiter nodes, no timers and no buffers; the larger
//! state of a close handshake (its timeouts) is boxed and exists only while closing.
//! Measured with `nilecast-loadgen run idle`, this halved the server memory of an idle
//! subscribed connection (see README, Performance).

use std::future::poll_fn;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::frame::{self, OpCode};
use super::input::Phase;
use super::writer::{self, Pending};
use super::Mode;
use crate::app::App;
use crate::auth::Principal;
use crate::error::close;
use crate::fanout::change::Namespace;
use crate::fanout::outbox::{state, Outbox};
use crate::protocol::native;
use crate::rate_limit::RateLimiter;
use crate::session::Session;
use crate::time;

/// Bytes reserved per read. Most client frames are far smaller; a larger message just
/// takes several reads.
const READ_CHUNK: usize = 4096;

/// Batches written per turn of the loop before the task lets others run.
const BATCHES_PER_TURN: usize = 4;

/// A connection's state, owned by its task.
pub struct Conn {
    pub(super) app: Arc<App>,
    pub(super) session: Arc<Session>,
    stream: TcpStream,
    pub(super) mode: Mode,
    /// Bytes read and not yet parsed; no capacity while idle.
    pub(super) buf: BytesMut,
    /// A fragmented message being assembled: its opcode and the bytes so far. Boxed:
    /// fragmented messages are rare, and the field is in every connection's task.
    pub(super) message: Option<Box<(OpCode, BytesMut)>>,
    pub(super) limiter: RateLimiter,
    pub(super) phase: Phase,
    out: Pending,
}

/// What [`Conn::wait`] found ready. Being woken or writable needs nothing beyond
/// another turn of the loop; readable means a read.
struct Ready {
    readable: bool,
}

/// Registers a connection that hyper has handed over and starts its task.
pub fn start(
    app: &Arc<App>,
    stream: TcpStream,
    pre_read: Bytes,
    remote: SocketAddr,
    principal: Arc<Principal>,
    mode: Mode,
) {
    let _ = stream.set_nodelay(true);
    let config = &app.config;
    let now = time::now_ms();
    let outbox = Outbox::new(config.queue_max_frames, config.slow_consumer_policy);
    let session = Arc::new(Session::new(
        app.next_session_id(),
        outbox,
        remote,
        principal,
        now,
    ));
    app.sessions.insert(session.id, session.clone());
    app.metrics.connections_total.fetch_add(1, Relaxed);
    // Shutdown closes every registered session; one that registered after that sweep
    // closes itself here.
    if app.shutdown.is_triggered() {
        session.outbox.close(close::GOING_AWAY, true);
    }
    if mode == Mode::Native {
        let principal = session.principal();
        session.outbox.send(native::event_frame(
            "/",
            "connection:established",
            &json!({
                "connectionId": session.connection_id(),
                "serverTime": time::iso8601(now),
                "namespaces": Namespace::ALL.iter().map(|n| n.path()).collect::<Vec<_>>(),
                "authenticated": principal.authenticated,
                "heartbeatMs": config.heartbeat_interval_ms,
            }),
        ));
    }
    // Bytes the client sent right behind its handshake arrive as a slice of hyper's
    // read buffer; copying them out frees that whole buffer instead of keeping it for
    // the connection's life.
    let buf = BytesMut::from(&pre_read[..]);
    let conn = Conn {
        app: app.clone(),
        session,
        stream,
        mode,
        buf,
        message: None,
        limiter: RateLimiter::new(&config.rate_limit(), now),
        phase: Phase::Open,
        out: Pending::default(),
    };
    app.shutdown.spawn(conn.run());
}

impl Conn {
    pub(super) fn outbox(&self) -> &Outbox {
        &self.session.outbox
    }

    /// The connection's task. Not an `async fn run(mut self)`: that would hold the
    /// connection twice in the future, as the argument and as the `mut` binding.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            self.serve().await;
            let app = &self.app;
            app.sessions.remove(&self.session.id);
            app.addresses.release(self.session.remote.ip());
            app.engine.drop_session(&self.session);
            app.dashboards.remove_session(self.session.id);
            tracing::debug!(connection = self.session.id, "connection closed");
        }
    }

    /// The connection's loop: handle input, write output, wait for either.
    async fn serve(&mut self) {
        loop {
            self.handle_input();
            match self.outbox().state() {
                state::OPEN => {
                    if self.flush().is_err() {
                        self.outbox().finish();
                        return;
                    }
                }
                state::CLOSING => {
                    Box::pin(self.close()).await;
                    return;
                }
                _ => return,
            }
            // Let other tasks run between turns however busy this connection is.
            tokio::task::consume_budget().await;
            let ready = self.wait().await;
            if ready.readable && !self.read() {
                self.peer_gone();
            }
        }
    }

    /// Waits until the outbox wakes the task, the socket is readable, or (with output
    /// pending) writable.
    async fn wait(&self) -> Ready {
        let (stream, outbox, writing) = (&self.stream, self.outbox(), !self.out.is_empty());
        poll_fn(|cx| {
            // Every source is polled each time, so each keeps its waker registered and
            // a busy one cannot starve the others.
            let woken = outbox.take_wake(cx);
            let writable = writing && stream.poll_write_ready(cx).is_ready();
            let readable = stream.poll_read_ready(cx).is_ready();
            if woken || writable || readable {
                Poll::Ready(Ready { readable })
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Reads what the socket has into the buffer. False at end of stream or on error.
    fn read(&mut self) -> bool {
        self.buf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    /// The client's side ended (end of stream or error).
    fn peer_gone(&self) {
        self.outbox().mark_peer_closed();
        if self.outbox().is_open() {
            self.outbox().finish();
        }
    }

    /// Moves queued frames to the socket until the queue is empty or the socket full,
    /// at most [`BATCHES_PER_TURN`] batches. Err on a dead socket.
    fn flush(&mut self) -> std::io::Result<()> {
        for _ in 0..BATCHES_PER_TURN {
            if self.out.is_empty() && !writer::take(&self.app, &self.session.outbox, &mut self.out)
            {
                return Ok(());
            }
            if !writer::write(&self.stream, &mut self.out)? {
                return Ok(());
            }
        }
        // More may be queued: look again on the next turn.
        self.outbox().wake();
        Ok(())
    }

    /// The close handshake: the queue flushed (when the close asked for it) or
    /// discarded, the close frame, a half-close, then the client's close or the
    /// timeout.
    async fn close(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
        }
        let outbox = &self.session.outbox;
        let flush = outbox.close_flushes();
        if !flush {
            outbox.discard();
            self.out.keep_partial_front();
        }
        let code = outbox.close_code();
        let timeout = self.app.config.close_timeout();
        let sent = timeout_at(Instant::now() + timeout, async {
            if flush {
                while writer::take(&self.app, outbox, &mut self.out) || !self.out.is_empty() {
                    write_all(&self.stream, &mut self.out).await?;
                }
            }
            self.out
                .push(frame::close_frame(code, writer::reason(code)));
            write_all(&self.stream, &mut self.out).await
        })
        .await;
        if let Ok(Ok(())) = sent {
            self.app.metrics.messages_sent.fetch_add(1, Relaxed);
            // FIN after the close frame: the client reads it even if unread input on
            // our side would otherwise turn our close into a reset.
            let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
            self.outbox().mark_close_sent();
            let _ = timeout_at(Instant::now() + timeout, self.await_peer_close()).await;
        }
        self.outbox().finish();
    }

    /// Reads until the client's close frame or the end of its stream.
    async fn await_peer_close(&mut self) {
        while !self.outbox().peer_closed() {
            if self.stream.readable().await.is_err() || !self.read() {
                self.outbox().mark_peer_closed();
                return;
            }
            self.handle_input();
        }
    }
}

/// Writes every pending frame, waiting for writability as needed.
async fn write_all(stream: &TcpStream, out: &mut Pending) -> std::io::Result<()> {
    while !writer::write(stream, out)? {
        stream.writable().await?;
    }
    Ok(())
}
