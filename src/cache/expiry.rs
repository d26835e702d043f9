//! When an entry is valid, whether it is negative, when it is due for
//! refresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refresh {
    Default,
    Never,
    At(SystemTime),
}

/// When an entry is valid: from `from` (inclusive) to `until`
/// (exclusive); whether it is negative; when it is due for refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub from: SystemTime,
    pub until: SystemTime,
    pub negative: bool,
    pub(super) refresh: Refresh,
}

impl Expiry {
    /// Valid from `from` until `until`.
    pub fn between(from: SystemTime, until: SystemTime) -> Expiry {
        Expiry {
            from,
            until,
            negative: false,
            refresh: Refresh::Default,
        }
    }

    /// Valid for `ttl` from `from`.
    pub fn after(from: SystemTime, ttl: Duration) -> Expiry {
        Expiry::between(from, from.checked_add(ttl).unwrap_or(from))
    }

    /// Valid until `until`, whatever the clock did before.
    pub fn until(until: SystemTime) -> Expiry {
        Expiry::between(UNIX_EPOCH, until)
    }

    /// Never valid (an entry kept for what it remembers, not served).
    pub fn expired() -> Expiry {
        Expiry::until(UNIX_EPOCH)
    }

    /// A negative entry.
    pub fn negative(mut self) -> Expiry {
        self.negative = true;
        self
    }

    /// Never due for refresh-ahead.
    pub fn no_refresh(mut self) -> Expiry {
        self.refresh = Refresh::Never;
        self
    }

    /// Due for refresh once `at` is past.
    pub fn refresh_at(mut self, at: SystemTime) -> Expiry {
        self.refresh = Refresh::At(at);
        self
    }

    /// Valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now >= self.from && now < self.until
    }

    /// When the entry is due for refresh, if ever.
    pub fn refresh_due_at(&self) -> Option<SystemTime> {
        match self.refresh {
            Refresh::At(t) => Some(t),
            _ => None,
        }
    }

    /// Resolve the default refresh time for a cache's settings.
    pub(super) fn resolved(mut self, refresh_ahead: Option<u32>) -> Expiry {
        if self.refresh == Refresh::Default {
            self.refresh = match refresh_ahead {
                Some(n) => {
                    let life = self.until.duration_since(self.from).unwrap_or_default();
                    Refresh::At(self.until - life / n)
                }
                None => Refresh::Never,
            };
        }
        self
    }
}
