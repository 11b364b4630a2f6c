//! The in-memory store, per tenant: products, the latest inventory row per product and
//! warehouse, orders, the latest tracking change per order, and recent customer activity
//! ([`MemoryStore`], kept current by the engine); and [`InMemory`], the [`Store`] that
//! answers from it, from the alert book and from the engine's retention ring.
//!
//! Every query takes the tenant first; there is no query that spans tenants. Each
//! tenant's data sits behind its own `parking_lot::RwLock`, held only for the few
//! microseconds of a read or an update and never across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};

use super::{Answer, ChangesQuery, Store};
use crate::alerts::Alerts;
use crate::config::Config;
use crate::fanout::change::{DataType, Record};
use crate::fanout::Engine;
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
#[derive(Debug)]
pub struct InventoryQuery {
    pub product_ids: Values,
    pub warehouse_ids: Values,
    pub categories: Values,
    pub low_stock_only: bool,
    /// At most this many, the first by product and warehouse.
    pub limit: usize,
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
                .take(q.limit)
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

/// The read model in memory: [`MemoryStore`] for the business data, the alert book, and
/// the engine's retention ring for `/changes` (nothing older than the ring is known).
/// Every answer is computed when asked and is ready at its first poll.
pub struct InMemory {
    state: Arc<MemoryStore>,
    alerts: Arc<Alerts>,
    engine: Arc<Engine>,
    /// `LOW_STOCK_THRESHOLD` and `OUT_OF_STOCK_THRESHOLD`.
    low_stock: f64,
    out_of_stock: f64,
}

impl InMemory {
    pub fn new(
        config: &Config,
        state: Arc<MemoryStore>,
        alerts: Arc<Alerts>,
        engine: Arc<Engine>,
    ) -> InMemory {
        InMemory {
            state,
            alerts,
            engine,
            low_stock: config.low_stock_threshold,
            out_of_stock: config.out_of_stock_threshold,
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> Answer<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for InMemory {
    fn inventory_current<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a InventoryQuery,
    ) -> Answer<'a, Vec<Value>> {
        ready(self.state.inventory_current(tenant, query, self.low_stock))
    }

    fn inventory_summary<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value> {
        ready(
            self.state
                .inventory_summary(tenant, self.low_stock, self.out_of_stock),
        )
    }

    fn order_stats<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value> {
        let last_minute = self.alerts.orders_last_minute(tenant, time::now_ms());
        ready(self.state.order_stats(tenant, last_minute))
    }

    fn recent_orders<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Vec<Value>> {
        ready(self.state.recent_orders(tenant, limit))
    }

    fn customer_activity<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Value> {
        ready(self.state.customer_activity(tenant, limit, time::now_ms()))
    }

    fn alerts<'a>(&'a self, tenant: &'a str, all: bool) -> Answer<'a, Vec<Value>> {
        ready(self.alerts.list(tenant, all))
    }

    fn acknowledge<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
    ) -> Answer<'a, Option<(Value, bool)>> {
        ready(
            self.alerts
                .acknowledge(tenant, id)
                .map(|(alert, first_time)| (alert.to_json(), first_time)),
        )
    }

    fn changes<'a>(&'a self, tenant: &'a str, query: ChangesQuery) -> Answer<'a, Vec<Value>> {
        let ChangesQuery {
            data_type,
            since,
            limit,
        } = query;
        ready(
            self.engine
                .recent(tenant, data_type, since, limit)
                .iter()
                .map(|r| r.payload_json())
                .collect(),
        )
    }

    fn order_customer<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<String>> {
        ready(self.state.order_customer(tenant, order_id))
    }

    fn latest_tracking<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<Arc<Record>>> {
        ready(self.state.latest_tracking(tenant, order_id))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::fanout::change::Change;
    use crate::metrics::Metrics;

    /// The inlet of an engine with the server's rules, and the in-memory store that
    /// answers from what it delivers.
    fn parts() -> (crate::fanout::Inlet, InMemory) {
        let config = Config::for_tests();
        let state = Arc::new(MemoryStore::new());
        let alerts = Arc::new(Alerts::new(&config));
        let metrics = Arc::new(Metrics::new());
        let rules = Arc::new(crate::domain::Domain {
            store: state.clone(),
            alerts: alerts.clone(),
            default_threshold: config.low_stock_threshold,
        });
        let (engine, inlet) = Engine::new(
            config.engine_settings(),
            rules,
            Arc::new(crate::fanout::WakeTasks),
            metrics.engine.clone(),
        );
        let store = InMemory::new(&config, state, alerts, engine);
        (inlet, store)
    }

    fn change(tenant: &str, data_type: DataType, data: Value) -> Change {
        Change {
            data_type,
            tenant: Arc::from(tenant),
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    fn stock(tenant: &str, product: &str, quantity: u64) -> Change {
        let data = json!({ "productId": product, "warehouseId": "w1", "quantity": quantity });
        change(tenant, DataType::Inventory, data)
    }

    fn asking(data_type: Option<DataType>, since: u64, limit: usize) -> ChangesQuery {
        ChangesQuery {
            data_type,
            since,
            limit,
        }
    }

    /// The answer, which the in-memory store has at the first poll.
    fn now<T>(answer: Answer<'_, T>) -> T {
        match answer.now_or_never() {
            Some(Ok(value)) => value,
            Some(Err(e)) => panic!("the in-memory store failed: {e}"),
            None => panic!("the in-memory store made a caller wait"),
        }
    }

    #[test]
    fn answers_what_the_engine_published_for_its_tenant_only() {
        let (engine, store) = parts();
        engine.sequence(&[
            stock("a", "p1", 3),
            stock("a", "p2", 50),
            stock("b", "p1", 1),
            change(
                "a",
                DataType::Orders,
                json!({"orderId": "o1", "customerId": "c1", "status": "shipped"}),
            ),
            change(
                "a",
                DataType::OrderTracking,
                json!({"orderId": "o1", "location": "Lyon"}),
            ),
        ]);
        let store: &dyn Store = &store;

        let low = InventoryQuery {
            product_ids: None,
            warehouse_ids: None,
            categories: None,
            low_stock_only: true,
            limit: 100,
        };
        let rows = now(store.inventory_current("a", &low));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["productId"], "p1");
        assert_eq!(now(store.inventory_summary("a"))["stockRows"], 2);
        assert_eq!(now(store.order_stats("a"))["totalOrders"], 1);
        assert_eq!(now(store.recent_orders("b", 10)), Vec::<Value>::new());

        assert_eq!(now(store.order_customer("a", "o1")).as_deref(), Some("c1"));
        assert_eq!(now(store.order_customer("b", "o1")), None);
        let tracking = now(store.latest_tracking("a", "o1")).expect("a's tracking");
        assert_eq!(tracking.payload_json()["data"]["location"], "Lyon");
        assert!(now(store.latest_tracking("b", "o1")).is_none());

        let changes = now(store.changes("a", asking(Some(DataType::Inventory), 0, 10)));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.iter().all(|c| c["tenantId"] == "a"), "{changes:?}");
        let newest = changes[0]["seq"].as_u64().unwrap_or(0);
        let later = now(store.changes("a", asking(None, newest, 10)));
        assert!(
            later.iter().all(|c| c["seq"].as_u64() > Some(newest)),
            "{later:?}"
        );
        let types: Vec<&str> = later.iter().filter_map(|c| c["type"].as_str()).collect();
        assert!(types.contains(&"order_tracking"), "{types:?}");
        assert_eq!(now(store.changes("a", asking(None, newest, 1))).len(), 1);
    }

    #[test]
    fn acknowledges_an_alert_once_and_only_in_its_tenant() {
        let (engine, store) = parts();
        engine.sequence(&[stock("a", "p1", 1)]);
        let store: &dyn Store = &store;
        let active = now(store.alerts("a", false));
        assert_eq!(active.len(), 1, "{active:?}");
        let id = active[0]["id"].as_str().unwrap_or_default().to_string();

        assert!(now(store.acknowledge("b", &id)).is_none());
        let (alert, first_time) = now(store.acknowledge("a", &id)).expect("a's alert");
        assert!(first_time);
        assert_eq!(alert["acknowledged"], true, "{alert}");
        let (_, again) = now(store.acknowledge("a", &id)).expect("still a's alert");
        assert!(!again, "the second acknowledgement is not the first");

        assert_eq!(now(store.alerts("a", false)), Vec::<Value>::new());
        assert_eq!(now(store.alerts("a", true)).len(), 1);
        assert!(now(store.acknowledge("a", "alert-none")).is_none());
    }
}
