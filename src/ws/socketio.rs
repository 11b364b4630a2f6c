//! The Socket.IO side of a connection (`/socket.io/`, Engine.IO v4 over WebSocket,
//! Socket.IO protocol v5): the open packet, pings, namespace CONNECT with its `auth`
//! payload, EVENT in and ACK out, DISCONNECT, and connection state recovery.
//!
//! Everything past CONNECT is the native protocol's handling: an EVENT becomes the same
//! [`Request`] a native frame does and goes through [`namespace::handle`]; replies and
//! pushes are encoded for the session's [`Wire`]. So every namespace, event, filter,
//! replay and auth rule is the same on both.
//!
//! Connection state recovery (socket.io-client 4.6+): the CONNECT reply carries a
//! `pid`; each change event carries its seq, as a string, as its last argument (the
//! offset). When the connection ends, each namespace's stream subscriptions are kept
//! under its pid for `REPLAY_MAX_AGE_MS` (in memory, and in the database or, in Redis
//! cluster mode without one, in Redis, so any node can recover it); a client that
//! reconnects with `{pid, offset}` gets them back, with every change after the offset
//! replayed (from the ring, the change log or the cluster's stream), and the same pid,
//! so `socket.recovered` is true.

use std::sync::Arc;

use bytes::BytesMut;
use dashmap::DashMap;
use serde_json::{json, Map, Value};

use super::conn::Conn;
use super::frame::OpCode;
use super::input::Phase;
use crate::app::App;
use crate::auth::Principal;
use crate::bus::KeptSession;
use crate::error::{close, ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::namespace::{self, filter::Filter};
use crate::protocol::native::{BadRequest, Request};
use crate::protocol::socketio::{self, EnginePacket, Packet, PacketType};
use crate::protocol::{text_frame, Wire};
use crate::session::{Session, SubKind};
use crate::time;

/// What a Socket.IO connection knows beyond the session: the namespaces it joined and
/// the private session id (pid) of each. Kept in [`SocketIo`] by connection id rather
/// than in the connection's task, which every native connection would pay for.
#[derive(Default)]
struct SioState {
    joined: [Option<Joined>; 6],
}

struct Joined {
    pid: Box<str>,
    /// The last seq when the namespace was joined: a recovery without an offset (the
    /// client had received no change yet) replays from here.
    joined_at_seq: u64,
}

/// The server's Socket.IO state: the namespaces each live connection joined, and the
/// subscriptions kept for clients to recover, by pid.
#[derive(Default)]
pub struct SocketIo {
    live: DashMap<u64, SioState>,
    kept: DashMap<Box<str>, Kept>,
}

struct Kept {
    tenant: Arc<str>,
    user_id: Arc<str>,
    ns: Namespace,
    filters: Vec<Filter>,
    since_default: u64,
    expires_ms: u64,
}

impl SocketIo {
    /// Forgets what has expired.
    pub fn sweep(&self, now_ms: u64) {
        self.kept.retain(|_, k| k.expires_ms > now_ms);
    }

    /// Subscriptions kept for recovery.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }
}

/// The Engine.IO open packet.
pub fn open_packet(
    sid: &str,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> Vec<u8> {
    let mut out = b"0".to_vec();
    let body = json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    });
    out.extend_from_slice(body.to_string().as_bytes());
    out
}

/// A random pid: 128 bits from the operating system's cryptographic source, hex. Who
/// knows a pid may try to recover its session, so it must not be guessable from other
/// pids (as a fast non-cryptographic generator's output is). None if the source fails.
fn new_pid() -> Option<Box<str>> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_boxed_str(),
    )
}

/// `40<ns,>{...}` or `44<ns,>{...}`: a CONNECT reply or CONNECT_ERROR.
fn connect_frame(kind: u8, ns: &str, data: &Value) -> bytes::Bytes {
    let mut out = vec![b'4', kind];
    if ns != "/" {
        out.extend_from_slice(ns.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(data.to_string().as_bytes());
    text_frame(&out)
}

/// The rest of a CONNECT, once what the client may recover is known: the reply with
/// the sid and pid (the same pid when recovered), `connection:established` on `/`, and
/// the recovered subscriptions with every change after the offset.
fn finish_connect(
    app: &Arc<App>,
    session: &Arc<Session>,
    path: &str,
    ns: Namespace,
    kept: Option<(Box<str>, Kept)>,
    offset: Option<u64>,
) {
    let grant = session.grant();
    if session.is_closed() || !session.outbox.is_open() {
        // The connection ended while its kept session was looked up: nothing to join
        // (and its state must not be registered again after it was removed).
        return;
    }
    let principal = grant.principal.clone();
    // Recovered only when every change after the offset can still be replayed: from
    // the ring, or with a database from the change log. Otherwise a fresh session.
    let replayable = |since: u64| app.bus.log().is_some() || since >= app.engine.ring_floor();
    let recovered = kept.filter(|(_, kept)| {
        kept.ns == ns
            && kept.tenant == principal.tenant
            && kept.user_id == principal.user_id
            && replayable(offset.unwrap_or(kept.since_default))
    });
    let pid = match &recovered {
        Some((pid, _)) => pid.clone(),
        None => match new_pid() {
            Some(pid) => pid,
            None => {
                tracing::error!("the operating system's random source failed");
                app.metrics.error(ErrorCode::Internal);
                session.outbox.send(connect_frame(
                    b'4',
                    path,
                    &json!({ "message": "internal error", "data": { "code": "internal" } }),
                ));
                return;
            }
        },
    };
    let sid = format!("{}-{}", session.connection_id(), ns as usize);
    app.socketio.live.entry(session.id).or_default().joined[ns as usize] = Some(Joined {
        pid: pid.clone(),
        joined_at_seq: app.engine.last_seq(),
    });
    session.outbox.send(connect_frame(
        b'0',
        path,
        &json!({ "sid": sid, "pid": &*pid }),
    ));
    if ns == Namespace::Root {
        session.outbox.send(Wire::SocketIo.event_frame(
            "/",
            "connection:established",
            &super::established(app, session, time::now_ms()),
        ));
    }
    if let Some((_, kept)) = recovered {
        // Each subscription is checked as a fresh subscribe's would be, against the
        // roles the connection has now, and counts toward the cap: what is refused is
        // not restored.
        let since = offset.unwrap_or(kept.since_default);
        for filter in kept.filters {
            if let Err(refusal) = namespace::resubscribe(app, session, &grant, filter, since) {
                app.metrics.error(refusal.code);
                tracing::debug!(connection = session.id, error = %refusal.message, "a kept subscription was not restored");
            }
        }
        app.metrics
            .socketio_recoveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Kept {
    fn from_shared(k: KeptSession) -> Option<Kept> {
        Some(Kept {
            tenant: Arc::from(k.tenant.as_str()),
            user_id: Arc::from(k.user_id.as_str()),
            ns: Namespace::parse(&k.namespace)?,
            filters: serde_json::from_value(k.filters).ok()?,
            since_default: k.since_seq,
            expires_ms: u64::MAX,
        })
    }
}

impl Conn {
    /// Handles one complete message of a Socket.IO connection.
    /// `admitted` is the rate limit's verdict on it: a refused EVENT is answered with
    /// `rate_limited` (on its ack when it asked for one).
    pub(super) fn on_socketio(
        &mut self,
        opcode: OpCode,
        payload: BytesMut,
        admitted: Result<(), Refusal>,
    ) {
        let refuse = |conn: &mut Conn, ns: &str, refusal: Refusal| {
            conn.app.metrics.error(refusal.code);
            conn.outbox()
                .send(Wire::SocketIo.refusal_frame(ns, &refusal, None, None));
        };
        if opcode != OpCode::Text {
            refuse(
                self,
                "/",
                Refusal::new(
                    ErrorCode::InvalidMessage,
                    "binary attachments are not supported; send JSON arguments",
                ),
            );
            return;
        }
        let Ok(text) = std::str::from_utf8(&payload) else {
            // Text frames were checked for UTF-8 before they got here.
            return;
        };
        match socketio::decode(text) {
            Ok(EnginePacket::Ping(probe)) => {
                self.outbox()
                    .send(text_frame(format!("3{probe}").as_bytes()));
            }
            Ok(EnginePacket::Pong(_) | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            Ok(EnginePacket::Close) => self.fail(close::NORMAL, Phase::Closing),
            Ok(EnginePacket::Message(packet)) if packet.kind == PacketType::Event => {
                self.event(packet, admitted)
            }
            Ok(EnginePacket::Message(_)) if admitted.is_err() => {
                if let Err(refusal) = admitted {
                    refuse(self, "/", refusal);
                }
            }
            Ok(EnginePacket::Message(packet)) => self.on_packet(packet),
            Err(e) => {
                let message = match e {
                    socketio::DecodeError::Binary => {
                        "binary attachments are not supported; send JSON arguments".to_string()
                    }
                    e => format!("malformed Socket.IO packet: {e}"),
                };
                refuse(self, "/", Refusal::new(ErrorCode::InvalidMessage, message));
            }
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        match packet.kind {
            PacketType::Connect => self.connect(&packet.ns, packet.data),
            PacketType::Disconnect => self.disconnect(&packet.ns),
            // Events go through `event`; the server asks for no acks, so there is
            // nothing to match one with.
            PacketType::Event | PacketType::Ack | PacketType::ConnectError => {}
        }
    }

    fn joined(&self, ns: Namespace) -> bool {
        self.app
            .socketio
            .live
            .get(&self.session.id)
            .is_some_and(|s| s.joined[ns as usize].is_some())
    }

    /// Namespace CONNECT: checks the token in `auth` (when auth is on), recovers the
    /// client's subscriptions when it sends a known pid, and answers with the sid and
    /// pid, or CONNECT_ERROR. A pid this node does not hold is looked up in the
    /// database, when there is one (the client may come from another node), in a task
    /// of its own: the client sends nothing on the namespace until it has the reply.
    fn connect(&mut self, path: &str, auth: Option<Value>) {
        let auth = match auth {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let Some(ns) = Namespace::parse(path) else {
            self.connect_error(path, "Invalid namespace", ErrorCode::NotFound);
            return;
        };
        if let Err(refusal) = self.authenticate(&auth) {
            self.connect_error(path, &refusal.message, refusal.code);
            return;
        }
        let offset = auth
            .get("offset")
            .and_then(Value::as_str)
            .and_then(|o| o.parse::<u64>().ok());
        let pid = auth.get("pid").and_then(Value::as_str);
        // A kept session is taken only by its own tenant and user: a pid presented by
        // anyone else leaves it where it is.
        let principal = self.session.principal();
        let local = pid.and_then(|pid| {
            self.app.socketio.kept.remove_if(pid, |_, k| {
                k.tenant == principal.tenant && k.user_id == principal.user_id
            })
        });
        match (local, pid) {
            (None, Some(pid)) if self.app.bus.sessions().is_some() => {
                let (app, session) = (self.app.clone(), self.session.clone());
                let (pid, path) = (pid.to_string(), path.to_string());
                tokio::spawn(async move {
                    let Some(shared) = app.bus.sessions() else {
                        return;
                    };
                    let kept = match shared
                        .take(&pid, &principal.tenant, &principal.user_id)
                        .await
                    {
                        Ok(kept) => kept.and_then(Kept::from_shared),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not look up a Socket.IO session to recover");
                            None
                        }
                    };
                    let kept = kept.map(|k| (Box::from(pid.as_str()), k));
                    finish_connect(&app, &session, &path, ns, kept, offset);
                });
            }
            (local, _) => finish_connect(&self.app, &self.session, path, ns, local, offset),
        }
    }

    /// With auth on, a CONNECT's `auth.token` must verify (or the upgrade carried a
    /// valid token). A token for another identity than the connection's is refused.
    fn authenticate(&mut self, auth: &Map<String, Value>) -> Result<(), Refusal> {
        let Some(verifier) = &self.app.config.verifier else {
            return Ok(());
        };
        let current = self.session.principal();
        match auth.get("token").and_then(Value::as_str) {
            Some(token) => match verifier.check(
                token,
                &self.app.metrics,
                self.session.remote,
                "Socket.IO CONNECT",
            ) {
                Ok(p) => {
                    if current.authenticated
                        && (current.user_id != p.user_id || current.tenant != p.tenant)
                    {
                        return Err(Refusal::new(
                            ErrorCode::Forbidden,
                            "this connection is authenticated as another user",
                        ));
                    }
                    if current.roles == p.roles && current.authenticated {
                        // A refreshed token of the same identity.
                        self.session.principal.store(Arc::new(p));
                    } else {
                        // Other roles (or a first login): what was subscribed under the
                        // previous ones goes, as with `auth:login`.
                        self.app.engine.switch_principal(&self.session, Arc::new(p));
                        self.app.dashboards.remove_session(self.session.id);
                    }
                    Ok(())
                }
                Err(refusal) => Err(refusal),
            },
            None if current.authenticated => Ok(()),
            None => Err(Refusal::new(
                ErrorCode::Unauthorized,
                "a token is required: io(url, { auth: { token } })",
            )),
        }
    }

    fn connect_error(&mut self, ns: &str, message: &str, code: ErrorCode) {
        self.app.metrics.error(code);
        self.outbox().send(connect_frame(
            b'4',
            ns,
            &json!({ "message": message, "data": { "code": code.as_str() } }),
        ));
    }

    /// DISCONNECT from a namespace: its subscriptions end and nothing is kept for
    /// recovery (the client left on purpose).
    fn disconnect(&mut self, path: &str) {
        let Some(ns) = Namespace::parse(path) else {
            return;
        };
        if let Some(mut state) = self.app.socketio.live.get_mut(&self.session.id) {
            state.joined[ns as usize] = None;
        }
        if let Ok(removed) = self.app.engine.unsubscribe(&self.session, ns, None) {
            if ns == Namespace::Dashboard {
                self.app.dashboards.remove(self.session.id, &removed);
            }
        }
    }

    /// An EVENT: the same request a native frame makes.
    fn event(&mut self, packet: Packet, admitted: Result<(), Refusal>) {
        let Some(ns) = Namespace::parse(&packet.ns) else {
            return;
        };
        if !self.joined(ns) {
            // Socket.IO drops packets for namespaces the client has not joined.
            tracing::debug!(connection = self.session.id, ns = %packet.ns, "event on a namespace not joined");
            return;
        }
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        let event = match args.first() {
            Some(Value::String(name)) => name.clone(),
            _ => return,
        };
        let parsed = match args.get_mut(1).map(Value::take) {
            Some(Value::Object(data)) => Ok(Request {
                ns: packet.ns,
                event,
                data,
                ack: packet.id,
            }),
            None | Some(Value::Null) => Ok(Request {
                ns: packet.ns,
                event,
                data: Map::new(),
                ack: packet.id,
            }),
            Some(_) => Err(BadRequest {
                refusal: Refusal::new(
                    ErrorCode::InvalidMessage,
                    "the event's first argument must be an object",
                ),
                ns: packet.ns,
                event: Some(event),
                ack: packet.id,
            }),
        };
        self.on_request(parsed, admitted);
    }

    /// Keeps the stream subscriptions of every joined namespace for recovery, under
    /// its pid. Called when the connection ends.
    pub(super) fn keep_for_recovery(&mut self) {
        if self.session.wire != Wire::SocketIo {
            return;
        }
        let Some((_, state)) = self.app.socketio.live.remove(&self.session.id) else {
            return;
        };
        let principal: Arc<Principal> = self.session.principal();
        let expires_ms = time::now_ms() + self.app.config.replay_max_age_ms;
        let subs = self.session.subs.lock();
        for (i, joined) in state.joined.into_iter().enumerate() {
            let Some(joined) = joined else { continue };
            let ns = Namespace::ALL[i];
            let filters: Vec<Filter> = subs
                .iter()
                .filter(|s| s.ns == ns)
                .filter_map(|s| match &s.kind {
                    SubKind::Stream(sub) => Some(sub.filter.clone()),
                    SubKind::Dashboard(_) => None,
                })
                .collect();
            if self.app.bus.sessions().is_some() {
                let kept = KeptSession {
                    tenant: principal.tenant.to_string(),
                    user_id: principal.user_id.to_string(),
                    namespace: ns.path().to_string(),
                    filters: serde_json::to_value(&filters).unwrap_or(Value::Null),
                    since_seq: joined.joined_at_seq,
                };
                let pid = joined.pid.clone();
                let app = self.app.clone();
                // Tracked by the shutdown, so a graceful stop writes it before exiting.
                self.app.shutdown.spawn(async move {
                    let Some(shared) = app.bus.sessions() else {
                        return;
                    };
                    if let Err(e) = shared.keep(&pid, &kept, expires_ms).await {
                        tracing::warn!(error = %e, "could not keep a Socket.IO session for recovery");
                    }
                });
            }
            self.app.socketio.kept.insert(
                joined.pid,
                Kept {
                    tenant: principal.tenant.clone(),
                    user_id: principal.user_id.clone(),
                    ns,
                    filters,
                    since_default: joined.joined_at_seq,
                    expires_ms,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_packet_names_the_websocket_only_session() {
        let text = String::from_utf8(open_packet("c-1", 25000, 20000, 65536)).expect("utf8");
        assert!(text.starts_with('0'));
        let body: Value = serde_json::from_str(&text[1..]).expect("json");
        assert_eq!(body["sid"], "c-1");
        assert_eq!(body["upgrades"], json!([]));
        assert_eq!(body["pingInterval"], 25000);
        assert_eq!(body["pingTimeout"], 20000);
        assert_eq!(body["maxPayload"], 65536);
    }

    #[test]
    fn pids_are_unique_and_hex() {
        let (a, b) = (new_pid().expect("pid"), new_pid().expect("pid"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
