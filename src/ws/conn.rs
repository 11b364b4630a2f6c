//! One WebSocket connection: one task from the upgrade to the end, which reads the
//! client's frames and writes everything queued for it.
//!
//! The connection is its own future ([`Conn`] implements `Future`), polled by the task
//! it is spawned as. An idle connection is that struct and nothing more: waiting on the
//! socket (readable; writable only while output is pending) and on the outbox's wake
//! flag stores a waker in each, no waiter nodes, no timers, no buffers. Broadcasts are
//! mostly written by the publishing pass that routed them (`writer::SocketWriter`); the
//! task writes replies, and whatever a full socket left once it is writable. An `async fn`
//! would do the same work, but its state machine is larger than the struct, and every
//! byte here is paid by every idle connection: written by hand, the task (tokio's task
//! header and trailer included) fits 256 bytes. The close handshake, with its timers,
//! lives in a box that exists only while closing.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::frame::{self, OpCode};
use super::input::Phase;
use super::socketio;
use super::writer::{self, Socket};
use super::Mode;
use crate::app::App;
use crate::auth::Principal;
use crate::error::close;
use crate::fanout::outbox::{state, Outbox, Written};
use crate::protocol::{native, Wire};
use crate::rate_limit::RateLimiter;
use crate::session::Session;
use crate::time;

/// Bytes reserved per read. Most client frames are far smaller; a larger message just
/// takes several reads.
const READ_CHUNK: usize = 4096;

/// A connection's state, owned by its task.
pub struct Conn {
    pub(super) app: Arc<App>,
    pub(super) session: Arc<Session>,
    /// Shared with the outbox, through which the publishing pass writes to it.
    socket: Arc<Socket>,
    pub(super) mode: Mode,
    /// Bytes read and not yet parsed; no capacity while idle.
    pub(super) buf: BytesMut,
    /// A fragmented message being assembled. Boxed: fragmented messages are rare, and
    /// the field is in every connection's task.
    pub(super) message: Option<Box<Partial>>,
    pub(super) limiter: RateLimiter,
    pub(super) phase: Phase,
    /// The last write found the socket full: wait until it is writable.
    wants_write: bool,
    /// The close handshake, once begun.
    closing: Option<Box<Closing>>,
}

/// A fragmented message so far: its opcode, whether it is compressed, and its bytes.
pub(super) struct Partial {
    pub opcode: OpCode,
    pub compressed: bool,
    pub bytes: BytesMut,
}

/// The close handshake's state: the frames still to write (queued ones when the close
/// flushes, then the close frame, both in the outbox), then the wait for the client's
/// close.
struct Closing {
    stage: Stage,
    /// The current stage's deadline (`CLOSE_TIMEOUT_MS` each).
    timer: Pin<Box<Sleep>>,
}

#[derive(PartialEq, Eq)]
enum Stage {
    /// Writing what is left and the close frame.
    Sending,
    /// Our close frame is out; reading until the client's close or end of stream.
    AwaitingPeer,
}

/// Registers a connection that hyper has handed over and starts its task.
pub fn start(
    app: &Arc<App>,
    stream: TcpStream,
    pre_read: Bytes,
    remote: SocketAddr,
    principal: Arc<Principal>,
    mode: Mode,
    deflate: u8,
) {
    let _ = stream.set_nodelay(true);
    let config = &app.config;
    let now = time::now_ms();
    let outbox = Outbox::with_limits(
        config.queue_max_frames,
        config.queue_max_bytes,
        config.slow_consumer_policy,
        app.output.clone(),
    );
    let wire = match mode {
        Mode::SocketIo => Wire::SocketIo,
        Mode::Native | Mode::Echo => Wire::Native,
    };
    let socket = Arc::new(Socket(stream));
    outbox.attach(socket.clone());
    let session = Arc::new(
        Session::new(app.next_session_id(), outbox, remote, principal, now)
            .speaking(wire)
            .deflating(deflate),
    );
    app.sessions.insert(session.id, session.clone());
    app.metrics.connections_total.fetch_add(1, Relaxed);
    // Shutdown closes every registered session; one that registered after that sweep
    // closes itself here.
    if app.shutdown.is_triggered() {
        session.outbox.close(close::GOING_AWAY, true);
    }
    if mode == Mode::SocketIo {
        // Engine.IO's open packet; the client then joins namespaces with CONNECT.
        session
            .outbox
            .send(crate::protocol::text_frame(&socketio::open_packet(
                &session.connection_id(),
                config.heartbeat_interval_ms,
                config.heartbeat_timeout_ms,
                config.max_message_bytes,
            )));
    }
    if mode == Mode::Native {
        session.outbox.send(native::event_frame(
            "/",
            "connection:established",
            &super::established(app, &session, now),
        ));
    }
    // Bytes the client sent right behind its handshake arrive as a slice of hyper's
    // read buffer; copying them out frees that whole buffer instead of keeping it for
    // the connection's life.
    let buf = BytesMut::from(&pre_read[..]);
    let conn = Conn {
        app: app.clone(),
        session,
        socket,
        mode,
        buf,
        message: None,
        limiter: RateLimiter::new(&config.rate_limit(), now),
        phase: Phase::Open,
        wants_write: false,
        closing: None,
    };
    app.shutdown.spawn(conn);
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = self.get_mut();
        if conn.closing.is_some() {
            return conn.poll_close(cx);
        }
        loop {
            // Each turn spends a unit of tokio's cooperative budget: a connection that
            // stays busy yields to other tasks when it runs out, and is polled again.
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            coop.made_progress();
            conn.handle_input();
            match conn.outbox().state() {
                state::OPEN => {
                    if conn.flush().is_err() {
                        conn.outbox().finish();
                        return Poll::Ready(());
                    }
                }
                state::CLOSING => {
                    conn.begin_close();
                    return conn.poll_close(cx);
                }
                _ => return Poll::Ready(()),
            }
            // Wait on every source at once; each poll leaves a waker registered, so a
            // busy source cannot starve the others.
            let woken = conn.session.outbox.take_wake(cx);
            let writable = conn.wants_write && conn.stream().poll_write_ready(cx).is_ready();
            let readable = conn.stream().poll_read_ready(cx).is_ready();
            if readable && !conn.read() {
                conn.peer_gone();
            }
            if !(woken || writable || readable) {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Conn {
    /// The connection is over, however it ended: it leaves every registry.
    fn drop(&mut self) {
        // Nothing writes to the socket after this: it closes with the task.
        self.session.outbox.detach();
        self.keep_for_recovery();
        let app = &self.app;
        app.sessions.remove(&self.session.id);
        app.addresses.release(self.session.remote.ip());
        app.engine.drop_session(&self.session);
        app.dashboards.remove_session(self.session.id);
        tracing::debug!(connection = self.session.id, "connection closed");
    }
}

impl Conn {
    pub(super) fn outbox(&self) -> &Outbox {
        &self.session.outbox
    }

    fn stream(&self) -> &TcpStream {
        &self.socket.0
    }

    /// Reads what the socket has into the buffer. False at end of stream or on error.
    fn read(&mut self) -> bool {
        self.buf.reserve(READ_CHUNK);
        match self.socket.0.try_read_buf(&mut self.buf) {
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

    /// Writes queued frames until the queue is empty or the socket full, at most one
    /// `write_queued` share per turn. Err on a dead socket.
    fn flush(&mut self) -> std::io::Result<()> {
        let written = writer::flush(&self.app.metrics, &self.session)?;
        self.wants_write = written == Written::Blocked;
        if written == Written::More {
            // More is queued: look again on the next turn.
            self.outbox().wake();
        }
        Ok(())
    }

    /// Starts the close handshake: the queue is flushed (when the close asked for it)
    /// or discarded, keeping only the rest of a partly written frame, and the close
    /// frame is queued behind it.
    fn begin_close(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
        }
        let code = self.outbox().close_code();
        if code == close::TRY_AGAIN_LATER {
            // Over its queue's frames or bytes, broadcasts and replies alike.
            self.app.metrics.slow_consumer_closes.fetch_add(1, Relaxed);
        }
        if !self.outbox().close_flushes() {
            self.outbox().discard();
        }
        self.outbox()
            .seal(frame::close_frame(code, writer::reason(code)));
        self.closing = Some(Box::new(Closing {
            stage: Stage::Sending,
            timer: Box::pin(tokio::time::sleep(self.app.config.close_timeout())),
        }));
    }

    /// The close handshake: what is left and the close frame, a half-close, then the
    /// client's close or the timeout. Ready when the connection is over.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(mut closing) = self.closing.take() else {
            return Poll::Ready(());
        };
        let done = self.step_close(&mut closing, cx);
        if done.is_ready() {
            self.outbox().finish();
        } else {
            self.closing = Some(closing);
        }
        done
    }

    fn step_close(&mut self, closing: &mut Closing, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match closing.stage {
                Stage::Sending => {
                    match writer::flush(&self.app.metrics, &self.session) {
                        // The queue ends with the close frame: it is out.
                        Ok(Written::All | Written::NoSink) => {
                            // FIN after the close frame: the client reads it even if
                            // unread input on our side would otherwise turn our close
                            // into a reset.
                            let _ = socket2::SockRef::from(self.stream())
                                .shutdown(std::net::Shutdown::Write);
                            self.outbox().mark_close_sent();
                            closing.stage = Stage::AwaitingPeer;
                            let deadline = Instant::now() + self.app.config.close_timeout();
                            closing.timer.as_mut().reset(deadline);
                            continue;
                        }
                        Ok(Written::More | Written::LeftToTask) => continue,
                        Ok(Written::Blocked) => {}
                        Err(_) => return Poll::Ready(()),
                    }
                    match self.stream().poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                Stage::AwaitingPeer => {
                    if self.outbox().peer_closed() {
                        return Poll::Ready(());
                    }
                    match self.stream().poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            if self.read() {
                                self.handle_input();
                            } else {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
            }
            // Waiting on the socket: the stage's deadline bounds the wait.
            return match closing.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
