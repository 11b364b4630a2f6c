//! The retention ring: the most recent changes, for `sinceSeq` replay and `/changes`.
//!
//! Bounded by count and by age (docs/protocol.md, "5.3 Replay with `sinceSeq` and `gap`": 1000 changes or 5 minutes by
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::change::{Change, DataType, Keys};

    fn record(seq: u64, timestamp_ms: u64) -> Arc<Record> {
        let change = Change {
            data_type: DataType::Inventory,
            tenant: Arc::from("t1"),
            data: serde_json::Map::new(),
        };
        Arc::new(Record::build(seq, &change, Keys::default(), timestamp_ms))
    }

    fn seqs<'a>(records: impl Iterator<Item = &'a Arc<Record>>) -> Vec<u64> {
        records.map(|r| r.seq).collect()
    }

    /// The seqs `since` replays and its gap flag.
    fn replay(ring: &Ring, since: u64) -> (Vec<u64>, bool) {
        let (records, gap) = ring.since(since);
        (seqs(records), gap)
    }

    /// A ring whose age limit never applies, holding seqs `first..=last`.
    fn filled(max_changes: usize, first: u64, last: u64) -> Ring {
        let mut ring = Ring::new(max_changes, u64::MAX, first);
        for seq in first..=last {
            ring.push(record(seq, 0), 0);
        }
        ring
    }

    #[test]
    fn the_oldest_changes_go_past_the_count_limit() {
        let ring = filled(3, 10, 14);
        assert_eq!(ring.len(), 3);
        assert_eq!(seqs(ring.newest_first()), vec![14, 13, 12]);
        assert_eq!(ring.evicted_up_to(), 11);
    }

    #[test]
    fn a_replay_from_below_what_was_evicted_has_a_gap() {
        let ring = filled(3, 10, 14);
        // 10 and 11 are gone: a client that has 9 or 10 missed some of them.
        assert_eq!(replay(&ring, 9), (vec![12, 13, 14], true));
        assert_eq!(replay(&ring, 10), (vec![12, 13, 14], true));
        // A client that has 11 misses nothing.
        assert_eq!(replay(&ring, 11), (vec![12, 13, 14], false));
        assert_eq!(replay(&ring, 13), (vec![14], false));
        assert_eq!(replay(&ring, 14), (vec![], false));
        assert_eq!(replay(&ring, 99), (vec![], false));
        // Seq 0 is before anything this ring has seen.
        assert_eq!(replay(&ring, 0), (vec![12, 13, 14], true));
    }

    #[test]
    fn nothing_below_the_first_seq_can_be_replayed() {
        let ring = filled(10, 100, 102);
        assert_eq!(ring.evicted_up_to(), 99);
        assert_eq!(replay(&ring, 98), (vec![100, 101, 102], true));
        assert_eq!(replay(&ring, 99), (vec![100, 101, 102], false));

        let empty = Ring::new(10, u64::MAX, 100);
        assert!(empty.is_empty());
        assert_eq!(replay(&empty, 98), (vec![], true));
        assert_eq!(replay(&empty, 99), (vec![], false));

        // A ring starting at seq 0 or 1 has no floor to report.
        assert_eq!(Ring::new(10, u64::MAX, 0).evicted_up_to(), 0);
        assert_eq!(replay(&Ring::new(10, u64::MAX, 1), 0), (vec![], false));
    }

    #[test]
    fn changes_older_than_the_age_limit_go_when_pushing_or_trimming() {
        let mut ring = Ring::new(100, 1000, 1);
        ring.push(record(1, 0), 0);
        ring.push(record(2, 500), 500);
        ring.push(record(3, 1000), 1000);
        assert_eq!(ring.len(), 3);
        // At 1500 the oldest allowed timestamp is 500: seq 1 goes, seq 2 is just in.
        ring.push(record(4, 1500), 1500);
        assert_eq!(seqs(ring.newest_first()), vec![4, 3, 2]);
        assert_eq!(ring.evicted_up_to(), 1);
        assert_eq!(replay(&ring, 1), (vec![2, 3, 4], false));
        assert_eq!(replay(&ring, 0), (vec![2, 3, 4], true));

        ring.trim(1500);
        assert_eq!(ring.len(), 3);
        ring.trim(2000);
        assert_eq!(seqs(ring.newest_first()), vec![4, 3]);
        assert_eq!(ring.evicted_up_to(), 2);
        ring.trim(10_000);
        assert!(ring.is_empty());
        assert_eq!(ring.evicted_up_to(), 4);
        assert_eq!(replay(&ring, 3), (vec![], true));
        assert_eq!(replay(&ring, 4), (vec![], false));
    }

    #[test]
    fn a_change_logged_before_the_age_limit_is_not_kept() {
        // A change-log row older than the window (a feed catching up) is evicted at once,
        // and a replay from before it reports the gap.
        let mut ring = Ring::new(100, 1000, 1);
        ring.push(record(1, 100), 5000);
        assert!(ring.is_empty());
        assert_eq!(ring.evicted_up_to(), 1);
        assert_eq!(replay(&ring, 0), (vec![], true));
    }

    #[test]
    fn reset_empties_the_ring_and_raises_the_floor() {
        let mut ring = filled(10, 1, 5);
        ring.reset(50);
        assert!(ring.is_empty());
        assert_eq!(ring.evicted_up_to(), 50);
        assert_eq!(replay(&ring, 5), (vec![], true));
        assert_eq!(replay(&ring, 50), (vec![], false));
        ring.push(record(51, 0), 0);
        ring.push(record(52, 0), 0);
        assert_eq!(replay(&ring, 49), (vec![51, 52], true));
        assert_eq!(replay(&ring, 50), (vec![51, 52], false));
        assert_eq!(replay(&ring, 51), (vec![52], false));
    }

    #[test]
    fn newest_first_is_the_reverse_of_a_full_replay() {
        let ring = filled(4, 1, 9);
        let (mut oldest_first, _) = replay(&ring, 0);
        oldest_first.reverse();
        assert_eq!(seqs(ring.newest_first()), oldest_first);
        assert_eq!(oldest_first, vec![9, 8, 7, 6]);
    }
}
