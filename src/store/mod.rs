//! Query state: what `inventory:get-current`, `data:request`, `orders:track` and the
//! dashboard read. The in-memory store is the embedded default; it is kept current by the
//! engine, which applies every published change to it.

pub mod memory;

pub use memory::{MemoryStore, Product};
