//! The one retry delay of the server: exponential from 100 ms to 5 s, with jitter, so
//! nodes that lost the same service do not all come back in the same millisecond.

use std::time::Duration;

/// Delays for successive attempts; [`Backoff::reset`] after a success.
#[derive(Debug, Default)]
pub struct Backoff(u32);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff(0)
    }

    /// The delay before the next attempt: 100 ms doubling to 5 s, plus up to half again.
    pub fn next_delay(&mut self) -> Duration {
        let base = (100u64 << self.0.min(6)).min(5000);
        self.0 = self.0.saturating_add(1);
        Duration::from_millis(base + fastrand::u64(..base / 2 + 1))
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_five_seconds_and_starts_over_after_a_reset() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(7500));
        }
        assert!(b.next_delay() >= Duration::from_millis(5000));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
