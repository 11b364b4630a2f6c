//! Alert rules and the alert book: low and out of stock, high order volume, slow queries.
//!
//! The engine asks this module, under its publish lock, whether a change raises an
//! alert; the alert then travels as an `inventory:low-stock` frame with the change and as
//! a notification through the one publish path. The book is a `parking_lot::Mutex`
//! because it is touched once per inventory or order change and by the HTTP endpoints,
//! never across an await.
//!
//! The book is kept per tenant and indexed: the check made under the publish lock for
//! every low-stock change (is there an unacknowledged alert for this product and
//! warehouse?) is a hash lookup, not a scan of every tenant's alerts. Each tenant keeps
//! at most `ALERTS_MAX_PER_TENANT` unacknowledged alerts (the oldest give way) and as
//! many acknowledged ones, so a publisher raising alerts for ever more products cannot
//! grow the server's memory, nor push another tenant's history out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

pub use crate::alert::Alert;
use crate::config::Config;
use crate::fanout::change::{Change, DataType, Priority, Record};
use crate::time;

/// The notification that tells a tenant its alert `alert_id` (of type `kind`) was
/// acknowledged by `by` (docs/protocol.md, "8.3 Acknowledging"). Published once,
/// by the first acknowledgement, through the same path as any published change.
pub fn acknowledged_notification(tenant: &str, alert_id: &str, kind: &str, by: &str) -> Change {
    let data = json!({
        "type": crate::domain::ACKNOWLEDGED,
        "priority": "low",
        "message": format!("alert {alert_id} ({kind}) acknowledged"),
        "data": { "alertId": alert_id, "alertType": kind, "acknowledgedBy": by },
    });
    Change {
        data_type: DataType::Notification,
        tenant: Arc::from(tenant),
        data: data.as_object().cloned().unwrap_or_default(),
    }
}

#[derive(Default)]
struct Book {
    next_id: u64,
    tenants: HashMap<String, TenantAlerts>,
    /// Unacknowledged alerts over all tenants.
    active_total: usize,
    /// Times of new orders in the last minute, per tenant.
    new_orders: HashMap<String, VecDeque<u64>>,
}

/// One tenant's alerts.
#[derive(Default)]
struct TenantAlerts {
    /// Unacknowledged alerts by id.
    active: HashMap<String, Alert>,
    /// Ids of unacknowledged alerts, oldest first. Acknowledged ids are skipped when
    /// met (and swept out when they would double its length).
    order: VecDeque<String>,
    /// The unacknowledged stock alert of each (product, warehouse).
    by_scope: HashMap<(String, String), String>,
    /// The unacknowledged `high_order_volume` alert.
    order_volume: Option<String>,
    /// Acknowledged alerts, oldest first.
    acknowledged: VecDeque<Alert>,
}

impl TenantAlerts {
    fn forget(&mut self, alert: &Alert) {
        if let Some(scope) = &alert.scope {
            if self.by_scope.get(scope) == Some(&alert.id) {
                self.by_scope.remove(scope);
            }
        }
        if self.order_volume.as_deref() == Some(alert.id.as_str()) {
            self.order_volume = None;
        }
    }
}

pub struct Alerts {
    book: Mutex<Book>,
    /// With a database, an alert raised by a change is named after the change's seq,
    /// so every node raising it from the same change gives it the same id (and the
    /// alerts table keeps one).
    ids_from_changes: std::sync::atomic::AtomicBool,
    out_of_stock: f64,
    order_volume: u64,
    slow_query_ms: u64,
    /// `ALERTS_MAX_PER_TENANT`.
    max_per_tenant: usize,
}

impl Alerts {
    pub fn new(config: &Config) -> Alerts {
        Alerts {
            book: Mutex::new(Book::default()),
            ids_from_changes: std::sync::atomic::AtomicBool::new(false),
            out_of_stock: config.out_of_stock_threshold,
            order_volume: config.high_order_volume_threshold,
            slow_query_ms: config.slow_query_ms,
            max_per_tenant: config.alerts_max_per_tenant.max(1),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raise(
        &self,
        book: &mut Book,
        origin_seq: Option<u64>,
        tenant: &str,
        kind: &'static str,
        severity: Priority,
        message: String,
        data: Value,
        scope: Option<(String, String)>,
    ) -> Alert {
        let alert = Alert {
            id: self.next_id(book, origin_seq),
            tenant: tenant.to_string(),
            kind,
            severity,
            message,
            data,
            timestamp_ms: time::now_ms(),
            acknowledged_ms: None,
            scope,
        };
        let max = self.max_per_tenant;
        let tenant_alerts = book.tenants.entry(alert.tenant.clone()).or_default();
        if let Some(scope) = &alert.scope {
            tenant_alerts
                .by_scope
                .insert(scope.clone(), alert.id.clone());
        }
        if alert.kind == "high_order_volume" {
            tenant_alerts.order_volume = Some(alert.id.clone());
        }
        tenant_alerts.order.push_back(alert.id.clone());
        let mut added = i64::from(
            tenant_alerts
                .active
                .insert(alert.id.clone(), alert.clone())
                .is_none(),
        );
        // Over the cap, the oldest unacknowledged alerts give way.
        while tenant_alerts.active.len() > max {
            let Some(oldest) = tenant_alerts.order.pop_front() else {
                break;
            };
            if let Some(gone) = tenant_alerts.active.remove(&oldest) {
                tenant_alerts.forget(&gone);
                added -= 1;
            }
        }
        if tenant_alerts.order.len() > 2 * max {
            let active = &tenant_alerts.active;
            tenant_alerts.order.retain(|id| active.contains_key(id));
        }
        book.active_total = book.active_total.saturating_add_signed(added as isize);
        alert
    }

    /// With a database: alerts raised by a change take the change's seq as their id
    /// (`alert-<seq>`), the same on every node; the others are numbered from `first`,
    /// so ids do not repeat across restarts (they are the alerts table's key).
    pub fn ids_for_database(&self, first: u64) {
        let mut book = self.book.lock();
        book.next_id = book.next_id.max(first);
        self.ids_from_changes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn next_id(&self, book: &mut Book, origin_seq: Option<u64>) -> String {
        match origin_seq {
            Some(seq)
                if self
                    .ids_from_changes
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                format!("alert-{seq}")
            }
            _ => {
                book.next_id += 1;
                format!("alert-{}", book.next_id)
            }
        }
    }

    /// An inventory change at or below its threshold raises a stock alert, unless one is
    /// still unacknowledged for the same tenant, product and warehouse.
    pub fn on_inventory(&self, record: &Record) -> Option<Alert> {
        let keys = &record.keys;
        let (quantity, threshold) = (keys.quantity?, keys.threshold?);
        if quantity > threshold {
            return None;
        }
        let product = keys.product_id.as_deref()?.to_string();
        let warehouse = keys.warehouse_id.as_deref().unwrap_or("").to_string();
        let scope = (product.clone(), warehouse.clone());
        let mut book = self.book.lock();
        if book
            .tenants
            .get(&*record.tenant)
            .is_some_and(|t| t.by_scope.contains_key(&scope))
        {
            return None;
        }
        let scope = Some(scope);
        let (kind, severity, message) = if quantity <= self.out_of_stock {
            (
                "out_of_stock",
                Priority::Critical,
                format!("{product} is out of stock at {warehouse}"),
            )
        } else {
            (
                "low_stock",
                Priority::High,
                format!("{product} is low on stock at {warehouse}: {quantity} left"),
            )
        };
        let data = json!({
            "productId": product, "warehouseId": warehouse, "category": keys.category.as_deref(),
            "quantity": quantity, "threshold": threshold, "seq": record.seq,
        });
        Some(self.raise(
            &mut book,
            Some(record.seq),
            &record.tenant,
            kind,
            severity,
            message,
            data,
            scope,
        ))
    }

    /// Counts a new order; more than the threshold in a minute raises one alert until it
    /// is acknowledged.
    pub fn on_new_order(&self, tenant: &str, seq: u64, now_ms: u64) -> Option<Alert> {
        let mut book = self.book.lock();
        let window = book.new_orders.entry(tenant.to_string()).or_default();
        window.push_back(now_ms);
        while window.front().is_some_and(|&t| t + 60_000 < now_ms) {
            window.pop_front();
        }
        let count = window.len() as u64;
        if count <= self.order_volume
            || book
                .tenants
                .get(tenant)
                .is_some_and(|t| t.order_volume.is_some())
        {
            return None;
        }
        let message = format!(
            "{count} new orders in the last minute (threshold {})",
            self.order_volume
        );
        Some(self.raise(
            &mut book,
            Some(seq),
            tenant,
            "high_order_volume",
            Priority::Medium,
            message,
            json!({ "ordersLastMinute": count, "threshold": self.order_volume }),
            None,
        ))
    }

    /// Records a query's duration; one over the threshold raises a `slow_query` alert.
    pub fn on_query(&self, tenant: &str, query: &str, millis: u64) -> Option<Alert> {
        if millis <= self.slow_query_ms {
            return None;
        }
        let mut book = self.book.lock();
        let message = format!("query {query} took {millis} ms");
        Some(self.raise(
            &mut book,
            None,
            tenant,
            "slow_query",
            Priority::Medium,
            message,
            json!({ "query": query, "durationMs": millis, "threshold": self.slow_query_ms }),
            None,
        ))
    }

    /// New orders in the last minute.
    pub fn orders_last_minute(&self, tenant: &str, now_ms: u64) -> u64 {
        let book = self.book.lock();
        book.new_orders.get(tenant).map_or(0, |w| {
            w.iter().filter(|&&t| t + 60_000 >= now_ms).count() as u64
        })
    }

    /// The tenant's alerts, newest first; acknowledged ones only with `all`.
    pub fn list(&self, tenant: &str, all: bool) -> Vec<Value> {
        let book = self.book.lock();
        let Some(alerts) = book.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out: Vec<&Alert> = alerts.active.values().collect();
        if all {
            out.extend(alerts.acknowledged.iter());
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.timestamp_ms));
        out.into_iter().map(Alert::to_json).collect()
    }

    /// Acknowledges an alert of `tenant`. Returns the alert and whether this call
    /// acknowledged it (false when it already was), or None for an unknown id.
    pub fn acknowledge(&self, tenant: &str, id: &str) -> Option<(Alert, bool)> {
        let max = self.max_per_tenant;
        let mut book = self.book.lock();
        let alerts = book.tenants.get_mut(tenant)?;
        if let Some(mut alert) = alerts.active.remove(id) {
            alerts.forget(&alert);
            alert.acknowledged_ms = Some(time::now_ms());
            alerts.acknowledged.push_back(alert.clone());
            if alerts.acknowledged.len() > max {
                alerts.acknowledged.pop_front();
            }
            book.active_total = book.active_total.saturating_sub(1);
            return Some((alert, true));
        }
        alerts
            .acknowledged
            .iter()
            .find(|a| a.id == id)
            .map(|a| (a.clone(), false))
    }

    pub fn active_count(&self) -> usize {
        self.book.lock().active_total
    }
}
