//! Subscription filters: parsed from a client's subscribe data with the rules of
//! docs/protocol.md, "6. Filter semantics", matched against a change's [`Keys`], and turned into the index
//! keys a subscription is registered under.
//!
//! Fields combine with AND, the values of one field with OR, an absent field (or an empty
//! array) matches everything. Values are compared as strings.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::{scalar_text, DataType, Keys, Namespace, Priority};
use crate::fanout::index::{key_of, Field};

/// The values of one filter field; `None` matches everything.
pub type Values = Option<Box<[Box<str>]>>;

fn matches(values: &Values, key: &Option<Box<str>>) -> bool {
    match values {
        None => true,
        Some(vs) => key.as_deref().is_some_and(|k| vs.iter().any(|v| &**v == k)),
    }
}

/// A subscription's filter. Serializable, so Socket.IO sessions can be kept for
/// recovery in the database.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    Inventory {
        product_ids: Values,
        warehouse_ids: Values,
        categories: Values,
        low_stock_only: bool,
    },
    Orders {
        order_ids: Values,
        customer_ids: Values,
        statuses: Values,
        /// `order:tracking` reaches this subscription.
        tracking: bool,
        /// Made by `orders:track`: tracking changes of these orders only.
        track_only: bool,
    },
    Customer {
        customer_ids: Values,
        activity_types: Values,
    },
    Notifications {
        types: Values,
        min_priority: Option<Priority>,
        /// A customer's subscription: only notifications whose `userId` or `customerId`
        /// is this user.
        for_user: Option<Box<str>>,
    },
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ErrorCode::InvalidFilter, message)
}

/// Reads a plural field: an array of strings or numbers. A bare string is refused.
fn plural(data: &Map<String, Value>, field: &str, max: usize) -> Result<Values, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => list(items, field, max),
        Some(_) => Err(invalid(format!(
            "{field} must be an array of strings or numbers"
        ))),
    }
}

/// Reads a field that takes a string or an array (`customerId`, `status`; the
/// inventory fields of `inventory:get-current`).
pub fn one_or_many(data: &Map<String, Value>, field: &str, max: usize) -> Result<Values, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => list(items, field, max),
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            Ok(scalar_text(v).map(|s| vec![s].into_boxed_slice()))
        }
        Some(_) => Err(invalid(format!("{field} must be a string or an array"))),
    }
}

fn list(items: &[Value], field: &str, max: usize) -> Result<Values, Refusal> {
    if items.len() > max {
        return Err(invalid(format!("{field} has more than {max} values")));
    }
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(_) | Value::Number(_) => out.extend(scalar_text(item)),
            _ => {
                return Err(invalid(format!(
                    "{field} values must be strings or numbers"
                )))
            }
        }
    }
    Ok(Some(out.into_boxed_slice()))
}

/// Reads a boolean field; absent or null is false, anything but a boolean is refused.
/// The one reading of a flag, in filters and in query parameters alike.
pub fn flag(data: &Map<String, Value>, field: &str) -> Result<bool, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("{field} must be a boolean"))),
    }
}

/// `sinceSeq`, if given.
pub fn since_seq(data: &Map<String, Value>) -> Result<Option<u64>, Refusal> {
    match data.get("sinceSeq") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid("sinceSeq must be a non-negative integer".into())),
    }
}

impl Filter {
    pub fn inventory(data: &Map<String, Value>, max: usize) -> Result<Filter, Refusal> {
        Ok(Filter::Inventory {
            product_ids: plural(data, "productIds", max)?,
            warehouse_ids: plural(data, "warehouseIds", max)?,
            categories: plural(data, "categories", max)?,
            low_stock_only: flag(data, "lowStockOnly")?,
        })
    }

    pub fn orders(data: &Map<String, Value>, max: usize) -> Result<Filter, Refusal> {
        Ok(Filter::Orders {
            order_ids: plural(data, "orderIds", max)?,
            customer_ids: one_or_many(data, "customerId", max)?,
            statuses: one_or_many(data, "status", max)?,
            tracking: flag(data, "trackingEnabled")?,
            track_only: false,
        })
    }

    /// The subscription `orders:track` makes for one order.
    pub fn track(order_id: Box<str>, customer: Option<&str>) -> Filter {
        Filter::Orders {
            order_ids: Some(vec![order_id].into_boxed_slice()),
            customer_ids: customer.map(|c| vec![Box::from(c)].into_boxed_slice()),
            statuses: None,
            tracking: true,
            track_only: true,
        }
    }

    pub fn customer(data: &Map<String, Value>, max: usize) -> Result<Filter, Refusal> {
        flag(data, "realtimeTracking")?;
        Ok(Filter::Customer {
            customer_ids: one_or_many(data, "customerId", max)?,
            activity_types: plural(data, "activityTypes", max)?,
        })
    }

    pub fn notifications(
        data: &Map<String, Value>,
        max: usize,
        for_user: Option<&str>,
    ) -> Result<Filter, Refusal> {
        let min_priority = match data.get("priority") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Priority::parse(s).ok_or_else(|| {
                invalid("priority must be one of low, medium, high, critical".into())
            })?),
            Some(_) => return Err(invalid("priority must be a string".into())),
        };
        Ok(Filter::Notifications {
            types: plural(data, "types", max)?,
            min_priority,
            for_user: for_user.map(Box::from),
        })
    }

    pub fn namespace(&self) -> Namespace {
        match self {
            Filter::Inventory { .. } => Namespace::Inventory,
            Filter::Orders { .. } => Namespace::Orders,
            Filter::Customer { .. } => Namespace::Customer,
            Filter::Notifications { .. } => Namespace::Notifications,
        }
    }

    /// Does a change of `data_type` with `keys` pass this filter? The tenant is checked
    /// by the caller.
    pub fn matches(&self, data_type: DataType, keys: &Keys) -> bool {
        match (self, data_type) {
            (
                Filter::Inventory {
                    product_ids,
                    warehouse_ids,
                    categories,
                    low_stock_only,
                },
                DataType::Inventory,
            ) => {
                matches(product_ids, &keys.product_id)
                    && matches(warehouse_ids, &keys.warehouse_id)
                    && matches(categories, &keys.category)
                    && (!low_stock_only || is_low(keys))
            }
            (
                Filter::Orders {
                    order_ids,
                    customer_ids,
                    statuses,
                    track_only,
                    ..
                },
                DataType::Orders,
            ) => {
                !track_only
                    && matches(order_ids, &keys.order_id)
                    && matches(customer_ids, &keys.customer_id)
                    && matches(statuses, &keys.status)
            }
            // The status filter is about an order's status, not about tracking events.
            (
                Filter::Orders {
                    order_ids,
                    customer_ids,
                    tracking,
                    ..
                },
                DataType::OrderTracking,
            ) => {
                *tracking
                    && matches(order_ids, &keys.order_id)
                    && matches(customer_ids, &keys.customer_id)
            }
            (
                Filter::Customer {
                    customer_ids,
                    activity_types,
                },
                DataType::CustomerActivity,
            ) => {
                matches(customer_ids, &keys.customer_id)
                    && matches(activity_types, &keys.activity_type)
            }
            (
                Filter::Notifications {
                    types,
                    min_priority,
                    for_user,
                },
                DataType::Notification,
            ) => {
                matches(types, &keys.notification_type)
                    && min_priority.is_none_or(|min| keys.priority.is_some_and(|p| p >= min))
                    && for_user.as_deref().is_none_or(|user| {
                        keys.user_id.as_deref() == Some(user)
                            || keys.customer_id.as_deref() == Some(user)
                    })
            }
            _ => false,
        }
    }

    /// The index keys this subscription is registered under: one per value of its most
    /// selective field, or the namespace wildcard. The rest of the filter is checked per
    /// candidate. Order status is never a key, because tracking changes reach order
    /// subscriptions regardless of their status filter.
    pub fn index_keys(&self, tenant: &str) -> Vec<u64> {
        let ns = self.namespace();
        // A value given twice is one key: the index holds a subscription once per key.
        let by = |field: Field, values: &[Box<str>]| {
            let mut keys: Vec<u64> = values.iter().map(|v| key_of(tenant, field, v)).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        match self {
            Filter::Inventory {
                product_ids: Some(v),
                ..
            } => by(Field::ProductId, v),
            Filter::Inventory {
                warehouse_ids: Some(v),
                ..
            } => by(Field::WarehouseId, v),
            Filter::Inventory {
                categories: Some(v),
                ..
            } => by(Field::Category, v),
            Filter::Orders {
                order_ids: Some(v), ..
            } => by(Field::OrderId, v),
            Filter::Orders {
                customer_ids: Some(v),
                ..
            } => by(Field::OrderCustomer, v),
            Filter::Customer {
                customer_ids: Some(v),
                ..
            } => by(Field::ActivityCustomer, v),
            Filter::Customer {
                activity_types: Some(v),
                ..
            } => by(Field::ActivityType, v),
            Filter::Notifications { types: Some(v), .. } => by(Field::NotificationType, v),
            _ => vec![key_of(tenant, Field::Any(ns), "*")],
        }
    }

    /// The filters as JSON, for the subscribed reply and `/clients`.
    pub fn to_json(&self) -> Value {
        fn vals(v: &Values) -> Value {
            v.as_ref().map_or(Value::Null, |vs| {
                vs.iter().map(|s| Value::String(s.to_string())).collect()
            })
        }
        let mut obj = match self {
            Filter::Inventory {
                product_ids,
                warehouse_ids,
                categories,
                low_stock_only,
            } => serde_json::json!({
                "productIds": vals(product_ids), "warehouseIds": vals(warehouse_ids),
                "categories": vals(categories), "lowStockOnly": low_stock_only,
            }),
            Filter::Orders {
                order_ids,
                customer_ids,
                statuses,
                tracking,
                track_only,
            } => serde_json::json!({
                "orderIds": vals(order_ids), "customerId": vals(customer_ids), "status": vals(statuses),
                "trackingEnabled": tracking, "trackOnly": track_only.then_some(true),
            }),
            Filter::Customer {
                customer_ids,
                activity_types,
            } => serde_json::json!({
                "customerId": vals(customer_ids), "activityTypes": vals(activity_types),
            }),
            Filter::Notifications {
                types,
                min_priority,
                ..
            } => serde_json::json!({
                "types": vals(types), "priority": min_priority.map(Priority::as_str),
            }),
        };
        if let Value::Object(map) = &mut obj {
            map.retain(|_, v| !v.is_null());
        }
        obj
    }
}

/// Stock at or below the threshold in force (docs/protocol.md, "6.2 Per-namespace fields", `lowStockOnly`).
pub fn is_low(keys: &Keys) -> bool {
    matches!((keys.quantity, keys.threshold), (Some(q), Some(t)) if q <= t)
}

/// The index keys a change is looked up under: every field a subscription can be
/// registered by, plus the namespace wildcard.
pub fn change_keys(tenant: &str, data_type: DataType, keys: &Keys) -> Vec<u64> {
    let mut out = Vec::with_capacity(4);
    let mut add = |field: Field, value: &Option<Box<str>>| {
        if let Some(v) = value {
            out.push(key_of(tenant, field, v));
        }
    };
    match data_type {
        DataType::Inventory => {
            add(Field::ProductId, &keys.product_id);
            add(Field::WarehouseId, &keys.warehouse_id);
            add(Field::Category, &keys.category);
        }
        DataType::Orders | DataType::OrderTracking => {
            add(Field::OrderId, &keys.order_id);
            add(Field::OrderCustomer, &keys.customer_id);
        }
        DataType::CustomerActivity => {
            add(Field::ActivityCustomer, &keys.customer_id);
            add(Field::ActivityType, &keys.activity_type);
        }
        DataType::Notification => add(Field::NotificationType, &keys.notification_type),
    }
    out.push(key_of(tenant, Field::Any(data_type.namespace()), "*"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn inv(product: &str, warehouse: &str, category: &str, qty: f64) -> Keys {
        Keys {
            product_id: Some(product.into()),
            warehouse_id: Some(warehouse.into()),
            category: Some(category.into()),
            quantity: Some(qty),
            threshold: Some(10.0),
            ..Keys::default()
        }
    }

    #[test]
    fn and_across_fields_or_within() {
        let f = Filter::inventory(
            &obj(json!({"productIds":["a","b"],"warehouseIds":["w1"]})),
            100,
        )
        .unwrap();
        assert!(f.matches(DataType::Inventory, &inv("a", "w1", "x", 50.0)));
        assert!(f.matches(DataType::Inventory, &inv("b", "w1", "x", 50.0)));
        assert!(!f.matches(DataType::Inventory, &inv("a", "w2", "x", 50.0)));
        assert!(!f.matches(DataType::Inventory, &inv("c", "w1", "x", 50.0)));
    }

    #[test]
    fn numbers_compare_as_strings_and_empty_means_absent() {
        let f = Filter::inventory(&obj(json!({"productIds":[123],"categories":[]})), 100).unwrap();
        assert!(f.matches(DataType::Inventory, &inv("123", "w", "any", 1.0)));
    }

    #[test]
    fn bad_shapes_are_invalid_filter() {
        for bad in [
            json!({"productIds":"a"}),
            json!({"productIds":[{"x":1}]}),
            json!({"lowStockOnly":"yes"}),
            json!({"productIds":["a","b","c"]}),
        ] {
            let err = Filter::inventory(&obj(bad), 2).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidFilter);
        }
        assert!(Filter::notifications(&obj(json!({"priority":"urgent"})), 100, None).is_err());
    }

    #[test]
    fn low_stock_only_uses_the_threshold() {
        let f = Filter::inventory(&obj(json!({"lowStockOnly":true})), 100).unwrap();
        assert!(f.matches(DataType::Inventory, &inv("a", "w", "c", 10.0)));
        assert!(!f.matches(DataType::Inventory, &inv("a", "w", "c", 11.0)));
    }

    #[test]
    fn priority_is_a_threshold() {
        let f = Filter::notifications(&obj(json!({"priority":"high"})), 100, None).unwrap();
        let n = |p| Keys {
            priority: Some(p),
            ..Keys::default()
        };
        assert!(f.matches(DataType::Notification, &n(Priority::Critical)));
        assert!(f.matches(DataType::Notification, &n(Priority::High)));
        assert!(!f.matches(DataType::Notification, &n(Priority::Medium)));
    }

    #[test]
    fn tracking_needs_tracking_enabled_and_ignores_status() {
        let keys = Keys {
            order_id: Some("o1".into()),
            status: Some("in_transit".into()),
            ..Keys::default()
        };
        let plain =
            Filter::orders(&obj(json!({"orderIds":["o1"],"status":"shipped"})), 100).unwrap();
        assert!(!plain.matches(DataType::OrderTracking, &keys));
        let tracking = Filter::orders(
            &obj(json!({"orderIds":["o1"],"status":"shipped","trackingEnabled":true})),
            100,
        )
        .unwrap();
        assert!(tracking.matches(DataType::OrderTracking, &keys));
        assert!(!tracking.matches(DataType::Orders, &keys));
        let track = Filter::track("o1".into(), None);
        assert!(track.matches(DataType::OrderTracking, &keys));
        assert!(!track.matches(DataType::Orders, &keys));
    }

    #[test]
    fn a_subscription_is_found_under_the_change_keys() {
        let f = Filter::inventory(&obj(json!({"warehouseIds":["w1"],"categories":["c"]})), 100)
            .unwrap();
        let keys = inv("p", "w1", "c", 1.0);
        let sub_keys = f.index_keys("t1");
        let lookups = change_keys("t1", DataType::Inventory, &keys);
        assert!(sub_keys.iter().all(|k| lookups.contains(k)));
        // Another tenant's change never looks up this tenant's keys.
        let other = change_keys("t2", DataType::Inventory, &keys);
        assert!(sub_keys.iter().all(|k| !other.contains(k)));
    }
}
