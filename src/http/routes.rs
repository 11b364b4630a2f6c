//! The HTTP API of docs/protocol.md, "11. HTTP API", one function per endpoint. Which endpoint
//! answers a request, and whether its caller may call it, is the route table's
//! business (`table.rs`): a handler here runs only for a caller already admitted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_LENGTH,
    CONTENT_TYPE, ORIGIN, VARY,
};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::table::Call;
use super::{error_response, json_response, query_param};
use crate::alerts;
use crate::app::App;
use crate::auth::Principal;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::{Change, DataType, Namespace};
use crate::security::{self, Event};
use crate::store::{ChangesQuery, StoreError};
use crate::time;
use crate::ws::{self, Mode};

pub(super) type Resp = Response<Full<Bytes>>;

/// The test page, served from the binary.
pub(super) const TEST_PAGE: &str = include_str!("test_page.html");
pub(super) const DEMO_PAGE: &str = include_str!("demo_page.html");
/// The JavaScript client, served for the pages (and any page of yours).
const JS_CLIENT: &str = include_str!("../../clients/js/nilecast.js");

/// `/changes` limits (docs/protocol.md, "11. HTTP API").
const CHANGES_DEFAULT_LIMIT: usize = 100;
const CHANGES_MAX_LIMIT: usize = 1000;

pub async fn route(app: Arc<App>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    app.metrics.http_requests.fetch_add(1, Relaxed);
    let origin = req.headers().get(ORIGIN).cloned();
    let mut response = super::table::dispatch(&app, req, remote).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        app.metrics.http_errors.fetch_add(1, Relaxed);
    }
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        cors(&app, origin.as_ref(), &mut response);
    }
    response
}

/// Adds CORS headers (docs/protocol.md, "11. HTTP API"). An origin that `CORS_ORIGIN` lists,
/// compared without case, is echoed with `Access-Control-Allow-Credentials`; `*` lets
/// any page read the answers but never with credentials, so a visitor's cookies or HTTP
/// auth never serve a page the operator did not name.
fn cors(app: &App, origin: Option<&HeaderValue>, response: &mut Resp) {
    let allowed = &app.config.cors_origin;
    let headers = response.headers_mut();
    // With named origins the answer depends on the request's Origin, so a shared cache
    // must not hand one origin's answer to another.
    if allowed.iter().any(|o| o != "*") {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
    let Some(origin) = origin else { return };
    if security::origin_listed(origin.as_bytes(), allowed) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else if allowed.iter().any(|o| o == "*") {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
}

/// `/socket.io/`: Engine.IO v4 over WebSocket. Anything else (long-polling, another
/// Engine.IO version) gets an Engine.IO error body, `{"code","message"}`, with 400.
pub(super) fn socketio(app: &Arc<App>, call: Call) -> Resp {
    let Call { req, remote, .. } = call;
    let version = query_param(req.uri(), "EIO");
    let transport = query_param(req.uri(), "transport");
    let engine_error = |code: u8, message: &str| {
        app.metrics.error(ErrorCode::InvalidMessage);
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "code": code, "message": message }),
        )
    };
    if version.as_deref() != Some("4") {
        return engine_error(
            5,
            "Unsupported protocol version: nilecast speaks Engine.IO 4 (socket.io-client 3 and 4)",
        );
    }
    if transport.as_deref() != Some("websocket") || !ws::is_upgrade(&req) {
        return engine_error(
            3,
            "Bad request: nilecast serves Socket.IO over WebSocket only; connect with io(url, { transports: [\"websocket\"] })",
        );
    }
    ws::upgrade(app, req, remote, Mode::SocketIo)
}

/// `GET /`: the server's info, or a native WebSocket connection (`ws://host:port`).
pub(super) fn root(app: &Arc<App>, call: Call) -> Resp {
    if ws::is_upgrade(&call.req) {
        return ws::upgrade(app, call.req, call.remote, Mode::Native);
    }
    json_response(StatusCode::OK, &info(app))
}

/// `GET /ws` and `GET /echo`: a WebSocket upgrade and nothing else.
pub(super) fn websocket(app: &Arc<App>, call: Call, mode: Mode) -> Resp {
    if ws::is_upgrade(&call.req) {
        return ws::upgrade(app, call.req, call.remote, mode);
    }
    error_response(&Refusal::new(
        ErrorCode::InvalidMessage,
        "this endpoint takes a WebSocket upgrade",
    ))
}

/// `GET /test` and `GET /demo`.
pub(super) fn page(html: &'static str) -> Resp {
    static_text(html, "text/html; charset=utf-8")
}

/// `GET /js/nilecast.js`.
pub(super) fn script() -> Resp {
    static_text(JS_CLIENT, "text/javascript; charset=utf-8")
}

/// A page or script compiled into the binary.
fn static_text(body: &'static str, content_type: &'static str) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(super) fn not_found(message: &'static str) -> Resp {
    error_response(&Refusal::new(ErrorCode::NotFound, message))
}

fn info(app: &App) -> Value {
    json!({
        "name": "nilecast",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": app.metrics.uptime_ms(),
        "node": &app.node_id,
        "startedAt": time::iso8601(app.metrics.started_ms),
        "auth": if app.config.verifier.is_some() { "jwt" } else { "open" },
        "namespaces": Namespace::ALL.iter().map(|n| n.path()).collect::<Vec<_>>(),
        "protocols": { "native": ["/ws", "/"], "socketio": ["/socket.io/"] },
        "endpoints": super::table::endpoints(app),
        "dataTypes": DataType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>(),
    })
}

/// `GET /health`. Anyone may ask; the Redis members' addresses are shown to staff only.
pub(super) async fn health(app: &App, call: Call) -> Resp {
    let staff =
        super::identify(app, &call.req, call.remote).is_ok_and(|p| p.may_administer().is_ok());
    let over_memory = app.over_memory();
    let shutting_down = app.shutdown.is_triggered();
    let (niledb, redis) = app.bus.health(staff).await;
    let db_degraded = niledb["status"] == "degraded" || redis["status"] == "degraded";
    let ws_status = if shutting_down {
        "unhealthy"
    } else if over_memory {
        "degraded"
    } else {
        "healthy"
    };
    let overall = if ws_status == "healthy" && db_degraded {
        "degraded"
    } else {
        ws_status
    };
    let body = json!({
        "status": overall,
        "timestamp": time::iso8601(time::now_ms()),
        "uptime": app.metrics.uptime_ms(),
        "node": &app.node_id,
        "services": {
            "websocket": {
                "status": ws_status,
                "connections": app.sessions.len(),
                "metrics": {
                    "messagesSent": app.metrics.messages_sent.load(Relaxed),
                    "messagesReceived": app.metrics.messages_received.load(Relaxed),
                    "changesPublished": app.metrics.engine.changes_published.load(Relaxed),
                    "rssBytes": app.metrics.rss_bytes.load(Relaxed),
                    "overMemoryLimit": over_memory,
                },
            },
            "niledb": niledb,
            "redis": redis,
        },
    });
    let status = if ws_status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, &body)
}

/// `GET /metrics`.
pub(super) fn metrics(app: &App) -> Resp {
    let mut body = app.metrics.to_json(&app.gauges());
    if let Some(bus) = app.bus.metrics() {
        body["niledb"] = bus;
    }
    json_response(StatusCode::OK, &body)
}

/// `GET /metrics/prometheus`.
pub(super) fn prometheus(app: &App) -> Resp {
    let mut text = app.metrics.to_prometheus(&app.gauges());
    app.bus.prometheus(&mut text);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Default and largest `limit` of `/clients`.
const CLIENTS_PAGE: usize = 100;
const CLIENTS_PAGE_MAX: usize = 1000;
/// Members asked by one `/clients?scope=cluster`: a bound on the fan-out whatever
/// Redis lists (a cluster of more nodes than this is listed in part, and says so).
const MEMBERS_ASKED_MAX: usize = 64;
/// A subscription's filters longer than this (as JSON) are listed as truncated: a
/// connection may hold 100 subscriptions of 100 values per field, and `/clients`
/// echoing all of it for every connection would be a reply as large as the caller
/// likes.
const FILTERS_ECHO_MAX: usize = 1024;

/// `?limit=` and `?after=` of a `/clients` listing.
struct Page {
    limit: usize,
    /// List connections with an id above this one.
    after: u64,
}

impl Page {
    fn of(req: &Request<Incoming>) -> Result<Page, Refusal> {
        let limit = match query_param(req.uri(), "limit") {
            None => CLIENTS_PAGE,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n > 0 => n.min(CLIENTS_PAGE_MAX),
                _ => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidFilter,
                        "limit must be a positive integer",
                    ))
                }
            },
        };
        let after = match query_param(req.uri(), "after") {
            None => 0,
            Some(a) => a
                .strip_prefix("c-")
                .unwrap_or(&a)
                .parse::<u64>()
                .map_err(|_| Refusal::new(ErrorCode::InvalidFilter, "after must be a client id"))?,
        };
        Ok(Page { limit, after })
    }
}

/// `GET /clients[?limit=&after=&scope=cluster]`.
pub(super) async fn clients(app: &App, call: Call) -> Resp {
    if call.query("scope").as_deref() == Some("cluster") {
        return cluster_clients(app, &call.principal, &call.req).await;
    }
    node_clients(app, &call.principal, &call.req)
}

/// `GET /clients[?limit=&after=]`: this node's clients of the caller's tenant, by
/// connection id, a page at a time; `next` is the `after` of the next page.
fn node_clients(app: &App, principal: &Principal, req: &Request<Incoming>) -> Resp {
    let page = match Page::of(req) {
        Ok(page) => page,
        Err(r) => return error_response(&r),
    };
    let (list, next) = local_clients(app, &principal.tenant, &page);
    json_response(
        StatusCode::OK,
        &json!({ "count": list.len(), "node": &app.node_id, "clients": list, "next": next }),
    )
}

/// `GET /cluster/clients?tenant=&limit=&after=`: the node-to-node listing behind
/// `/clients?scope=cluster`. It answers for this node alone and never asks another, so
/// no request can fan out twice; it takes the cluster secret, not a user's token.
pub(super) fn member_clients(app: &App, call: Call) -> Resp {
    let req = &call.req;
    let page = match Page::of(req) {
        Ok(page) => page,
        Err(r) => return error_response(&r),
    };
    let tenant = query_param(req.uri(), "tenant").unwrap_or_default();
    let (list, next) = local_clients(app, &tenant, &page);
    json_response(
        StatusCode::OK,
        &json!({ "count": list.len(), "node": &app.node_id, "clients": list, "next": next }),
    )
}

/// `GET /clients?scope=cluster`: this node's clients and every live member's (at most
/// [`MEMBERS_ASKED_MAX`]), each member asked once with a fixed node-to-node request
/// (`/cluster/clients`, the caller's tenant and page, the cluster secret). A member
/// that does not answer within two seconds is listed under `nodes` as unreachable.
async fn cluster_clients(app: &App, principal: &Principal, req: &Request<Incoming>) -> Resp {
    let Some(cluster) = app.bus.membership() else {
        return node_clients(app, principal, req);
    };
    let page = match Page::of(req) {
        Ok(page) => page,
        Err(r) => return error_response(&r),
    };
    let unavailable = |e: crate::bus::BusError| {
        tracing::warn!(error = %e, "could not reach Redis for the cluster's members");
        error_response(&Refusal::new(
            ErrorCode::Unavailable,
            "Redis is unreachable: the cluster's members are unknown",
        ))
    };
    let members = match cluster.members().await {
        Ok(members) => members,
        Err(e) => return unavailable(e),
    };
    let secret = match cluster.secret().await {
        Ok(secret) => secret,
        Err(e) => return unavailable(e),
    };
    let path = format!(
        "/cluster/clients?tenant={}&limit={}&after={}",
        percent_encode(&principal.tenant),
        page.limit,
        page.after
    );
    let others: Vec<_> = members.iter().filter(|m| m.node != app.node_id).collect();
    let left_out = others.len().saturating_sub(MEMBERS_ASKED_MAX);
    let asks = others.into_iter().take(MEMBERS_ASKED_MAX).map(|m| {
        let (path, secret) = (&path, &secret);
        async move {
            let answer = match &m.addr {
                Some(addr) => crate::http::peer::get_json(addr, path, secret).await,
                None => Err("no address announced".to_string()),
            };
            (m.node.clone(), answer)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let (mine, next) = local_clients(app, &principal.tenant, &page);
    let mut nodes =
        vec![json!({ "node": &app.node_id, "status": "ok", "count": mine.len(), "next": next })];
    let mut list = mine;
    for (node, answer) in answers {
        match answer.and_then(|body| match body["clients"].as_array() {
            Some(clients) => Ok((clients.clone(), body["next"].clone())),
            None => Err(format!("answered {body}")),
        }) {
            Ok((clients, next)) => {
                nodes.push(
                    json!({ "node": node, "status": "ok", "count": clients.len(), "next": next }),
                );
                list.extend(clients);
            }
            Err(error) => {
                nodes.push(json!({ "node": node, "status": "unreachable", "error": error }))
            }
        }
    }
    json_response(
        StatusCode::OK,
        &json!({ "count": list.len(), "nodes": nodes, "clients": list, "membersNotAsked": left_out }),
    )
}

/// Percent-encodes a query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// This node's clients of `tenant` after `page.after`, by connection id, at most
/// `page.limit`; and the id to ask `after` for the next page, when there is one.
fn local_clients(app: &App, tenant: &str, page: &Page) -> (Vec<Value>, Option<String>) {
    let mut sessions: Vec<Arc<crate::session::Session>> = app
        .sessions
        .iter()
        .filter(|s| s.id > page.after && *s.principal().tenant == *tenant)
        .map(|s| s.value().clone())
        .collect();
    sessions.sort_unstable_by_key(|s| s.id);
    let next = (sessions.len() > page.limit).then(|| sessions[page.limit - 1].connection_id());
    sessions.truncate(page.limit);
    let list = sessions
        .iter()
        .map(|s| {
            let p = s.principal();
            let subs = s.subs.lock();
            let mut namespaces: Vec<&str> = subs.iter().map(|e| e.ns.path()).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            let filters = |e: &crate::session::SubEntry| {
                let filters = e.filters_json();
                let size = filters.to_string().len();
                if size > FILTERS_ECHO_MAX {
                    json!({ "truncated": true, "bytes": size })
                } else {
                    filters
                }
            };
            json!({
                "id": s.connection_id(),
                "remoteAddress": s.remote.to_string(),
                "user": { "id": &*p.user_id, "roles": p.roles.names(), "authenticated": p.authenticated },
                "tenant": &*p.tenant,
                "namespaces": namespaces,
                "subscriptions": subs.iter().map(|e| json!({
                    "id": crate::fanout::subscription_name(e.id), "namespace": e.ns.path(), "filters": filters(e),
                })).collect::<Vec<_>>(),
                "queueDepth": s.outbox.len(),
                "connectedSince": time::iso8601(s.connected_ms),
                "node": &app.node_id,
            })
        })
        .collect();
    (list, next)
}

/// A refusal of the store, counted.
fn store_error(app: &App, e: &StoreError) -> Resp {
    let refusal = Refusal::from(e);
    app.metrics.error(refusal.code);
    error_response(&refusal)
}

/// `GET /alerts[?all=true]`.
pub(super) async fn alerts(app: &App, call: Call) -> Resp {
    let all = call.query("all").as_deref() == Some("true");
    match app.read_model.alerts(&call.principal.tenant, all).await {
        Ok(list) => json_response(
            StatusCode::OK,
            &json!({ "count": list.len(), "alerts": list }),
        ),
        Err(e) => store_error(app, &e),
    }
}

/// `POST /alerts/:id/acknowledge`. The first acknowledgement is announced with an
/// `alert_acknowledged` notification, published like any change from the API.
pub(super) async fn acknowledge(app: &App, call: Call) -> Resp {
    let (principal, id) = (&call.principal, call.param(0));
    let tenant = &principal.tenant;
    let (alert, first_time) = match app.read_model.acknowledge(tenant, id).await {
        Ok(Some(acknowledged)) => acknowledged,
        Ok(None) => return not_found("no such alert"),
        Err(e) => return store_error(app, &e),
    };
    if first_time {
        let kind = alert["type"].as_str().unwrap_or_default();
        let notice = alerts::acknowledged_notification(tenant, id, kind, &principal.user_id);
        // The acknowledgement stands whether or not its announcement gets out; the
        // answer says what the alert is now.
        if let Err(refusal) = publish_changes(app, vec![notice]).await {
            app.metrics.error(refusal.code);
            tracing::warn!(alert = id, error = %refusal.message, "could not announce an acknowledgement");
        }
    }
    json_response(StatusCode::OK, &alert)
}

/// `/changes/:dataType` parameters: the data type, `since` and `limit`.
fn changes_params(data_type: &str, req: &Request<Incoming>) -> Result<ChangesQuery, Refusal> {
    let data_type = DataType::parse(data_type)
        .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown data type"))?;
    let since = match query_param(req.uri(), "since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "since must be a non-negative integer",
            ))
        }
    };
    let limit = match query_param(req.uri(), "limit").map(|s| s.parse::<usize>()) {
        None => CHANGES_DEFAULT_LIMIT,
        Some(Ok(n)) if n > 0 => n.min(CHANGES_MAX_LIMIT),
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "limit must be a positive integer",
            ))
        }
    };
    Ok(ChangesQuery {
        data_type: Some(data_type),
        since,
        limit,
    })
}

/// `GET /changes/:dataType[?since=&limit=]`.
pub(super) async fn changes(app: &App, call: Call) -> Resp {
    let query = match changes_params(call.param(0), &call.req) {
        Ok(query) => query,
        Err(refusal) => return error_response(&refusal),
    };
    match app.read_model.changes(&call.principal.tenant, query).await {
        Ok(list) => json_response(
            StatusCode::OK,
            &json!({ "count": list.len(), "changes": list }),
        ),
        Err(e) => store_error(app, &e),
    }
}

/// Reads a request body up to `MAX_BODY_BYTES` (a larger one is 413) within
/// `BODY_TIMEOUT_MS` (a slower one is 408). The deadline covers the whole body, not
/// each read: a client trickling a byte at a time would otherwise hold the connection
/// and its task for as long as it liked.
async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let max = app.config.max_body_bytes;
    let too_large = || {
        Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let deadline = std::time::Duration::from_millis(app.config.body_timeout_ms);
    let collected = tokio::time::timeout(deadline, Limited::new(req.into_body(), max).collect());
    match collected.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Refusal::new(
            ErrorCode::InvalidMessage,
            "could not read the request body",
        )),
        Err(_) => {
            app.metrics.error(ErrorCode::Timeout);
            Err(Refusal::new(
                ErrorCode::Timeout,
                format!(
                    "request body did not arrive within {} ms (BODY_TIMEOUT_MS)",
                    app.config.body_timeout_ms
                ),
            ))
        }
    }
}

/// Turns one published object into a change, or says what is wrong with it.
pub fn parse_change(value: Value, principal: &Principal) -> Result<Change, String> {
    let Value::Object(mut obj) = value else {
        return Err("a change must be a JSON object".into());
    };
    let data_type = match obj.get("dataType") {
        Some(Value::String(s)) => DataType::parse(s).ok_or_else(|| {
            format!(
                "dataType must be one of {}",
                DataType::ALL.map(DataType::name).join(", ")
            )
        })?,
        _ => return Err("dataType is required and must be a string".into()),
    };
    let tenant = match obj.get("tenantId") {
        None | Some(Value::Null) => principal.tenant.clone(),
        Some(Value::String(t)) if !t.is_empty() && t.len() <= 128 => Arc::from(t.as_str()),
        Some(_) => {
            return Err("tenantId must be a non-empty string of at most 128 characters".into())
        }
    };
    let data: Map<String, Value> = match obj.remove("data") {
        Some(Value::Object(d)) => d,
        _ => return Err("data is required and must be an object".into()),
    };
    Ok(Change {
        data_type,
        tenant,
        data,
    })
}

pub(super) async fn publish(
    app: &App,
    principal: &Principal,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Resp {
    if let Err(r) = principal.may_publish() {
        app.metrics.error(r.code);
        return error_response(&r);
    }
    let body = match read_body(app, req).await {
        Ok(b) => b,
        Err(r) => return error_response(&r),
    };
    let invalid =
        |message: String| error_response(&Refusal::new(ErrorCode::InvalidMessage, message));
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("body is not valid JSON: {e}")),
    };
    let (items, single) = match value {
        Value::Array(items) => (items, false),
        other => (vec![other], true),
    };
    let mut changes = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match parse_change(item, principal) {
            // A verified publisher publishes into its own tenant only.
            Ok(change) if principal.authenticated && change.tenant != principal.tenant => {
                security::record(
                    &app.metrics,
                    Event::CrossTenant,
                    remote,
                    &format!(
                        "publisher {} of tenant {} tried to publish to tenant {}",
                        principal.user_id, principal.tenant, change.tenant
                    ),
                );
                app.metrics.error(ErrorCode::Forbidden);
                return error_response(&Refusal::new(
                    ErrorCode::Forbidden,
                    "a token may publish only to its own tenant; nothing was published",
                ));
            }
            Ok(change) if crate::domain::is_acknowledgement(&change) => {
                security::record(
                    &app.metrics,
                    Event::Forbidden,
                    remote,
                    &format!(
                        "{} of tenant {} tried to publish an alert acknowledgement",
                        principal.user_id, principal.tenant
                    ),
                );
                app.metrics.error(ErrorCode::Forbidden);
                return error_response(&Refusal::new(
                    ErrorCode::Forbidden,
                    "alert_acknowledged notifications come from POST /alerts/:id/acknowledge only; nothing was published",
                ));
            }
            Ok(change) => changes.push(change),
            Err(message) if single => return invalid(message),
            Err(message) => {
                return invalid(format!("change {i}: {message}; nothing was published"))
            }
        }
    }
    match publish_changes(app, changes).await {
        Ok(seqs) => json_response(StatusCode::OK, &json!({ "seqs": seqs })),
        Err(refusal) => {
            app.metrics.error(refusal.code);
            error_response(&refusal)
        }
    }
}

/// Publishes changes from the API (changes of the request; alert acknowledgements) and
/// returns their seqs.
pub(crate) async fn publish_changes(app: &App, changes: Vec<Change>) -> Result<Vec<u64>, Refusal> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    app.bus.publish(changes).await.map_err(|e| {
        tracing::warn!(error = %e, "publishing failed");
        e.refusal()
    })
}
