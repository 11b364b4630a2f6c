//! Input: the client's frames, parsed from the connection's read buffer, and the
//! requests they carry, handled inline. Replies go to the outbox like every other
//! frame, so output keeps one order and one path to the socket.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;

use super::conn::{Conn, Partial};
use super::deflate;
use super::frame::{self, Frame, OpCode};
use super::Mode;
use crate::error::{close, ErrorCode, Refusal};
use crate::namespace;
use crate::protocol::native;
use crate::rate_limit::Verdict;
use crate::security::{self, Event};
use crate::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// A close is under way: frames are still parsed, to find the client's close, but
    /// data is ignored.
    Closing,
    /// The byte stream is no longer trusted (a framing error): input is discarded
    /// until the client closes.
    Draining,
}

impl Conn {
    /// Handles every complete frame in the read buffer. In the draining phase input is
    /// discarded instead. The buffer's memory is given back once nothing partial is
    /// left, so an idle connection holds no read buffer.
    pub(super) fn handle_input(&mut self) {
        let max = self.app.config.max_message_bytes;
        while self.phase != Phase::Draining && !self.buf.is_empty() {
            // A close already requested (a slow consumer over its budget, say) stops
            // the handling of requests still buffered: their replies could not be sent,
            // and building them is work and memory an attacker would choose.
            if self.phase == Phase::Open && !self.outbox().is_open() {
                self.phase = Phase::Closing;
            }
            match frame::parse(&mut self.buf, max, self.session.deflate != 0) {
                Ok(Some(frame)) => {
                    if self.on_frame(frame) {
                        // The client closed: whatever follows its close frame is moot.
                        self.buf.clear();
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
            self.buf = BytesMut::new();
        }
    }

    /// Closes the connection with `code` and stops handling data. What was queued
    /// before (replies to the client's earlier, valid messages) still goes out first.
    pub(super) fn fail(&mut self, code: u16, phase: Phase) {
        self.outbox().close(code, true);
        self.phase = phase;
        self.message = None;
    }

    /// Handles one frame; returns true when the client closed.
    fn on_frame(&mut self, frame: Frame) -> bool {
        self.session.touch(time::now_ms());
        match frame.opcode {
            OpCode::Ping => {
                // Pings count toward the rate limit like messages: answering them is
                // work, and a pong is output. A ping over the limit gets no pong.
                if self.phase == Phase::Open && matches!(self.admit(), Some(Ok(()))) {
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
                let compressed = frame.compressed;
                if self.message.is_some() {
                    self.fail(close::PROTOCOL_ERROR, Phase::Closing);
                } else if frame.fin {
                    self.on_message(frame.opcode, frame.payload, compressed);
                } else if frame.opcode == OpCode::Text
                    && !compressed
                    && !utf8_so_far(&frame.payload, false)
                {
                    self.fail(close::INVALID_PAYLOAD, Phase::Closing);
                } else {
                    self.message = Some(Box::new(Partial {
                        opcode: frame.opcode,
                        compressed,
                        bytes: frame.payload,
                    }));
                }
            }
            // Only a message's first frame may carry RSV1 (RFC 7692 section 6.1).
            OpCode::Continuation if frame.compressed => {
                self.fail(close::PROTOCOL_ERROR, Phase::Closing)
            }
            OpCode::Continuation => {
                let max = self.app.config.max_message_bytes;
                match self.message.as_deref_mut() {
                    None => self.fail(close::PROTOCOL_ERROR, Phase::Closing),
                    Some(partial) if partial.bytes.len() + frame.payload.len() > max => {
                        self.fail(close::TOO_BIG, Phase::Closing)
                    }
                    Some(partial) => {
                        let so_far = &mut partial.bytes;
                        let checked = so_far.len();
                        so_far.extend_from_slice(&frame.payload);
                        // Fail fast on invalid UTF-8 in a fragment, rather than at the
                        // end of a long message (from the last whole character on).
                        // Compressed bytes are checked once decompressed.
                        let from = checked.saturating_sub(3);
                        if partial.opcode == OpCode::Text
                            && !partial.compressed
                            && !frame.fin
                            && !utf8_so_far(&so_far[from..], true)
                        {
                            self.fail(close::INVALID_PAYLOAD, Phase::Closing);
                            return false;
                        }
                        if frame.fin {
                            if let Some(message) = self.message.take() {
                                let Partial {
                                    opcode,
                                    compressed,
                                    bytes,
                                } = *message;
                                self.on_message(opcode, bytes, compressed);
                            }
                        }
                    }
                }
            }
        }
        false
    }

    /// Handles one complete message, decompressing it first when it is compressed.
    fn on_message(&mut self, opcode: OpCode, payload: BytesMut, compressed: bool) {
        let metrics = &self.app.metrics;
        metrics.messages_received.fetch_add(1, Relaxed);
        let payload = if compressed {
            match deflate::inflate(&payload, self.app.config.max_message_bytes) {
                Ok(inflated) => BytesMut::from(bytes::Bytes::from(inflated)),
                Err(e) => {
                    metrics.inflate_refused.fetch_add(1, Relaxed);
                    tracing::debug!(connection = self.session.id, error = %e, "compressed message refused");
                    self.fail(e.close_code(), Phase::Closing);
                    return;
                }
            }
        } else {
            payload
        };
        if opcode == OpCode::Text && valid_utf8(&payload).is_err() {
            self.fail(close::INVALID_PAYLOAD, Phase::Closing);
            return;
        }
        if self.mode == Mode::Echo {
            // Echoes are compressed like broadcasts: when it helps and fits the
            // client's window.
            let window = self.session.deflate;
            let echo = (window != 0)
                .then(|| deflate::deflate_message(opcode, &payload, window))
                .flatten()
                .map(|d| d.frame);
            let echo = echo.unwrap_or_else(|| frame::server_frame(opcode, &payload));
            self.outbox().send(echo);
            return;
        }
        let started = Instant::now();
        // Every message, good or bad, counts toward the rate limit.
        let Some(admitted) = self.admit() else {
            return;
        };
        if self.mode == Mode::SocketIo {
            self.on_socketio(opcode, payload, admitted);
        } else {
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
            self.on_request(parsed, admitted);
        }
        let metrics = &self.app.metrics;
        metrics
            .request_time_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        metrics.requests_handled.fetch_add(1, Relaxed);
    }

    /// Counts a message toward the rate limit: `Ok` to go on, `Err` the refusal to
    /// answer it with, or None when the connection went on past the limit for too long
    /// and is being closed (1008).
    fn admit(&mut self) -> Option<Result<(), Refusal>> {
        let metrics = &self.app.metrics;
        match self
            .limiter
            .check(&self.app.config.rate_limit(), time::now_ms())
        {
            Verdict::Close => {
                metrics.error(ErrorCode::RateLimited);
                security::record(
                    metrics,
                    Event::RateLimitClose,
                    self.session.remote,
                    &format!(
                        "connection {} kept sending past its rate limit; closing with 1008",
                        self.session.id
                    ),
                );
                self.fail(close::POLICY, Phase::Closing);
                None
            }
            Verdict::Refuse { retry_after_ms } => {
                let mut r = Refusal::new(ErrorCode::RateLimited, "too many messages; slow down");
                r.retry_after_ms = Some(retry_after_ms);
                Some(Err(r))
            }
            Verdict::Allow => Some(Ok(())),
        }
    }

    /// Handles a parsed request (or the refusal of a bad one), answering refusals in
    /// the connection's protocol.
    pub(super) fn on_request(
        &mut self,
        parsed: Result<native::Request, native::BadRequest>,
        admitted: Result<(), Refusal>,
    ) {
        let refusal = match (&parsed, admitted) {
            (_, Err(r)) => Some(r),
            (Err(bad), Ok(())) => Some(bad.refusal.clone()),
            // While the server-wide output budget is spent, no new work is taken on.
            (Ok(_), Ok(())) if self.app.output.is_spent() => Some(Refusal::new(
                ErrorCode::Unavailable,
                "the server is short of output memory; try again",
            )),
            (Ok(req), Ok(())) => namespace::handle(&self.app, &self.session, req).err(),
        };
        let Some(refusal) = refusal else {
            return;
        };
        namespace::count_refusal(&self.app, &self.session, &refusal);
        let (ns, event, ack) = match &parsed {
            Ok(req) => (req.ns.as_str(), Some(req.event.as_str()), req.ack),
            Err(bad) => (bad.ns.as_str(), bad.event.as_deref(), bad.ack),
        };
        self.outbox()
            .send(self.session.wire.refusal_frame(ns, &refusal, event, ack));
    }
}

/// Could `bytes` begin a valid UTF-8 text? True when it is valid, or valid up to a
/// character cut off at its end. With `resume`, `bytes` starts up to 3 bytes before the
/// end of text already checked, possibly inside a character: leading continuation
/// bytes are skipped.
fn utf8_so_far(bytes: &[u8], resume: bool) -> bool {
    let start = if resume {
        bytes
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count()
    } else {
        0
    };
    match std::str::from_utf8(&bytes[start..]) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// UTF-8 validation of a text message.
fn valid_utf8(bytes: &[u8]) -> Result<(), std::str::Utf8Error> {
    std::str::from_utf8(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::utf8_so_far;

    #[test]
    fn utf8_prefixes_are_checked_across_fragments() {
        let euro = "€".as_bytes(); // three bytes
        assert!(
            utf8_so_far(&euro[..2], false),
            "a cut-off character is fine"
        );
        assert!(
            !utf8_so_far(&[0x80], false),
            "a stray continuation byte is not"
        );
        assert!(!utf8_so_far(&[b'a', 0xFF], false));
        // Resuming inside the euro sign, then a bad byte.
        let mut text = b"ab".to_vec();
        text.extend_from_slice(euro);
        assert!(utf8_so_far(&text[3..], true));
        text.push(0xC0);
        text.push(b'x');
        assert!(!utf8_so_far(&text[2..], true));
    }
}
