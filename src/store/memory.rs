//! The in-memory store, per tenant: products, the latest inventory row per product and
//! warehouse, orders, the latest tracking change per order, and recent customer activity.
//!
//! Every query takes the tenant first; there is no query that spans tenants. Each
//! tenant's data sits behind its own `parking_lot::RwLock`, held only for the few
//! microseconds of a read or an update and never across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};

use crate::fanout::change::{DataType, Record};
use crate::namespace::filter::Values;
use crate::time;

/// Recent customer activity kept per tenant for `data:request customer_activity` and the
/// dashboard; 500 is enough for a minute of the simulator's default pace several times.
const ACTIVITY_KEPT: usize = 500;

#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub sku: String,
    pub category: String,
    pub price: f64,
    pub low_stock_threshold: Option<f64>,
}

#[derive(Default)]
struct TenantData {
    products: HashMap<String, Product>,
    inventory: BTreeMap<(String, String), Map<String, Value>>,
    orders: HashMap<String, Map<String, Value>>,
    tracking: HashMap<String, Arc<Record>>,
    activity: VecDeque<Arc<Record>>,
}

#[derive(Default)]
pub struct MemoryStore {
    tenants: DashMap<Arc<str>, Arc<RwLock<TenantData>>>,
}

fn text(map: &Map<String, Value>, field: &str) -> Option<String> {
    crate::fanout::change::scalar_text(map.get(field)?).map(String::from)
}

fn any_match(values: &Values, value: Option<&str>) -> bool {
    match values {
        None => true,
        Some(vs) => value.is_some_and(|v| vs.iter().any(|x| &**x == v)),
    }
}

/// Which inventory rows `inventory:get-current` returns.
#[derive(Debug, Default)]
pub struct InventoryQuery {
    pub product_ids: Values,
    pub warehouse_ids: Values,
    pub categories: Values,
    pub low_stock_only: bool,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn tenant(&self, tenant: &str) -> Arc<RwLock<TenantData>> {
        if let Some(t) = self.tenants.get(tenant) {
            return t.clone();
        }
        self.tenants.entry(Arc::from(tenant)).or_default().clone()
    }

    fn read<T>(&self, tenant: &str, f: impl FnOnce(&TenantData) -> T) -> T {
        match self.tenants.get(tenant) {
            Some(t) => f(&t.read()),
            None => f(&TenantData::default()),
        }
    }

    pub fn seed_product(&self, tenant: &str, product: Product) {
        self.tenant(tenant)
            .write()
            .products
            .insert(product.id.clone(), product);
    }

    pub fn seed_inventory(&self, tenant: &str, row: Map<String, Value>) {
        if let (Some(p), Some(w)) = (text(&row, "productId"), text(&row, "warehouseId")) {
            self.tenant(tenant).write().inventory.insert((p, w), row);
        }
    }

    pub fn seed_order(&self, tenant: &str, order: Map<String, Value>) {
        if let Some(id) = text(&order, "orderId") {
            self.tenant(tenant).write().orders.insert(id, order);
        }
    }

    /// A product's category and low-stock threshold, when the catalogue knows it.
    pub fn product_info(&self, tenant: &str, product_id: &str) -> (Option<String>, Option<f64>) {
        self.read(tenant, |t| {
            t.products.get(product_id).map_or((None, None), |p| {
                (Some(p.category.clone()), p.low_stock_threshold)
            })
        })
    }

    /// The customer an order belongs to.
    pub fn order_customer(&self, tenant: &str, order_id: &str) -> Option<String> {
        self.read(tenant, |t| {
            t.orders.get(order_id).and_then(|o| text(o, "customerId"))
        })
    }

    /// Applies a published change. Returns true when it created an order the store did
    /// not know (for the order-volume alert).
    pub fn apply(&self, record: &Arc<Record>, data: &Map<String, Value>) -> bool {
        let tenant = self.tenant(&record.tenant);
        let mut t = tenant.write();
        let stamp = |row: &mut Map<String, Value>| {
            row.insert(
                "updatedAt".into(),
                Value::String(time::iso8601(record.timestamp_ms)),
            );
            row.insert("seq".into(), record.seq.into());
        };
        match record.data_type {
            DataType::Inventory => {
                let keys = &record.keys;
                if let (Some(p), Some(w)) = (&keys.product_id, &keys.warehouse_id) {
                    let row = t
                        .inventory
                        .entry((p.to_string(), w.to_string()))
                        .or_default();
                    row.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if let Some(c) = &keys.category {
                        row.entry("category")
                            .or_insert_with(|| Value::String(c.to_string()));
                    }
                    if let Some(th) = keys.threshold {
                        row.entry("lowStockThreshold").or_insert_with(|| json!(th));
                    }
                    stamp(row);
                }
                false
            }
            DataType::Orders => {
                let Some(id) = &record.keys.order_id else {
                    return false;
                };
                let is_new = !t.orders.contains_key(&**id);
                let row = t.orders.entry(id.to_string()).or_default();
                row.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
                stamp(row);
                is_new
            }
            DataType::OrderTracking => {
                if let Some(id) = &record.keys.order_id {
                    t.tracking.insert(id.to_string(), record.clone());
                }
                false
            }
            DataType::CustomerActivity => {
                t.activity.push_back(record.clone());
                if t.activity.len() > ACTIVITY_KEPT {
                    t.activity.pop_front();
                }
                false
            }
            DataType::Notification => false,
        }
    }

    fn threshold_of(t: &TenantData, row: &Map<String, Value>, default: f64) -> f64 {
        row.get("lowStockThreshold")
            .and_then(Value::as_f64)
            .or_else(|| {
                text(row, "productId")
                    .and_then(|p| t.products.get(&p))
                    .and_then(|p| p.low_stock_threshold)
            })
            .unwrap_or(default)
    }

    /// The latest row per product and warehouse that matches.
    pub fn inventory_current(
        &self,
        tenant: &str,
        q: &InventoryQuery,
        default_threshold: f64,
        limit: usize,
    ) -> Vec<Value> {
        self.read(tenant, |t| {
            t.inventory
                .values()
                .filter(|row| {
                    let category = text(row, "category").or_else(|| {
                        text(row, "productId")
                            .and_then(|p| t.products.get(&p).map(|p| p.category.clone()))
                    });
                    any_match(&q.product_ids, text(row, "productId").as_deref())
                        && any_match(&q.warehouse_ids, text(row, "warehouseId").as_deref())
                        && any_match(&q.categories, category.as_deref())
                        && (!q.low_stock_only
                            || row.get("quantity").and_then(Value::as_f64).unwrap_or(0.0)
                                <= Self::threshold_of(t, row, default_threshold))
                })
                .take(limit)
                .map(|row| Value::Object(row.clone()))
                .collect()
        })
    }

    pub fn inventory_summary(
        &self,
        tenant: &str,
        default_threshold: f64,
        out_of_stock: f64,
    ) -> Value {
        self.read(tenant, |t| {
            let (mut units, mut low, mut out, mut value) = (0.0, 0, 0, 0.0);
            for row in t.inventory.values() {
                let q = row.get("quantity").and_then(Value::as_f64).unwrap_or(0.0);
                units += q;
                if q <= out_of_stock {
                    out += 1;
                } else if q <= Self::threshold_of(t, row, default_threshold) {
                    low += 1;
                }
                let price = text(row, "productId")
                    .and_then(|p| t.products.get(&p))
                    .map_or(0.0, |p| p.price);
                value += q * price;
            }
            json!({
                "totalProducts": t.products.len(),
                "stockRows": t.inventory.len(),
                "totalUnits": units,
                "lowStockCount": low,
                "outOfStockCount": out,
                "totalValue": (value * 100.0).round() / 100.0,
            })
        })
    }

    pub fn order_stats(&self, tenant: &str, orders_last_minute: u64) -> Value {
        self.read(tenant, |t| {
            let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
            let mut revenue = 0.0;
            for o in t.orders.values() {
                *by_status
                    .entry(text(o, "status").unwrap_or_else(|| "unknown".into()))
                    .or_default() += 1;
                revenue += o.get("total").and_then(Value::as_f64).unwrap_or(0.0);
            }
            json!({
                "totalOrders": t.orders.len(),
                "byStatus": by_status,
                "ordersLastMinute": orders_last_minute,
                "totalRevenue": (revenue * 100.0).round() / 100.0,
            })
        })
    }

    /// Orders, most recently updated first.
    pub fn recent_orders(&self, tenant: &str, limit: usize) -> Vec<Value> {
        self.read(tenant, |t| {
            let mut orders: Vec<&Map<String, Value>> = t.orders.values().collect();
            orders.sort_by_key(|o| {
                std::cmp::Reverse(o.get("seq").and_then(Value::as_u64).unwrap_or(0))
            });
            orders
                .into_iter()
                .take(limit)
                .map(|o| Value::Object(o.clone()))
                .collect()
        })
    }

    /// Recent activity (newest first) and per-type counts over the last minute.
    pub fn customer_activity(&self, tenant: &str, limit: usize, now_ms: u64) -> Value {
        self.read(tenant, |t| {
            let since = now_ms.saturating_sub(60_000);
            let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
            let mut customers = std::collections::HashSet::new();
            for r in t.activity.iter().filter(|r| r.timestamp_ms >= since) {
                *by_type
                    .entry(
                        r.keys
                            .activity_type
                            .as_deref()
                            .unwrap_or("unknown")
                            .to_string(),
                    )
                    .or_default() += 1;
                if let Some(c) = &r.keys.customer_id {
                    customers.insert(c.clone());
                }
            }
            let recent: Vec<Value> = t
                .activity
                .iter()
                .rev()
                .take(limit)
                .map(|r| r.payload_json())
                .collect();
            json!({
                "eventsLastMinute": by_type.values().sum::<u64>(),
                "activeCustomersLastMinute": customers.len(),
                "byType": by_type,
                "recent": recent,
            })
        })
    }

    /// The latest tracking change of an order.
    pub fn latest_tracking(&self, tenant: &str, order_id: &str) -> Option<Arc<Record>> {
        self.read(tenant, |t| t.tracking.get(order_id).cloned())
    }
}
