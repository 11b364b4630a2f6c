//! One WebSocket connection: registration, the reader loop, and cleanup.
//!
//! The reader holds no buffer while the connection is idle: it waits for readability,
//! reads what is there into a buffer it allocates then, handles every complete frame,
//! and gives the memory back once nothing partial is left. Requests are handled here,
//! inline; their replies go to the outbox like every other frame, so the writer is the
//! only task that writes to the socket.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::net::TcpStream;

use super::frame::{self, Frame, OpCode};
use super::{writer, Mode};
use crate::app::App;
use crate::auth::Principal;
use crate::error::{close, ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::fanout::outbox::{state, Outbox};
use crate::namespace;
use crate::protocol::native;
use crate::rate_limit::{RateLimiter, Verdict};
use crate::session::Session;
use crate::time;

/// Bytes reserved per read. Most client frames are far smaller; a larger message just
/// takes several reads.
const READ_CHUNK: usize = 4096;

/// Runs a connection from the upgrade to its end.
pub async fn run(
    app: Arc<App>,
    stream: TcpStream,
    pre_read: Bytes,
    remote: SocketAddr,
    principal: Principal,
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

    let stream = Arc::new(stream);
    let writer = tokio::spawn(writer::run(app.clone(), stream.clone(), session.clone()));
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
    // read buffer; copying them out and dropping the slice frees that whole buffer
    // instead of keeping it for the connection's life.
    let buf = if pre_read.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&pre_read[..])
    };
    drop(pre_read);
    let mut reader = Reader {
        app: &app,
        session: &session,
        mode,
        buf,
        message: None,
        limiter: RateLimiter::new(
            config.rate_limit_max_messages,
            config.rate_limit_window_ms,
            now,
        ),
        phase: Phase::Open,
    };
    reader.run(&stream).await;
    drop(reader);
    let _ = writer.await;

    app.sessions.remove(&session.id);
    app.engine.drop_session(&session);
    app.dashboards.remove_session(session.id);
    tracing::debug!(connection = session.id, "connection closed");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A close is under way: frames are still parsed, to find the client's close, but
    /// data is ignored.
    Closing,
    /// The byte stream is no longer trusted (a framing error): input is discarded
    /// until the client closes.
    Draining,
}

struct Reader<'a> {
    app: &'a Arc<App>,
    session: &'a Arc<Session>,
    mode: Mode,
    buf: BytesMut,
    /// A fragmented message being assembled: its opcode and the bytes so far.
    message: Option<(OpCode, BytesMut)>,
    limiter: RateLimiter,
    phase: Phase,
}

impl Reader<'_> {
    fn outbox(&self) -> &Outbox {
        &self.session.outbox
    }

    async fn run(&mut self, stream: &TcpStream) {
        let max = self.app.config.max_message_bytes;
        loop {
            while self.phase != Phase::Draining {
                match frame::parse(&mut self.buf, max) {
                    Ok(Some(frame)) => {
                        if self.on_frame(frame) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(connection = self.session.id, error = %e, "framing error");
                        self.fail(e.close_code(), Phase::Draining);
                    }
                }
            }
            if self.phase == Phase::Draining {
                self.buf.clear();
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Give the memory back: an idle connection keeps no read buffer.
                self.buf = BytesMut::new();
            }
            if self.outbox().state() == state::DONE {
                return;
            }
            tokio::select! {
                biased;
                _ = self.outbox().reader_wake.notified() => continue,
                ready = stream.readable() => {
                    if ready.is_err() {
                        self.peer_gone();
                        return;
                    }
                }
            }
            self.buf.reserve(READ_CHUNK);
            match stream.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.peer_gone();
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.peer_gone();
                    return;
                }
            }
        }
    }

    /// The client's side ended (EOF or error) without a close handshake in progress.
    fn peer_gone(&self) {
        self.outbox().mark_peer_closed();
        if self.outbox().is_open() {
            self.outbox().finish();
        }
    }

    /// Closes the connection with `code` and stops handling data.
    fn fail(&mut self, code: u16, phase: Phase) {
        self.outbox().close(code, false);
        self.phase = phase;
        self.message = None;
    }

    /// Handles one frame; returns true when the client closed.
    fn on_frame(&mut self, frame: Frame) -> bool {
        self.session.touch(time::now_ms());
        match frame.opcode {
            OpCode::Ping => {
                if self.phase == Phase::Open {
                    self.outbox()
                        .send(frame::server_frame(OpCode::Pong, &frame.payload));
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let code = match frame.payload.len() {
                    0 => close::NORMAL,
                    1 => close::PROTOCOL_ERROR,
                    _ if std::str::from_utf8(&frame.payload[2..]).is_err() => {
                        close::INVALID_PAYLOAD
                    }
                    _ => match frame::close_code(&frame.payload) {
                        Some(c @ (1000..=1003 | 1007..=1011 | 3000..=4999)) => c,
                        _ => close::PROTOCOL_ERROR,
                    },
                };
                self.outbox().close(code, false);
                self.outbox().mark_peer_closed();
                return true;
            }
            _ if self.phase != Phase::Open => {}
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    self.fail(close::PROTOCOL_ERROR, Phase::Closing);
                } else if frame.fin {
                    self.on_message(frame.opcode, frame.payload);
                } else {
                    self.message = Some((frame.opcode, frame.payload));
                }
            }
            OpCode::Continuation => {
                let max = self.app.config.max_message_bytes;
                match self.message.as_mut() {
                    None => self.fail(close::PROTOCOL_ERROR, Phase::Closing),
                    Some((_, so_far)) if so_far.len() + frame.payload.len() > max => {
                        self.fail(close::TOO_BIG, Phase::Closing)
                    }
                    Some((_, so_far)) => {
                        so_far.extend_from_slice(&frame.payload);
                        if frame.fin {
                            if let Some((opcode, payload)) = self.message.take() {
                                self.on_message(opcode, payload);
                            }
                        }
                    }
                }
            }
        }
        false
    }

    /// Handles one complete message.
    fn on_message(&mut self, opcode: OpCode, payload: BytesMut) {
        let metrics = &self.app.metrics;
        metrics.messages_received.fetch_add(1, Relaxed);
        if opcode == OpCode::Text && valid_utf8(&payload).is_err() {
            self.fail(close::INVALID_PAYLOAD, Phase::Closing);
            return;
        }
        if self.mode == Mode::Echo {
            self.outbox().send(frame::server_frame(opcode, &payload));
            return;
        }
        let started = Instant::now();
        let parsed = match opcode {
            OpCode::Text => native::parse_request(&payload),
            _ => Err(native::BadRequest {
                refusal: Refusal::new(
                    ErrorCode::InvalidMessage,
                    "binary frames are not accepted; send JSON text frames",
                ),
                ns: "/".into(),
                event: None,
                ack: None,
            }),
        };
        // Every frame, good or bad, counts toward the rate limit.
        let verdict = self.limiter.check(time::now_ms());
        let refusal = match (&parsed, verdict) {
            (_, Verdict::Close) => {
                metrics.error(ErrorCode::RateLimited);
                tracing::info!(target: "nilecast::security", connection = self.session.id, remote = %self.session.remote, "rate limit exceeded repeatedly; closing with 1008");
                self.fail(close::POLICY, Phase::Closing);
                return;
            }
            (_, Verdict::Refuse { retry_after_ms }) => {
                let mut r = Refusal::new(ErrorCode::RateLimited, "too many messages; slow down");
                r.retry_after_ms = Some(retry_after_ms);
                Some(r)
            }
            (Err(bad), Verdict::Allow) => Some(bad.refusal.clone()),
            (Ok(req), Verdict::Allow) => namespace::handle(self.app, self.session, req).err(),
        };
        if let Some(refusal) = refusal {
            metrics.error(refusal.code);
            let (ns, event, ack) = match &parsed {
                Ok(req) => (req.ns.as_str(), Some(req.event.as_str()), req.ack),
                Err(bad) => (bad.ns.as_str(), bad.event.as_deref(), bad.ack),
            };
            self.outbox()
                .send(native::refusal_frame(ns, &refusal, event, ack));
        }
        metrics
            .request_time_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        metrics.requests_handled.fetch_add(1, Relaxed);
    }
}

/// UTF-8 validation of a text message.
fn valid_utf8(bytes: &[u8]) -> Result<(), std::str::Utf8Error> {
    std::str::from_utf8(bytes).map(|_| ())
}
