//! Reads for requests and the HTTP API. Every query names the caller's tenant
//! ([`Query::new`] makes it the first parameter); reads of the business tables also run
//! on the MySQL fallback, reads of the change log and alerts only on PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::sql::{Param, Query, Rows};
use super::{Db, DbError, Timed};
use crate::fanout::change::{DataType, Namespace, Record};
use crate::fanout::{Engine, LogReplay, Logged};
use crate::store::memory::InventoryQuery;

/// Stock rows with their product's category, name, sku and threshold.
pub fn inventory_rows(
    tenant: &str,
    q: &InventoryQuery,
    default_threshold: f64,
    limit: usize,
) -> Query {
    let mut query = Query::new(
        "inventory_current",
        tenant,
        "SELECT i.product_id, i.warehouse_id, i.quantity,
                COALESCE(i.low_stock_threshold, p.low_stock_threshold) AS low_stock_threshold,
                p.category, p.name, p.sku, i.updated_at
         FROM inventory i
         LEFT JOIN products p ON p.tenant_id = i.tenant_id AND p.id = i.product_id
         WHERE i.tenant_id = ?",
    );
    if let Some(ids) = &q.product_ids {
        query = query.push_in(" AND i.product_id", ids);
    }
    if let Some(ids) = &q.warehouse_ids {
        query = query.push_in(" AND i.warehouse_id", ids);
    }
    if let Some(cats) = &q.categories {
        query = query.push_in(" AND p.category", cats);
    }
    if q.low_stock_only {
        query = query.push(
            " AND i.quantity <= COALESCE(i.low_stock_threshold, p.low_stock_threshold, ?)",
            [Param::Float(default_threshold)],
        );
    }
    query.push(
        " ORDER BY i.product_id, i.warehouse_id LIMIT ?",
        [Param::Int(limit as i64)],
    )
}

pub fn inventory_summary(tenant: &str, default_threshold: f64, out_of_stock: f64) -> Query {
    Query::with_leading(
        "inventory_summary",
        [
            Param::Float(out_of_stock),
            Param::Float(out_of_stock),
            Param::Float(default_threshold),
        ],
        tenant,
        "SELECT COUNT(*) AS stock_rows,
                COALESCE(SUM(i.quantity), 0) AS total_units,
                COALESCE(SUM(CASE WHEN i.quantity <= ? THEN 1 ELSE 0 END), 0) AS out_of_stock_count,
                COALESCE(SUM(CASE WHEN i.quantity > ?
                    AND i.quantity <= COALESCE(i.low_stock_threshold, p.low_stock_threshold, ?)
                    THEN 1 ELSE 0 END), 0) AS low_stock_count,
                COALESCE(SUM(i.quantity * COALESCE(p.price, 0)), 0) AS total_value
         FROM inventory i
         LEFT JOIN products p ON p.tenant_id = i.tenant_id AND p.id = i.product_id
         WHERE i.tenant_id = ?",
    )
}

pub fn product_count(tenant: &str) -> Query {
    Query::new(
        "product_count",
        tenant,
        "SELECT COUNT(*) AS total_products FROM products WHERE tenant_id = ?",
    )
}

pub fn order_stats(tenant: &str) -> Query {
    Query::new(
        "order_stats",
        tenant,
        "SELECT status, COUNT(*) AS orders, COALESCE(SUM(total), 0) AS revenue
         FROM orders WHERE tenant_id = ? GROUP BY status ORDER BY status",
    )
}

pub fn recent_orders(tenant: &str, limit: usize) -> Query {
    Query::new(
        "recent_orders",
        tenant,
        "SELECT id AS order_id, customer_id, status, total, currency, created_at, updated_at
         FROM orders WHERE tenant_id = ? ORDER BY updated_at DESC, id LIMIT ?",
    )
    .push("", [Param::Int(limit as i64)])
}

pub fn activity_recent(tenant: &str, limit: usize) -> Query {
    Query::new(
        "customer_activity",
        tenant,
        "SELECT customer_id, activity_type, product_id, category, session_id,
                updated_at AS timestamp
         FROM customer_activity WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
    )
    .push("", [Param::Int(limit as i64)])
}

pub fn activity_counts(tenant: &str, since: SystemTime) -> Query {
    Query::new(
        "customer_activity_counts",
        tenant,
        "SELECT activity_type, COUNT(*) AS events FROM customer_activity
         WHERE tenant_id = ? AND updated_at >= ? GROUP BY activity_type ORDER BY activity_type",
    )
    .push("", [Param::Time(since)])
}

pub fn activity_customers(tenant: &str, since: SystemTime) -> Query {
    Query::new(
        "customer_activity_customers",
        tenant,
        "SELECT COUNT(DISTINCT customer_id) AS customers FROM customer_activity
         WHERE tenant_id = ? AND updated_at >= ?",
    )
    .push("", [Param::Time(since)])
}

pub fn order_customer(tenant: &str, order_id: &str) -> Query {
    Query::new(
        "order_customer",
        tenant,
        "SELECT customer_id FROM orders WHERE tenant_id = ? AND id = ?",
    )
    .push("", [Param::Text(order_id.to_string())])
}

/// The customer of an order as the change log last told it: an order published through
/// `POST /publish` has a change-log row and no `orders` row.
pub fn order_customer_logged(tenant: &str, order_id: &str) -> Query {
    Query::new(
        "order_customer_logged",
        tenant,
        "SELECT payload->>'customerId' AS customer_id
         FROM nilecast_changes
         WHERE tenant_id = ? AND data_type = 'orders' AND entity_id = ?
         ORDER BY seq DESC LIMIT 1",
    )
    .push("", [Param::Text(order_id.to_string())])
    .pg_only()
}

pub fn alerts(tenant: &str, all: bool) -> Query {
    Query::new(
        "alerts",
        tenant,
        "SELECT id, type, severity, message, data, created_at, acknowledged_at
         FROM alerts WHERE tenant_id = ?",
    )
    .push(
        if all {
            " ORDER BY created_at DESC LIMIT 1000"
        } else {
            " AND acknowledged_at IS NULL ORDER BY created_at DESC LIMIT 1000"
        },
        [],
    )
    .pg_only()
}

/// Change-log rows of one tenant, newest first (`/changes`, `recent_changes`).
pub fn changes(tenant: &str, data_type: Option<DataType>, since: u64, limit: usize) -> Query {
    let mut q = Query::new(
        "changes",
        tenant,
        "SELECT seq, tenant_id, data_type, payload,
                (extract(epoch FROM committed_at) * 1000)::int8 AS committed_ms
         FROM nilecast_changes WHERE tenant_id = ? AND seq > ?",
    )
    .push("", [Param::Int(since as i64)]);
    if let Some(t) = data_type {
        q = q.push(" AND data_type = ?", [Param::Text(t.name().into())]);
    }
    q.push(" ORDER BY seq DESC LIMIT ?", [Param::Int(limit as i64)])
        .pg_only()
}

/// The latest tracking change of an order, from the change log.
pub fn latest_tracking(tenant: &str, order_id: &str) -> Query {
    Query::new(
        "latest_tracking",
        tenant,
        "SELECT seq, tenant_id, data_type, payload,
                (extract(epoch FROM committed_at) * 1000)::int8 AS committed_ms
         FROM nilecast_changes
         WHERE tenant_id = ? AND data_type = 'order_tracking' AND entity_id = ?
         ORDER BY seq DESC LIMIT 1",
    )
    .push("", [Param::Text(order_id.to_string())])
    .pg_only()
}

/// Change-log rows (as JSON rows) to records.
pub fn records(engine: &Engine, rows: &Rows) -> Vec<Arc<Record>> {
    rows.iter()
        .filter_map(|row| {
            let seq = row.get("seq")?.as_u64()?;
            let data_type = DataType::parse(row.get("dataType")?.as_str()?)?;
            let data = row.get("payload")?.as_object()?.clone();
            let tenant = row.get("tenantId")?.as_str()?;
            let ts = row.get("committedMs").and_then(Value::as_u64).unwrap_or(0);
            Some(engine.build_record(&Logged {
                seq,
                change: crate::fanout::change::Change {
                    data_type,
                    tenant: Arc::from(tenant),
                    data,
                },
                timestamp_ms: ts,
            }))
        })
        .collect()
}

/// The data types a namespace's subscriptions receive.
fn namespace_types(ns: Namespace) -> &'static [&'static str] {
    match ns {
        Namespace::Inventory => &["inventory"],
        Namespace::Orders => &["orders", "order_tracking"],
        Namespace::Customer => &["customer_activity"],
        Namespace::Notifications => &["notification"],
        Namespace::Root | Namespace::Dashboard => &[],
    }
}

/// Reads a tenant's changes of namespace `ns` in `(since, through]` from the change log,
/// for a `sinceSeq` replay that reaches below the retention ring.
pub async fn replay(
    db: &Db,
    engine: &Engine,
    tenant: &str,
    ns: Namespace,
    since: u64,
    through: u64,
) -> Result<Timed<LogReplay>, DbError> {
    let max = db.config.replay_max_db_changes;
    let types: Vec<Box<str>> = namespace_types(ns).iter().map(|t| Box::from(*t)).collect();
    let query = Query::new(
        "replay",
        tenant,
        "SELECT seq, tenant_id, data_type, payload,
                (extract(epoch FROM committed_at) * 1000)::int8 AS committed_ms
         FROM nilecast_changes WHERE tenant_id = ? AND seq > ? AND seq <= ?",
    )
    .push("", [Param::Int(since as i64), Param::Int(through as i64)])
    .push_in(" AND data_type", &types)
    .push(" ORDER BY seq LIMIT ?", [Param::Int(max + 1)])
    .pg_only();
    let started = std::time::Instant::now();
    let result = async {
        // How far retention pruned (not tenant data: one row for the whole log).
        let pruned_through: i64 = db
            .client()
            .await?
            .query_opt(
                "SELECT seq FROM nilecast_feed_state WHERE name = '_pruned'",
                &[],
            )
            .await?
            .map_or(0, |r| r.get(0));
        let pruned_through = pruned_through.max(0) as u64;
        let mut rows = db.read(&query).await?.value;
        let truncated = rows.len() as i64 > max;
        let mut through = through;
        if truncated {
            rows.truncate(max as usize);
            through = rows
                .last()
                .and_then(|r| r.get("seq"))
                .and_then(Value::as_u64)
                .unwrap_or(since);
        }
        Ok(LogReplay {
            records: records(engine, &rows),
            through,
            gap: pruned_through > since || truncated,
        })
    }
    .await;
    db.timed("replay", Some(tenant), started, result)
}

/// `inventory_summary` from the tables.
pub async fn summary(
    db: &Db,
    tenant: &str,
    default_threshold: f64,
    out_of_stock: f64,
) -> Result<Value, DbError> {
    let rows = db
        .read(&inventory_summary(tenant, default_threshold, out_of_stock))
        .await?
        .value;
    let products = db.read(&product_count(tenant)).await?.value;
    let mut out = rows.into_iter().next().unwrap_or_default();
    out.insert(
        "totalProducts".into(),
        products
            .first()
            .and_then(|r| r.get("totalProducts").cloned())
            .unwrap_or(json!(0)),
    );
    if let Some(v) = out.get("totalValue").and_then(Value::as_f64) {
        out.insert("totalValue".into(), json!((v * 100.0).round() / 100.0));
    }
    Ok(Value::Object(out))
}

/// `order_stats` from the tables.
pub async fn stats(db: &Db, tenant: &str, orders_last_minute: u64) -> Result<Value, DbError> {
    let rows = db.read(&order_stats(tenant)).await?.value;
    let mut by_status = BTreeMap::new();
    let (mut total, mut revenue) = (0u64, 0.0);
    for row in &rows {
        let n = row.get("orders").and_then(Value::as_u64).unwrap_or(0);
        total += n;
        revenue += row.get("revenue").and_then(Value::as_f64).unwrap_or(0.0);
        let status = row
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        by_status.insert(status.to_string(), n);
    }
    Ok(json!({
        "totalOrders": total,
        "byStatus": by_status,
        "ordersLastMinute": orders_last_minute,
        "totalRevenue": (revenue * 100.0).round() / 100.0,
    }))
}

/// `customer_activity` from the tables.
pub async fn activity(db: &Db, tenant: &str, limit: usize) -> Result<Value, DbError> {
    let since = SystemTime::now() - Duration::from_secs(60);
    let recent = db.read(&activity_recent(tenant, limit)).await?.value;
    let counts = db.read(&activity_counts(tenant, since)).await?.value;
    let customers = db.read(&activity_customers(tenant, since)).await?.value;
    let mut by_type = BTreeMap::new();
    for row in &counts {
        let kind = row
            .get("activityType")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        by_type.insert(
            kind.to_string(),
            row.get("events").and_then(Value::as_u64).unwrap_or(0),
        );
    }
    Ok(json!({
        "eventsLastMinute": by_type.values().sum::<u64>(),
        "activeCustomersLastMinute": customers.first().and_then(|r| r.get("customers")).cloned().unwrap_or(json!(0)),
        "byType": by_type,
        "recent": recent,
    }))
}
