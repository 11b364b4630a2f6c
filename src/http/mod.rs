//! HTTP: the accept loop, one hyper connection per socket, and the small helpers every
//! route shares (JSON answers, error bodies, query strings). `table.rs` is the route
//! table (every method, path, caller check and handler, in one list); `routes.rs` holds
//! the handlers and CORS.
//!
//! Every accepted connection takes a place in its address's count
//! (`MAX_CONNECTIONS_PER_IP`) before hyper sees it, unless it comes from a trusted
//! proxy; a WebSocket upgrade takes that place over (`ws::upgrade`).
//!
//! Architecture Invariant: HTTP handlers reach the engine only through `App`; they
//! never hold a socket other than their own request's.

pub mod peer;
mod routes;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::auth::{self, Principal};
use crate::error::{ErrorCode, Refusal};
use crate::security::{self, Event, Place};

/// How long a refused connection is kept to read the client's request before it is
/// closed. Closing a socket with unread input makes the kernel answer with a reset,
/// which can destroy the 429 on its way; a second is plenty for a client that sends its
/// request at once, and short enough that refused connections can not pile up.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = app.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                // Counted here, in accept order, so an address's connection over the
                // limit is refused even if it never sends a byte. A trusted proxy's
                // connections carry many clients: those are counted by their forwarded
                // address at the upgrade instead.
                let from_proxy = app.config.trusted.iter().any(|r| r.contains(remote.ip()));
                let place = if from_proxy {
                    Ok(None)
                } else {
                    app.addresses
                        .admit_connection(remote.ip(), crate::time::now_ms())
                };
                let app2 = app.clone();
                match place {
                    Ok(place) => app.shutdown.spawn(serve(app2, stream, remote, place)),
                    Err(event) => app.shutdown.spawn(refuse(app2, stream, remote, event)),
                };
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Gives a connection's place back when its task ends, however it ends.
struct PlaceGuard {
    app: Arc<App>,
    place: Place,
}

impl Drop for PlaceGuard {
    fn drop(&mut self) {
        self.app.addresses.release_place(&self.place);
    }
}

async fn serve(app: Arc<App>, stream: TcpStream, remote: SocketAddr, place: Option<Place>) {
    let _guard = place.clone().map(|place| PlaceGuard {
        app: app.clone(),
        place,
    });
    let _ = stream.set_nodelay(true);
    let service = {
        let app = app.clone();
        service_fn(move |mut req| {
            let app = app.clone();
            // The upgrade finds the connection's place here and takes it over.
            if let Some(place) = &place {
                req.extensions_mut().insert(place.clone());
            }
            async move { Ok::<_, std::convert::Infallible>(routes::route(app, req, remote).await) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(app.config.handshake_timeout_ms))
        .max_buf_size(app.config.max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers a connection over its address's limit with 429 `rate_limited` and closes
/// it, without handing it to hyper.
async fn refuse(app: Arc<App>, mut stream: TcpStream, remote: SocketAddr, event: Event) {
    let message = "too many connections from this address";
    security::record(&app.metrics, event, remote, message);
    app.metrics.connections_refused.fetch_add(1, Relaxed);
    app.metrics.error(ErrorCode::RateLimited);
    let body =
        serde_json::json!({ "error": Refusal::new(ErrorCode::RateLimited, message).to_json() })
            .to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Reads what the client sent (up to a request head's worth) until it closes.
        let mut buf = [0u8; 4096];
        let mut left = app.config.max_header_bytes;
        while left > 0 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// Who a request (an upgrade, or an API call) acts as. With auth on: the principal of
/// its token (`Authorization: Bearer` or `?token=`), or the anonymous principal when it
/// carries none; a bad token is refused, and so is a `?tenant=` naming another tenant
/// than the token's. With auth off: the open-mode principal of `?tenant=`.
pub fn identify<B>(
    app: &App,
    req: &hyper::Request<B>,
    remote: SocketAddr,
) -> Result<Arc<Principal>, Refusal> {
    let tenant = query_param(req.uri(), "tenant");
    let Some(verifier) = &app.config.verifier else {
        return Ok(Principal::open_shared(tenant.as_deref()));
    };
    let Some(token) = auth::request_token(req.headers(), query_param(req.uri(), "token")) else {
        return Ok(Principal::anonymous());
    };
    let principal = verifier.check(&token, &app.metrics, remote, "HTTP request")?;
    if let Some(asked) = tenant.filter(|t| !t.is_empty() && *t != *principal.tenant) {
        security::record(
            &app.metrics,
            Event::CrossTenant,
            remote,
            &format!(
                "user {} of tenant {} asked for tenant {asked}",
                principal.user_id, principal.tenant
            ),
        );
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "the token is for another tenant",
        ));
    }
    Ok(Arc::new(principal))
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The HTTP status of each error code, in one place (the codes are the core crate's,
/// which knows no HTTP).
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidMessage | ErrorCode::UnknownEvent | ErrorCode::InvalidFilter => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited | ErrorCode::TooManySubscriptions => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
    }
}

/// `{"error":{"code","message"}}` with the code's status.
pub fn error_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    json_response(
        http_status(refusal.code),
        &serde_json::json!({ "error": refusal.to_json() }),
    )
}

/// One query-string parameter, percent-decoded.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let uri: Uri = "/x?tenant=t%201&limit=5&flag&bad=%zz".parse().unwrap();
        assert_eq!(query_param(&uri, "tenant").as_deref(), Some("t 1"));
        assert_eq!(query_param(&uri, "limit").as_deref(), Some("5"));
        assert_eq!(query_param(&uri, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(&uri, "none"), None);
    }
}
