//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their
//! corpus (`tests/fuzz_corpus.rs`), so both run exactly the same code: the decoders a
//! client's bytes reach before anything else.
//!
//! Each function must return normally for every input; a panic is a bug.

use bytes::BytesMut;

use crate::namespace::filter::{self, Filter};
use crate::protocol::native;
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
/// input's first byte picks.
pub fn ws_frames(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match frame::parse(&mut buf, MAX_PAYLOAD) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
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
