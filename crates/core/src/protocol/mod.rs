//! Wire codecs, pure: bytes in, typed requests out; typed replies in, frames out.
//!
//! Architecture Invariant: `protocol/` does no I/O and knows no connection.

pub mod native;
pub mod socketio;

use bytes::Bytes;
use serde_json::Value;

use crate::error::Refusal;
use crate::ws::frame::{self, OpCode};

/// Which protocol a connection speaks; replies and pushes are encoded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// `{"ns","event","data","ack"}` JSON frames (`/ws`).
    Native,
    /// Engine.IO v4 / Socket.IO v5 packets (`/socket.io/`).
    SocketIo,
}

impl Wire {
    /// An event on `ns`.
    pub fn event_frame(self, ns: &str, event: &str, data: &Value) -> Bytes {
        match self {
            Wire::Native => native::event_frame(ns, event, data),
            Wire::SocketIo => text_frame(&socketio::event(ns, event, &json_bytes(data))),
        }
    }

    /// The reply to request `ack`.
    pub fn ack_frame(self, ns: &str, ack: u64, data: &Value) -> Bytes {
        match self {
            Wire::Native => native::ack_frame(ns, ack, data),
            Wire::SocketIo => text_frame(&socketio::ack(ns, ack, &json_bytes(data))),
        }
    }

    /// The answer to a refused request: the ack reply `{"error":{..}}` when it carried
    /// an ack, else the `error` event naming the request's event when known.
    pub fn refusal_frame(
        self,
        ns: &str,
        refusal: &Refusal,
        event: Option<&str>,
        ack: Option<u64>,
    ) -> Bytes {
        match ack {
            Some(ack) => {
                self.ack_frame(ns, ack, &serde_json::json!({ "error": refusal.to_json() }))
            }
            None => {
                let mut data = refusal.to_json();
                if let Some(event) = event {
                    data["event"] = Value::String(event.to_string());
                }
                self.event_frame(ns, "error", &data)
            }
        }
    }
}

fn json_bytes(data: &Value) -> Vec<u8> {
    // Serializing a JSON value cannot fail.
    serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec())
}

/// A server text frame holding `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame::server_frame(OpCode::Text, payload)
}
