//! Reads for requests and the HTTP API: [`InPostgres`], the [`Store`] that answers from
//! the tables and the change log, and the replay of the change log for `sinceSeq`. Every
//! query names the caller's tenant ([`Query::new`] makes it the first parameter); reads
//! of the business tables also run on the MySQL fallback, reads of the change log and
//! alerts only on PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::sql::{Param, Query, Rows};
use super::{Db, DbError, Timed};
use crate::alerts::Alerts;
use crate::config::Config;
use crate::fanout::change::{DataType, Namespace, Record};
use crate::fanout::{Engine, LogReplay, Logged};
use crate::store::{Answer, ChangesQuery, InventoryQuery, Store};
use crate::time;

/// The read model in PostgreSQL: the business tables (on the MySQL fallback while
/// PostgreSQL is unreachable), the alerts table and the change log. Order statistics
/// take `ordersLastMinute` from the alert book, which counts new orders as the feed
/// publishes them.
pub struct InPostgres {
    db: Arc<Db>,
    alerts: Arc<Alerts>,
    /// Builds records of change-log rows (keys completed as the feed's would be).
    engine: Arc<Engine>,
    /// `LOW_STOCK_THRESHOLD` and `OUT_OF_STOCK_THRESHOLD`.
    low_stock: f64,
    out_of_stock: f64,
}

impl InPostgres {
    pub fn new(
        config: &Config,
        db: Arc<Db>,
        alerts: Arc<Alerts>,
        engine: Arc<Engine>,
    ) -> InPostgres {
        InPostgres {
            db,
            alerts,
            engine,
            low_stock: config.low_stock_threshold,
            out_of_stock: config.out_of_stock_threshold,
        }
    }

    async fn rows(&self, query: Query) -> Result<Rows, DbError> {
        Ok(self.db.read(&query).await?.value)
    }

    /// The first row's `customerId`.
    async fn customer(&self, query: Query) -> Result<Option<String>, DbError> {
        let rows = self.rows(query).await?;
        Ok(rows
            .first()
            .and_then(|r| r.get("customerId"))
            .and_then(Value::as_str)
            .map(String::from))
    }
}

fn objects(rows: Rows) -> Vec<Value> {
    rows.into_iter().map(Value::Object).collect()
}

impl Store for InPostgres {
    fn inventory_current<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a InventoryQuery,
    ) -> Answer<'a, Vec<Value>> {
        let sql = inventory_rows(tenant, query, self.low_stock);
        Box::pin(async move { Ok(objects(self.rows(sql).await?)) })
    }

    fn inventory_summary<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value> {
        Box::pin(
            async move { Ok(summary(&self.db, tenant, self.low_stock, self.out_of_stock).await?) },
        )
    }

    fn order_stats<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value> {
        Box::pin(async move {
            let last_minute = self.alerts.orders_last_minute(tenant, time::now_ms());
            Ok(stats(&self.db, tenant, last_minute).await?)
        })
    }

    fn recent_orders<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Vec<Value>> {
        Box::pin(async move { Ok(objects(self.rows(recent_orders(tenant, limit)).await?)) })
    }

    fn customer_activity<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Value> {
        Box::pin(async move { Ok(activity(&self.db, tenant, limit).await?) })
    }

    fn alerts<'a>(&'a self, tenant: &'a str, all: bool) -> Answer<'a, Vec<Value>> {
        Box::pin(async move {
            let rows = self.rows(alerts(tenant, all)).await?;
            Ok(rows
                .into_iter()
                .map(|mut r| super::store::alert_json(&mut r, tenant))
                .collect())
        })
    }

    /// Acknowledges in the alerts table, and in the in-memory rules too, so that the
    /// same condition may raise a new alert.
    fn acknowledge<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
    ) -> Answer<'a, Option<(Value, bool)>> {
        Box::pin(async move {
            // Every node raises the alert from the change that caused it; its row is
            // stored a moment after the change reached clients (the alert writer). An
            // alert this node knows and the table does not have yet is waited for, up
            // to two seconds, rather than answered as unknown.
            let known = self.alerts.acknowledge(tenant, id).is_some();
            let mut backoff = crate::backoff::Backoff::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                if let Some(found) = super::store::acknowledge(&self.db, tenant, id).await? {
                    return Ok(Some(found));
                }
                if !known || tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(
                    backoff
                        .next_delay()
                        .min(std::time::Duration::from_millis(200)),
                )
                .await;
            }
        })
    }

    fn changes<'a>(&'a self, tenant: &'a str, query: ChangesQuery) -> Answer<'a, Vec<Value>> {
        Box::pin(async move {
            let rows = self.rows(changes(tenant, query)).await?;
            Ok(records(&self.engine, &rows)
                .iter()
                .map(|r| r.payload_json())
                .collect())
        })
    }

    /// From the orders table, else from the change log: an order published through
    /// `POST /publish` has a change-log row and no `orders` row.
    fn order_customer<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<String>> {
        Box::pin(async move {
            match self.customer(order_customer(tenant, order_id)).await? {
                Some(customer) => Ok(Some(customer)),
                None => Ok(self
                    .customer(order_customer_logged(tenant, order_id))
                    .await?),
            }
        })
    }

    fn latest_tracking<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<Arc<Record>>> {
        Box::pin(async move {
            let rows = self.rows(latest_tracking(tenant, order_id)).await?;
            Ok(records(&self.engine, &rows).pop())
        })
    }
}

/// Stock rows with their product's category, name, sku and threshold.
fn inventory_rows(tenant: &str, q: &InventoryQuery, default_threshold: f64) -> Query {
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
        [Param::Int(q.limit as i64)],
    )
}

fn inventory_summary(tenant: &str, default_threshold: f64, out_of_stock: f64) -> Query {
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

fn product_count(tenant: &str) -> Query {
    Query::new(
        "product_count",
        tenant,
        "SELECT COUNT(*) AS total_products FROM products WHERE tenant_id = ?",
    )
}

fn order_stats(tenant: &str) -> Query {
    Query::new(
        "order_stats",
        tenant,
        "SELECT status, COUNT(*) AS orders, COALESCE(SUM(total), 0) AS revenue
         FROM orders WHERE tenant_id = ? GROUP BY status ORDER BY status",
    )
}

fn recent_orders(tenant: &str, limit: usize) -> Query {
    Query::new(
        "recent_orders",
        tenant,
        "SELECT id AS order_id, customer_id, status, total, currency, created_at, updated_at
         FROM orders WHERE tenant_id = ? ORDER BY updated_at DESC, id LIMIT ?",
    )
    .push("", [Param::Int(limit as i64)])
}

fn activity_recent(tenant: &str, limit: usize) -> Query {
    Query::new(
        "customer_activity",
        tenant,
        "SELECT customer_id, activity_type, product_id, category, session_id,
                updated_at AS timestamp
         FROM customer_activity WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
    )
    .push("", [Param::Int(limit as i64)])
}

fn activity_counts(tenant: &str, since: SystemTime) -> Query {
    Query::new(
        "customer_activity_counts",
        tenant,
        "SELECT activity_type, COUNT(*) AS events FROM customer_activity
         WHERE tenant_id = ? AND updated_at >= ? GROUP BY activity_type ORDER BY activity_type",
    )
    .push("", [Param::Time(since)])
}

fn activity_customers(tenant: &str, since: SystemTime) -> Query {
    Query::new(
        "customer_activity_customers",
        tenant,
        "SELECT COUNT(DISTINCT customer_id) AS customers FROM customer_activity
         WHERE tenant_id = ? AND updated_at >= ?",
    )
    .push("", [Param::Time(since)])
}

fn order_customer(tenant: &str, order_id: &str) -> Query {
    Query::new(
        "order_customer",
        tenant,
        "SELECT customer_id FROM orders WHERE tenant_id = ? AND id = ?",
    )
    .push("", [Param::Text(order_id.to_string())])
}

/// The customer of an order as the change log last told it: an order published through
/// `POST /publish` has a change-log row and no `orders` row.
fn order_customer_logged(tenant: &str, order_id: &str) -> Query {
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

fn alerts(tenant: &str, all: bool) -> Query {
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
fn changes(tenant: &str, query: ChangesQuery) -> Query {
    let mut q = Query::new(
        "changes",
        tenant,
        "SELECT seq, tenant_id, data_type, payload,
                (extract(epoch FROM committed_at) * 1000)::int8 AS committed_ms
         FROM nilecast_changes WHERE tenant_id = ? AND seq > ?",
    )
    .push("", [Param::Int(query.since as i64)]);
    if let Some(t) = query.data_type {
        q = q.push(" AND data_type = ?", [Param::Text(t.name().into())]);
    }
    q.push(
        " ORDER BY seq DESC LIMIT ?",
        [Param::Int(query.limit as i64)],
    )
    .pg_only()
}

/// The latest tracking change of an order, from the change log.
fn latest_tracking(tenant: &str, order_id: &str) -> Query {
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
fn records(engine: &Engine, rows: &Rows) -> Vec<Arc<Record>> {
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
async fn summary(
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
async fn stats(db: &Db, tenant: &str, orders_last_minute: u64) -> Result<Value, DbError> {
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
async fn activity(db: &Db, tenant: &str, limit: usize) -> Result<Value, DbError> {
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
