//! Read-only requests: `data:request` and `inventory:get-current`. Each is checked and
//! parsed here, then answered by the store (`App::read_model`), whichever it is. Every
//! query is scoped to the principal's tenant.

use serde_json::{json, Map, Value};

use super::Ctx;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::{DataType, Namespace};
use crate::namespace::filter::{self, Values};
use crate::store::{ChangesQuery, InventoryQuery, Store, StoreError};
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

/// A string-or-array field, or its plural array form (`category` or `categories`),
/// at most `max` values over both.
fn values(
    params: &Map<String, Value>,
    singular: &str,
    plural: &str,
    max: usize,
) -> Result<Values, Refusal> {
    let mut out: Vec<Box<str>> = Vec::new();
    for field in [singular, plural] {
        out.extend(filter::one_or_many(params, field, max)?.map_or_else(Vec::new, Vec::from));
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
        low_stock_only: filter::flag(params, "lowStockOnly")?,
        limit: limit(params)?,
    })
}

/// `inventory:get-current {filters}`: the latest row per product and warehouse.
pub fn inventory_current(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
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
    let query = inventory_query(params, ctx.config().max_filter_values)?;
    ctx.defer(move |later| async move {
        let items = later
            .app
            .read_model
            .inventory_current(&later.principal.tenant, &query)
            .await?;
        later.reply(
            "inventory:current",
            &json!({ "count": items.len(), "items": items, "timestamp": time::iso8601(time::now_ms()) }),
        );
        Ok(())
    });
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
    // Checked and parsed here: a refused request is answered at once.
    let ask = Ask::parse(ctx, data_type, params)?;
    let data_type = data_type.to_string();
    ctx.defer(move |later| async move {
        let answer = ask
            .answer(&*later.app.read_model, &later.principal.tenant)
            .await?;
        later.reply(
            "data:response",
            &json!({ "dataType": data_type, "data": answer, "timestamp": time::iso8601(time::now_ms()) }),
        );
        Ok(())
    });
    Ok(())
}

/// One `data:request`, checked and with its parameters read.
enum Ask {
    InventorySummary,
    LowStockItems(InventoryQuery),
    OrderStats,
    RecentOrders(usize),
    CustomerActivity(usize),
    Alerts { all: bool },
    RecentChanges(ChangesQuery),
}

impl Ask {
    /// Refuses a data type the principal may not read (each needs the read permission
    /// of one namespace) and parameters of the wrong shape.
    fn parse(ctx: &Ctx, data_type: &str, params: &Map<String, Value>) -> Result<Ask, Refusal> {
        let needs = |ns: Namespace| ctx.principal.may_read(ns);
        Ok(match data_type {
            "inventory_summary" => {
                needs(Namespace::Inventory)?;
                Ask::InventorySummary
            }
            "low_stock_items" => {
                needs(Namespace::Inventory)?;
                let mut query = inventory_query(params, ctx.config().max_filter_values)?;
                query.low_stock_only = true;
                Ask::LowStockItems(query)
            }
            "order_stats" => {
                needs(Namespace::Dashboard)?;
                Ask::OrderStats
            }
            "recent_orders" => {
                needs(Namespace::Dashboard)?;
                Ask::RecentOrders(limit(params)?)
            }
            "customer_activity" => {
                needs(Namespace::Customer)?;
                Ask::CustomerActivity(limit(params)?)
            }
            "alerts" => {
                needs(Namespace::Dashboard)?;
                Ask::Alerts {
                    all: filter::flag(params, "all")?,
                }
            }
            "recent_changes" => {
                needs(Namespace::Dashboard)?;
                let data_type = match params.get("dataType").and_then(Value::as_str) {
                    Some(name) => Some(DataType::parse(name).ok_or_else(|| {
                        Refusal::new(ErrorCode::NotFound, "unknown dataType in parameters")
                    })?),
                    None => None,
                };
                Ask::RecentChanges(ChangesQuery {
                    data_type,
                    since: params.get("since").and_then(Value::as_u64).unwrap_or(0),
                    limit: limit(params)?,
                })
            }
            _ => {
                return Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!("unknown dataType; known: {}", DATA_TYPES.join(", ")),
                ))
            }
        })
    }

    async fn answer(self, store: &dyn Store, tenant: &str) -> Result<Value, StoreError> {
        Ok(match self {
            Ask::InventorySummary => store.inventory_summary(tenant).await?,
            Ask::LowStockItems(query) => {
                Value::Array(store.inventory_current(tenant, &query).await?)
            }
            Ask::OrderStats => store.order_stats(tenant).await?,
            Ask::RecentOrders(limit) => Value::Array(store.recent_orders(tenant, limit).await?),
            Ask::CustomerActivity(limit) => store.customer_activity(tenant, limit).await?,
            Ask::Alerts { all } => Value::Array(store.alerts(tenant, all).await?),
            Ask::RecentChanges(query) => Value::Array(store.changes(tenant, query).await?),
        })
    }
}
