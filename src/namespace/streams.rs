//! Subscribing and unsubscribing on the change-stream namespaces (`/inventory`,
//! `/orders`, `/customer`, `/notifications`; docs/protocol.md, "5. Subscriptions,
//! replay and gaps"), and the rule that narrows a filter to what its principal may see,
//! shared by a fresh subscribe and a recovered one.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{filter, Ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::bus;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::fanout::{subscription_name, Subscribed};
use crate::session::{too_many_subscriptions, Grant, Session};
use filter::Filter;

/// The cap, checked early so that a full connection's subscribe costs nothing; it is
/// checked again where the subscription is recorded.
pub(super) fn check_capacity(ctx: &Ctx) -> Result<(), Refusal> {
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
pub(super) fn subscribe(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
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
pub(super) fn unsubscribe(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
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
