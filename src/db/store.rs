//! Writes: the publish API into the change log, alerts, and the simulator's demo
//! tables.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Db, DbError, Detection};
use crate::alerts::Alert;
use crate::bus::KeptSession;
use crate::fanout::change::{scalar_text, Change, DataType};
use crate::source::simulator::World;

/// The entity a change is about (the change log's `entity_id`): the product, the order,
/// the customer or the notification.
pub fn entity_id(change: &Change) -> Option<String> {
    let field = match change.data_type {
        DataType::Inventory => "productId",
        DataType::Orders | DataType::OrderTracking => "orderId",
        DataType::CustomerActivity => "customerId",
        DataType::Notification => "id",
    };
    change
        .data
        .get(field)
        .and_then(scalar_text)
        .map(String::from)
}

/// Appends changes to the change log in one transaction (notifying the listener in
/// notify mode) and returns their seqs, in order. The feed publishes them.
///
/// The same transaction writes what they say through to the tables the read model
/// answers from (a stock level, an order and its customer), with the triggers off so
/// the change is logged once: a change published a moment ago is in the current
/// inventory, whatever its source. Not in table-poll mode, where a table write is
/// itself detected as a change (docs/protocol.md, "Modes").
pub async fn log_changes(db: &Db, changes: &[Change]) -> Result<Vec<u64>, DbError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    if db.config.detection != Detection::TablePoll {
        write_through(&tx, changes).await?;
    }
    let seqs = insert_log(&tx, changes).await?;
    if db.config.detection == Detection::Notify {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &super::feed::CHANNEL,
                &seqs.last().map(u64::to_string).unwrap_or_default(),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(seqs)
}

/// Writes published stock levels and orders into `inventory` and `orders` (see
/// [`log_changes`]).
async fn write_through(
    tx: &tokio_postgres::Transaction<'_>,
    changes: &[Change],
) -> Result<(), DbError> {
    let mut triggers_off = false;
    for change in changes {
        let d = &change.data;
        let text = |k: &str| d.get(k).and_then(scalar_text).map(String::from);
        let num = |k: &str| d.get(k).and_then(Value::as_f64);
        let tenant = &*change.tenant;
        let wanted = match change.data_type {
            // As in memory: a stock level is a product in a warehouse.
            DataType::Inventory => {
                text("productId").is_some()
                    && text("warehouseId").is_some()
                    && num("quantity").is_some()
            }
            DataType::Orders => text("orderId").is_some() && text("customerId").is_some(),
            _ => false,
        };
        if !wanted {
            continue;
        }
        if !triggers_off {
            tx.batch_execute("SET LOCAL nilecast.skip = 'on'").await?;
            triggers_off = true;
        }
        match change.data_type {
            DataType::Inventory => {
                tx.execute(
                    "INSERT INTO inventory
                         (tenant_id, product_id, warehouse_id, quantity, low_stock_threshold)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (tenant_id, product_id, warehouse_id) DO UPDATE
                     SET quantity = EXCLUDED.quantity,
                         low_stock_threshold = coalesce(EXCLUDED.low_stock_threshold,
                                                        inventory.low_stock_threshold),
                         updated_at = now()",
                    &[
                        &tenant,
                        &text("productId"),
                        &text("warehouseId"),
                        &num("quantity"),
                        &num("lowStockThreshold"),
                    ],
                )
                .await?;
                // A product the catalogue does not know yet enters it with the category
                // the change names (the catalogue's own rows are never changed).
                if let Some(category) = text("category") {
                    tx.execute(
                        "INSERT INTO products (tenant_id, id, name, sku, category)
                         VALUES ($1, $2, $2, $2, $3) ON CONFLICT (tenant_id, id) DO NOTHING",
                        &[&tenant, &text("productId"), &category],
                    )
                    .await?;
                }
            }
            _ => {
                tx.execute(
                    "INSERT INTO orders (tenant_id, id, customer_id, status, total, currency)
                     VALUES ($1, $2, $3, coalesce($4::text, 'pending'), coalesce($5::float8, 0), coalesce($6::text, 'EUR'))
                     ON CONFLICT (tenant_id, id) DO UPDATE
                     SET status = coalesce($4::text, orders.status), total = coalesce($5::float8, orders.total),
                         updated_at = now()",
                    &[
                        &tenant,
                        &text("orderId"),
                        &text("customerId"),
                        &text("status"),
                        &num("total"),
                        &text("currency"),
                    ],
                )
                .await?;
            }
        }
    }
    if triggers_off {
        tx.batch_execute("SET LOCAL nilecast.skip = 'off'").await?;
    }
    Ok(())
}

async fn insert_log(
    tx: &tokio_postgres::Transaction<'_>,
    changes: &[Change],
) -> Result<Vec<u64>, DbError> {
    let tenants: Vec<&str> = changes.iter().map(|c| &*c.tenant).collect();
    let types: Vec<&str> = changes.iter().map(|c| c.data_type.name()).collect();
    let entities: Vec<Option<String>> = changes.iter().map(entity_id).collect();
    let payloads: Vec<Value> = changes
        .iter()
        .map(|c| Value::Object(c.data.clone()))
        .collect();
    // unnest keeps the array order, and seqs are drawn in that order.
    let rows = tx
        .query(
            "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
             RETURNING seq",
            &[&tenants, &types, &entities, &payloads],
        )
        .await?;
    let mut seqs: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Stores a raised alert and logs its notification. Runs as a task fed by the engine.
pub async fn alert_writer(
    db: Arc<Db>,
    mut alerts: tokio::sync::mpsc::UnboundedReceiver<Alert>,
    shutdown: crate::shutdown::Shutdown,
) {
    loop {
        let alert = tokio::select! {
            next = alerts.recv() => match next {
                Some(alert) => alert,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        // An alert is worth a few retries: the database may blink.
        let mut backoff = crate::backoff::Backoff::new();
        for attempt in 0..5u64 {
            match store_alert(&db, &alert).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(alert = %alert.id, error = %e, attempt, "could not store an alert");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

async fn store_alert(db: &Db, alert: &Alert) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let stored = tx
        .execute(
            "INSERT INTO alerts (tenant_id, id, type, severity, message, data)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, id) DO NOTHING",
            &[
                &alert.tenant,
                &alert.id,
                &alert.kind,
                &alert.severity.as_str(),
                &alert.message,
                &alert.data,
            ],
        )
        .await?;
    if stored == 0 {
        // Another node raised it from the same change and announced it already.
        return Ok(());
    }
    let change = Change {
        data_type: DataType::Notification,
        tenant: Arc::from(alert.tenant.as_str()),
        data: alert.notification_data(),
    };
    insert_log(&tx, std::slice::from_ref(&change)).await?;
    if db.config.detection == Detection::Notify {
        tx.execute("SELECT pg_notify($1, '')", &[&super::feed::CHANNEL])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Acknowledges an alert of `tenant`: the alert as JSON and whether this call
/// acknowledged it, or None for an unknown id. Announcing it is the caller's business.
pub async fn acknowledge(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<(Value, bool)>, DbError> {
    let client = db.client().await?;
    // One statement, so the update and the look-up see the same snapshot: an alert
    // stored between two statements would otherwise be answered as found but not
    // acknowledged.
    let row = client
        .query_opt(
            "WITH updated AS (
                 UPDATE alerts SET acknowledged_at = now()
                 WHERE tenant_id = $1 AND id = $2 AND acknowledged_at IS NULL
                 RETURNING id, type, severity, message, data, created_at, acknowledged_at)
             SELECT *, true AS first_time FROM updated
             UNION ALL
             SELECT id, type, severity, message, data, created_at, acknowledged_at,
                    false AS first_time
             FROM alerts
             WHERE tenant_id = $1 AND id = $2 AND NOT EXISTS (SELECT 1 FROM updated)",
            &[&tenant, &id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let first_time: bool = row.try_get("first_time").unwrap_or(false);
    let mut alert = super::sql::pg_rows(std::slice::from_ref(&row))
        .pop()
        .unwrap_or_default();
    Ok(Some((alert_json(&mut alert, tenant), first_time)))
}

/// An alert row in the shape of `GET /alerts`.
pub fn alert_json(row: &mut Map<String, Value>, tenant: &str) -> Value {
    let acknowledged_at = row.remove("acknowledgedAt").unwrap_or(Value::Null);
    let mut out = json!({
        "id": row.remove("id"),
        "type": row.remove("type"),
        "severity": row.remove("severity"),
        "message": row.remove("message"),
        "data": row.remove("data"),
        "timestamp": row.remove("createdAt"),
        "tenantId": tenant,
        "acknowledged": !acknowledged_at.is_null(),
    });
    if !acknowledged_at.is_null() {
        out["acknowledgedAt"] = acknowledged_at;
    }
    out
}

/// Seeds the demo tables for the default tenant when they are empty, without logging
/// changes (`nilecast.skip`) and with `updated_at` in the past (so `table-poll` does not
/// treat the seed as news).
pub async fn seed_demo(db: &Db, world: &World) -> Result<bool, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let tenant = crate::auth::DEFAULT_TENANT;
    let known: i64 = tx
        .query_one(
            "SELECT count(*) FROM products WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
        .get(0);
    if known > 0 {
        return Ok(false);
    }
    tx.execute("SELECT set_config('nilecast.skip', 'on', true)", &[])
        .await?;
    let (products, inventory, orders) = world.rows();
    for p in &products {
        tx.execute(
            "INSERT INTO products (tenant_id, id, name, sku, category, price, low_stock_threshold, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now() - interval '1 day')",
            &[&tenant, &p.id, &p.name, &p.sku, &p.category, &p.price, &p.low_stock_threshold],
        )
        .await?;
    }
    for (product, warehouse, quantity) in &inventory {
        tx.execute(
            "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity, updated_at)
             VALUES ($1, $2, $3, $4, now() - interval '1 day')",
            &[&tenant, product, warehouse, quantity],
        )
        .await?;
    }
    for o in &orders {
        tx.execute(
            "INSERT INTO orders (tenant_id, id, customer_id, status, total, updated_at)
             VALUES ($1, $2, $3, $4, $5, now() - interval '1 day')",
            &[&tenant, &o.0, &o.1, &o.2, &o.3],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Writes the simulator's changes into the demo tables, in one transaction, the way an
/// application would: in notify mode the triggers log them; in poll mode the same
/// transaction appends the change-log rows itself; in table-poll mode `updated_at` is
/// all the feed needs.
pub async fn write_demo(db: &Db, changes: &[Change]) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    for change in changes {
        let d = &change.data;
        let text = |k: &str| d.get(k).and_then(scalar_text).map(String::from);
        let num = |k: &str| d.get(k).and_then(Value::as_f64);
        let tenant = &*change.tenant;
        match change.data_type {
            DataType::Inventory => {
                tx.execute(
                    "UPDATE inventory SET quantity = $4, updated_at = now()
                     WHERE tenant_id = $1 AND product_id = $2 AND warehouse_id = $3",
                    &[
                        &tenant,
                        &text("productId"),
                        &text("warehouseId"),
                        &num("quantity"),
                    ],
                )
                .await?;
            }
            DataType::Orders => {
                tx.execute(
                    "INSERT INTO orders (tenant_id, id, customer_id, status, total, currency)
                     VALUES ($1, $2, $3, $4, $5, coalesce($6, 'EUR'))
                     ON CONFLICT (tenant_id, id) DO UPDATE
                     SET status = EXCLUDED.status, total = EXCLUDED.total, updated_at = now()",
                    &[
                        &tenant,
                        &text("orderId"),
                        &text("customerId"),
                        &text("status"),
                        &num("total").unwrap_or(0.0),
                        &text("currency"),
                    ],
                )
                .await?;
            }
            DataType::OrderTracking => {
                tx.execute(
                    "INSERT INTO order_tracking
                         (tenant_id, order_id, customer_id, status, carrier, tracking_number, location)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&tenant, &text("orderId"), &text("customerId"), &text("status"), &text("carrier"), &text("trackingNumber"), &text("location")],
                )
                .await?;
            }
            DataType::CustomerActivity => {
                tx.execute(
                    "INSERT INTO customer_activity
                         (tenant_id, customer_id, activity_type, product_id, category, session_id)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &tenant,
                        &text("customerId"),
                        &text("activityType"),
                        &text("productId"),
                        &text("category"),
                        &text("sessionId"),
                    ],
                )
                .await?;
            }
            DataType::Notification => {}
        }
    }
    if db.config.detection == Detection::Poll {
        insert_log(&tx, changes).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Keeps a Socket.IO session for recovery on any node, until `expires_ms`.
pub async fn keep_session(
    db: &Db,
    pid: &str,
    session: &KeptSession,
    expires_ms: u64,
) -> Result<(), DbError> {
    let client = db.client().await?;
    let expires = std::time::UNIX_EPOCH + std::time::Duration::from_millis(expires_ms);
    client
        .execute(
            "INSERT INTO nilecast_recovery
                 (pid, tenant_id, user_id, namespace, filters, since_seq, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (pid) DO UPDATE SET filters = EXCLUDED.filters,
                 since_seq = EXCLUDED.since_seq, expires_at = EXCLUDED.expires_at",
            &[
                &pid,
                &session.tenant,
                &session.user_id,
                &session.namespace,
                &session.filters,
                &(session.since_seq as i64),
                &expires,
            ],
        )
        .await?;
    // Expired sessions go as new ones come.
    client
        .execute(
            "DELETE FROM nilecast_recovery WHERE expires_at < now()",
            &[],
        )
        .await?;
    Ok(())
}

/// Takes (once) the unexpired session kept under `pid`, if it belongs to `tenant` and
/// `user_id`: a pid presented by anyone else neither recovers nor removes it.
pub async fn take_session(
    db: &Db,
    pid: &str,
    tenant: &str,
    user_id: &str,
) -> Result<Option<KeptSession>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "DELETE FROM nilecast_recovery
             WHERE pid = $1 AND tenant_id = $2 AND user_id = $3 AND expires_at > now()
             RETURNING tenant_id, user_id, namespace, filters, since_seq",
            &[&pid, &tenant, &user_id],
        )
        .await?;
    Ok(row.map(|r| KeptSession {
        tenant: r.get(0),
        user_id: r.get(1),
        namespace: r.get(2),
        filters: r.get(3),
        since_seq: r.get::<_, i64>(4).max(0) as u64,
    }))
}
