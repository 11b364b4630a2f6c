//! nilecast-core: the parts of nilecast that do no I/O. The model types (changes,
//! namespaces, filters, principals, sessions, alerts), the wire codecs (native and
//! Socket.IO messages, RFC 6455 framing) and the fan-out engine (index, outboxes,
//! replay ring). The server crate (`nilecast`) puts sockets, HTTP, the database, Redis
//! and the command line around it, and re-exports these modules under the same paths.
//!
//! # Code map
//!
//! - [`fanout`]: the engine: change records, index, outboxes, replay ring, and the
//!   [`fanout::Rules`] hook through which the server's domain rules run.
//! - [`protocol`]: the native and Socket.IO codecs; [`ws::frame`]: RFC 6455 framing.
//! - [`namespace::filter`]: subscription filters and the index keys of a change.
//! - [`session`]: a connection's shared state; [`auth`]: principals and what they may do.
//! - [`alert`]: the alert record; [`error`]: wire error codes and close codes;
//!   [`time`]: clocks and timestamps.
//!
//! # Invariants
//!
//! - Architecture Invariant: this crate depends on no socket, HTTP, database, Redis or
//!   CLI crate (no tokio I/O, hyper, hyper-util, tokio-postgres, deadpool, mysql_async,
//!   redis, socket2, clap). `cargo tree -p nilecast-core -e normal` shows what it does
//!   depend on; anything that needs I/O belongs in the server.
//! - Architecture Invariant: nothing here awaits. The engine's publish lock and the
//!   outbox's queue lock are held for pushes and takes, never across an await.
//! - Architecture Invariant: a broadcast frame holds nothing per subscriber; it is
//!   encoded once per change and protocol and shared as `Bytes`.

#![forbid(unsafe_code)]

pub mod alert;
pub mod auth;
pub mod error;
pub mod fanout;
pub mod protocol;
pub mod session;
pub mod time;

/// WebSocket framing, a codec: the connection that reads and writes it is the server's.
pub mod ws {
    pub mod deflate;
    pub mod frame;
}

/// Subscription filters; the request handling per namespace is the server's.
pub mod namespace {
    pub mod filter;
}
