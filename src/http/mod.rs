//! HTTP: the accept loop, one hyper connection per socket, and the small helpers every
//! route shares (JSON answers, error bodies, query strings, CORS).
//!
//! Architecture Invariant: HTTP handlers reach the engine only through `App`; they
//! never hold a socket other than their own request's.

pub mod peer;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::auth::{self, Principal};
use crate::error::{ErrorCode, Refusal};
use crate::security::{self, Event};

/// Accepts connections until shutdown.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = app.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let app2 = app.clone();
                app.shutdown.spawn(serve(app2, stream, remote));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(app: Arc<App>, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let service = {
        let app = app.clone();
        service_fn(move |req| {
            let app = app.clone();
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
    let principal = verifier.verify(&token).map_err(|fault| {
        security::record(
            &app.metrics,
            Event::TokenRefused,
            remote,
            &format!("token refused: {}", fault.as_str()),
        );
        fault.refusal()
    })?;
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

/// `{"error":{"code","message"}}` with the code's status.
pub fn error_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    json_response(
        refusal.code.http_status(),
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
