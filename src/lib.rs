//! nilecast: a real-time broadcast engine. Changes come in from sources (the publish
//! API, the built-in simulator, PostgreSQL's change log, other nodes through Redis),
//! each is encoded once, and every WebSocket client whose subscription matches gets the
//! same bytes.
//!
//! # Code map
//!
//! Two crates. `nilecast-core` (`crates/core`) holds what does no I/O: the model types,
//! the codecs and the engine ([`fanout`], [`protocol`], [`ws::frame`],
//! [`namespace::filter`], [`session`], [`auth::Principal`], [`alert`], [`error`],
//! [`time`]), re-exported here under the same paths. This crate puts sockets, HTTP,
//! PostgreSQL, Redis and the command line around it.
//!
//! The data flow, left to right:
//!
//! ```text
//! source/, http/ ──► bus::Bus::publish ──► fanout::Inlet ──► fanout/index ──► fanout/outbox ──► ws/conn ──► socket
//!                    (the seq: process,    (domain rules,    (tenant-keyed)   (bounded, never    (drain, one
//!                     change log, or        encode once,                       awaited)            writev)
//!                     stream; every node)   replay ring)
//! socket ──► ws/conn (input) ──► protocol/native ──► namespace/ ──► engine / store / reply
//! ```
//!
//! - [`app`]: the composition root: picks the bus and the store from the
//!   configuration, the shared parts (one `Arc<App>`), start and stop order.
//! - [`bus`]: the one way a change gets its seq and reaches every node's engine: in
//!   process, the PostgreSQL change log, the Redis stream, or the stream fed by the
//!   database's leader; its log (replays), recovery sessions and membership.
//! - [`domain`]: the rules the engine runs on each change (key completion, the read
//!   model, alerts).
//! - [`config`]: every setting, its variable, default and validation.
//! - [`shutdown`]: cancel signal, task tracking, deadline.
//! - [`error`] (core): wire error codes and close codes; [`http::http_status`] maps
//!   them to HTTP statuses in one place.
//! - [`http`]: accept loop and the HTTP API; [`ws`]: upgrade, the connection (one
//!   hand-written future per connection: input, output), framing (core).
//! - [`protocol`] (core): the native and Socket.IO codecs, pure.
//! - [`fanout`] (core): the engine: change records, index, outboxes, replay ring; its
//!   domain rules come in through [`domain`].
//! - [`namespace`]: request handling per namespace, filters (core), dashboards, queries.
//! - [`source`]: producers of changes (the simulator); [`store`]: the read model behind
//!   one trait, in memory or in PostgreSQL.
//! - [`db`]: PostgreSQL / Nile DB: schema, the change feed (change log in, engine or
//!   stream out), queries and writes, and the MySQL read fallback.
//! - [`auth`]: principals and the one place that decides what they may do (core), JWT
//!   verification; [`security`]: security events, client addresses, origin and per-address
//!   limits.
//! - [`alerts`] (the rules; the [`alert`] record is core's), [`metrics`],
//!   [`rate_limit`], [`session`] (core), [`time`] (core), [`backoff`], [`cli`],
//!   [`fuzzing`] (entry points shared by the fuzz targets and the corpus test).
//!
//! # Invariants
//!
//! - Architecture Invariant: a broadcast frame holds nothing per subscriber; it is
//!   encoded once per change and shared as `Bytes`.
//! - Architecture Invariant: the broadcaster never awaits a client; a full queue applies
//!   the slow-consumer policy instead.
//! - Architecture Invariant: the tenant is part of every index key and every store query.
//! - Architecture Invariant: `protocol/` does no I/O; `source/` never touches sockets;
//!   only `ws/` touches WebSocket sockets.
//! - Architecture Invariant: the core crate depends on no socket, HTTP, database, Redis
//!   or CLI crate; the compiler, not this comment, keeps it so.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
#[cfg(test)]
mod engine_tests;
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod namespace;
pub mod rate_limit;
pub mod security;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod ws;

// The pure parts live in the core crate, which the compiler keeps free of I/O; they
// keep their paths here (`crate::fanout::...`), so the server, tests/ and benches/
// name them as before.
pub use nilecast_core::{alert, error, fanout, protocol, session, time};

pub use app::{start, App, Server};
pub use config::Config;
