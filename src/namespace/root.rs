//! The root namespace `/` (docs/protocol.md, "7.1 `/` (root)"): `auth:login` and `ping`;
//! `data:request` is answered in `queries.rs`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::Ctx;
use crate::error::Refusal;
use crate::time;

/// `ping`: `pong` with the server's time.
pub(super) fn ping(ctx: &Ctx, _data: &Map<String, Value>) -> Result<(), Refusal> {
    ctx.reply(
        "pong",
        &json!({ "serverTime": time::iso8601(time::now_ms()) }),
    );
    Ok(())
}

/// `auth:login {token}`. With auth on, the token is verified and the connection
/// becomes its principal; a connection that changes user, tenant or roles loses the
/// subscriptions it made as the previous one. A refused token gets `auth:error` (the
/// ack reply when the request carried `ack`). With auth off the connection becomes an
/// authenticated anonymous admin of its tenant.
pub(super) fn login(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
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
