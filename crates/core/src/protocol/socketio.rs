//! Socket.IO v4 packets over Engine.IO v4's websocket transport, decoded and encoded.
//!
//! Pure, like the native codec: one WebSocket text frame is one Engine.IO packet
//! (`0` open, `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop); a
//! message carries one Socket.IO packet: a type digit (`0` CONNECT, `1` DISCONNECT,
//! `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK), for binary
//! types an attachment count and `-`, then a namespace and `,` unless it is `/`, then an
//! ack id, then the JSON payload:
//!
//! ```text
//! 40/inventory,{"token":"..."}                      CONNECT to /inventory with auth
//! 42/inventory,17["inventory:subscribe",{...}]      EVENT with ack id 17
//! 43/inventory,17[{...}]                            ACK of 17
//! ```
//!
//! The server's `/socket.io/` endpoint (`ws/socketio.rs`) speaks it over WebSocket;
//! `benches/socketio.rs` and the fuzz target `socketio_packet` exercise it alone.
//! Binary packets (attachments) are refused: nilecast's events are JSON.

use serde_json::Value;

use super::native::{self, MAX_DEPTH};

/// The longest namespace accepted.
const MAX_NAMESPACE: usize = 128;

/// One Engine.IO packet from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum EnginePacket {
    Close,
    /// A ping, with its probe payload (`2probe`).
    Ping(String),
    Pong(String),
    Message(Packet),
    Upgrade,
    Noop,
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
}

/// One Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: PacketType,
    /// `/` when the packet names none.
    pub ns: String,
    pub id: Option<u64>,
    /// The payload: CONNECT's auth object, EVENT's `[name, ...args]`, ACK's `[...args]`.
    pub data: Option<Value>,
}

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type")]
    EngineType,
    #[error("unknown Socket.IO packet type")]
    PacketType,
    #[error("binary packets are not supported")]
    Binary,
    #[error("namespace is malformed or too long")]
    Namespace,
    #[error("ack id is not a number")]
    AckId,
    #[error("payload is not valid JSON")]
    Json,
    #[error("payload nesting is deeper than 64")]
    TooDeep,
    #[error("payload does not fit the packet type")]
    Payload,
}

/// Decodes one client frame.
pub fn decode(text: &str) -> Result<EnginePacket, DecodeError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(DecodeError::Empty)?;
    let rest = chars.as_str();
    Ok(match kind {
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(rest.to_string()),
        '3' => EnginePacket::Pong(rest.to_string()),
        '4' => EnginePacket::Message(decode_packet(rest)?),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        _ => return Err(DecodeError::EngineType),
    })
}

/// Decodes the Socket.IO packet inside an Engine.IO message.
pub fn decode_packet(text: &str) -> Result<Packet, DecodeError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first().ok_or(DecodeError::Empty)? {
        b'0' => PacketType::Connect,
        b'1' => PacketType::Disconnect,
        b'2' => PacketType::Event,
        b'3' => PacketType::Ack,
        b'4' => PacketType::ConnectError,
        b'5' | b'6' => return Err(DecodeError::Binary),
        _ => return Err(DecodeError::PacketType),
    };
    let mut at = 1;
    let ns = if bytes.get(at) == Some(&b'/') {
        let end = text[at..].find(',').map_or(text.len(), |comma| at + comma);
        let ns = &text[at..end];
        if ns.len() > MAX_NAMESPACE {
            return Err(DecodeError::Namespace);
        }
        at = (end + 1).min(text.len());
        ns.to_string()
    } else {
        "/".to_string()
    };
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let id = if digits > 0 {
        let id = text[at..at + digits]
            .parse::<u64>()
            .map_err(|_| DecodeError::AckId)?;
        at += digits;
        Some(id)
    } else {
        None
    };
    let payload = &text[at..];
    let data = if payload.is_empty() {
        None
    } else {
        if native::too_deep(payload.as_bytes(), MAX_DEPTH) {
            return Err(DecodeError::TooDeep);
        }
        Some(serde_json::from_str::<Value>(payload).map_err(|_| DecodeError::Json)?)
    };
    let fits = match (kind, &data) {
        (PacketType::Connect, None | Some(Value::Object(_))) => true,
        (PacketType::Disconnect, None) => true,
        (PacketType::Event, Some(Value::Array(items))) => {
            items.first().is_some_and(Value::is_string)
        }
        (PacketType::Ack, Some(Value::Array(_))) => id.is_some(),
        _ => false,
    };
    if !fits {
        return Err(DecodeError::Payload);
    }
    Ok(Packet { kind, ns, id, data })
}

/// The namespace prefix of a packet: nothing for `/`, else `/ns,`.
fn push_ns(out: &mut Vec<u8>, ns: &str) {
    if ns != "/" {
        out.extend_from_slice(ns.as_bytes());
        out.push(b',');
    }
}

/// `42<ns,>["event",<data>]`: an EVENT frame's text, with `data` already JSON (a
/// broadcast payload is encoded once and spliced in here).
pub fn event(ns: &str, event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + ns.len() + event.len() + data.len());
    out.extend_from_slice(b"42");
    push_ns(&mut out, ns);
    out.extend_from_slice(b"[");
    // An event name is one of nilecast's own constants: JSON-safe as it is.
    out.push(b'"');
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(data);
    out.push(b']');
    out
}

/// `42<ns,>["<event>",<data>,"<offset>"]`: a change event carrying its offset (its seq)
/// as the last argument, as Socket.IO's connection state recovery expects.
pub fn event_with_offset(ns: &str, name: &str, data: &[u8], offset: u64) -> Vec<u8> {
    let offset = offset.to_string();
    let mut args = Vec::with_capacity(data.len() + offset.len() + 3);
    args.extend_from_slice(data);
    args.extend_from_slice(b",\"");
    args.extend_from_slice(offset.as_bytes());
    args.push(b'"');
    event(ns, name, &args)
}

/// `43<ns,><id>[<data>]`: the ACK of request `id`.
pub fn ack(ns: &str, id: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + ns.len() + data.len());
    out.extend_from_slice(b"43");
    push_ns(&mut out, ns);
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'[');
    out.extend_from_slice(data);
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_packets_a_client_sends() {
        assert_eq!(
            decode("2").expect("test packet"),
            EnginePacket::Ping(String::new())
        );
        assert_eq!(
            decode("3probe").expect("test packet"),
            EnginePacket::Pong("probe".into())
        );
        let connect = decode(r#"40/inventory,{"token":"t"}"#).expect("test packet");
        assert_eq!(
            connect,
            EnginePacket::Message(Packet {
                kind: PacketType::Connect,
                ns: "/inventory".into(),
                id: None,
                data: Some(json!({"token": "t"})),
            })
        );
        let EnginePacket::Message(p) =
            decode(r#"42/inventory,17["inventory:subscribe",{"productIds":["p-1"]}]"#)
                .expect("test packet")
        else {
            panic!("not a message");
        };
        assert_eq!(p.kind, PacketType::Event);
        assert_eq!(p.ns, "/inventory");
        assert_eq!(p.id, Some(17));
        assert_eq!(p.data.expect("test packet")[0], "inventory:subscribe");
        let EnginePacket::Message(root) = decode(r#"42["ping"]"#).expect("test packet") else {
            panic!("not a message");
        };
        assert_eq!((root.ns.as_str(), root.id), ("/", None));
        assert_eq!(
            decode("41/orders,").expect("test packet"),
            EnginePacket::Message(Packet {
                kind: PacketType::Disconnect,
                ns: "/orders".into(),
                id: None,
                data: None,
            })
        );
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("9"), Err(DecodeError::EngineType));
        assert_eq!(decode("4"), Err(DecodeError::Empty));
        assert_eq!(decode("47"), Err(DecodeError::PacketType));
        assert_eq!(
            decode(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Err(DecodeError::Binary)
        );
        assert_eq!(decode("42[oops"), Err(DecodeError::Json));
        assert_eq!(decode("42{}"), Err(DecodeError::Payload));
        assert_eq!(decode("42[1]"), Err(DecodeError::Payload));
        assert_eq!(
            decode("43[1]"),
            Err(DecodeError::Payload),
            "an ACK needs an id"
        );
        assert_eq!(
            decode("4299999999999999999999[\"x\"]"),
            Err(DecodeError::AckId)
        );
        let deep = format!("42[\"x\",{}{}]", "[".repeat(70), "]".repeat(70));
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
        let long_ns = format!("40/{},", "n".repeat(200));
        assert_eq!(decode(&long_ns), Err(DecodeError::Namespace));
    }

    #[test]
    fn encodes_events_and_acks() {
        assert_eq!(
            event("/inventory", "inventory:update", br#"{"seq":1}"#),
            br#"42/inventory,["inventory:update",{"seq":1}]"#.to_vec()
        );
        assert_eq!(event("/", "pong", b"{}"), br#"42["pong",{}]"#.to_vec());
        assert_eq!(ack("/orders", 5, b"{}"), br#"43/orders,5[{}]"#.to_vec());
        assert_eq!(
            event_with_offset("/inventory", "inventory:update", br#"{"seq":42}"#, 42),
            br#"42/inventory,["inventory:update",{"seq":42},"42"]"#.to_vec()
        );
        // What is encoded decodes (the server's packets follow the same grammar).
        let text =
            String::from_utf8(event("/inventory", "x", br#"{"a":[1,2]}"#)).expect("test packet");
        let EnginePacket::Message(p) = decode(&text).expect("test packet") else {
            panic!("not a message");
        };
        assert_eq!(p.data.expect("test packet"), json!(["x", {"a": [1, 2]}]));
    }
}
