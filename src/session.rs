//! A connection as the rest of the server sees it: identity, subscriptions, outbox.
//!
//! The reader task owns the request handling; everything here is what other tasks need
//! to reach: the broadcaster (through the outbox), `/clients`, the heartbeat and the
//! shutdown. The subscription list is a `parking_lot::Mutex` because it is touched only
//! on subscribe, unsubscribe, disconnect and `/clients`, never on the broadcast path,
//! and never across an await.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;

use crate::auth::Principal;
use crate::fanout::change::Namespace;
use crate::fanout::index::Subscription;
use crate::fanout::outbox::Outbox;
use crate::namespace::filter::Filter;
use crate::protocol::Wire;

/// One of a connection's subscriptions, as it is listed and removed.
pub struct SubEntry {
    pub id: u64,
    pub ns: Namespace,
    /// Index keys it is registered under (empty for dashboard subscriptions).
    pub keys: Box<[u64]>,
    pub kind: SubKind,
}

/// What a subscription is. Stream subscriptions keep the `Arc` the index holds (eight
/// bytes here, not a copy of the filter); the reference cycle it makes with the
/// session is broken when the connection closes and its subscriptions are dropped.
pub enum SubKind {
    Stream(Arc<Subscription>),
    /// A dashboard subscription lives in its dashboard group; this is its request.
    Dashboard(Box<Value>),
}

impl SubEntry {
    /// The filters, for `/clients`.
    pub fn filters_json(&self) -> Value {
        match &self.kind {
            SubKind::Stream(sub) => sub.filter.to_json(),
            SubKind::Dashboard(filters) => (**filters).clone(),
        }
    }

    /// The subscription's filter, for stream subscriptions.
    pub fn filter(&self) -> Option<&Filter> {
        match &self.kind {
            SubKind::Stream(sub) => Some(&sub.filter),
            SubKind::Dashboard(_) => None,
        }
    }
}

pub struct Session {
    pub id: u64,
    pub outbox: Outbox,
    pub remote: SocketAddr,
    pub connected_ms: u64,
    /// Replaced as a whole on `auth:login`.
    pub principal: ArcSwap<Principal>,
    pub subs: Mutex<Vec<SubEntry>>,
    /// Milliseconds since the epoch of the last frame from the client (heartbeat).
    pub last_seen_ms: AtomicU64,
    /// The protocol it speaks: what its replies and pushes are encoded as.
    pub wire: Wire,
}

impl Session {
    pub fn new(
        id: u64,
        outbox: Outbox,
        remote: SocketAddr,
        principal: impl Into<Arc<Principal>>,
        now_ms: u64,
    ) -> Session {
        Session {
            id,
            outbox,
            remote,
            connected_ms: now_ms,
            principal: ArcSwap::new(principal.into()),
            subs: Mutex::new(Vec::new()),
            last_seen_ms: AtomicU64::new(now_ms),
            wire: Wire::Native,
        }
    }

    /// The same session speaking `wire`.
    pub fn speaking(mut self, wire: Wire) -> Session {
        self.wire = wire;
        self
    }

    pub fn principal(&self) -> Arc<Principal> {
        self.principal.load_full()
    }

    /// The id clients see (`connectionId`).
    pub fn connection_id(&self) -> String {
        format!("c-{}", self.id)
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Records a subscription. The list grows one slot at a time: most connections hold
    /// one or two subscriptions, and the usual growth to four slots would be memory
    /// every idle connection pays for.
    pub fn add_subscription(&self, entry: SubEntry) {
        let mut subs = self.subs.lock();
        subs.reserve_exact(1);
        subs.push(entry);
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.lock().len()
    }
}

pub type SessionRef = Arc<Session>;
