//! A change, from its published form to the shared record every subscriber gets.
//!
//! [`Change`] is what sources hand to the engine. [`Record`] is the same change after the
//! engine gave it a seq: its payload P and its complete WebSocket frame are encoded once,
//! here, and every subscriber's queue gets a clone of the same `Bytes`. Nothing
//! per-subscriber may go into a record.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::protocol::{native, socketio, Wire};
use crate::time;
use crate::ws::deflate::{self, Deflated};

/// The six namespaces (docs/protocol.md, "7. Namespaces and events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Root = 0,
    Inventory = 1,
    Orders = 2,
    Dashboard = 3,
    Customer = 4,
    Notifications = 5,
}

impl Namespace {
    pub const ALL: [Namespace; 6] = [
        Namespace::Root,
        Namespace::Inventory,
        Namespace::Orders,
        Namespace::Dashboard,
        Namespace::Customer,
        Namespace::Notifications,
    ];

    pub fn parse(path: &str) -> Option<Namespace> {
        Some(match path {
            "/" | "" => Namespace::Root,
            "/inventory" => Namespace::Inventory,
            "/orders" => Namespace::Orders,
            "/dashboard" => Namespace::Dashboard,
            "/customer" => Namespace::Customer,
            "/notifications" => Namespace::Notifications,
            _ => return None,
        })
    }

    pub fn path(self) -> &'static str {
        match self {
            Namespace::Root => "/",
            Namespace::Inventory => "/inventory",
            Namespace::Orders => "/orders",
            Namespace::Dashboard => "/dashboard",
            Namespace::Customer => "/customer",
            Namespace::Notifications => "/notifications",
        }
    }

    /// The event-name prefix of this namespace's requests (`inventory:subscribe`).
    pub fn prefix(self) -> &'static str {
        match self {
            Namespace::Root => "",
            Namespace::Inventory => "inventory",
            Namespace::Orders => "orders",
            Namespace::Dashboard => "dashboard",
            Namespace::Customer => "customer",
            Namespace::Notifications => "notifications",
        }
    }
}

/// The `dataType` of a published change (docs/protocol.md, "4.2 Change payload P").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Inventory,
    Orders,
    OrderTracking,
    CustomerActivity,
    Notification,
}

impl DataType {
    pub const ALL: [DataType; 5] = [
        DataType::Inventory,
        DataType::Orders,
        DataType::OrderTracking,
        DataType::CustomerActivity,
        DataType::Notification,
    ];

    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "inventory" => DataType::Inventory,
            "orders" => DataType::Orders,
            "order_tracking" => DataType::OrderTracking,
            "customer_activity" => DataType::CustomerActivity,
            "notification" | "notifications" => DataType::Notification,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::Inventory => "inventory",
            DataType::Orders => "orders",
            DataType::OrderTracking => "order_tracking",
            DataType::CustomerActivity => "customer_activity",
            DataType::Notification => "notification",
        }
    }

    /// `P.type`.
    pub fn change_type(self) -> &'static str {
        match self {
            DataType::Inventory => "inventory_update",
            DataType::Orders => "order_update",
            DataType::OrderTracking => "order_tracking",
            DataType::CustomerActivity => "customer_activity",
            DataType::Notification => "notification",
        }
    }

    pub fn namespace(self) -> Namespace {
        match self {
            DataType::Inventory => Namespace::Inventory,
            DataType::Orders | DataType::OrderTracking => Namespace::Orders,
            DataType::CustomerActivity => Namespace::Customer,
            DataType::Notification => Namespace::Notifications,
        }
    }

    /// The event a subscriber receives for this change.
    pub fn event(self) -> &'static str {
        match self {
            DataType::Inventory => "inventory:update",
            DataType::Orders => "order:update",
            DataType::OrderTracking => "order:tracking",
            DataType::CustomerActivity => "customer:activity",
            DataType::Notification => "notification",
        }
    }
}

/// A change as a source hands it to the engine.
#[derive(Debug, Clone)]
pub struct Change {
    pub data_type: DataType,
    pub tenant: Arc<str>,
    /// The published `data` object, passed to subscribers unchanged.
    pub data: Map<String, Value>,
}

/// The `type` a notification without a string `type` is delivered (and filtered) as.
pub const DEFAULT_NOTIFICATION_TYPE: &str = "system_alert";

/// Notification priorities, ordered so that a `priority` filter is a threshold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Priority {
    Low = 0,
    Medium = 1,
    High = 2,
    Critical = 3,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s {
            "low" => Priority::Low,
            "medium" => Priority::Medium,
            "high" => Priority::High,
            "critical" => Priority::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// The fields filters look at, pulled out of `data` once per change so that matching a
/// subscriber compares strings and never walks JSON. Numbers become their decimal text,
/// because docs/protocol.md ("6.1 General rules") compares filter values as strings.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub product_id: Option<Box<str>>,
    pub warehouse_id: Option<Box<str>>,
    pub category: Option<Box<str>>,
    pub quantity: Option<f64>,
    /// The low-stock threshold in force for this change (change, product, or config).
    pub threshold: Option<f64>,
    pub order_id: Option<Box<str>>,
    pub customer_id: Option<Box<str>>,
    pub status: Option<Box<str>>,
    pub activity_type: Option<Box<str>>,
    /// Notifications: `type`, `priority`, and the user they are for.
    pub notification_type: Option<Box<str>>,
    pub priority: Option<Priority>,
    pub user_id: Option<Box<str>>,
}

/// The string form of a scalar JSON value, as filters compare it.
pub fn scalar_text(value: &Value) -> Option<Box<str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into_boxed_str()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

impl Keys {
    pub fn extract(data_type: DataType, data: &Map<String, Value>) -> Keys {
        let text = |field: &str| data.get(field).and_then(scalar_text);
        let mut keys = Keys::default();
        match data_type {
            DataType::Inventory => {
                keys.product_id = text("productId");
                keys.warehouse_id = text("warehouseId");
                keys.category = text("category");
                keys.quantity = data.get("quantity").and_then(Value::as_f64);
                keys.threshold = data.get("lowStockThreshold").and_then(Value::as_f64);
            }
            DataType::Orders | DataType::OrderTracking => {
                keys.order_id = text("orderId");
                keys.customer_id = text("customerId");
                keys.status = text("status");
            }
            DataType::CustomerActivity => {
                keys.customer_id = text("customerId");
                keys.activity_type = text("activityType").or_else(|| text("type"));
            }
            DataType::Notification => {
                // Filtered as delivered: a `type` that is not a string is delivered as
                // `system_alert` (see `notification_payload`).
                keys.notification_type = Some(
                    data.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or(DEFAULT_NOTIFICATION_TYPE)
                        .into(),
                );
                // A notification without a valid priority is delivered as `medium`, and
                // filtered as such.
                keys.priority = Some(
                    data.get("priority")
                        .and_then(Value::as_str)
                        .and_then(Priority::parse)
                        .unwrap_or(Priority::Medium),
                );
                keys.user_id = text("userId");
                keys.customer_id = text("customerId");
            }
        }
        keys
    }
}

/// A record's frames compressed once (None: compression did not make one smaller).
#[derive(Debug)]
struct Compressed {
    frame: Option<Deflated>,
    follow_up: Option<Deflated>,
}

/// A published change: immutable and shared by the replay ring, the store and every
/// subscriber queue.
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    pub data_type: DataType,
    pub tenant: Arc<str>,
    pub timestamp_ms: u64,
    pub keys: Keys,
    /// The complete native frame, `{"ns","event","data":P}` behind its WebSocket header.
    pub frame: Bytes,
    /// P (or N for notifications): a slice of `frame`, not a copy.
    pub payload: Bytes,
    /// Extra frames that go to exactly the subscribers of this change, after it: the
    /// `inventory:low-stock` alert an inventory change raised (native, Socket.IO).
    pub follow_up: Option<(Bytes, Bytes)>,
    /// The Socket.IO frame, `42<ns>,["<event>",P,"<seq>"]`, encoded the first time a
    /// Socket.IO subscriber needs it and shared by all of them.
    socketio: std::sync::OnceLock<Bytes>,
    /// The frames compressed for permessage-deflate, per wire (native, Socket.IO):
    /// compressed the first time a compressing subscriber needs them, and shared by all
    /// of them.
    deflated: [std::sync::OnceLock<Box<Compressed>>; 2],
    /// When the engine took the change, in microseconds since the epoch, for the
    /// publish-to-write latency histogram.
    pub published_us: u64,
}

impl Record {
    /// Encodes the change once: P (or N) and the frame around it.
    pub fn build(seq: u64, change: &Change, keys: Keys, timestamp_ms: u64) -> Record {
        let payload = match change.data_type {
            DataType::Notification => notification_payload(seq, change, timestamp_ms),
            _ => change_payload(seq, change, timestamp_ms),
        };
        let ns = change.data_type.namespace();
        let (frame, payload_range) =
            native::broadcast_frame(ns, change.data_type.event(), &payload);
        Record::assemble(seq, change, keys, timestamp_ms, frame, payload_range)
    }

    /// A record around an encoded native frame whose P is `frame[payload_range]`.
    pub fn assemble(
        seq: u64,
        change: &Change,
        keys: Keys,
        timestamp_ms: u64,
        frame: Bytes,
        payload_range: std::ops::Range<usize>,
    ) -> Record {
        let payload = frame.slice(payload_range);
        Record {
            seq,
            data_type: change.data_type,
            tenant: change.tenant.clone(),
            timestamp_ms,
            keys,
            frame,
            payload,
            follow_up: None,
            socketio: std::sync::OnceLock::new(),
            deflated: Default::default(),
            published_us: time::now_us(),
        }
    }

    /// The frame and follow-up for a subscriber speaking `wire`, compressed for one
    /// whose client decompresses with a `deflate`-bit window (0: uncompressed) when
    /// compressing makes them smaller and they fit that window.
    pub fn frames_for(&self, wire: Wire, deflate: u8) -> (&Bytes, Option<&Bytes>) {
        let (frame, follow_up) = self.plain_frames(wire);
        if deflate == 0 {
            return (frame, follow_up);
        }
        let slot = match wire {
            Wire::Native => 0,
            Wire::SocketIo => 1,
        };
        let compressed = self.deflated[slot].get_or_init(|| {
            Box::new(Compressed {
                frame: deflate::deflate_frame(frame),
                follow_up: follow_up.and_then(|f| deflate::deflate_frame(f)),
            })
        });
        let frame = match &compressed.frame {
            Some(d) if d.fits(deflate) => &d.frame,
            _ => frame,
        };
        let follow_up = match &compressed.follow_up {
            Some(d) if d.fits(deflate) => Some(&d.frame),
            _ => follow_up,
        };
        (frame, follow_up)
    }

    fn plain_frames(&self, wire: Wire) -> (&Bytes, Option<&Bytes>) {
        match wire {
            Wire::Native => (&self.frame, self.follow_up.as_ref().map(|f| &f.0)),
            Wire::SocketIo => {
                let frame = self.socketio.get_or_init(|| {
                    crate::protocol::text_frame(&socketio::event_with_offset(
                        self.data_type.namespace().path(),
                        self.data_type.event(),
                        &self.payload,
                        self.seq,
                    ))
                });
                (frame, self.follow_up.as_ref().map(|f| &f.1))
            }
        }
    }

    pub fn namespace(&self) -> Namespace {
        self.data_type.namespace()
    }

    /// P as JSON, for HTTP answers and replies that embed it.
    pub fn payload_json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// P: `{"seq","type","timestamp","tenantId","data"}` with `data` unchanged.
fn change_payload(seq: u64, change: &Change, timestamp_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(change.data_type.change_type().as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    out.extend_from_slice(time::iso8601(timestamp_ms).as_bytes());
    out.extend_from_slice(b"\",\"tenantId\":");
    // Serializing a str or a map of JSON values cannot fail.
    let _ = serde_json::to_writer(&mut out, &*change.tenant);
    out.extend_from_slice(b",\"data\":");
    let _ = serde_json::to_writer(&mut out, &change.data);
    out.push(b'}');
    out
}

/// N: `{"id","seq","type","priority","message","data","timestamp","tenantId"}`, built from
/// the published change's `data`.
fn notification_payload(seq: u64, change: &Change, timestamp_ms: u64) -> Vec<u8> {
    let d = &change.data;
    let id = d
        .get("id")
        .and_then(scalar_text)
        .map(String::from)
        .unwrap_or_else(|| format!("n-{seq}"));
    let kind = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NOTIFICATION_TYPE);
    let priority = d
        .get("priority")
        .and_then(Value::as_str)
        .and_then(Priority::parse)
        .unwrap_or(Priority::Medium);
    let notification = serde_json::json!({
        "id": id,
        "seq": seq,
        "type": kind,
        "priority": priority.as_str(),
        "message": d.get("message").cloned().unwrap_or(Value::String(String::new())),
        "data": d.get("data").cloned().unwrap_or_else(|| Value::Object(Map::new())),
        "timestamp": time::iso8601(timestamp_ms),
        "tenantId": &*change.tenant,
    });
    serde_json::to_vec(&notification).unwrap_or_default()
}
