//! Wire codecs, pure: bytes in, typed requests out; typed replies in, frames out.
//!
//! Architecture Invariant: `protocol/` does no I/O and knows no connection.

pub mod native;
pub mod socketio;
