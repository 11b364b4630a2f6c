#![no_main]
//! The WebSocket frame parser on an arbitrary byte stream, fed in pieces.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nilecast::fuzzing::ws_frames(data));
