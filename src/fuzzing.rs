//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their
//! corpus (`tests/fuzz_corpus.rs`), so both run exactly the same code: the decoders a
//! client's bytes reach before anything else.
//!
//! Each function must return normally for every input; a panic is a bug.

use bytes::BytesMut;

use crate::namespace::filter::{self, Filter};
use crate::protocol::{native, socketio};
use crate::ws::frame;

/// The limit the frame target parses with (the server's default `MAX_MESSAGE_BYTES`).
const MAX_PAYLOAD: usize = 64 * 1024;

/// A client's text message: the request decoder, then every filter parser on its data.
pub fn native_message(data: &[u8]) {
    let Ok(request) = native::parse_request(data) else {
        return;
    };
    let d = &request.data;
    let _ = filter::since_seq(d);
    let _ = Filter::inventory(d, 100);
    let _ = Filter::orders(d, 100);
    let _ = Filter::customer(d, 100);
    let _ = Filter::notifications(d, 100, None);
    let _ = Filter::notifications(d, 100, Some("u-1"));
}

/// A client's byte stream: frames parsed as they arrive in pieces of every size the
/// input's first byte picks, on a connection that negotiated permessage-deflate when
/// that byte is odd; compressed payloads are decompressed within the message limit.
pub fn ws_frames(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let deflate = step & 1 == 1;
    let step = usize::from(step).max(1);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match frame::parse(&mut buf, MAX_PAYLOAD, deflate) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
                    assert!(deflate || !f.compressed);
                    if f.compressed {
                        if let Ok(message) = crate::ws::deflate::inflate(&f.payload, MAX_PAYLOAD) {
                            assert!(message.len() <= MAX_PAYLOAD);
                        }
                    }
                    if f.opcode.is_control() {
                        assert!(f.fin && f.payload.len() <= 125);
                    }
                }
                Ok(None) => break,
                // The connection would be closed here; nothing more is parsed.
                Err(_) => return,
            }
        }
    }
}

/// A Socket.IO client frame through the Engine.IO and Socket.IO packet decoder; what
/// decodes must encode back to something that decodes the same way.
pub fn socketio_packet(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(socketio::EnginePacket::Message(packet)) = socketio::decode(text) {
        if let (socketio::PacketType::Event, Some(serde_json::Value::Array(items))) =
            (packet.kind, &packet.data)
        {
            if let (Some(serde_json::Value::String(name)), Some(arg)) =
                (items.first(), items.get(1))
            {
                if !name.contains(['"', '\\']) && name.chars().all(|c| !c.is_control()) {
                    let arg = serde_json::to_vec(arg).unwrap_or_default();
                    let again = socketio::event(&packet.ns, name, &arg);
                    let again = String::from_utf8(again).unwrap_or_default();
                    assert!(
                        socketio::decode(&again).is_ok(),
                        "re-encoded packet does not decode: {again}"
                    );
                }
            }
        }
    }
}
