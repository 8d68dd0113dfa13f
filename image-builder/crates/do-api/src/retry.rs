//! The retry policy: a small value with builder methods.
//!
//! * 429: wait for `retry-after` (seconds or an HTTP date, capped by
//!   [`RetryPolicy::with_max_retry_after`]), for any method: a 429 is refused
//!   before it is processed.
//! * 5xx (except 501) and network errors: capped exponential backoff with
//!   jitter, for idempotent calls only (GET, PUT, DELETE and POSTs that are
//!   idempotent in effect). A droplet create is never retried blindly; see
//!   `Client::create_droplet_reconciled`.
//! * Pacing: when `ratelimit-remaining` falls to [`RetryPolicy::slow_down_below`],
//!   requests are spread over the time left until `ratelimit-reset`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

/// How the client retries and paces requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    jitter: bool,
    max_retry_after: Duration,
    slow_down_below: u64,
    max_pace_wait: Duration,
}

impl Default for RetryPolicy {
    /// 5 retries, backoff 1 s doubling up to 30 s with jitter (like godo's
    /// defaults), `retry-after` honoured up to 5 min, pacing below 50 remaining.
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            jitter: true,
            max_retry_after: Duration::from_secs(300),
            slow_down_below: 50,
            max_pace_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Never retry and never pace: tests that want the first error at once.
    pub fn no_retries() -> Self {
        Self {
            max_retries: 0,
            slow_down_below: 0,
            ..Self::default()
        }
    }

    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Backoff starts at `initial` and doubles up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Longest `retry-after` honoured; longer values are cut to this.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Start pacing when `ratelimit-remaining` is at or below `n` (0 disables pacing).
    pub fn with_slow_down_below(mut self, n: u64) -> Self {
        self.slow_down_below = n;
        self
    }

    /// Longest single pacing sleep.
    pub fn with_max_pace_wait(mut self, max: Duration) -> Self {
        self.max_pace_wait = max;
        self
    }

    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    pub fn slow_down_below(&self) -> u64 {
        self.slow_down_below
    }

    /// Whether retry number `attempt` (0-based: the first retry is 0) is allowed.
    pub fn allows_retry(&self, attempt: u32) -> bool {
        attempt < self.max_retries
    }

    /// The backoff ceiling before retry `attempt`: `initial * 2^attempt`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The delay actually slept before retry `attempt`: with jitter, uniformly
    /// between half the ceiling and the ceiling ("equal jitter"), so retries of
    /// many clients spread out but never come sooner than half the backoff.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff(attempt);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=spread))
    }

    /// How long to wait for a 429 that carried `retry_after` (capped), or the
    /// backoff when the header is missing or unreadable.
    pub fn rate_limited_delay(
        &self,
        retry_after: Option<&str>,
        attempt: u32,
        now: SystemTime,
    ) -> Duration {
        retry_after
            .and_then(|v| parse_retry_after(v, now))
            .map_or_else(|| self.delay(attempt), |d| d.min(self.max_retry_after))
    }

    /// Pacing before the next request, from the last response's
    /// `ratelimit-remaining` and `ratelimit-reset` (epoch seconds): none while
    /// plenty remain; otherwise the time left to the reset spread over the
    /// requests left (all of it when none are left), capped.
    pub fn pace(&self, remaining: u64, reset_epoch: i64, now: SystemTime) -> Option<Duration> {
        if self.slow_down_below == 0 || remaining > self.slow_down_below {
            return None;
        }
        let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // epoch seconds fit an f64 exactly
        let left = (reset_epoch as f64 - now_secs).max(0.0);
        #[allow(clippy::cast_precision_loss)]
        let wait = if remaining == 0 {
            // `ratelimit-reset` has whole-second granularity: one more second
            // makes sure the window has really moved on.
            left + 1.0
        } else {
            left / (remaining as f64 + 1.0)
        };
        let wait = Duration::from_secs_f64(wait).min(self.max_pace_wait);
        (!wait.is_zero()).then_some(wait)
    }
}

/// Parse a `retry-after` value: delta seconds (`"7"`) or an HTTP date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, read relative to `now`; a past date is 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let now = time::OffsetDateTime::from(now);
    let delta = at - now;
    Some(if delta.is_negative() {
        Duration::ZERO
    } else {
        Duration::try_from(delta).unwrap_or(Duration::ZERO)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy::default()
            .with_jitter(false)
            .with_backoff(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = no_jitter();
        let got: Vec<u128> = (0..6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.backoff(200),
            Duration::from_secs(1),
            "huge attempts stay capped"
        );
        assert_eq!(
            p.delay(2),
            Duration::from_millis(400),
            "no jitter: delay is the ceiling"
        );
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let p = RetryPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_secs(10));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = p.delay(3); // ceiling 800 ms
            assert!(
                d >= Duration::from_millis(400) && d <= Duration::from_millis(800),
                "{d:?}"
            );
            seen.insert(d.as_millis());
        }
        assert!(
            seen.len() > 10,
            "jitter should vary the delay, got {seen:?}"
        );
    }

    #[test]
    fn retries_are_bounded() {
        let p = RetryPolicy::default().with_max_retries(2);
        assert!(p.allows_retry(0) && p.allows_retry(1));
        assert!(!p.allows_retry(2));
        assert!(!RetryPolicy::no_retries().allows_retry(0));
    }

    #[test]
    fn retry_after_in_seconds_and_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // Wed, 21 Oct 2015 07:27:50 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means: retry now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn rate_limited_delay_honours_and_caps_retry_after() {
        let now = SystemTime::now();
        let p = no_jitter().with_max_retry_after(Duration::from_secs(5));
        assert_eq!(
            p.rate_limited_delay(Some("3"), 0, now),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.rate_limited_delay(Some("3600"), 0, now),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.rate_limited_delay(None, 1, now),
            Duration::from_millis(200),
            "falls back to backoff"
        );
    }

    #[test]
    fn pacing_spreads_the_remaining_requests_until_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let p = RetryPolicy::default().with_slow_down_below(10);
        assert_eq!(p.pace(11, 1_000_060, now), None, "plenty left: no pacing");
        assert_eq!(
            p.pace(9, 1_000_060, now),
            Some(Duration::from_secs(6)),
            "60 s over 10 slots"
        );
        assert_eq!(
            p.pace(0, 1_000_030, now),
            Some(Duration::from_secs(31)),
            "none left: wait one second past the reset"
        );
        assert_eq!(
            p.pace(0, 999_000, now),
            Some(Duration::from_secs(1)),
            "stale reset: one second"
        );
        let capped = p.clone().with_max_pace_wait(Duration::from_secs(2));
        assert_eq!(capped.pace(0, 1_000_030, now), Some(Duration::from_secs(2)));
        assert_eq!(
            RetryPolicy::no_retries().pace(0, 1_000_030, now),
            None,
            "pacing disabled"
        );
    }
}
