//! Request rate limits kept in this process, for the SQLite backend (one API
//! process): the `governor` crate's GCRA, one keyed limiter per distinct limit.
//! The Redis backend runs the same algorithm in a script instead, so every API
//! process shares one count (see `redis/rate.lua`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::RateDecision;

type Keyed = RateLimiter<String, HashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Buckets a limiter holds before idle ones (back at their full burst) are dropped.
const RETAIN_OVER: usize = 10_000;

/// Per-bucket GCRA state, one limiter per requests-a-minute figure (a key
/// whose limit changes starts afresh under its new one).
#[derive(Default)]
pub struct LocalRates {
    limiters: Mutex<HashMap<u32, Arc<Keyed>>>,
}

impl LocalRates {
    /// Counts one request of `bucket` against `per_minute` (> 0) a minute.
    pub fn take(&self, bucket: &str, per_minute: u32) -> RateDecision {
        let Some(limit) = NonZeroU32::new(per_minute) else {
            return RateDecision { allowed: true, remaining: u32::MAX, retry_after: Default::default() };
        };
        let limiter = self
            .limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(per_minute)
            .or_insert_with(|| {
                Arc::new(RateLimiter::hashmap(Quota::per_minute(limit)).with_middleware::<StateInformationMiddleware>())
            })
            .clone();
        if limiter.len() > RETAIN_OVER {
            limiter.retain_recent();
        }
        match limiter.check_key(&bucket.to_owned()) {
            Ok(state) => RateDecision {
                allowed: true,
                remaining: state.remaining_burst_capacity(),
                retry_after: Default::default(),
            },
            Err(not_until) => RateDecision {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_then_refusals_per_bucket() {
        let rates = LocalRates::default();
        for left in (0..3).rev() {
            let d = rates.take("a", 3);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let refused = rates.take("a", 3);
        assert!(!refused.allowed);
        // One request comes back every 20 s.
        assert!(refused.retry_after.as_secs_f64() > 19.0 && refused.retry_after.as_secs_f64() <= 20.0, "{refused:?}");
        assert!(rates.take("b", 3).allowed);
    }
}
