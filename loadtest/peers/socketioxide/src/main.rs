//! Benchmark peer: the `/inventory` subset of nilecast's protocol on socketioxide + axum.
//!
//! * Socket.IO namespace `/inventory`: `inventory:subscribe {productIds:[...]}` joins the rooms
//!   `product:<id>` and answers `{subscriptionId, filters, replayed:0, gap:false}` through the ack,
//!   or, when the client asked for no ack, as the event `inventory:subscribed`.
//! * `POST /publish` (same port): one change or an array of changes
//!   `{"dataType":"inventory","tenantId":"default","data":{"productId":"p-1",...}}`.
//!   Each change gets the next `seq` and P = `{seq,type,timestamp,tenantId,data}` is emitted as
//!   `inventory:update` to the room `product:<data.productId>`; socketioxide encodes a room
//!   broadcast once for all its sockets. Answers `200 {"seqs":[...]}`.
//!
//! Prints `listening on <port>` once bound; exits on SIGINT/SIGTERM.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::{ConnectHandler, FromMessageParts, Value};
use socketioxide::socket::Socket;
use tokio::sync::Mutex;

const NS: &str = "/inventory";
/// Publish bodies above this answer 413, as nilecast's default HTTP body limit.
const MAX_BODY_BYTES: usize = 1024 * 1024;

static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

/// Whether the client's event carried an ack id. `AckSender::send` silently does nothing without
/// one, so this tells the handler to answer with the `inventory:subscribed` event instead.
struct WantsAck(bool);

impl<A: Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

#[derive(Serialize)]
struct Subscribed<'a> {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    filters: &'a JsonValue,
    replayed: u32,
    gap: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
}

/// Product ids are strings or numbers, compared as strings.
fn id_string(v: &JsonValue) -> Option<String> {
    match v {
        JsonValue::String(s) => Some(s.clone()),
        JsonValue::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn on_subscribe(
    s: SocketRef,
    Data(filters): Data<JsonValue>,
    WantsAck(wants_ack): WantsAck,
    ack: AckSender,
) {
    let rooms: Option<Vec<String>> = match filters.get("productIds") {
        None | Some(JsonValue::Null) => Some(Vec::new()),
        Some(JsonValue::Array(ids)) => ids
            .iter()
            .map(|id| id_string(id).map(|id| format!("product:{id}")))
            .collect(),
        Some(_) => None,
    };
    let Some(rooms) = rooms else {
        let err = ErrorBody {
            error: ErrorInner {
                code: "invalid_filter",
                message: "productIds must be an array of strings or numbers",
            },
        };
        if wants_ack {
            ack.send(&err).ok();
        } else {
            s.emit("error", &err).ok();
        }
        return;
    };
    s.join(rooms);

    let reply = Subscribed {
        subscription_id: format!("sub-{}", NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed)),
        filters: &filters,
        replayed: 0,
        gap: false,
    };
    if wants_ack {
        ack.send(&reply).ok();
    } else {
        s.emit("inventory:subscribed", &reply).ok();
    }
}

/// Connect middleware: it runs before socketioxide sends the namespace CONNECT packet, so the
/// event handler is in place before the client can send anything. (The connect handler itself is
/// spawned after CONNECT is sent; registering there would race with a client that subscribes
/// straight after connecting, and socketioxide drops events that have no handler yet.)
async fn register_handlers(s: SocketRef) -> Result<(), Infallible> {
    s.on("inventory:subscribe", on_subscribe);
    Ok(())
}

#[derive(Clone)]
struct AppState {
    io: SocketIo,
    /// Last seq handed out. Held across the emits of one request so that every client receives
    /// changes in seq order even when publish requests run concurrently on several threads.
    seq: Arc<Mutex<u64>>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(rename = "dataType")]
    data_type: &'a str,
    #[serde(rename = "tenantId", default)]
    tenant_id: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct ProductKey {
    #[serde(rename = "productId")]
    product_id: JsonValue,
}

/// P, the change payload. `data` is the published object's bytes, unchanged.
#[derive(Serialize)]
struct Payload<'a> {
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    #[serde(rename = "tenantId")]
    tenant_id: &'a str,
    data: &'a RawValue,
}

fn bad_request(message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorInner {
            code: "invalid_message",
            message,
        },
    })
    .unwrap();
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn publish(State(state): State<AppState>, body: Bytes) -> Response {
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return bad_request("body is not UTF-8"),
    };
    let parsed = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<Change>>(text)
    } else {
        serde_json::from_str::<Change>(text).map(|c| vec![c])
    };
    let changes = match parsed {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("invalid change: {e}")),
    };

    // Validate the whole batch before publishing any of it.
    let mut rooms = Vec::with_capacity(changes.len());
    for c in &changes {
        if c.data_type != "inventory" {
            return bad_request("this peer publishes dataType \"inventory\" only");
        }
        let room = serde_json::from_str::<ProductKey>(c.data.get())
            .ok()
            .and_then(|k| id_string(&k.product_id));
        match room {
            Some(id) => rooms.push(format!("product:{id}")),
            None => return bad_request("data.productId must be a string or a number"),
        }
    }

    let nsp = state.io.of(NS).expect("namespace /inventory is registered");
    let mut seqs = Vec::with_capacity(changes.len());
    {
        let mut last = state.seq.lock().await;
        for (c, room) in changes.iter().zip(rooms) {
            *last += 1;
            let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let p = Payload {
                seq: *last,
                kind: "inventory_update",
                timestamp: &timestamp,
                tenant_id: c.tenant_id.unwrap_or("default"),
                data: c.data,
            };
            // A room with no sockets is not an error; a full client buffer drops that client's copy.
            nsp.clone().to(room).emit("inventory:update", &p).await.ok();
            seqs.push(*last);
        }
    }

    let mut out = String::with_capacity(12 + seqs.len() * 8);
    out.push_str("{\"seqs\":[");
    for (i, s) in seqs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out.push_str("]}");
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4103);

    let (layer, io) = SocketIo::new_layer();
    // The default namespace exists in Socket.IO's JS server without asking; socketioxide needs it
    // declared. Clients that open "/" first (artillery's socketio engine does) connect to it.
    io.ns("/", async |_: SocketRef| {});
    io.ns(NS, (async |_: SocketRef| {}).with(register_handlers));

    let app = Router::new()
        .route("/publish", post(publish))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState {
            io,
            seq: Arc::new(Mutex::new(0)),
        })
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    println!("listening on {port}");

    // Open WebSocket connections would hold up a graceful drain; a benchmark peer just stops.
    tokio::select! {
        r = axum::serve(listener, app) => r?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}
