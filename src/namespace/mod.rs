//! Request handling per namespace: from a parsed request to subscriptions, queries and
//! replies. Protocol-neutral: a handler sees a [`Ctx`] and replies through it, so the
//! native codec (and later Socket.IO) share every rule here.
//!
//! Architecture Invariant: handlers never touch sockets and never encode broadcast
//! frames; they queue replies on the connection's outbox and ask the engine to
//! subscribe.

pub mod dashboard;
pub use nilecast_core::namespace::filter;
mod orders;
mod queries;
mod root;
mod streams;

pub use streams::{authorize, resubscribe, subscribed_json};

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::protocol::native::Request;
use crate::protocol::Wire;
use crate::security::{self, Event};
use crate::session::{superseded, Grant, Session};

/// One request being handled.
pub struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub session: &'a Arc<Session>,
    pub principal: Arc<Principal>,
    /// What the request is checked as; deferred work carries it.
    pub grant: Grant,
    pub ns: Namespace,
    pub ack: Option<u64>,
    pub event: &'a str,
}

/// The owned half of a [`Ctx`], for a reply that comes after an await (a database
/// query runs in a task of its own; the connection goes on meanwhile). It carries the
/// grant the request was checked under: once the connection has closed or become
/// another principal, its replies are not sent (the request is refused instead) and
/// its subscriptions are not made.
#[derive(Clone)]
pub struct Later {
    pub app: Arc<App>,
    pub session: Arc<Session>,
    pub principal: Arc<Principal>,
    pub grant: Grant,
    pub ns: Namespace,
    pub ack: Option<u64>,
    pub event: Arc<str>,
}

/// The reply to a request on `ns`, in the connection's protocol: the ack reply when it
/// carried `ack`, else `event`.
fn reply_frame(wire: Wire, ns: Namespace, ack: Option<u64>, event: &str, data: &Value) -> Bytes {
    match ack {
        Some(ack) => wire.ack_frame(ns.path(), ack, data),
        None => wire.event_frame(ns.path(), event, data),
    }
}

impl Later {
    pub fn reply_frame(&self, event: &str, data: &Value) -> Bytes {
        reply_frame(self.session.wire, self.ns, self.ack, event, data)
    }

    /// Sends the reply, unless the connection is no longer what the request was
    /// checked as (then the request is refused as [`superseded`]).
    pub fn reply(&self, event: &str, data: &Value) {
        if !self.session.is_current(&self.grant) {
            self.refuse(&superseded());
            return;
        }
        self.session.outbox.send(self.reply_frame(event, data));
    }

    /// Sends the error reply a refused request gets, and counts it.
    pub fn refuse(&self, refusal: &Refusal) {
        count_refusal(&self.app, &self.session, refusal);
        self.session.outbox.send(self.session.wire.refusal_frame(
            self.ns.path(),
            refusal,
            Some(&self.event),
            self.ack,
        ));
    }
}

/// Counts a refused request, and records a forbidden one as a security event (a
/// cross-tenant request was recorded as such where it was refused). Every refusal of a
/// request comes here, answered at once or after an await.
pub fn count_refusal(app: &App, session: &Session, refusal: &Refusal) {
    if refusal.message == OTHER_TENANT {
        app.metrics.error(refusal.code);
        return;
    }
    security::refused(
        &app.metrics,
        session.remote,
        format_args!("connection {}", session.id),
        refusal,
    );
}

/// A database error as the refusal a client sees: the store's mapping.
pub fn db_refusal(e: &crate::db::DbError) -> Refusal {
    Refusal::from(crate::store::StoreError::from(e))
}

impl Ctx<'_> {
    /// The reply frame: the ack reply when the request carried `ack`, else `event`.
    pub fn reply_frame(&self, event: &str, data: &Value) -> Bytes {
        reply_frame(self.session.wire, self.ns, self.ack, event, data)
    }

    pub fn reply(&self, event: &str, data: &Value) {
        self.session.outbox.send(self.reply_frame(event, data));
    }

    fn config(&self) -> &crate::config::Config {
        &self.app.config
    }

    pub fn later(&self) -> Later {
        Later {
            app: self.app.clone(),
            session: self.session.clone(),
            principal: self.principal.clone(),
            grant: self.grant.clone(),
            ns: self.ns,
            ack: self.ack,
            event: Arc::from(self.event),
        }
    }

    /// Runs `job`, which may wait (on the database, on Redis); a refusal it returns is
    /// sent as the request's error reply. A job that finishes without waiting (the
    /// in-memory store's answers) finishes here, so its reply is queued before the
    /// connection's next request is read; one that waits goes on in a task of its own
    /// and the connection goes on meanwhile.
    pub fn defer<F, Fut>(&self, job: F)
    where
        F: FnOnce(Later) -> Fut,
        Fut: Future<Output = Result<(), Refusal>> + Send + 'static,
    {
        let later = self.later();
        let mut fut = Box::pin(job(later.clone()));
        // Polling with a waker that does nothing is enough to learn whether the job is
        // done; a future that is not registers the task's own waker at its next poll.
        let mut first = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut first) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(refusal)) => later.refuse(&refusal),
            Poll::Pending => {
                tokio::spawn(async move {
                    if let Err(refusal) = fut.await {
                        later.refuse(&refusal);
                    }
                });
            }
        }
    }
}

/// What a request's principal must be allowed before its handler runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Permission {
    /// Nothing (the handler checks what it reads, if anything).
    Anyone,
    /// Reading the event's namespace (`Principal::may_read`).
    ReadNamespace,
}

type Handler = fn(&Ctx, &Map<String, Value>) -> Result<(), Refusal>;

/// One event a client may send: its name, its namespace, what it needs, and its handler.
struct EventRoute {
    name: &'static str,
    ns: Namespace,
    permission: Permission,
    handler: Handler,
}

const fn event(
    name: &'static str,
    ns: Namespace,
    permission: Permission,
    handler: Handler,
) -> EventRoute {
    EventRoute {
        name,
        ns,
        permission,
        handler,
    }
}

/// Every event of docs/protocol.md, "7. Namespaces and events": the one table requests
/// are dispatched by (one file per namespace holds the handlers).
#[rustfmt::skip]
const EVENTS: [EventRoute; 15] = {
    use Namespace::*;
    use Permission::*;
    [
        event("auth:login",                Root,          Anyone,        root::login),
        // Each data type checks the namespace it reads (queries.rs).
        event("data:request",              Root,          Anyone,        queries::data_request),
        event("ping",                      Root,          Anyone,        root::ping),
        event("inventory:subscribe",       Inventory,     ReadNamespace, streams::subscribe),
        event("inventory:unsubscribe",     Inventory,     Anyone,        streams::unsubscribe),
        event("inventory:get-current",     Inventory,     ReadNamespace, queries::inventory_current),
        event("orders:subscribe",          Orders,        ReadNamespace, streams::subscribe),
        event("orders:unsubscribe",        Orders,        Anyone,        streams::unsubscribe),
        event("orders:track",              Orders,        ReadNamespace, orders::track),
        event("customer:subscribe",        Customer,      ReadNamespace, streams::subscribe),
        event("customer:unsubscribe",      Customer,      Anyone,        streams::unsubscribe),
        event("notifications:subscribe",   Notifications, ReadNamespace, streams::subscribe),
        event("notifications:unsubscribe", Notifications, Anyone,        streams::unsubscribe),
        event("dashboard:subscribe",       Dashboard,     ReadNamespace, dashboard::subscribe),
        event("dashboard:unsubscribe",     Dashboard,     Anyone,        streams::unsubscribe),
    ]
};

/// Handles one request from `session`.
pub fn handle(app: &Arc<App>, session: &Arc<Session>, req: &Request) -> Result<(), Refusal> {
    let ns = Namespace::parse(&req.ns)
        .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "unknown namespace"))?;
    let grant = session.grant();
    let ctx = Ctx {
        app,
        session,
        principal: grant.principal.clone(),
        grant,
        ns,
        ack: req.ack,
        event: &req.event,
    };
    let data = &req.data;
    refuse_other_tenant(&ctx, data)?;
    let route = EVENTS
        .iter()
        .find(|e| e.name == req.event && e.ns == ns)
        .ok_or_else(|| unknown_event(&req.event))?;
    if route.permission == Permission::ReadNamespace {
        ctx.principal.may_read(ns)?;
    }
    (route.handler)(&ctx, data)
}

/// `unknown_event`, saying where a known event belongs when it came on the wrong
/// namespace.
fn unknown_event(event: &str) -> Refusal {
    match EVENTS.iter().find(|e| e.name == event) {
        Some(home) => Refusal::new(
            ErrorCode::UnknownEvent,
            format!("{event} belongs to namespace {}", home.ns.path()),
        ),
        None => Refusal::new(ErrorCode::UnknownEvent, "unknown event"),
    }
}

/// The refusal message of a cross-tenant request (recorded as such, not again as a
/// plain `forbidden`).
pub const OTHER_TENANT: &str = "a connection sees only its own tenant";

/// A request naming a tenant (`tenantId`, `tenant_id` or `tenant` in its data) other
/// than the connection's is refused and recorded: filters never cross tenants, and a
/// client that tries is worth an operator's attention.
fn refuse_other_tenant(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    let named = ["tenantId", "tenant_id", "tenant"]
        .iter()
        .filter_map(|k| data.get(*k).and_then(Value::as_str))
        .find(|t| *t != &*ctx.principal.tenant);
    if let Some(other) = named {
        security::record(
            &ctx.app.metrics,
            Event::CrossTenant,
            ctx.session.remote,
            &format!(
                "connection {} of tenant {} asked for tenant {other}",
                ctx.session.id, ctx.principal.tenant
            ),
        );
        return Err(Refusal::new(ErrorCode::Forbidden, OTHER_TENANT));
    }
    Ok(())
}
