//! WebSocket connections: the upgrade, then one task per connection.
//!
//! The upgrade is answered by hyper; the socket is then taken back out of hyper
//! (`Upgraded::downcast`) so the connection can wait for readability with no buffer and
//! read only when bytes are there, and hand many frames to one vectored write. That is
//! why the framing is ours ([`frame`], in the core crate) and not fastwebsockets': its
//! reader owns an 8 KiB buffer per connection for the connection's whole life, which an
//! idle-heavy broadcast server can not afford.
//!
//! Architecture Invariant: only this module touches WebSocket sockets.

pub mod conn;
pub use nilecast_core::ws::{deflate, frame};
mod input;
pub mod socketio;
pub mod writer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::app::App;
use crate::error::{ErrorCode, Refusal};
use crate::http::error_response;
use crate::security::{self, Event};
use crate::time;

/// What a connection speaks after the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The native protocol (docs/protocol.md, "3. Native protocol frames").
    Native,
    /// The `/echo` conformance endpoint: every message comes back unchanged.
    Echo,
    /// Socket.IO v4 over WebSocket (`/socket.io/`).
    SocketIo,
}

/// Is this request a WebSocket upgrade?
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has_token(UPGRADE, "websocket") && has_token(CONNECTION, "upgrade")
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Answers an upgrade request and starts the connection once hyper hands the socket
/// over.
pub fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    mode: Mode,
) -> Response<Full<Bytes>> {
    let refuse =
        |code: ErrorCode, message: &'static str| error_response(&Refusal::new(code, message));
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(
            ErrorCode::InvalidMessage,
            "Sec-WebSocket-Version must be 13",
        );
    }
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return refuse(ErrorCode::InvalidMessage, "Sec-WebSocket-Key is missing");
    };
    if app.shutdown.is_triggered() {
        return refuse(ErrorCode::Unavailable, "server is shutting down");
    }
    let remote = security::client_addr(remote, req.headers(), &app.config.trusted);
    let origin = req.headers().get(ORIGIN).map(HeaderValue::as_bytes);
    if !security::origin_allowed(origin, &app.config.cors_origin) {
        let shown = String::from_utf8_lossy(origin.unwrap_or_default()).into_owned();
        security::record(
            &app.metrics,
            Event::OriginRefused,
            remote,
            &format!("upgrade from origin {shown} refused: not in CORS_ORIGIN"),
        );
        app.metrics.error(ErrorCode::Forbidden);
        return refuse(ErrorCode::Forbidden, "this origin may not connect");
    }
    let principal = match crate::http::identify(app, &req, remote) {
        Ok(p) => p,
        Err(refusal) => {
            app.metrics.error(refusal.code);
            return error_response(&refusal);
        }
    };
    if app.sessions.len() >= app.config.max_connections || app.over_memory() {
        app.metrics.connections_refused.fetch_add(1, Relaxed);
        return refuse(
            ErrorCode::Unavailable,
            "server is at capacity; try another node or later",
        );
    }
    // A connection accepted directly from the client already holds a place in its
    // address's count; the upgrade takes it over rather than counting it twice, and the
    // connection's end (Conn's drop, or a failed upgrade below) gives it back once.
    let place = req.extensions().get::<security::Place>().cloned();
    if let Err(event) = app
        .addresses
        .admit_upgrade(remote.ip(), time::now_ms(), place.as_ref())
    {
        app.metrics.connections_refused.fetch_add(1, Relaxed);
        app.metrics.error(ErrorCode::RateLimited);
        let message = match event {
            Event::AddressConnections => "too many connections from this address",
            _ => "connecting too fast from this address; slow down",
        };
        security::record(&app.metrics, event, remote, message);
        return refuse(ErrorCode::RateLimited, message);
    }

    // permessage-deflate, when offered and enabled (docs/protocol.md, "2.1 Compression").
    let deflate = app
        .config
        .permessage_deflate
        .then(|| {
            deflate::negotiate(
                req.headers()
                    .get_all(SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
        })
        .flatten();

    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    app.shutdown.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                task_app.addresses.release(remote.ip());
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // The connection gets a task of its own: this one, which also held
                // hyper's upgrade state, ends here instead of living (and holding about
                // 900 bytes) as long as the connection.
                let (stream, pre_read) = (parts.io.into_inner(), parts.read_buf);
                let window_bits = deflate.map_or(0, |d| d.window_bits);
                conn::start(
                    &task_app,
                    stream,
                    pre_read,
                    remote,
                    principal,
                    mode,
                    window_bits,
                );
            }
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                task_app.addresses.release(remote.ip());
            }
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept_key(&key)) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(extension) = deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, extension);
    }
    response
}

/// `connection:established` (docs/protocol.md, "3.3 `connection:established`"): the
/// first event on `/`, the same for both protocols.
pub fn established(
    app: &crate::app::App,
    session: &crate::session::Session,
    now_ms: u64,
) -> serde_json::Value {
    serde_json::json!({
        "connectionId": session.connection_id(),
        "node": &app.node_id,
        "serverTime": crate::time::iso8601(now_ms),
        "namespaces": crate::fanout::change::Namespace::ALL.iter().map(|n| n.path()).collect::<Vec<_>>(),
        "authenticated": session.principal().authenticated,
        "heartbeatMs": app.config.heartbeat_interval_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
