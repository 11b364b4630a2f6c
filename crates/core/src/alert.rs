//! The alert record: what the domain rules raise under the engine's publish lock, and its
//! two renderings (the alert object of the HTTP API and the notification announcing it).
//!
//! Only the record lives here; the rules that raise alerts and the book that keeps them
//! are the server's (`alerts.rs`), as they read its configuration.

use serde_json::{json, Map, Value};

use crate::fanout::change::Priority;
use crate::time;

#[derive(Debug, Clone)]
pub struct Alert {
    pub id: String,
    pub tenant: String,
    pub kind: &'static str,
    pub severity: Priority,
    pub message: String,
    pub data: Value,
    pub timestamp_ms: u64,
    pub acknowledged_ms: Option<u64>,
    /// (product, warehouse) for stock alerts, the scope of "one unacknowledged alert"
    /// (the server's alert book keeps one per scope).
    pub scope: Option<(String, String)>,
}

impl Alert {
    /// A: `{id, type, severity, message, data, timestamp}` plus its state.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "type": self.kind,
            "severity": self.severity.as_str(),
            "message": self.message,
            "data": self.data,
            "timestamp": time::iso8601(self.timestamp_ms),
            "tenantId": self.tenant,
            "acknowledged": self.acknowledged_ms.is_some(),
        });
        if let Some(ms) = self.acknowledged_ms {
            v["acknowledgedAt"] = Value::String(time::iso8601(ms));
        }
        v
    }

    /// The notification change that announces this alert.
    pub fn notification_data(&self) -> Map<String, Value> {
        let v = json!({
            "id": format!("n-{}", self.id),
            "type": self.kind,
            "priority": self.severity.as_str(),
            "message": self.message,
            "data": { "alertId": self.id, "alert": self.data },
        });
        v.as_object().cloned().unwrap_or_default()
    }
}
