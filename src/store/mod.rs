//! The read model behind one trait: what `data:request`, `inventory:get-current`,
//! `orders:track`, `GET /alerts`, `POST /alerts/:id/acknowledge` and
//! `GET /changes/:dataType` read. Two implementations, chosen once in `App::with_parts`:
//! [`memory::InMemory`] (the embedded default, kept current by the engine) and
//! `db::queries::InPostgres` (the tables and the change log, with the MySQL fallback
//! for the business tables). Callers hold an `Arc<dyn Store>` and never ask which one
//! it is.
//!
//! Every method takes the tenant first; there is no query that spans tenants. The
//! store answers questions; it does not check who asks (handlers do, before they ask)
//! and it publishes nothing (an acknowledgement's notification is the caller's).
//!
//! `memory.rs` also holds [`MemoryStore`], the per-tenant state the engine applies
//! every published change to (the dashboard's widgets read it directly).

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::db::DbError;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::{DataType, Record};
pub use memory::{InventoryQuery, MemoryStore, Product};

/// An answer of the store. Boxed so that `Store` is a trait object; the in-memory store
/// answers with a future that is ready at its first poll.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why the store could not answer. The in-memory store always answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database (and its fallback, for the reads it serves) could not be reached.
    #[error("store unreachable: {0}")]
    Unavailable(String),
    /// The database refused or failed the query.
    #[error("store query failed: {0}")]
    Failed(String),
}

impl From<&DbError> for StoreError {
    fn from(e: &DbError) -> StoreError {
        match e {
            DbError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            DbError::Query(m) => StoreError::Failed(m.clone()),
        }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> StoreError {
        StoreError::from(&e)
    }
}

impl From<&StoreError> for Refusal {
    /// What a client is told. The cause stays in the server's log (`Db::timed`).
    fn from(e: &StoreError) -> Refusal {
        match e {
            StoreError::Unavailable(_) => Refusal::new(
                ErrorCode::Unavailable,
                "the database is unreachable; try again",
            ),
            StoreError::Failed(_) => Refusal::new(ErrorCode::Internal, "the database query failed"),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal::from(&e)
    }
}

/// Which changes `/changes/:dataType` and `recent_changes` list.
#[derive(Debug, Clone, Copy)]
pub struct ChangesQuery {
    /// One data type, or all.
    pub data_type: Option<DataType>,
    /// Only changes with a seq above this.
    pub since: u64,
    /// At most this many, the newest.
    pub limit: usize,
}

/// The read model (and the one write that belongs to it: acknowledging an alert).
pub trait Store: Send + Sync {
    /// The latest row per product and warehouse that matches `query`, ordered by
    /// product and warehouse (`inventory:get-current`, `low_stock_items`).
    fn inventory_current<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a InventoryQuery,
    ) -> Answer<'a, Vec<Value>>;

    /// `inventory_summary`: `{totalProducts, stockRows, totalUnits, lowStockCount,
    /// outOfStockCount, totalValue}`.
    fn inventory_summary<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value>;

    /// `order_stats`: `{totalOrders, byStatus, ordersLastMinute, totalRevenue}`.
    fn order_stats<'a>(&'a self, tenant: &'a str) -> Answer<'a, Value>;

    /// `recent_orders`: order rows, most recently updated first.
    fn recent_orders<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Vec<Value>>;

    /// `customer_activity`: `{eventsLastMinute, activeCustomersLastMinute, byType,
    /// recent}`, `recent` newest first and at most `limit`.
    fn customer_activity<'a>(&'a self, tenant: &'a str, limit: usize) -> Answer<'a, Value>;

    /// The tenant's alerts as A, newest first; acknowledged ones only with `all`.
    fn alerts<'a>(&'a self, tenant: &'a str, all: bool) -> Answer<'a, Vec<Value>>;

    /// Marks an alert acknowledged. The alert as A and whether this call acknowledged
    /// it (false when it already was), or None for an id the tenant has not. Who
    /// acknowledged it is the announcement's business, and that is the caller's.
    fn acknowledge<'a>(&'a self, tenant: &'a str, id: &'a str)
        -> Answer<'a, Option<(Value, bool)>>;

    /// Changes (P, or N for notifications) that `query` asks for, newest first
    /// (`/changes/:dataType`, `recent_changes`).
    fn changes<'a>(&'a self, tenant: &'a str, query: ChangesQuery) -> Answer<'a, Vec<Value>>;

    /// The customer an order belongs to, when known.
    fn order_customer<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<String>>;

    /// The latest tracking change of an order.
    fn latest_tracking<'a>(
        &'a self,
        tenant: &'a str,
        order_id: &'a str,
    ) -> Answer<'a, Option<Arc<Record>>>;
}
