//! Request handling per namespace: from a parsed request to subscriptions, queries and
//! replies. Protocol-neutral: a handler sees a [`Ctx`] and replies through it, so the
//! native codec (and later Socket.IO) share every rule here.
//!
//! Architecture Invariant: handlers never touch sockets and never encode broadcast
//! frames; they queue replies on the connection's outbox and ask the engine to
//! subscribe.

pub mod dashboard;
pub use nilecast_core::namespace::filter;
mod queries;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::auth::Principal;
use crate::bus;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::fanout::{subscription_name, Subscribed};
use crate::protocol::native::Request;
use crate::protocol::Wire;
use crate::security::{self, Event};
use crate::session::{superseded, too_many_subscriptions, Grant, Session};
use crate::time;
use filter::Filter;

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

/// Every request event, with its namespace, to tell `unknown_event` apart from a known
/// event sent on the wrong namespace.
const EVENTS: [(&str, Namespace); 15] = [
    ("auth:login", Namespace::Root),
    ("data:request", Namespace::Root),
    ("inventory:subscribe", Namespace::Inventory),
    ("inventory:unsubscribe", Namespace::Inventory),
    ("inventory:get-current", Namespace::Inventory),
    ("orders:subscribe", Namespace::Orders),
    ("orders:unsubscribe", Namespace::Orders),
    ("orders:track", Namespace::Orders),
    ("dashboard:subscribe", Namespace::Dashboard),
    ("dashboard:unsubscribe", Namespace::Dashboard),
    ("customer:subscribe", Namespace::Customer),
    ("customer:unsubscribe", Namespace::Customer),
    ("notifications:subscribe", Namespace::Notifications),
    ("notifications:unsubscribe", Namespace::Notifications),
    ("ping", Namespace::Root),
];

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
    // `<prefix>:subscribe` and `<prefix>:unsubscribe` of the namespace the request is on.
    let action = req
        .event
        .strip_prefix(ns.prefix())
        .and_then(|rest| rest.strip_prefix(':'));
    match (ns, req.event.as_str()) {
        (Namespace::Root, "auth:login") => login(&ctx, data),
        (Namespace::Root, "data:request") => queries::data_request(&ctx, data),
        (Namespace::Root, "ping") => {
            ctx.reply(
                "pong",
                &json!({ "serverTime": time::iso8601(time::now_ms()) }),
            );
            Ok(())
        }
        (Namespace::Inventory, "inventory:get-current") => queries::inventory_current(&ctx, data),
        (Namespace::Orders, "orders:track") => track(&ctx, data),
        (Namespace::Dashboard, "dashboard:subscribe") => dashboard::subscribe(&ctx, data),
        (Namespace::Root, _) => Err(unknown_event(&req.event)),
        _ if action == Some("subscribe") => subscribe(&ctx, data),
        _ if action == Some("unsubscribe") => unsubscribe(&ctx, data),
        _ => Err(unknown_event(&req.event)),
    }
}

/// `unknown_event`, saying where a known event belongs when it came on the wrong
/// namespace.
fn unknown_event(event: &str) -> Refusal {
    match EVENTS.iter().find(|(e, _)| *e == event) {
        Some((_, home)) => Refusal::new(
            ErrorCode::UnknownEvent,
            format!("{event} belongs to namespace {}", home.path()),
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

/// `auth:login {token}`. With auth on, the token is verified and the connection
/// becomes its principal; a connection that changes user, tenant or roles loses the
/// subscriptions it made as the previous one. A refused token gets `auth:error` (the
/// ack reply when the request carried `ack`). With auth off the connection becomes an
/// authenticated anonymous admin of its tenant.
fn login(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    let principal = match &ctx.app.config.verifier {
        None => {
            let mut principal = (*ctx.principal).clone();
            principal.authenticated = true;
            principal
        }
        Some(verifier) => {
            let token = data.get("token").and_then(Value::as_str).unwrap_or("");
            match verifier.check(token, &ctx.app.metrics, ctx.session.remote, "auth:login") {
                Ok(p) => p,
                Err(refusal) => {
                    ctx.app.metrics.error(refusal.code);
                    ctx.reply(
                        "auth:error",
                        &match ctx.ack {
                            Some(_) => json!({ "error": refusal.to_json() }),
                            None => refusal.to_json(),
                        },
                    );
                    return Ok(());
                }
            }
        }
    };
    // A refreshed token for the same identity keeps the subscriptions; anything else
    // (another user, tenant or set of roles) starts over.
    let before = &ctx.principal;
    if before.user_id != principal.user_id
        || before.tenant != principal.tenant
        || before.roles != principal.roles
    {
        ctx.app
            .engine
            .switch_principal(ctx.session, Arc::new(principal.clone()));
        ctx.app.dashboards.remove_session(ctx.session.id);
    } else {
        ctx.session.principal.store(Arc::new(principal.clone()));
    }
    ctx.reply(
        "auth:success",
        &json!({
            "userId": &*principal.user_id,
            "tenantId": &*principal.tenant,
            "roles": principal.roles.names(),
            "expiresAt": principal.expires_ms.map(time::iso8601),
        }),
    );
    Ok(())
}

/// The cap, checked early so that a full connection's subscribe costs nothing; it is
/// checked again where the subscription is recorded.
fn check_capacity(ctx: &Ctx) -> Result<(), Refusal> {
    let max = ctx.config().max_subscriptions;
    if ctx.session.subscription_count() >= max {
        return Err(too_many_subscriptions(max));
    }
    Ok(())
}

/// The filter a subscribe on `ns` asks for, narrowed to what the principal may see.
fn stream_filter(ctx: &Ctx, data: &Map<String, Value>) -> Result<Filter, Refusal> {
    let max = ctx.config().max_filter_values;
    let filter = match ctx.ns {
        Namespace::Inventory => Filter::inventory(data, max)?,
        Namespace::Orders => Filter::orders(data, max)?,
        Namespace::Customer => Filter::customer(data, max)?,
        Namespace::Notifications => Filter::notifications(data, max, None)?,
        Namespace::Root | Namespace::Dashboard => {
            return Err(Refusal::new(ErrorCode::UnknownEvent, "unknown event"))
        }
    };
    authorize(&ctx.principal, filter)
}

/// Narrows `filter` to what `principal` may read, or refuses it: the namespace must be
/// one its roles read, a customer's order subscriptions are pinned to its own orders
/// (naming another customer is `forbidden`) and its notifications to its own. One rule
/// for a fresh subscribe and a recovered one (Socket.IO), whoever made the filter.
pub fn authorize(principal: &Principal, mut filter: Filter) -> Result<Filter, Refusal> {
    principal.may_read(filter.namespace())?;
    let own = principal.own_user_only();
    match &mut filter {
        Filter::Orders { customer_ids, .. } => {
            if let Some(user) = own {
                if customer_ids
                    .as_ref()
                    .is_some_and(|ids| ids.iter().any(|c| &**c != user))
                {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        "customers may only follow their own orders",
                    ));
                }
                *customer_ids = Some(vec![Box::from(user)].into_boxed_slice());
            }
        }
        Filter::Notifications { for_user, .. } => *for_user = own.map(Box::from),
        Filter::Inventory { .. } | Filter::Customer { .. } => {}
    }
    Ok(filter)
}

/// The `*:subscribed` payload.
pub fn subscribed_json(outcome: Subscribed, filters: &Value) -> Value {
    json!({
        "subscriptionId": subscription_name(outcome.id),
        "filters": filters,
        "replayed": outcome.replayed,
        "gap": outcome.gap,
    })
}

/// `<ns>:subscribe` for the change-stream namespaces.
fn subscribe(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    ctx.principal.may_read(ctx.ns)?;
    let filter = stream_filter(ctx, data)?;
    let since = filter::since_seq(data)?;
    check_capacity(ctx)?;
    let filters = filter.to_json();
    let event = format!("{}:subscribed", ctx.ns.prefix());
    // A replay from below what the ring holds reads the change log first.
    if let Some(since) = since {
        if bus::replays_from_log(&*ctx.app.bus, &ctx.app.engine, since) {
            ctx.defer(move |later| async move {
                let reply =
                    |outcome| Some(later.reply_frame(&event, &subscribed_json(outcome, &filters)));
                let app = &later.app;
                bus::subscribe_from_log(
                    &*app.bus,
                    &app.engine,
                    &later.session,
                    &later.grant,
                    filter,
                    since,
                    reply,
                )
                .await
            });
            return Ok(());
        }
    }
    ctx.app
        .engine
        .subscribe(ctx.session, &ctx.grant, filter, since, None, |outcome| {
            Some(ctx.reply_frame(&event, &subscribed_json(outcome, &filters)))
        })?;
    Ok(())
}

/// Subscribes `session` again with `filter`, replaying every change after `since`, with
/// no reply (Socket.IO connection state recovery). The filter is checked as a fresh
/// subscribe's would be, against the principal the connection is now (its roles may
/// have changed since the filter was made), and counts toward the subscription cap.
pub fn resubscribe(
    app: &Arc<App>,
    session: &Arc<Session>,
    grant: &Grant,
    filter: Filter,
    since: u64,
) -> Result<(), Refusal> {
    let filter = authorize(&grant.principal, filter)?;
    let max = app.config.max_subscriptions;
    if session.subscription_count() >= max {
        return Err(too_many_subscriptions(max));
    }
    if bus::replays_from_log(&*app.bus, &app.engine, since) {
        let (app, session, grant) = (app.clone(), session.clone(), grant.clone());
        tokio::spawn(async move {
            let replay = bus::subscribe_from_log(
                &*app.bus,
                &app.engine,
                &session,
                &grant,
                filter,
                since,
                |_| None,
            );
            if let Err(refusal) = replay.await {
                tracing::warn!(connection = session.id, error = %refusal.message, "could not recover a subscription");
            }
        });
        return Ok(());
    }
    app.engine
        .subscribe(session, grant, filter, Some(since), None, |_| None)
        .map(|_| ())
}

/// Reads `subscriptionId`: `"sub-7"` (as the server names it) or `7`.
fn subscription_id(data: &Map<String, Value>) -> Result<Option<u64>, Refusal> {
    let not_found = || {
        Refusal::new(
            ErrorCode::NotFound,
            "no such subscription on this namespace",
        )
    };
    match data.get("subscriptionId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(not_found),
        Some(Value::String(s)) => s
            .strip_prefix("sub-")
            .unwrap_or(s)
            .parse()
            .map(Some)
            .map_err(|_| not_found()),
        Some(_) => Err(Refusal::new(
            ErrorCode::InvalidMessage,
            "subscriptionId must be a string",
        )),
    }
}

/// `<ns>:unsubscribe {subscriptionId?}`.
fn unsubscribe(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    let id = subscription_id(data)?;
    let removed = ctx.app.engine.unsubscribe(ctx.session, ctx.ns, id)?;
    if ctx.ns == Namespace::Dashboard {
        ctx.app.dashboards.remove(ctx.session.id, &removed);
    }
    let names: Vec<String> = removed.into_iter().map(subscription_name).collect();
    ctx.reply(
        &format!("{}:unsubscribed", ctx.ns.prefix()),
        &json!({ "unsubscribed": names }),
    );
    Ok(())
}

/// `orders:track {orderId}`: follow one order's tracking changes. With `ack` the reply
/// is `{orderId, tracking}`; without, the latest tracking change comes as
/// `order:tracking` (unless the connection already has it).
fn track(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    ctx.principal.may_read(Namespace::Orders)?;
    let order_id = data
        .get("orderId")
        .and_then(crate::fanout::change::scalar_text)
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::InvalidFilter,
                "orderId must be a string or number",
            )
        })?;
    ctx.defer(move |later| async move {
        let (store, tenant) = (&later.app.read_model, &later.principal.tenant);
        let latest = store.latest_tracking(tenant, &order_id).await?;
        let owner = store.order_customer(tenant, &order_id).await?;
        follow_order(&later, order_id, latest, owner)
    });
    Ok(())
}

/// The rest of `orders:track`, once the latest tracking change and the order's owner
/// are known.
fn follow_order(
    ctx: &Later,
    order_id: Box<str>,
    latest: Option<Arc<crate::fanout::change::Record>>,
    owner: Option<String>,
) -> Result<(), Refusal> {
    // A customer tracks an order only when it is known to be its own: an order whose
    // owner is unknown is refused like another customer's (its tracking carries an
    // address and a tracking number), and so is a tracking change that names another
    // customer itself.
    if let Some(user) = ctx.principal.own_user_only() {
        let record_customer = latest.as_ref().and_then(|r| r.keys.customer_id.as_deref());
        if owner.as_deref() != Some(user) || record_customer.is_some_and(|c| c != user) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "customers may only track their own orders",
            ));
        }
    }
    let already = ctx.session.subs.lock().iter().any(|s| {
        matches!(s.filter(), Some(Filter::Orders { track_only: true, order_ids: Some(ids), .. }) if ids.first() == Some(&order_id))
    });
    let reply =
        json!({ "orderId": &*order_id, "tracking": latest.as_ref().map(|r| r.payload_json()) });
    if already {
        if ctx.ack.is_some() {
            ctx.reply("orders:tracking", &reply);
        }
        return Ok(());
    }
    let max = ctx.app.config.max_subscriptions;
    if ctx.session.subscription_count() >= max {
        return Err(Refusal::new(
            ErrorCode::TooManySubscriptions,
            format!("at most {max} subscriptions per connection"),
        ));
    }
    let filter = Filter::track(order_id.clone(), ctx.principal.own_user_only());
    match ctx.ack {
        Some(_) => {
            ctx.app
                .engine
                .subscribe(&ctx.session, &ctx.grant, filter, None, None, |_| {
                    Some(ctx.reply_frame("orders:tracking", &reply))
                })?;
        }
        None => {
            // Without ack the answer is the latest tracking change itself, if any.
            ctx.app
                .engine
                .subscribe(&ctx.session, &ctx.grant, filter, None, latest, |_| None)?;
        }
    }
    Ok(())
}
