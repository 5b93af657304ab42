//! Retry with capped exponential backoff and full jitter, so many clients that lost
//! the same registry do not come back in lock-step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before try number `attempt + 1` (`attempt` counts from 1): uniformly
    /// random up to `base * 2^(attempt-1)`, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_but_stay_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
        };
        for _ in 0..200 {
            assert!(policy.delay(1) <= Duration::from_millis(100));
            assert!(policy.delay(3) <= Duration::from_millis(400));
            assert!(policy.delay(30) <= Duration::from_millis(700));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| policy.delay(5)).collect();
        assert!(spread.len() > 1, "jitter must vary the delay");
    }
}
