//! Unusable values the store held lately, by kind and domain: one lookup
//! may read a key twice (before and after it claims the domain), and the
//! same bad value is logged and counted once, and not read again for
//! [`BAD_AGAIN`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::persist::Kind;

/// An unusable value reported is not reported again for its key within
/// this time.
pub const BAD_AGAIN: Duration = Duration::from_secs(10);
/// Keys whose unusable value is remembered at most.
pub const BAD_REMEMBERED: usize = 1024;

#[derive(Default)]
pub(super) struct RecentBad {
    at: Mutex<HashMap<(Kind, String), Instant>>,
}

impl RecentBad {
    /// Whether it was reported in the last [`BAD_AGAIN`]; if not, it is
    /// now.
    pub(super) fn reported(&self, kind: Kind, domain: &str) -> bool {
        if self.lately(kind, domain) {
            return true;
        }
        self.note(kind, domain);
        false
    }

    /// Whether the key held an unusable value in the last [`BAD_AGAIN`].
    pub(super) fn lately(&self, kind: Kind, domain: &str) -> bool {
        let at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        at.get(&(kind, domain.to_string()))
            .is_some_and(|t| t.elapsed() < BAD_AGAIN)
    }

    /// Remember that the key holds an unusable value (at most
    /// [`BAD_REMEMBERED`] keys).
    pub(super) fn note(&self, kind: Kind, domain: &str) {
        let now = Instant::now();
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at.len() >= BAD_REMEMBERED {
            at.retain(|_, t| now.duration_since(*t) < BAD_AGAIN);
            if at.len() >= BAD_REMEMBERED {
                at.clear();
            }
        }
        at.insert((kind, domain.to_string()), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_reported_once_per_key() {
        let r = RecentBad::default();
        assert!(!r.lately(Kind::MtaSts, "a.example"));
        assert!(!r.reported(Kind::MtaSts, "a.example"));
        assert!(r.reported(Kind::MtaSts, "a.example"));
        assert!(r.lately(Kind::MtaSts, "a.example"));
        assert!(!r.reported(Kind::Dane, "a.example"));
        for i in 0..BAD_REMEMBERED + 1 {
            r.note(Kind::Dane, &format!("d{i}.example"));
        }
        assert!(r.at.lock().unwrap().len() <= BAD_REMEMBERED);
    }
}
