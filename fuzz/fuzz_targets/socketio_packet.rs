#![no_main]
//! The Socket.IO (Engine.IO v4) packet decoder on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nilecast::fuzzing::socketio_packet(data));
