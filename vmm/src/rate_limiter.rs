//! Optional rate limits on guest-driven I/O: a token bucket for bytes per second and one for operations per second
//! (after Firecracker's rate limiter), with a timerfd the event loop watches to resume a device the limit paused.
//!
//! Each bucket holds one second's worth of tokens and refills continuously. A request goes ahead whenever the
//! bucket is not empty and takes what it costs, even into debt, so a request larger than the bucket still makes
//! progress and the long-run rate stays the limit; while a bucket is in debt or empty the device stops taking
//! requests from its queue and the timer wakes it when the debt is paid.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// Limits for one device (or one direction of one device); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Requests (or frames) per second.
    pub ops_per_sec: Option<u64>,
}

impl RateLimit {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_sec.is_some() || self.ops_per_sec.is_some()
    }
}

/// A token bucket of `rate` tokens per second, holding at most one second's worth.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens available; negative is debt.
    budget: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` (at least 1) tokens per second.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1);
        TokenBucket {
            rate,
            budget: i128::from(rate),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let earned = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        if earned > 0 {
            // Only the time that earned whole tokens is used up, so slow refills are not lost to rounding.
            let used_ns = earned * 1_000_000_000 / u128::from(self.rate);
            self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
            let earned = i128::try_from(earned).unwrap_or(i128::MAX);
            self.budget = self
                .budget
                .saturating_add(earned)
                .min(i128::from(self.rate));
        }
        if self.budget == i128::from(self.rate) {
            self.last = now;
        }
    }

    /// Whether a request may go ahead now.
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.budget > 0
    }

    /// Takes `tokens` (the bucket may go into debt).
    pub fn take(&mut self, tokens: u64) {
        self.budget = self.budget.saturating_sub(i128::from(tokens));
    }

    /// How long until the bucket holds a token again.
    pub fn time_to_ready(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.budget > 0 {
            return Duration::ZERO;
        }
        let missing = u128::try_from(1 - self.budget).unwrap_or(u128::MAX);
        let ns = missing.saturating_mul(1_000_000_000) / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_micros(100))
    }
}

/// The buckets of one device plus the timer that resumes it.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    armed: bool,
    /// How many times a request had to wait (for tests and metrics).
    pub throttled: u64,
}

impl RateLimiter {
    /// A limiter for `limit`; `None` when nothing is limited (no timerfd is made).
    pub fn new(limit: RateLimit) -> std::io::Result<Option<Self>> {
        if !limit.is_limited() {
            return Ok(None);
        }
        let now = Instant::now();
        Ok(Some(RateLimiter {
            bytes: limit.bytes_per_sec.map(|r| TokenBucket::new(r, now)),
            ops: limit.ops_per_sec.map(|r| TokenBucket::new(r, now)),
            timer: TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?,
            armed: false,
            throttled: 0,
        }))
    }

    /// Whether the device may take its next request now. When not, the timer is armed for when it may, and the
    /// device stops until [`RateLimiter::on_timer`] runs.
    pub fn ready(&mut self) -> bool {
        if self.armed {
            return false;
        }
        let now = Instant::now();
        let wait = [self.bytes.as_mut(), self.ops.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| b.time_to_ready(now))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            return true;
        }
        self.throttled += 1;
        match self.timer.reset(wait, None) {
            Ok(()) => self.armed = true,
            // Without a timer the device would stall for good: let this request through instead.
            Err(e) => {
                tracing::warn!("rate limiter: failed to arm its timer: {e}");
                return true;
            }
        }
        false
    }

    /// A request of `bytes` went ahead.
    pub fn consume(&mut self, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes);
        }
        if let Some(o) = self.ops.as_mut() {
            o.take(1);
        }
    }

    /// The timer fired: the device may go on.
    pub fn on_timer(&mut self) {
        // The event loop said the timerfd is readable, so this read does not block.
        let _ = self.timer.wait();
        self.armed = false;
    }

    /// Whether the device is paused waiting for the timer.
    pub fn is_paused(&self) -> bool {
        self.armed
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_waits_for_the_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.ready(t0));
        b.take(600);
        assert!(b.ready(t0));
        b.take(900); // into debt: 1000 - 1500 = -500
        assert!(!b.ready(t0));
        let wait = b.time_to_ready(t0);
        assert!(
            wait > Duration::from_millis(490) && wait < Duration::from_millis(510),
            "{wait:?}"
        );
        assert!(!b.ready(t0 + Duration::from_millis(400)));
        assert!(b.ready(t0 + Duration::from_millis(502)));
        // Never more than one second's worth, however long it waited.
        let later = t0 + Duration::from_secs(100);
        assert!(b.ready(later));
        b.take(1000);
        assert!(!b.ready(later));
    }

    #[test]
    fn slow_rates_refill_without_losing_time_to_rounding() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        b.take(3);
        assert!(!b.ready(t0));
        // 3 tokens/s: one token every 333.3 ms; checked every 100 ms it must still come at ~334 ms.
        let mut t = t0;
        let mut steps = 0;
        while !b.ready(t) {
            t += Duration::from_millis(100);
            steps += 1;
        }
        assert_eq!(steps, 4);
    }

    #[test]
    fn the_limiter_pauses_on_debt_and_its_timer_resumes_it() {
        assert!(RateLimiter::new(RateLimit::default()).unwrap().is_none());
        let mut l = RateLimiter::new(RateLimit {
            bytes_per_sec: Some(1_000_000),
            ops_per_sec: None,
        })
        .unwrap()
        .unwrap();
        assert!(l.ready());
        l.consume(1_050_000); // 50 ms of debt
        assert!(!l.ready());
        assert!(l.is_paused());
        assert_eq!(l.throttled, 1);
        assert!(!l.ready(), "stays paused until the timer");
        let t = Instant::now();
        l.on_timer(); // blocks until the timer fires
        let waited = t.elapsed();
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        assert!(l.ready());
    }

    #[test]
    fn ops_are_limited_too() {
        let mut l = RateLimiter::new(RateLimit {
            bytes_per_sec: None,
            ops_per_sec: Some(10),
        })
        .unwrap()
        .unwrap();
        let mut allowed = 0;
        while l.ready() {
            l.consume(1 << 30);
            allowed += 1;
        }
        assert_eq!(allowed, 10, "bytes are not limited, requests are");
    }
}
