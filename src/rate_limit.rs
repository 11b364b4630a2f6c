//! A token bucket per connection: `RATE_LIMIT_MAX_MESSAGES` per `RATE_LIMIT_WINDOW_MS`,
//! refilled continuously, so a client may burst up to the limit and then sustain the
//! average rate. The limit is configuration ([`RateLimit`]); a connection owns only its
//! bucket's state ([`RateLimiter`], 24 bytes, in every connection's task): no sharing,
//! no atomics.

/// The limit: a bucket of `capacity` tokens refilled at `per_ms`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    capacity: f64,
    per_ms: f64,
    close_after: u32,
}

impl RateLimit {
    /// `max_messages` per `window_ms`; a client refused `close_multiple - 1` times the
    /// limit in a row (so sending `close_multiple` times it) is to be closed.
    pub fn new(max_messages: u32, window_ms: u64, close_multiple: u32) -> RateLimit {
        let max = max_messages.max(1);
        let capacity = f64::from(max);
        RateLimit {
            capacity,
            per_ms: capacity / window_ms.max(1) as f64,
            close_after: max.saturating_mul(close_multiple.max(1) - 1),
        }
    }
}

/// One connection's bucket.
pub struct RateLimiter {
    tokens: f64,
    last_ms: u64,
    /// Messages refused since the last accepted one.
    refused: u32,
}

/// What the limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it; a token is due in this many milliseconds.
    Refuse {
        retry_after_ms: u64,
    },
    /// The client went on past the limit up to `RATE_LIMIT_CLOSE_MULTIPLE` times it:
    /// close it with 1008.
    Close,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: &RateLimit, now_ms: u64) -> RateLimiter {
        RateLimiter {
            tokens: limit.capacity,
            last_ms: now_ms,
            refused: 0,
        }
    }

    pub fn check(&mut self, limit: &RateLimit, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * limit.per_ms).min(limit.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            return Verdict::Allow;
        }
        self.refused += 1;
        if self.refused > limit.close_after {
            return Verdict::Close;
        }
        Verdict::Refuse {
            retry_after_ms: ((1.0 - self.tokens) / limit.per_ms).ceil().max(1.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refuses_then_closes() {
        let limit = RateLimit::new(3, 60_000, 2);
        let mut rl = RateLimiter::new(&limit, 0);
        for _ in 0..3 {
            assert_eq!(rl.check(&limit, 0), Verdict::Allow);
        }
        match rl.check(&limit, 0) {
            Verdict::Refuse { retry_after_ms } => assert_eq!(retry_after_ms, 20_000),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rl.check(&limit, 0), Verdict::Refuse { .. }));
        assert!(matches!(rl.check(&limit, 0), Verdict::Refuse { .. }));
        assert_eq!(rl.check(&limit, 0), Verdict::Close);
    }

    #[test]
    fn refills_over_the_window() {
        let limit = RateLimit::new(2, 1000, 2);
        let mut rl = RateLimiter::new(&limit, 0);
        assert_eq!(rl.check(&limit, 0), Verdict::Allow);
        assert_eq!(rl.check(&limit, 0), Verdict::Allow);
        assert!(matches!(rl.check(&limit, 0), Verdict::Refuse { .. }));
        assert_eq!(rl.check(&limit, 500), Verdict::Allow);
    }
}
