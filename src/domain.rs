//! The domain rules the engine runs on every change it delivers ([`fanout::Rules`]):
//! key completion from the in-memory read model, the read model itself, and the alert
//! rules. Every change reaches them the same way in every mode (from the bus, in seq
//! order), so every node's read model and alert book agree: an alert acknowledged on one
//! node is acknowledged on all of them when its `alert_acknowledged` notification
//! arrives.
//!
//! [`fanout::Rules`]: crate::fanout::Rules

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::alerts::{Alert, Alerts};
use crate::fanout::change::{Change, DataType, Keys, Namespace, Record};
use crate::fanout::Rules;
use crate::protocol::Wire;
use crate::store::MemoryStore;
use crate::time;

pub struct Domain {
    pub store: Arc<MemoryStore>,
    pub alerts: Arc<Alerts>,
    /// `LOW_STOCK_THRESHOLD`: the threshold of a product the catalogue does not know.
    pub default_threshold: f64,
}

impl Rules for Domain {
    fn complete_keys(&self, tenant: &str, data_type: DataType, keys: &mut Keys) {
        match data_type {
            DataType::Inventory => {
                let (category, threshold) = match &keys.product_id {
                    Some(p) if keys.category.is_none() || keys.threshold.is_none() => {
                        self.store.product_info(tenant, p)
                    }
                    _ => (None, None),
                };
                if keys.category.is_none() {
                    keys.category = category.map(String::into_boxed_str);
                }
                keys.threshold = keys
                    .threshold
                    .or(threshold)
                    .or(Some(self.default_threshold));
            }
            DataType::Orders | DataType::OrderTracking if keys.customer_id.is_none() => {
                if let Some(order) = &keys.order_id {
                    keys.customer_id = self
                        .store
                        .order_customer(tenant, order)
                        .map(String::into_boxed_str);
                }
            }
            _ => {}
        }
    }

    fn inspect(&self, record: &mut Record) -> Option<Alert> {
        if record.data_type != DataType::Inventory {
            return None;
        }
        let alert = self.alerts.on_inventory(record)?;
        let alert_json = alert.to_json();
        let frame = |wire: Wire| {
            wire.event_frame(
                Namespace::Inventory.path(),
                "inventory:low-stock",
                &alert_json,
            )
        };
        record.follow_up = Some((frame(Wire::Native), frame(Wire::SocketIo)));
        Some(alert)
    }

    fn apply(&self, record: &Arc<Record>, data: &Map<String, Value>) -> Option<Alert> {
        if record.data_type == DataType::Notification {
            if let Some(id) = acknowledged_alert(data) {
                self.alerts.acknowledge(&record.tenant, id);
            }
            return None;
        }
        let new_order = self.store.apply(record, data);
        if new_order {
            return self
                .alerts
                .on_new_order(&record.tenant, record.seq, time::now_ms());
        }
        None
    }
}

/// The notification type that acknowledges an alert on every node. Only
/// `POST /alerts/:id/acknowledge` publishes it ([`is_acknowledgement`]).
pub const ACKNOWLEDGED: &str = "alert_acknowledged";

/// Whether `change` is an alert's acknowledgement. The publish API refuses one: it would
/// acknowledge an alert on every node without the staff role the route asks for.
pub fn is_acknowledgement(change: &Change) -> bool {
    change.data_type == DataType::Notification
        && change.data.get("type").and_then(Value::as_str) == Some(ACKNOWLEDGED)
}

/// The alert an `alert_acknowledged` notification is about.
fn acknowledged_alert(data: &Map<String, Value>) -> Option<&str> {
    if data.get("type").and_then(Value::as_str) != Some(ACKNOWLEDGED) {
        return None;
    }
    data.get("data")?.get("alertId")?.as_str()
}
