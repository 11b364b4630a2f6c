//! The native protocol (docs/protocol.md, "3. Native protocol frames"): client JSON frames in, server frames out.
//!
//! Pure: no I/O and no knowledge of connections. Parsing is lenient enough to recover
//! `ns`, `event` and `ack` from a frame it then refuses, because the contract routes a
//! refusal to the ack reply whenever `ack` parsed, and names the event whenever it can.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::ws::frame::{self, OpCode, MAX_HEADER};

/// Deepest JSON nesting a client frame may have (docs/protocol.md, "3.5 Bad frames").
pub const MAX_DEPTH: usize = 64;

/// A well-formed client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub ns: String,
    pub event: String,
    pub data: Map<String, Value>,
    pub ack: Option<u64>,
}

/// A refused frame, with whatever of it parsed, so the refusal can be addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub refusal: Refusal,
    pub ns: String,
    pub event: Option<String>,
    pub ack: Option<u64>,
}

fn invalid(message: &'static str) -> Refusal {
    Refusal::new(ErrorCode::InvalidMessage, message)
}

/// Parses one text message into a request.
pub fn parse_request(text: &[u8]) -> Result<Request, BadRequest> {
    let bad = |message: &'static str| BadRequest {
        refusal: invalid(message),
        ns: "/".into(),
        event: None,
        ack: None,
    };
    if too_deep(text, MAX_DEPTH) {
        return Err(bad("message nesting is deeper than 64"));
    }
    let value: Value =
        serde_json::from_slice(text).map_err(|_| bad("message is not valid JSON"))?;
    let Value::Object(mut obj) = value else {
        return Err(bad("message must be a JSON object"));
    };

    // Collect what parsed before judging, so the refusal can reach the right place.
    let ns = match obj.remove("ns") {
        None | Some(Value::Null) => Ok("/".to_string()),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err("ns must be a string"),
    };
    let event = match obj.remove("event") {
        Some(Value::String(s)) => Ok(s),
        None => Err("event is required"),
        Some(_) => Err("event must be a string"),
    };
    let ack = match obj.remove("ack") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or("ack must be a non-negative integer"),
        Some(_) => Err("ack must be a non-negative integer"),
    };
    let data = match obj.remove("data") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err("data must be an object"),
    };

    let first_error = [
        ns.as_ref().err(),
        event.as_ref().err(),
        ack.as_ref().err(),
        data.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    .next()
    .copied();
    match first_error {
        None => Ok(Request {
            ns: ns.unwrap_or_default(),
            event: event.unwrap_or_default(),
            data: data.unwrap_or_default(),
            ack: ack.unwrap_or_default(),
        }),
        Some(message) => Err(BadRequest {
            refusal: invalid(message),
            ns: ns.unwrap_or_else(|_| "/".into()),
            event: event.ok(),
            ack: ack.ok().flatten(),
        }),
    }
}

/// True when brackets nest deeper than `max` outside strings. A byte scan, so a hostile
/// frame is refused before the JSON parser recurses into it.
pub(crate) fn too_deep(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Starts a frame buffer with room for the header, then `{"ns":<ns>,`.
fn begin(ns: &str, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + capacity + 64);
    out.extend_from_slice(&[0u8; MAX_HEADER]);
    out.extend_from_slice(b"{\"ns\":");
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, ns);
    out
}

/// The broadcast frame of a change, `{"ns","event","data":P}`, and the byte range of P
/// inside it, so P can be shared as a slice of the frame.
pub fn broadcast_frame(ns: Namespace, event: &str, payload: &[u8]) -> (Bytes, Range<usize>) {
    let mut out = begin(ns.path(), payload.len() + event.len());
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    let start = out.len();
    out.extend_from_slice(payload);
    let end = out.len();
    out.push(b'}');
    let total = out.len() - MAX_HEADER;
    let frame = frame::finish_reserved(out, OpCode::Text);
    let header = frame.len() - total;
    let shift = MAX_HEADER - header;
    (frame, start - shift..end - shift)
}

/// An event frame, `{"ns","event","data"}`.
pub fn event_frame(ns: &str, event: &str, data: &Value) -> Bytes {
    let mut out = begin(ns, 128);
    out.extend_from_slice(b",\"event\":");
    let _ = serde_json::to_writer(&mut out, event);
    out.extend_from_slice(b",\"data\":");
    let _ = serde_json::to_writer(&mut out, data);
    out.push(b'}');
    frame::finish_reserved(out, OpCode::Text)
}

/// An ack reply, `{"ns","ack","data"}`.
pub fn ack_frame(ns: &str, ack: u64, data: &Value) -> Bytes {
    let mut out = begin(ns, 128);
    out.extend_from_slice(b",\"ack\":");
    out.extend_from_slice(ack.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    let _ = serde_json::to_writer(&mut out, data);
    out.push(b'}');
    frame::finish_reserved(out, OpCode::Text)
}

/// The answer to a refused request (see [`crate::protocol::Wire::refusal_frame`]).
pub fn refusal_frame(ns: &str, refusal: &Refusal, event: Option<&str>, ack: Option<u64>) -> Bytes {
    crate::protocol::Wire::Native.refusal_frame(ns, refusal, event, ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &Bytes) -> Value {
        let header = if frame[1] & 0x7F == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[header..]).unwrap()
    }

    #[test]
    fn parses_a_full_request() {
        let req = parse_request(br#"{"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":["a"]},"ack":7}"#)
            .unwrap();
        assert_eq!(req.ns, "/inventory");
        assert_eq!(req.event, "inventory:subscribe");
        assert_eq!(req.ack, Some(7));
        assert!(req.data.contains_key("productIds"));
    }

    #[test]
    fn defaults_ns_and_data() {
        let req = parse_request(br#"{"event":"auth:login"}"#).unwrap();
        assert_eq!(req.ns, "/");
        assert!(req.data.is_empty());
        assert_eq!(req.ack, None);
    }

    #[test]
    fn refusals_keep_what_parsed() {
        let err =
            parse_request(br#"{"ns":"/orders","event":"orders:subscribe","data":[1],"ack":3}"#)
                .unwrap_err();
        assert_eq!(err.refusal.code, ErrorCode::InvalidMessage);
        assert_eq!(
            (err.ns.as_str(), err.event.as_deref(), err.ack),
            ("/orders", Some("orders:subscribe"), Some(3))
        );
        let err = parse_request(br#"{"event":"x","ack":-1}"#).unwrap_err();
        assert_eq!((err.event.as_deref(), err.ack), (Some("x"), None));
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"\"s\"",
            br#"{"event":5}"#,
            br#"{"ns":1,"event":"a"}"#,
            br#"{"event":"a","ack":1.5}"#,
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn nesting_is_limited_outside_strings_only() {
        let deep = format!(
            "{{\"event\":\"a\",\"data\":{{\"x\":{}1{}}}}}",
            "[".repeat(64),
            "]".repeat(64)
        );
        assert!(parse_request(deep.as_bytes()).is_err());
        let ok = format!(
            "{{\"event\":\"a\",\"data\":{{\"x\":{}1{}}}}}",
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(parse_request(ok.as_bytes()).is_ok());
        let in_string = format!("{{\"event\":\"{}\"}}", "[".repeat(100));
        assert!(parse_request(in_string.as_bytes()).is_ok());
    }

    #[test]
    fn broadcast_frame_exposes_the_payload_slice() {
        let payload = br#"{"seq":1,"data":{}}"#;
        for pad in [0usize, 200, 70_000] {
            let mut p = payload.to_vec();
            p.truncate(p.len() - 2);
            p.extend_from_slice(format!("\"{}\"}}}}", "x".repeat(pad)).as_bytes());
            let (frame, range) = broadcast_frame(Namespace::Inventory, "inventory:update", &p);
            assert_eq!(&frame[range], &p[..]);
        }
        let (frame, _) = broadcast_frame(Namespace::Inventory, "inventory:update", payload);
        let v = body(&frame);
        assert_eq!(v["ns"], "/inventory");
        assert_eq!(v["event"], "inventory:update");
        assert_eq!(v["data"]["seq"], 1);
    }

    #[test]
    fn refusal_goes_to_the_ack_when_there_is_one() {
        let r = Refusal::new(ErrorCode::NotFound, "no such thing");
        let v = body(&refusal_frame("/x", &r, Some("e"), Some(4)));
        assert_eq!(v["ack"], 4);
        assert_eq!(v["data"]["error"]["code"], "not_found");
        let v = body(&refusal_frame("/x", &r, Some("e"), None));
        assert_eq!(v["event"], "error");
        assert_eq!(v["data"]["event"], "e");
    }
}
