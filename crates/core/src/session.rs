//! A connection as the rest of the server sees it: identity, subscriptions, outbox.
//!
//! The reader task owns the request handling; everything here is what other tasks need
//! to reach: the broadcaster (through the outbox), `/clients`, the heartbeat and the
//! shutdown. The subscription list is a `parking_lot::Mutex` because it is touched only
//! on subscribe, unsubscribe, disconnect and `/clients`, never on the broadcast path,
//! and never across an await.
//!
//! Work deferred past an await (a subscribe whose replay reads the change log, a
//! database query, a Socket.IO recovery) holds a [`Grant`]: the principal it was
//! checked as and the session's generation then. The generation moves on whenever the
//! connection becomes someone else (another user, tenant or set of roles) and the
//! session is marked closed when the connection ends; a subscription is added only
//! under the subscription lock and only while its grant is current, so a deferred
//! subscribe can neither act for a principal the connection no longer is nor outlive
//! the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;

use crate::auth::Principal;
use crate::error::{ErrorCode, Refusal};
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

/// The refusal of deferred work whose connection became another principal before it
/// finished: it carries nothing of either.
pub fn superseded() -> Refusal {
    Refusal::new(
        ErrorCode::Forbidden,
        "the connection changed identity while this request was in flight",
    )
}

/// The refusal of a subscribe over the per-connection cap.
pub fn too_many_subscriptions(max: usize) -> Refusal {
    Refusal::new(
        ErrorCode::TooManySubscriptions,
        format!("at most {max} subscriptions per connection"),
    )
}

/// What a request was checked as: the principal and the session's generation at the
/// time. Deferred work carries it and does nothing once it is no longer current.
#[derive(Clone)]
pub struct Grant {
    pub principal: Arc<Principal>,
    pub generation: u64,
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
    /// permessage-deflate: the LZ77 window (bits) the client decompresses with, or 0
    /// when the connection did not negotiate compression (docs/protocol.md, "2.1
    /// Compression").
    pub deflate: u8,
    /// Moves on when the connection becomes another principal; changed only under the
    /// `subs` lock, so that adding a subscription can check it atomically.
    generation: AtomicU64,
    /// Set (under the `subs` lock) when the connection has ended.
    closed: AtomicBool,
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
            deflate: 0,
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The same session speaking `wire`.
    pub fn speaking(mut self, wire: Wire) -> Session {
        self.wire = wire;
        self
    }

    /// The same session receiving compressed frames that fit a `window_bits` window
    /// (0: none).
    pub fn deflating(mut self, window_bits: u8) -> Session {
        self.deflate = window_bits;
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

    /// The grant a request handled now is checked under.
    pub fn grant(&self) -> Grant {
        // Identity changes happen on the connection's own task, which is also the one
        // calling this, so the two reads are consistent.
        Grant {
            principal: self.principal(),
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether work checked under `grant` may still act: the connection is open and
    /// still the principal it was.
    pub fn is_current(&self, grant: &Grant) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == grant.generation
    }

    /// Records a subscription, if `grant` is still current and the connection holds
    /// fewer than `max`; otherwise nothing is recorded, and the refusal says why and
    /// hands the entry back (its index keys are to be removed). The
    /// cap is checked here, under the lock, and not only when the request arrives:
    /// subscribes deferred past an await would otherwise all pass the early check.
    /// The list grows one slot at a time: most connections hold one or two
    /// subscriptions, and the usual growth to four slots would be memory every idle
    /// connection pays for.
    pub fn add_subscription(
        &self,
        entry: SubEntry,
        grant: &Grant,
        max: usize,
    ) -> Result<(), (Refusal, SubEntry)> {
        let mut subs = self.subs.lock();
        if !self.is_current(grant) {
            return Err((superseded(), entry));
        }
        if subs.len() >= max {
            return Err((too_many_subscriptions(max), entry));
        }
        subs.reserve_exact(1);
        subs.push(entry);
        Ok(())
    }

    /// The connection becomes `principal`, another identity: the generation moves on
    /// (deferred work of the previous one does nothing) and its subscriptions are
    /// handed back to be removed from the index.
    pub fn switch_principal(&self, principal: Arc<Principal>) -> Vec<SubEntry> {
        let mut subs = self.subs.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.principal.store(principal);
        std::mem::take(&mut *subs)
    }

    /// The connection has ended: nothing may subscribe on it any more. Returns its
    /// subscriptions, to be removed from the index.
    pub fn close_subscriptions(&self) -> Vec<SubEntry> {
        let mut subs = self.subs.lock();
        self.closed.store(true, Ordering::Release);
        std::mem::take(&mut *subs)
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.lock().len()
    }
}

pub type SessionRef = Arc<Session>;
