//! Retry policy: which push results are retried and how long to wait.
//!
//! - 2xx: accepted.
//! - 400: a partial success in Loki (valid entries were stored, invalid ones dropped):
//!   never resent (that would duplicate the valid lines); logged and counted as dropped.
//! - 413: the request is too large for a proxy or Loki: split in half and push the
//!   halves; a single entry answered 413 is dropped like a 400.
//! - transport errors, 429, 5xx except 501: transient, retried with exponential backoff
//!   and jitter, without limit.
//! - anything else (401, 403, 404, 501, ...): a misconfiguration (credentials, URL).
//!   Dropping would lose audit lines, so the batch is held and tried again at the
//!   maximum backoff interval until the operator fixes it; every attempt logs an error.

use std::time::Duration;

use rand::Rng;

/// What to do with a push result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accepted,
    /// Transient failure: retry after a growing, jittered delay.
    Retry,
    /// 400: do not resend, count as dropped.
    Reject,
    /// 413: split and resend.
    Split,
    /// Misconfiguration: keep the batch, retry at the maximum interval.
    Hold,
}

/// Classifies an HTTP status (`None` = transport error or timeout).
pub fn classify(status: Option<u16>) -> Decision {
    match status {
        None => Decision::Retry,
        Some(s) if (200..300).contains(&s) => Decision::Accepted,
        Some(400) => Decision::Reject,
        Some(413) => Decision::Split,
        Some(408 | 429) => Decision::Retry,
        Some(501) => Decision::Hold,
        Some(s) if (500..600).contains(&s) => Decision::Retry,
        Some(_) => Decision::Hold,
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Upper bound of the delay before attempt `attempt + 1` (attempt 0 = first retry):
    /// `initial * 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.initial
            .saturating_mul(factor)
            .min(self.max)
            .max(Duration::from_millis(1))
    }

    /// Jittered delay: uniform in `[ceiling/2, ceiling]` ("equal jitter": never a
    /// retry storm, never zero).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let c = self.ceiling(attempt);
        let half = c / 2;
        let span = (c - half).as_micros() as u64;
        half + Duration::from_micros(rng.random_range(0..=span))
    }

    /// Delay for a held batch (misconfiguration): the maximum, jittered.
    pub fn hold_delay(&self, rng: &mut impl Rng) -> Duration {
        self.delay(u32::MAX, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn classification_table() {
        let cases: &[(Option<u16>, Decision)] = &[
            (None, Decision::Retry),
            (Some(200), Decision::Accepted),
            (Some(204), Decision::Accepted),
            (Some(400), Decision::Reject),
            (Some(401), Decision::Hold),
            (Some(403), Decision::Hold),
            (Some(404), Decision::Hold),
            (Some(408), Decision::Retry),
            (Some(413), Decision::Split),
            (Some(429), Decision::Retry),
            (Some(500), Decision::Retry),
            (Some(501), Decision::Hold),
            (Some(502), Decision::Retry),
            (Some(503), Decision::Retry),
            (Some(504), Decision::Retry),
        ];
        for (s, d) in cases {
            assert_eq!(classify(*s), *d, "{s:?}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(10), Duration::from_secs(5));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(5));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut distinct = std::collections::HashSet::new();
        for attempt in 0..40 {
            let d = p.delay(attempt, &mut rng);
            let c = p.ceiling(attempt);
            assert!(d >= c / 2 && d <= c, "{d:?} vs {c:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 20, "jitter should vary delays");
        let h = p.hold_delay(&mut rng);
        assert!(h >= Duration::from_millis(2500) && h <= Duration::from_secs(5));
    }
}
