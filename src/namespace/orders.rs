//! `/orders` beyond its change stream (docs/protocol.md, "7.3 `/orders`"):
//! `orders:track`, which follows one order's tracking changes.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{filter::Filter, Ctx, Later};
use crate::error::{ErrorCode, Refusal};

/// `orders:track {orderId}`: follow one order's tracking changes. With `ack` the reply
/// is `{orderId, tracking}`; without, the latest tracking change comes as
/// `order:tracking` (unless the connection already has it).
pub(super) fn track(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
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
