//! Sources of changes. A source produces [`Change`](crate::fanout::change::Change)s and
//! hands them to the engine's one publish path; it never touches sockets or
//! subscribers. The publish API lives with the HTTP routes; the database feed arrives
//! with the PostgreSQL work.

pub mod simulator;
