//! The retention ring: the most recent changes, for `sinceSeq` replay and `/changes`.
//!
//! Bounded by count and by age (PROTOCOL.md section 6: 1000 changes or 5 minutes by
//! default). It lives inside the engine's publish lock, so appending and replaying are
//! ordered with routing and need no lock of their own.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::fanout::change::Record;

pub struct Ring {
    items: VecDeque<Arc<Record>>,
    max_changes: usize,
    max_age_ms: u64,
    /// The highest seq that was evicted. A replay from below it has a gap.
    evicted_up_to: u64,
}

impl Ring {
    /// `first_seq` is the seq the node will assign first: anything below it is treated
    /// as gone, so a client resuming from an earlier run of the server is told it has a
    /// gap.
    pub fn new(max_changes: usize, max_age_ms: u64, first_seq: u64) -> Ring {
        Ring {
            items: VecDeque::with_capacity(max_changes.min(4096)),
            max_changes,
            max_age_ms,
            evicted_up_to: first_seq.saturating_sub(1),
        }
    }

    /// Empties the ring and treats everything up to `seq` as gone (the database feed's
    /// start position: older changes are replayed from the change log).
    pub fn reset(&mut self, seq: u64) {
        self.items.clear();
        self.evicted_up_to = seq;
    }

    pub fn evicted_up_to(&self) -> u64 {
        self.evicted_up_to
    }

    pub fn push(&mut self, record: Arc<Record>, now_ms: u64) {
        self.items.push_back(record);
        while self.items.len() > self.max_changes {
            self.evict_front();
        }
        self.trim(now_ms);
    }

    /// Drops changes older than the age limit.
    pub fn trim(&mut self, now_ms: u64) {
        let oldest_allowed = now_ms.saturating_sub(self.max_age_ms);
        while self
            .items
            .front()
            .is_some_and(|r| r.timestamp_ms < oldest_allowed)
        {
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        if let Some(r) = self.items.pop_front() {
            self.evicted_up_to = self.evicted_up_to.max(r.seq);
        }
    }

    /// Retained changes with a seq above `since`, oldest first, and whether changes in
    /// `(since, oldest retained)` existed and are gone.
    pub fn since(&self, since: u64) -> (impl Iterator<Item = &Arc<Record>>, bool) {
        let start = self.items.partition_point(|r| r.seq <= since);
        (self.items.range(start..), self.evicted_up_to > since)
    }

    /// Retained changes, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.items.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
