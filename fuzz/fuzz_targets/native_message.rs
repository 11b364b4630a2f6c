#![no_main]
//! The native protocol's request decoder and filter parsers on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nilecast::fuzzing::native_message(data));
