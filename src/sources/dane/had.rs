//! The "had DANE" memory, shared by a fleet (`[shared]`): a host whose
//! lookup finds a DANE policy publishes that the domain had DANE, and
//! when (key `PREFIX dane-had:DOMAIN`, kept for this host's
//! `dane.remember`); a host whose lookup of a domain fails, and that
//! remembers no DANE policy of its own for it, asks the store.
//!
//! It can only make a host stricter: it is read for nothing but a failed
//! lookup, where it turns "the next source decides" into "delivery waits"
//! (`on_failure = "defer-known"`); it never clears or shortens a memory
//! the host holds, never stands in for a lookup that answered. Taken only
//! when it names the domain, a DANE level, a time not ahead of this
//! host's clock (5 minutes' leeway) and within this host's own
//! `dane.remember`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Inner;
use super::record::LastDane;
use crate::cache::persist::{Entry, Kind};
use crate::engine::decision::Level;

/// How far ahead of this host's clock a shared time may be.
const CLOCK_LEEWAY: Duration = Duration::from_secs(300);

/// What the store holds for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Had {
    pub domain: String,
    pub at: SystemTime,
    pub level: Level,
}

/// The memory `had` gives this host at `now`, or why it gives none.
pub(super) fn usable(
    had: &Had,
    domain: &str,
    remember: Duration,
    now: SystemTime,
) -> Result<LastDane, String> {
    if had.domain != domain {
        return Err(format!(
            "the entry is for {:?}",
            crate::util::text::printable_ascii(&had.domain, 256)
        ));
    }
    if !matches!(had.level, Level::Dane | Level::DaneOnly) {
        return Err(format!("{} is not a DANE level", had.level));
    }
    if had.at > now + CLOCK_LEEWAY {
        return Err("seen at a time ahead of this host's clock".into());
    }
    if now.duration_since(had.at).unwrap_or(Duration::ZERO) >= remember {
        return Err("older than dane.remember".into());
    }
    Ok(LastDane {
        at: had.at.min(now),
        level: had.level,
    })
}

impl Inner {
    /// Publish that `domain` had DANE (`last`), for `dane.remember`.
    pub(super) fn publish_had(&self, domain: &str, last: &LastDane) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let had = Had {
            domain: domain.to_string(),
            at: last.at,
            level: last.level,
        };
        match Entry::new(
            Kind::DaneHad,
            domain,
            last.at,
            last.at + self.config.remember,
            &had,
        ) {
            Ok(e) => shared.publish(&e),
            Err(e) => tracing::warn!(domain, error = %e, "cannot publish that a domain had DANE"),
        }
    }

    /// The fleet's memory that `domain` had DANE, for a failed lookup of
    /// a domain this host remembers none for.
    pub(super) async fn shared_had(&self, domain: &str) -> Option<LastDane> {
        let shared = self.shared.get()?;
        let entry = shared.fetch(Kind::DaneHad, domain).await?;
        let had = match entry.decode::<Had>() {
            Ok(h) => h,
            Err(e) => {
                shared.unusable(Kind::DaneHad, domain, &e.to_string());
                return None;
            }
        };
        match usable(&had, domain, self.config.remember, SystemTime::now()) {
            Ok(last) => {
                tracing::info!(domain, level = %last.level,
                    "DANE lookup failed; the fleet's shared store says the domain had DANE, so delivery waits");
                Some(last)
            }
            Err(why) => {
                shared.unusable(Kind::DaneHad, domain, &why);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recent_dane_level_for_the_domain_is_taken() {
        let now = SystemTime::now();
        let remember = Duration::from_secs(1000);
        let had = |domain: &str, at: SystemTime, level: Level| Had {
            domain: domain.into(),
            at,
            level,
        };
        let ok = usable(
            &had("a.test", now, Level::DaneOnly),
            "a.test",
            remember,
            now,
        )
        .unwrap();
        assert_eq!(ok.level, Level::DaneOnly);
        assert!(usable(&had("b.test", now, Level::Dane), "a.test", remember, now).is_err());
        assert!(usable(&had("a.test", now, Level::Encrypt), "a.test", remember, now).is_err());
        assert!(usable(&had("a.test", now, Level::May), "a.test", remember, now).is_err());
        // Exact boundaries: remember, and the clock leeway.
        let at = now - remember;
        assert!(usable(&had("a.test", at, Level::Dane), "a.test", remember, now).is_err());
        let at = now - remember + Duration::from_secs(1);
        assert!(usable(&had("a.test", at, Level::Dane), "a.test", remember, now).is_ok());
        let ahead = now + CLOCK_LEEWAY;
        let taken = usable(&had("a.test", ahead, Level::Dane), "a.test", remember, now).unwrap();
        assert_eq!(taken.at, now, "never later than this host's clock");
        let ahead = now + CLOCK_LEEWAY + Duration::from_secs(1);
        assert!(usable(&had("a.test", ahead, Level::Dane), "a.test", remember, now).is_err());
    }
}
