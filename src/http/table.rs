//! The route table of the HTTP API: every (method, path pattern, who may call it,
//! handler) the server answers, in one list. Which paths exist, which methods a path
//! takes (the 405's `Allow` and the CORS preflight), who must be identified and with
//! what role, and the endpoints `GET /` lists all come from [`ROUTES`]; there is no
//! other list of paths.
//!
//! A caller is checked here, before any handler runs: a refused token or tenant is
//! recorded by `http::identify`, a refused role (`forbidden`) by `security::refused`,
//! as a WebSocket request's refusal is.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_MAX_AGE, ALLOW,
};
use hyper::{Method, Request, Response, StatusCode};

use super::routes::{self, Resp};
use super::{error_response, query_param};
use crate::app::App;
use crate::auth::Principal;
use crate::error::{ErrorCode, Refusal};
use crate::security::{self, Event};
use crate::ws::Mode;
use Access::{Anyone, Node, Publisher, Staff};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: pages, health, metrics, and the WebSocket upgrades (which check their
    /// caller themselves, `ws::upgrade`).
    Anyone,
    /// Staff or admin (`Principal::may_administer`), of the tenant the request names.
    Staff,
    /// A publisher or admin (`Principal::may_publish`).
    Publisher,
    /// Another node of the cluster, presenting the cluster secret.
    Node,
}

/// What a handler gets: the request, its caller, and the path's `:name` segments.
pub struct Call {
    pub req: Request<Incoming>,
    pub remote: SocketAddr,
    /// Who the request acts as (the anonymous principal on [`Access::Anyone`] and
    /// [`Access::Node`] routes, which do not identify their caller).
    pub principal: Arc<Principal>,
    /// The path's `:name` segments, in the pattern's order.
    pub params: Vec<String>,
}

impl Call {
    /// The `n`th `:name` segment of the path (the pattern guarantees it is there).
    pub fn param(&self, n: usize) -> &str {
        self.params.get(n).map_or("", String::as_str)
    }

    pub fn query(&self, name: &str) -> Option<String> {
        query_param(self.req.uri(), name)
    }
}

type Handler = fn(Arc<App>, Call) -> Pin<Box<dyn Future<Output = Resp> + Send>>;

pub struct Route {
    pub method: Method,
    /// Segments separated by `/`; a `:name` segment matches any one segment. A
    /// trailing `/` in the request is ignored.
    pub path: &'static str,
    pub access: Access,
    /// Whether the route exists on this server (some are for development, or take a
    /// setting); a route that does not is answered 404 like an unknown path.
    pub exists: fn(&App) -> bool,
    /// Shown after the route in `GET /`'s list of endpoints.
    pub note: &'static str,
    pub handler: Handler,
}

/// Every route of the HTTP API (docs/protocol.md, "2. Endpoints" and "11. HTTP API"), in the order `GET /`
/// lists them.
pub static ROUTES: [Route; 17] = [
    route(GET, "/", Anyone, |app, call| {
        Box::pin(async move { routes::root(&app, call) })
    })
    .note("(server info, or a native WebSocket upgrade)"),
    route(GET, "/ws", Anyone, |app, call| {
        Box::pin(async move { routes::websocket(&app, call, Mode::Native) })
    })
    .note("(WebSocket)"),
    route(GET, "/echo", Anyone, |app, call| {
        Box::pin(async move { routes::websocket(&app, call, Mode::Echo) })
    })
    .note("(WebSocket echo)")
    .when(|app| app.config.echo_endpoint),
    route(GET, "/socket.io/", Anyone, |app, call| {
        Box::pin(async move { routes::socketio(&app, call) })
    })
    .note("(Socket.IO, websocket transport)"),
    // Engine.IO's long-polling transport posts too; it gets the Engine.IO error that
    // tells the client to use WebSocket, as its GET does.
    route(POST, "/socket.io/", Anyone, |app, call| {
        Box::pin(async move { routes::socketio(&app, call) })
    })
    .note("(Engine.IO long-polling: refused)"),
    route(GET, "/health", Anyone, |app, call| {
        Box::pin(async move { routes::health(&app, call).await })
    }),
    route(GET, "/metrics", Anyone, |app, _| {
        Box::pin(async move { routes::metrics(&app) })
    }),
    route(GET, "/metrics/prometheus", Anyone, |app, _| {
        Box::pin(async move { routes::prometheus(&app) })
    }),
    route(GET, "/clients", Staff, |app, call| {
        Box::pin(async move { routes::clients(&app, call).await })
    }),
    route(GET, "/cluster/clients", Node, |app, call| {
        Box::pin(async move { routes::member_clients(&app, call) })
    })
    .note("(node to node)")
    .when(|app| app.bus.membership().is_some()),
    route(GET, "/alerts", Staff, |app, call| {
        Box::pin(async move { routes::alerts(&app, call).await })
    }),
    route(POST, "/alerts/:id/acknowledge", Staff, |app, call| {
        Box::pin(async move { routes::acknowledge(&app, call).await })
    }),
    route(GET, "/changes/:dataType", Staff, |app, call| {
        Box::pin(async move { routes::changes(&app, call).await })
    }),
    route(POST, "/publish", Publisher, |app, call| {
        Box::pin(async move { routes::publish(&app, &call.principal, call.req, call.remote).await })
    }),
    route(GET, "/test", Anyone, |_, _| {
        Box::pin(async { routes::page(routes::TEST_PAGE) })
    })
    .when(|app| !app.config.is_production()),
    route(GET, "/demo", Anyone, |_, _| {
        Box::pin(async { routes::page(routes::DEMO_PAGE) })
    })
    .when(|app| !app.config.is_production()),
    route(GET, "/js/nilecast.js", Anyone, |_, _| {
        Box::pin(async { routes::script() })
    }),
];

const GET: Method = Method::GET;
const POST: Method = Method::POST;

/// A route every server has, listed without a note.
const fn route(method: Method, path: &'static str, access: Access, handler: Handler) -> Route {
    Route {
        method,
        path,
        access,
        exists: |_| true,
        note: "",
        handler,
    }
}

impl Route {
    /// Shown after the route in `GET /`'s list.
    const fn note(mut self, note: &'static str) -> Route {
        self.note = note;
        self
    }

    /// The route exists only where `exists` says so.
    const fn when(mut self, exists: fn(&App) -> bool) -> Route {
        self.exists = exists;
        self
    }
}

/// A path's segments, without the leading and any trailing `/`.
fn segments(path: &str) -> Vec<&str> {
    let path = path.trim_end_matches('/');
    path.split('/').skip(1).collect()
}

impl Route {
    /// The values of the path's `:name` segments, when `path` is this route's.
    fn matches(&self, path: &[&str]) -> Option<Vec<String>> {
        let pattern = segments(self.path);
        if pattern.len() != path.len() {
            return None;
        }
        let mut params = Vec::new();
        for (want, got) in pattern.iter().zip(path) {
            if want.starts_with(':') {
                params.push(got.to_string());
            } else if want != got {
                return None;
            }
        }
        Some(params)
    }
}

/// `GET /`'s list of endpoints: the routes this server has.
pub fn endpoints(app: &App) -> Vec<String> {
    ROUTES
        .iter()
        .filter(|r| (r.exists)(app))
        .map(|r| match r.note {
            "" => format!("{} {}", r.method, r.path),
            note => format!("{} {} {note}", r.method, r.path),
        })
        .collect()
}

/// Finds the request's route, checks its method and its caller, and runs it.
pub async fn dispatch(app: &Arc<App>, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let path = segments(req.uri().path());
    let here: Vec<(&Route, Vec<String>)> = ROUTES
        .iter()
        .filter(|r| (r.exists)(app))
        .filter_map(|r| r.matches(&path).map(|params| (r, params)))
        .collect();
    if here.is_empty() {
        return routes::not_found("no such endpoint");
    }
    let methods: Vec<&Method> = here.iter().map(|(r, _)| &r.method).collect();
    if req.method() == Method::OPTIONS {
        return preflight(&methods);
    }
    let Some((route, params)) = here.into_iter().find(|(r, _)| r.method == req.method()) else {
        return method_not_allowed(&methods);
    };
    let principal = match admit(app, &req, remote, route.access).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let call = Call {
        req,
        remote,
        principal,
        params,
    };
    (route.handler)(app.clone(), call).await
}

/// Checks the caller against `access`: who it is, and whether it may.
async fn admit(
    app: &App,
    req: &Request<Incoming>,
    remote: SocketAddr,
    access: Access,
) -> Result<Arc<Principal>, Resp> {
    let may: fn(&Principal) -> Result<(), Refusal> = match access {
        Access::Anyone => return Ok(Principal::anonymous()),
        Access::Node => {
            return node(app, req, remote)
                .await
                .map(|()| Principal::anonymous())
        }
        Access::Staff => Principal::may_administer,
        Access::Publisher => Principal::may_publish,
    };
    let refuse = |refusal: Refusal| {
        app.metrics.error(refusal.code);
        error_response(&refusal)
    };
    let principal = super::identify(app, req, remote).map_err(refuse)?;
    if let Err(refusal) = may(&principal) {
        security::refused(
            &app.metrics,
            remote,
            format_args!("user {} of tenant {}", principal.user_id, principal.tenant),
            &refusal,
        );
        return Err(error_response(&refusal));
    }
    Ok(principal)
}

/// A node-to-node request must present the cluster secret (never a user's token).
async fn node(app: &App, req: &Request<Incoming>, remote: SocketAddr) -> Result<(), Resp> {
    let Some(cluster) = app.bus.membership() else {
        return Err(routes::not_found("no such endpoint"));
    };
    let presented = req
        .headers()
        .get(crate::bus::redis::SECRET_HEADER)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let secret = cluster.secret().await.map_err(|e| {
        tracing::warn!(error = %e, "could not read the cluster secret");
        error_response(&Refusal::new(
            ErrorCode::Unavailable,
            "Redis is unreachable: the cluster secret is unknown",
        ))
    })?;
    if constant_time_eq(&presented, secret.as_bytes()) {
        return Ok(());
    }
    security::record(
        &app.metrics,
        Event::TokenRefused,
        remote,
        "a node-to-node request without the cluster secret",
    );
    let refusal = Refusal::new(
        ErrorCode::Forbidden,
        "this endpoint is for the cluster's nodes",
    );
    app.metrics.error(refusal.code);
    Err(error_response(&refusal))
}

/// Whether `a` and `b` are equal, in a time that does not tell how much of them is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `a, b, c` of the methods a path takes.
fn method_list<'a>(methods: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    HeaderValue::from_str(&methods.collect::<Vec<_>>().join(", ")).ok()
}

fn method_not_allowed(methods: &[&Method]) -> Resp {
    let mut response = error_response(&Refusal::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this path",
    ));
    if let Some(allow) = method_list(methods.iter().map(|m| m.as_str())) {
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

/// The answer to a CORS preflight (`OPTIONS`) of a known path.
fn preflight(methods: &[&Method]) -> Resp {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    let methods = methods.iter().map(|m| m.as_str()).chain(["OPTIONS"]);
    if let Some(allow) = method_list(methods) {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, allow);
    }
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Vec<(&'static str, Vec<String>)> {
        ROUTES
            .iter()
            .filter_map(|r| r.matches(&segments(path)).map(|p| (r.path, p)))
            .collect()
    }

    #[test]
    fn patterns_match_whole_paths_and_capture_their_parameters() {
        assert_eq!(route("/"), vec![("/", vec![])]);
        assert_eq!(route("/health/"), vec![("/health", vec![])]);
        assert_eq!(
            route("/alerts/alert-7/acknowledge"),
            vec![("/alerts/:id/acknowledge", vec!["alert-7".to_string()])]
        );
        assert_eq!(route("/socket.io").len(), 2, "GET and POST");
        for unknown in ["/nope", "/health/extra", "/alerts/x/y/z", "/changes"] {
            assert!(route(unknown).is_empty(), "{unknown}");
        }
    }

    #[test]
    fn every_route_is_listed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.method != b.method || a.path != b.path,
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
