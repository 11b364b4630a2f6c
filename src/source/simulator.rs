//! The built-in simulator: a demo catalogue and a stream of plausible changes, so that
//! `cargo run --release` shows live data with no database.
//!
//! The world is seeded into the store at start (also with the simulator off, so queries
//! have data). The simulator then publishes stock movements, order status progressions
//! with tracking, and customer activity through the same publish path as everything
//! else; low-stock and out-of-stock alerts follow from the alert rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::app::App;
use crate::auth::DEFAULT_TENANT;
use crate::fanout::change::{Change, DataType};
use crate::store::{MemoryStore, Product};

const CATEGORIES: [&str; 8] = [
    "electronics",
    "apparel",
    "home",
    "sports",
    "toys",
    "grocery",
    "beauty",
    "books",
];
const ADJECTIVES: [&str; 10] = [
    "Classic", "Smart", "Eco", "Pro", "Mini", "Ultra", "Compact", "Deluxe", "Basic", "Premium",
];
const NOUNS: [&str; 12] = [
    "Widget",
    "Speaker",
    "Jacket",
    "Lamp",
    "Bottle",
    "Backpack",
    "Headphones",
    "Mug",
    "Blender",
    "Shoes",
    "Notebook",
    "Charger",
];
const WAREHOUSES: [&str; 3] = ["warehouse-1", "warehouse-2", "warehouse-3"];
const PRODUCTS: usize = 300;
const CUSTOMERS: usize = 200;
const OPEN_ORDERS: usize = 80;
const STATUSES: [&str; 5] = ["pending", "confirmed", "processing", "shipped", "delivered"];
const CARRIERS: [&str; 3] = ["UPS", "FedEx", "DHL"];
const CITIES: [&str; 6] = ["Berlin", "Rotterdam", "Lyon", "Milan", "Warsaw", "Prague"];
const ACTIVITIES: [(&str, u32); 6] = [
    ("browse", 40),
    ("login", 15),
    ("add_to_cart", 15),
    ("purchase", 10),
    ("search", 15),
    ("logout", 5),
];

struct Order {
    id: String,
    customer: String,
    status: usize,
    total: f64,
    tracking_number: Option<String>,
}

/// The demo world: catalogue, stock levels and open orders of tenant `default`.
pub struct World {
    rng: fastrand::Rng,
    products: Vec<Product>,
    stock: HashMap<(usize, usize), i64>,
    orders: Vec<Order>,
    next_order: u64,
}

impl World {
    /// A world generated from a fixed seed, so every start shows the same catalogue.
    pub fn demo() -> World {
        let mut rng = fastrand::Rng::with_seed(4001);
        let products: Vec<Product> = (1..=PRODUCTS)
            .map(|i| Product {
                id: format!("product-{i}"),
                name: format!(
                    "{} {}",
                    ADJECTIVES[rng.usize(..ADJECTIVES.len())],
                    NOUNS[rng.usize(..NOUNS.len())]
                ),
                sku: format!("SKU-{i:05}"),
                category: CATEGORIES[i % CATEGORIES.len()].to_string(),
                price: (rng.f64() * 200.0 + 5.0).round(),
                // A few products carry their own threshold; the rest use the configured one.
                low_stock_threshold: match i % 10 {
                    0 => Some(20.0),
                    5 => Some(5.0),
                    _ => None,
                },
            })
            .collect();
        let mut stock = HashMap::new();
        for p in 0..PRODUCTS {
            for w in 0..WAREHOUSES.len() {
                // One row in ten starts near its threshold, so low-stock alerts show up
                // within the first minute of a demo.
                let quantity = if rng.u32(..10) == 0 {
                    rng.i64(6..18)
                } else {
                    rng.i64(20..200)
                };
                stock.insert((p, w), quantity);
            }
        }
        let mut world = World {
            rng,
            products,
            stock,
            orders: Vec::new(),
            next_order: 1001,
        };
        for _ in 0..OPEN_ORDERS {
            let mut order = world.new_order();
            order.status = world.rng.usize(..STATUSES.len() - 1);
            world.orders.push(order);
        }
        world
    }

    fn new_order(&mut self) -> Order {
        let id = format!("order-{}", self.next_order);
        self.next_order += 1;
        Order {
            id,
            customer: format!("customer-{}", self.rng.usize(1..=CUSTOMERS)),
            status: 0,
            total: (self.rng.f64() * 500.0 + 10.0).round(),
            tracking_number: None,
        }
    }

    fn order_json(order: &Order) -> Map<String, Value> {
        obj(json!({
            "orderId": order.id,
            "customerId": order.customer,
            "status": STATUSES[order.status],
            "total": order.total,
            "currency": "EUR",
        }))
    }

    /// Puts the catalogue, stock and orders into the store.
    pub fn seed(&self, store: &MemoryStore) {
        for product in &self.products {
            store.seed_product(DEFAULT_TENANT, product.clone());
        }
        for (&(p, w), &quantity) in &self.stock {
            let product = &self.products[p];
            store.seed_inventory(
                DEFAULT_TENANT,
                obj(json!({
                    "productId": product.id, "warehouseId": WAREHOUSES[w], "category": product.category,
                    "name": product.name, "sku": product.sku, "quantity": quantity,
                })),
            );
        }
        for order in &self.orders {
            store.seed_order(DEFAULT_TENANT, World::order_json(order));
        }
    }

    /// The next simulated change (sometimes two: shipping also starts tracking).
    /// The world's starting rows for a database: products, (product, warehouse,
    /// quantity), and open orders as (id, customer, status, total).
    #[allow(clippy::type_complexity)]
    pub fn rows(
        &self,
    ) -> (
        Vec<Product>,
        Vec<(String, String, f64)>,
        Vec<(String, String, String, f64)>,
    ) {
        let inventory = self
            .stock
            .iter()
            .map(|(&(p, w), &q)| {
                (
                    self.products[p].id.clone(),
                    WAREHOUSES[w].to_string(),
                    q as f64,
                )
            })
            .collect();
        let orders = self
            .orders
            .iter()
            .map(|o| {
                (
                    o.id.clone(),
                    o.customer.clone(),
                    STATUSES[o.status].to_string(),
                    o.total,
                )
            })
            .collect();
        (self.products.clone(), inventory, orders)
    }

    fn step(&mut self, out: &mut Vec<Change>) {
        let change = |data_type, data| Change {
            data_type,
            tenant: Arc::from(DEFAULT_TENANT),
            data,
        };
        match self.rng.u32(..100) {
            0..=44 => {
                let (p, w) = (
                    self.rng.usize(..PRODUCTS),
                    self.rng.usize(..WAREHOUSES.len()),
                );
                let product = &self.products[p];
                let threshold = product.low_stock_threshold.unwrap_or(10.0) as i64;
                let Some(quantity) = self.stock.get_mut(&(p, w)) else {
                    return;
                };
                let previous = *quantity;
                // Low stock gets restocked more often, so the demo keeps cycling through
                // alerts instead of draining to zero.
                let restock = self.rng.u32(..100) < if previous <= threshold { 35 } else { 8 };
                let (delta, reason) = if restock {
                    (self.rng.i64(40..150), "restock")
                } else {
                    (-self.rng.i64(1..=6).min(previous), "sale")
                };
                *quantity += delta;
                out.push(change(
                    DataType::Inventory,
                    obj(json!({
                        "productId": product.id, "warehouseId": WAREHOUSES[w], "category": product.category,
                        "name": product.name, "sku": product.sku, "quantity": *quantity,
                        "previousQuantity": previous, "change": delta, "reason": reason,
                    })),
                ));
            }
            45..=54 => {
                let order = self.new_order();
                out.push(change(DataType::Orders, World::order_json(&order)));
                self.orders.push(order);
            }
            55..=69 if !self.orders.is_empty() => {
                let i = self.rng.usize(..self.orders.len());
                let tracking_number = format!("TRK{:08}", self.rng.u32(..100_000_000));
                let carrier = CARRIERS[self.rng.usize(..CARRIERS.len())];
                let order = &mut self.orders[i];
                let previous = STATUSES[order.status];
                order.status += 1;
                let mut data = World::order_json(order);
                data.insert("previousStatus".into(), previous.into());
                out.push(change(DataType::Orders, data));
                if STATUSES[order.status] == "shipped" {
                    order.tracking_number = Some(tracking_number.clone());
                    out.push(change(
                        DataType::OrderTracking,
                        obj(json!({
                            "orderId": order.id, "customerId": order.customer, "status": "label_created",
                            "carrier": carrier, "trackingNumber": tracking_number, "location": CITIES[0],
                        })),
                    ));
                }
                if STATUSES[order.status] == "delivered" {
                    self.orders.swap_remove(i);
                }
            }
            70..=76 => {
                let in_transit: Vec<usize> = (0..self.orders.len())
                    .filter(|&i| self.orders[i].tracking_number.is_some())
                    .collect();
                if in_transit.is_empty() {
                    return;
                }
                let order = &self.orders[in_transit[self.rng.usize(..in_transit.len())]];
                out.push(change(
                    DataType::OrderTracking,
                    obj(json!({
                        "orderId": order.id, "customerId": order.customer, "status": "in_transit",
                        "trackingNumber": order.tracking_number, "location": CITIES[self.rng.usize(..CITIES.len())],
                    })),
                ));
            }
            _ => {
                let total: u32 = ACTIVITIES.iter().map(|(_, w)| w).sum();
                let mut pick = self.rng.u32(..total);
                let activity = ACTIVITIES
                    .iter()
                    .find(|(_, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map_or("browse", |(a, _)| a);
                let product = &self.products[self.rng.usize(..PRODUCTS)];
                out.push(change(
                    DataType::CustomerActivity,
                    obj(json!({
                        "customerId": format!("customer-{}", self.rng.usize(1..=CUSTOMERS)),
                        "activityType": activity, "productId": product.id, "category": product.category,
                        "sessionId": format!("s-{}", self.rng.u32(..100_000)),
                    })),
                ));
            }
        }
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Where the simulator's changes go.
pub enum Output {
    /// Published through the bus.
    Bus(Arc<dyn crate::bus::Bus>),
    /// Written into the demo tables, the way an application would: in notify mode the
    /// triggers log them; in poll mode the same transaction logs them; in table-poll
    /// mode the scans find them. The bus then brings them back from the change log.
    Tables(Arc<crate::db::Db>),
}

impl Output {
    async fn send(&self, changes: Vec<Change>) -> Result<(), String> {
        match self {
            Output::Bus(bus) => bus
                .publish(changes)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Output::Tables(db) => crate::db::store::write_demo(db, &changes)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Publishes simulated changes at `SIMULATE_RATE` per second until shutdown.
pub async fn run(app: Arc<App>, mut world: World, out: Output) {
    // Ticks of 10 ms: smooth enough to look live, and a fractional budget carries over
    // so any rate from 0.1/s to tens of thousands/s comes out right on average.
    let tick = Duration::from_millis(10);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rate = app.config.simulate_rate;
    let mut budget = 0.0;
    let mut last = tokio::time::Instant::now();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        budget += rate * now.duration_since(last).as_secs_f64();
        last = now;
        while budget >= 1.0 {
            world.step(&mut batch);
            budget -= 1.0;
        }
        if batch.is_empty() {
            continue;
        }
        let changes = std::mem::take(&mut batch);
        let count = changes.len();
        if let Err(e) = out.send(changes).await {
            tracing::warn!(error = %e, changes = count, "the simulator could not publish; these changes are dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_produces_every_kind_of_change() {
        let mut world = World::demo();
        let mut out = Vec::new();
        for _ in 0..2000 {
            world.step(&mut out);
        }
        for kind in [
            DataType::Inventory,
            DataType::Orders,
            DataType::OrderTracking,
            DataType::CustomerActivity,
        ] {
            assert!(
                out.iter().any(|c| c.data_type == kind),
                "{kind:?} never produced"
            );
        }
        assert!(world.stock.values().all(|&q| q >= 0));
    }
}
