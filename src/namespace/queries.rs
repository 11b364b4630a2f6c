//! Read-only requests: `data:request` and `inventory:get-current`. Every query is scoped
//! to the principal's tenant.

use serde_json::{json, Map, Value};

use super::Ctx;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::namespace::filter::Values;
use crate::store::memory::InventoryQuery;
use crate::time;

/// Default and largest `limit` of a query (the same as `/changes`).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn limit(params: &Map<String, Value>) -> Result<usize, Refusal> {
    match params.get("limit") {
        None | Some(Value::Null) => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .as_u64()
            .map(|n| (n as usize).clamp(1, MAX_LIMIT))
            .ok_or_else(|| {
                Refusal::new(ErrorCode::InvalidFilter, "limit must be a positive integer")
            }),
    }
}

/// A string-or-array field, or its plural array form (`category` or `categories`).
fn values(
    params: &Map<String, Value>,
    singular: &str,
    plural: &str,
    max: usize,
) -> Result<Values, Refusal> {
    let mut out: Vec<Box<str>> = Vec::new();
    for field in [singular, plural] {
        match params.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    out.push(crate::fanout::change::scalar_text(item).ok_or_else(|| {
                        Refusal::new(
                            ErrorCode::InvalidFilter,
                            format!("{field} values must be strings or numbers"),
                        )
                    })?);
                }
            }
            Some(v @ (Value::String(_) | Value::Number(_))) => {
                out.extend(crate::fanout::change::scalar_text(v))
            }
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidFilter,
                    format!("{field} must be a string or an array"),
                ))
            }
        }
    }
    if out.len() > max {
        return Err(Refusal::new(
            ErrorCode::InvalidFilter,
            format!("{plural} has more than {max} values"),
        ));
    }
    Ok((!out.is_empty()).then(|| out.into_boxed_slice()))
}

fn inventory_query(params: &Map<String, Value>, max: usize) -> Result<InventoryQuery, Refusal> {
    Ok(InventoryQuery {
        product_ids: values(params, "productId", "productIds", max)?,
        warehouse_ids: values(params, "warehouseId", "warehouseIds", max)?,
        categories: values(params, "category", "categories", max)?,
        low_stock_only: super::filter::flag(params, "lowStockOnly")?,
    })
}

/// `inventory:get-current {filters}`: the latest row per product and warehouse.
pub fn inventory_current(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    ctx.principal.may_read(Namespace::Inventory)?;
    let params = match data.get("filters") {
        Some(Value::Object(f)) => f,
        None | Some(Value::Null) => data,
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidFilter,
                "filters must be an object",
            ))
        }
    };
    let config = ctx.config();
    let query = inventory_query(params, config.max_filter_values)?;
    let limit = limit(params)?;
    if ctx.uses_db() {
        let default = config.low_stock_threshold;
        ctx.defer(move |later| async move {
            let db = later.db()?;
            let q = crate::db::queries::inventory_rows(&later.principal.tenant, &query, default, limit);
            let items = db.read(&q).await.map_err(|e| super::db_refusal(&e))?.value;
            later.reply(
                "inventory:current",
                &json!({ "count": items.len(), "items": items, "timestamp": time::iso8601(time::now_ms()) }),
            );
            Ok(())
        });
        return Ok(());
    }
    let items = ctx.app.store.inventory_current(
        &ctx.principal.tenant,
        &query,
        config.low_stock_threshold,
        limit,
    );
    ctx.reply(
        "inventory:current",
        &json!({ "count": items.len(), "items": items, "timestamp": time::iso8601(time::now_ms()) }),
    );
    Ok(())
}

/// The data types `data:request` answers.
pub const DATA_TYPES: [&str; 7] = [
    "inventory_summary",
    "low_stock_items",
    "order_stats",
    "recent_orders",
    "customer_activity",
    "alerts",
    "recent_changes",
];

/// `data:request {dataType, parameters}` answers `data:response {dataType, data, timestamp}`.
pub fn data_request(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    let data_type = data
        .get("dataType")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(ErrorCode::InvalidMessage, "dataType must be a string"))?;
    let empty = Map::new();
    let params = match data.get("parameters") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => &empty,
        Some(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "parameters must be an object",
            ))
        }
    };
    if ctx.uses_db() && DB_TYPES.contains(&data_type) {
        let data_type = data_type.to_string();
        let params = params.clone();
        // Checked here, before the task: a refused request is answered at once.
        required(ctx, &data_type)?;
        ctx.defer(move |later| async move {
            let answer = answer_db(&later, &data_type, &params).await?;
            later.reply(
                "data:response",
                &json!({ "dataType": data_type, "data": answer, "timestamp": time::iso8601(time::now_ms()) }),
            );
            Ok(())
        });
        return Ok(());
    }
    let answer = answer(ctx, data_type, params)?;
    ctx.reply(
        "data:response",
        &json!({ "dataType": data_type, "data": answer, "timestamp": time::iso8601(time::now_ms()) }),
    );
    Ok(())
}

/// `recent_changes` parameters: the data type (if any) and `since`.
fn recent_changes_params(
    params: &Map<String, Value>,
) -> Result<(Option<crate::fanout::change::DataType>, u64), Refusal> {
    let kind =
        match params.get("dataType").and_then(Value::as_str) {
            Some(name) => Some(crate::fanout::change::DataType::parse(name).ok_or_else(|| {
                Refusal::new(ErrorCode::NotFound, "unknown dataType in parameters")
            })?),
            None => None,
        };
    Ok((
        kind,
        params.get("since").and_then(Value::as_u64).unwrap_or(0),
    ))
}

/// The `data:request` types answered from the database when one is configured (the
/// others, and the dashboard's widgets, come from the in-memory state).
const DB_TYPES: [&str; 7] = DATA_TYPES;

/// The namespace whose read permission a data type needs.
fn required(ctx: &Ctx, data_type: &str) -> Result<(), Refusal> {
    let ns = match data_type {
        "inventory_summary" | "low_stock_items" => Namespace::Inventory,
        "customer_activity" => Namespace::Customer,
        _ => Namespace::Dashboard,
    };
    ctx.principal.may_read(ns)
}

/// One `data:request` answer from the database.
async fn answer_db(
    later: &super::Later,
    data_type: &str,
    params: &Map<String, Value>,
) -> Result<Value, Refusal> {
    use crate::db::queries as q;
    let db = later.db()?;
    let app = &later.app;
    let config = &app.config;
    let tenant = &*later.principal.tenant;
    let failed = |e: crate::db::DbError| super::db_refusal(&e);
    let limit = limit(params)?;
    Ok(match data_type {
        "inventory_summary" => q::summary(
            db,
            tenant,
            config.low_stock_threshold,
            config.out_of_stock_threshold,
        )
        .await
        .map_err(failed)?,
        "low_stock_items" => {
            let mut query = inventory_query(params, config.max_filter_values)?;
            query.low_stock_only = true;
            let rows = db
                .read(&q::inventory_rows(
                    tenant,
                    &query,
                    config.low_stock_threshold,
                    limit,
                ))
                .await
                .map_err(failed)?;
            Value::Array(rows.value.into_iter().map(Value::Object).collect())
        }
        "order_stats" => q::stats(
            db,
            tenant,
            app.alerts.orders_last_minute(tenant, time::now_ms()),
        )
        .await
        .map_err(failed)?,
        "recent_orders" => {
            let rows = db
                .read(&q::recent_orders(tenant, limit))
                .await
                .map_err(failed)?;
            Value::Array(rows.value.into_iter().map(Value::Object).collect())
        }
        "customer_activity" => q::activity(db, tenant, limit).await.map_err(failed)?,
        "alerts" => {
            let all = super::filter::flag(params, "all")?;
            let mut rows = db.read(&q::alerts(tenant, all)).await.map_err(failed)?;
            Value::Array(
                rows.value
                    .iter_mut()
                    .map(|r| crate::db::store::alert_json(r, tenant))
                    .collect(),
            )
        }
        "recent_changes" => {
            let (kind, since) = recent_changes_params(params)?;
            let rows = db
                .read(&q::changes(tenant, kind, since, limit))
                .await
                .map_err(failed)?;
            Value::Array(
                q::records(&app.engine, &rows.value)
                    .iter()
                    .map(|r| r.payload_json())
                    .collect(),
            )
        }
        _ => return Err(Refusal::new(ErrorCode::NotFound, "unknown dataType")),
    })
}

/// Computes one `data:request` answer (also used by the dashboard's widgets).
fn answer(ctx: &Ctx, data_type: &str, params: &Map<String, Value>) -> Result<Value, Refusal> {
    let app = ctx.app;
    let tenant = &*ctx.principal.tenant;
    let config = &app.config;
    let now = time::now_ms();
    let needs = |ns: Namespace| ctx.principal.may_read(ns);
    Ok(match data_type {
        "inventory_summary" => {
            needs(Namespace::Inventory)?;
            app.store.inventory_summary(
                tenant,
                config.low_stock_threshold,
                config.out_of_stock_threshold,
            )
        }
        "low_stock_items" => {
            needs(Namespace::Inventory)?;
            let mut query = inventory_query(params, config.max_filter_values)?;
            query.low_stock_only = true;
            Value::Array(app.store.inventory_current(
                tenant,
                &query,
                config.low_stock_threshold,
                limit(params)?,
            ))
        }
        "order_stats" => {
            needs(Namespace::Dashboard)?;
            app.store
                .order_stats(tenant, app.alerts.orders_last_minute(tenant, now))
        }
        "recent_orders" => {
            needs(Namespace::Dashboard)?;
            Value::Array(app.store.recent_orders(tenant, limit(params)?))
        }
        "customer_activity" => {
            needs(Namespace::Customer)?;
            app.store.customer_activity(tenant, limit(params)?, now)
        }
        "alerts" => {
            needs(Namespace::Dashboard)?;
            Value::Array(app.alerts.list(tenant, super::filter::flag(params, "all")?))
        }
        "recent_changes" => {
            needs(Namespace::Dashboard)?;
            let (kind, since) = recent_changes_params(params)?;
            Value::Array(
                app.engine
                    .recent(tenant, kind, since, limit(params)?)
                    .iter()
                    .map(|r| r.payload_json())
                    .collect(),
            )
        }
        _ => {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("unknown dataType; known: {}", DATA_TYPES.join(", ")),
            ))
        }
    })
}
