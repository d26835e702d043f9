//! The `[dane]` section: what a failure answers, TTL bounds, limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

/// What to answer when a DANE lookup fails or does not validate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    /// Temporary failure for domains that had DANE; otherwise no policy.
    #[default]
    DeferKnown,
    /// Temporary failure for every domain.
    Defer,
    /// No DANE policy: the next source decides.
    Opportunistic,
}

impl FailPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailPolicy::DeferKnown => "defer-known",
            FailPolicy::Defer => "defer",
            FailPolicy::Opportunistic => "opportunistic",
        }
    }
}

/// The largest `max_pending` (each pending lookup holds a task and its
/// waiters: a million is some hundreds of megabytes).
pub const MAX_PENDING_LIMIT: usize = 1_000_000;

/// The `[dane]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaneConfig {
    /// Look for DANE at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// What a failed or bogus lookup answers.
    #[serde(default)]
    pub on_failure: FailPolicy,
    /// Results are kept at least this long, whatever the DNS TTL.
    #[serde(default = "default_min_ttl", with = "crate::util::duration::human")]
    pub min_ttl: Duration,
    /// Results are kept at most this long, whatever the DNS TTL.
    #[serde(default = "default_max_ttl", with = "crate::util::duration::human")]
    pub max_ttl: Duration,
    /// A failed lookup is remembered this long before the next try.
    #[serde(default = "default_failure_ttl", with = "crate::util::duration::human")]
    pub failure_ttl: Duration,
    /// A request waits at most this long for a lookup; a lookup that takes
    /// longer fails.
    #[serde(
        default = "default_lookup_timeout",
        with = "crate::util::duration::human"
    )]
    pub lookup_timeout: Duration,
    /// MX hosts looked at per domain, most preferred first. A domain with
    /// more is at most `dane`.
    #[serde(default = "default_max_mx")]
    pub max_mx: usize,
    /// Domains looked up at once; more wait.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Lookups waiting or running at most (each a domain); past it, a
    /// request for a further domain is answered as a failed lookup
    /// (`on_failure`) until some finish.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Domains remembered at most.
    #[serde(default = "default_max_cache_entries")]
    pub max_cache_entries: usize,
    /// The cache file (SQLite) that keeps results across restarts; the
    /// directory must exist.
    #[serde(default = "crate::util::paths::default_cache_file")]
    pub cache_file: PathBuf,
    /// How long a domain counts as having had DANE after the last lookup
    /// that found a DANE policy (for `on_failure = "defer-known"`).
    #[serde(default = "default_remember", with = "crate::util::duration::human")]
    pub remember: Duration,
}

fn default_true() -> bool {
    true
}
fn default_min_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(86_400)
}
fn default_failure_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_lookup_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_max_mx() -> usize {
    10
}
fn default_concurrency() -> usize {
    32
}
fn default_max_pending() -> usize {
    10_000
}
fn default_max_cache_entries() -> usize {
    100_000
}
fn default_remember() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl Default for DaneConfig {
    fn default() -> Self {
        DaneConfig {
            enabled: true,
            on_failure: FailPolicy::default(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            failure_ttl: default_failure_ttl(),
            lookup_timeout: default_lookup_timeout(),
            max_mx: default_max_mx(),
            concurrency: default_concurrency(),
            max_pending: default_max_pending(),
            max_cache_entries: default_max_cache_entries(),
            cache_file: crate::util::paths::default_cache_file(),
            remember: default_remember(),
        }
    }
}

impl DaneConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        for (key, d) in [
            ("min_ttl", self.min_ttl),
            ("max_ttl", self.max_ttl),
            ("failure_ttl", self.failure_ttl),
            ("lookup_timeout", self.lookup_timeout),
            ("remember", self.remember),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
        }
        if self.max_ttl < self.min_ttl {
            return Err(format!(
                "max_ttl: {} is shorter than min_ttl ({})",
                humantime::format_duration(self.max_ttl),
                humantime::format_duration(self.min_ttl)
            ));
        }
        for (key, n) in [
            ("max_mx", self.max_mx),
            ("concurrency", self.concurrency),
            ("max_pending", self.max_pending),
            ("max_cache_entries", self.max_cache_entries),
        ] {
            if n == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        if self.concurrency > Semaphore::MAX_PERMITS {
            return Err("concurrency: too large".into());
        }
        if self.max_pending > MAX_PENDING_LIMIT {
            return Err(format!("max_pending: at most {MAX_PENDING_LIMIT}"));
        }
        if self.cache_file.as_os_str().is_empty() {
            return Err("cache_file: an empty path is not a file".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c: DaneConfig = toml::from_str("").unwrap();
        assert_eq!(c, DaneConfig::default());
        assert!(c.enabled);
        assert_eq!(c.on_failure, FailPolicy::DeferKnown);
        assert_eq!(c.min_ttl, Duration::from_secs(60));
        assert_eq!(c.max_ttl, Duration::from_secs(86_400));
        assert_eq!(c.failure_ttl, Duration::from_secs(30));
        assert_eq!(c.lookup_timeout, Duration::from_secs(20));
        assert_eq!(
            (c.max_mx, c.concurrency, c.max_cache_entries),
            (10, 32, 100_000)
        );
        assert_eq!(c.max_pending, 10_000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn config_errors() {
        assert!(toml::from_str::<DaneConfig>("max_mxs = 1\n").is_err());
        assert!(toml::from_str::<DaneConfig>("on_failure = \"panic\"\n").is_err());
        assert!(toml::from_str::<DaneConfig>("min_ttl = \"soon\"\n").is_err());
        for (text, key) in [
            ("min_ttl = \"0s\"\n", "min_ttl"),
            ("failure_ttl = \"0s\"\n", "failure_ttl"),
            ("lookup_timeout = \"0s\"\n", "lookup_timeout"),
            ("min_ttl = \"2h\"\nmax_ttl = \"1h\"\n", "max_ttl"),
            ("max_mx = 0\n", "max_mx"),
            ("concurrency = 0\n", "concurrency"),
            ("max_cache_entries = 0\n", "max_cache_entries"),
            ("max_pending = 0\n", "max_pending"),
            ("max_pending = 1000001\n", "max_pending"),
            ("remember = \"0s\"\n", "remember"),
            ("cache_file = \"\"\n", "cache_file"),
        ] {
            let c: DaneConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        // The boundary: equal bounds are fine.
        let c: DaneConfig = toml::from_str("min_ttl = \"1h\"\nmax_ttl = \"1h\"\n").unwrap();
        assert!(c.validate().is_ok());
        let c: DaneConfig = toml::from_str("max_pending = 1000000\n").unwrap();
        assert!(c.validate().is_ok());
        for w in ["defer-known", "defer", "opportunistic"] {
            let c: DaneConfig = toml::from_str(&format!("on_failure = \"{w}\"\n")).unwrap();
            assert_eq!(c.on_failure.as_str(), w);
        }
    }
}
