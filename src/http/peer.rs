//! The one request a node makes of another: a `GET` of its node-to-node route
//! `/cluster/clients`, for `/clients?scope=cluster`, authenticated with the cluster
//! secret. The caller's own credentials are never forwarded: the address comes from
//! Redis, and a token is not to be handed to whatever answers there.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long a member has to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read (a member with very many clients is cut off with an error).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// `GET http://{addr}{path}` with the cluster secret; the JSON body of a 200.
pub async fn get_json(addr: &str, path: &str, secret: &str) -> Result<Value, String> {
    tokio::time::timeout(TIMEOUT, get(addr, path, secret))
        .await
        .map_err(|_| format!("{addr} did not answer within {} s", TIMEOUT.as_secs()))?
}

async fn get(addr: &str, path: &str, secret: &str) -> Result<Value, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let secret = HeaderValue::from_str(secret).map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        HeaderName::from_static(crate::bus::redis::SECRET_HEADER),
        secret,
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{addr} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{addr}: not JSON: {e}"))
}
