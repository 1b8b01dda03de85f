//! When to try again (notifications, registries): exponential backoff with
//! jitter, bounded, and a receiver's
//! `Retry-After` honoured. Pure, so the schedule is tested without waiting.

use std::time::Duration;

/// No wait between attempts is longer than this, whatever a receiver asks.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub base: Duration,
    pub max_attempts: u32,
}

/// Why an attempt failed, and whether another could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// What went wrong, for the history and the log. Never holds a secret.
    pub detail: String,
    pub retryable: bool,
    /// The receiver said when to come back (Slack's 429).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn retry(detail: impl Into<String>) -> SendError {
        SendError {
            detail: detail.into(),
            retryable: true,
            retry_after: None,
        }
    }

    pub fn permanent(detail: impl Into<String>) -> SendError {
        SendError {
            detail: detail.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

impl Policy {
    /// The wait after failed attempt `attempt` (1-based), or `None` when no
    /// attempt follows. `jitter` in [0, 1) spreads the wait over its upper half,
    /// so receivers that come back up are not hit by every sender at once.
    pub fn next_delay(&self, attempt: u32, error: &SendError, jitter: f64) -> Option<Duration> {
        if !error.retryable || attempt >= self.max_attempts {
            return None;
        }
        if let Some(after) = error.retry_after {
            return Some(after.min(MAX_RETRY_DELAY));
        }
        let exp = self
            .base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(MAX_RETRY_DELAY);
        Some(exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        base: Duration::from_secs(4),
        max_attempts: 5,
    };

    #[test]
    fn the_default_schedule_doubles_and_ends_within_about_a_minute() {
        let e = SendError::retry("HTTP 500");
        let most: Vec<_> = (1..=5).map(|a| POLICY.next_delay(a, &e, 1.0)).collect();
        assert_eq!(
            most,
            vec![
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                Some(Duration::from_secs(16)),
                Some(Duration::from_secs(32)),
                None
            ]
        );
        let least: Duration = (1..5).filter_map(|a| POLICY.next_delay(a, &e, 0.0)).sum();
        assert_eq!(least, Duration::from_secs(30));
    }

    #[test]
    fn a_permanent_error_is_not_retried() {
        assert_eq!(
            POLICY.next_delay(1, &SendError::permanent("HTTP 400"), 0.5),
            None
        );
    }

    #[test]
    fn retry_after_replaces_the_backoff_within_bounds() {
        let mut e = SendError::retry("HTTP 429");
        e.retry_after = Some(Duration::from_secs(1));
        assert_eq!(POLICY.next_delay(1, &e, 0.9), Some(Duration::from_secs(1)));
        e.retry_after = Some(Duration::from_secs(86_400));
        assert_eq!(POLICY.next_delay(1, &e, 0.9), Some(MAX_RETRY_DELAY));
        assert_eq!(POLICY.next_delay(5, &e, 0.9), None);
    }

    #[test]
    fn long_schedules_are_capped() {
        let p = Policy {
            base: Duration::from_secs(60),
            max_attempts: 20,
        };
        let d = p.next_delay(19, &SendError::retry("x"), 1.0).unwrap();
        assert_eq!(d, MAX_RETRY_DELAY);
    }
}
