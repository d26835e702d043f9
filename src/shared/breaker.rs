//! The shared store's circuit breaker: after a failure the store is not
//! asked again for a back-off ([`MIN_BACKOFF`], doubling to
//! [`MAX_BACKOFF`]), so once it is known down a lookup loses no time to it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The first back-off after a failure; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The circuit breaker: down until a moment, with the failures in a row.
pub(super) struct Breaker {
    pub(super) origin: Instant,
    /// Milliseconds since `origin` until which the store is not asked.
    pub(super) down_until: AtomicU64,
    pub(super) failures: AtomicU32,
    pub(super) ever_up: AtomicBool,
    pub(super) problem: Mutex<Option<String>>,
}

impl Breaker {
    pub(super) fn new() -> Breaker {
        Breaker {
            origin: Instant::now(),
            down_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ever_up: AtomicBool::new(false),
            problem: Mutex::new(None),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn is_open(&self) -> bool {
        self.now_ms() < self.down_until.load(Ordering::Relaxed)
    }

    pub(super) fn is_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// A failure: down for the next back-off. Returns the back-off and
    /// whether the store was up before.
    pub(super) fn fail(&self, why: String) -> (Duration, bool) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        let backoff = MIN_BACKOFF
            .saturating_mul(1u32 << n.min(16))
            .min(MAX_BACKOFF);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        self.down_until.store(until, Ordering::Relaxed);
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        (backoff, n == 0)
    }

    /// An answer: up. Returns whether it was down.
    pub(super) fn succeed(&self) -> bool {
        self.ever_up.store(true, Ordering::Relaxed);
        let was = self.failures.swap(0, Ordering::Relaxed);
        if was > 0 {
            self.down_until.store(0, Ordering::Relaxed);
            *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        was > 0
    }
}
