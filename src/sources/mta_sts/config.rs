//! The `[mta_sts]` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::fetch::FetchSettings;
use super::policy::AnswerStyle;

/// Most discoveries run at once.
pub const MAX_CONCURRENCY: usize = 1024;

/// The `[mta_sts]` section. MTA-STS is off when the section is absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The persisted cache (SQLite).
    #[serde(default = "crate::util::paths::default_cache_file")]
    pub cache_file: PathBuf,
    /// How long a lookup waits for the discovery of a domain with nothing
    /// cached before the answer goes out without MTA-STS.
    #[serde(
        default = "default_lookup_timeout",
        with = "crate::util::duration::human"
    )]
    pub lookup_timeout: Duration,
    /// Time allowed for the TCP connection to the policy host.
    #[serde(
        default = "default_connect_timeout",
        with = "crate::util::duration::human"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for a whole fetch (DNS, connection, TLS, HTTP).
    #[serde(
        default = "default_fetch_timeout",
        with = "crate::util::duration::human"
    )]
    pub fetch_timeout: Duration,
    /// PEM file of CA certificates trusted for policy hosts in addition
    /// to the built-in WebPKI roots.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Treat `mode: testing` like `enforce`.
    #[serde(default)]
    pub strict_testing: bool,
    /// Accept a policy served with a media type other than `text/plain`.
    #[serde(default)]
    pub lenient_content_type: bool,
    /// The oldest Postfix that reads the answers: `servername=hostname`
    /// needs 3.4, TLSRPT attributes 3.10.
    #[serde(default = "default_postfix_version")]
    pub postfix_version: String,
    /// Add the TLSRPT attributes (Postfix 3.10 and later).
    #[serde(default)]
    pub tlsrpt: bool,
    /// How long "no policy" (no record, or a failed first fetch) is
    /// remembered.
    #[serde(
        default = "default_negative_ttl",
        with = "crate::util::duration::human"
    )]
    pub negative_ttl: Duration,
    /// How long after the last look at a domain's TXT record a lookup
    /// checks it again (in the background) for a new policy id.
    #[serde(
        default = "default_check_interval",
        with = "crate::util::duration::human"
    )]
    pub check_interval: Duration,
    /// Cached policies are fetched again this long after they were
    /// fetched (at the latest half-way through `max_age`), so they do not
    /// expire while the domain is in use.
    #[serde(
        default = "default_refresh_interval",
        with = "crate::util::duration::human"
    )]
    pub refresh_interval: Duration,
    /// Discoveries (DNS and HTTPS) running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Discoveries waiting or running at most; past it, lookups of
    /// further domains are answered without MTA-STS until some finish.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn yes() -> bool {
    true
}
fn default_lookup_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_postfix_version() -> String {
    "3.4".into()
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_check_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(86400)
}
fn default_concurrency() -> usize {
    32
}
/// The largest `max_pending` (each pending discovery holds a task and its
/// waiters).
pub const MAX_PENDING_LIMIT: usize = 1_000_000;

fn default_max_pending() -> usize {
    10_000
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            cache_file: crate::util::paths::default_cache_file(),
            lookup_timeout: default_lookup_timeout(),
            connect_timeout: default_connect_timeout(),
            fetch_timeout: default_fetch_timeout(),
            extra_ca_file: None,
            strict_testing: false,
            lenient_content_type: false,
            postfix_version: default_postfix_version(),
            tlsrpt: false,
            negative_ttl: default_negative_ttl(),
            check_interval: default_check_interval(),
            refresh_interval: default_refresh_interval(),
            concurrency: default_concurrency(),
            max_pending: default_max_pending(),
        }
    }
}

/// A Postfix version: major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PostfixVersion(pub u32, pub u32);

impl PostfixVersion {
    /// `"3.4"`, `"3.10"`, `"3.7.11"` (the patch level is ignored).
    pub fn parse(s: &str) -> Result<PostfixVersion, String> {
        let mut parts = s.trim().split('.');
        let num = |p: Option<&str>| {
            p.filter(|x| !x.is_empty() && x.len() <= 4 && x.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|x| x.parse::<u32>().ok())
        };
        let (Some(major), Some(minor)) = (num(parts.next()), num(parts.next())) else {
            return Err(format!(
                "{s:?} is not a Postfix version like \"3.4\" or \"3.10\""
            ));
        };
        if parts.next().is_some_and(|p| num(Some(p)).is_none()) || parts.next().is_some() {
            return Err(format!(
                "{s:?} is not a Postfix version like \"3.4\" or \"3.10\""
            ));
        }
        Ok(PostfixVersion(major, minor))
    }
}

/// Postfix learned `servername=hostname` in 3.4.
pub const SERVERNAME_SINCE: PostfixVersion = PostfixVersion(3, 4);
/// Postfix learned the TLSRPT policy attributes in 3.10.
pub const TLSRPT_SINCE: PostfixVersion = PostfixVersion(3, 10);

impl MtaStsConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        for (key, d) in [
            ("lookup_timeout", self.lookup_timeout),
            ("connect_timeout", self.connect_timeout),
            ("fetch_timeout", self.fetch_timeout),
            ("negative_ttl", self.negative_ttl),
            ("check_interval", self.check_interval),
            ("refresh_interval", self.refresh_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
        }
        if self.connect_timeout > self.fetch_timeout {
            return Err(format!(
                "connect_timeout: {} is longer than fetch_timeout ({}), which bounds the whole fetch",
                humantime::format_duration(self.connect_timeout),
                humantime::format_duration(self.fetch_timeout)
            ));
        }
        let v = PostfixVersion::parse(&self.postfix_version)
            .map_err(|e| format!("postfix_version: {e}"))?;
        if self.tlsrpt && v < TLSRPT_SINCE {
            return Err(format!(
                "tlsrpt: needs Postfix 3.10 or later, and postfix_version is {:?} \
                 (older Postfix refuses the attributes and defers the mail)",
                self.postfix_version
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!("concurrency: must be 1 to {MAX_CONCURRENCY}"));
        }
        if self.max_pending == 0 || self.max_pending > MAX_PENDING_LIMIT {
            return Err(format!("max_pending: must be 1 to {MAX_PENDING_LIMIT}"));
        }
        if self.cache_file.as_os_str().is_empty() {
            return Err("cache_file: must name a file".into());
        }
        Ok(())
    }

    /// What the answers include.
    pub fn answer_style(&self) -> AnswerStyle {
        let v = PostfixVersion::parse(&self.postfix_version).unwrap_or(SERVERNAME_SINCE);
        AnswerStyle {
            servername: v >= SERVERNAME_SINCE,
            tlsrpt: self.tlsrpt && v >= TLSRPT_SINCE,
        }
    }

    pub fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            connect_timeout: self.connect_timeout,
            fetch_timeout: self.fetch_timeout,
            lenient_content_type: self.lenient_content_type,
            extra_ca_file: self.extra_ca_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c: MtaStsConfig = toml::from_str("").unwrap();
        assert_eq!(c, MtaStsConfig::default());
        c.validate().unwrap();
        assert_eq!(
            c.cache_file,
            PathBuf::from("/var/lib/tls-policyd/cache.sqlite")
        );
        assert_eq!(c.lookup_timeout, Duration::from_secs(3));
        assert_eq!(
            c.answer_style(),
            AnswerStyle {
                servername: true,
                tlsrpt: false
            }
        );
    }

    #[test]
    fn versions() {
        assert_eq!(PostfixVersion::parse("3.4").unwrap(), PostfixVersion(3, 4));
        assert_eq!(
            PostfixVersion::parse("3.10").unwrap(),
            PostfixVersion(3, 10)
        );
        assert_eq!(
            PostfixVersion::parse("3.7.11").unwrap(),
            PostfixVersion(3, 7)
        );
        assert!(PostfixVersion(3, 10) > PostfixVersion(3, 9));
        for bad in [
            "3",
            "3.",
            "three.four",
            "3.4.x",
            "3.4.1.2",
            "",
            "3.-1",
            "99999.1",
        ] {
            assert!(PostfixVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answer_style_follows_the_version() {
        let c: MtaStsConfig = toml::from_str("postfix_version = \"3.3\"\n").unwrap();
        c.validate().unwrap();
        assert!(!c.answer_style().servername);
        let c: MtaStsConfig =
            toml::from_str("postfix_version = \"3.10\"\ntlsrpt = true\n").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.answer_style(),
            AnswerStyle {
                servername: true,
                tlsrpt: true
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (text, want) in [
            ("tlsrpt = true\n", "tlsrpt: needs Postfix 3.10"),
            ("postfix_version = \"3.9\"\ntlsrpt = true\n", "tlsrpt:"),
            ("postfix_version = \"new\"\n", "postfix_version:"),
            (
                "lookup_timeout = \"0s\"\n",
                "lookup_timeout: must be longer",
            ),
            ("negative_ttl = \"0s\"\n", "negative_ttl:"),
            (
                "connect_timeout = \"1m\"\nfetch_timeout = \"30s\"\n",
                "connect_timeout:",
            ),
            ("concurrency = 0\n", "concurrency:"),
            ("concurrency = 1025\n", "concurrency:"),
            ("max_pending = 0\n", "max_pending:"),
            ("max_pending = 1000001\n", "max_pending:"),
            ("cache_file = \"\"\n", "cache_file:"),
        ] {
            let c: MtaStsConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        assert!(toml::from_str::<MtaStsConfig>("lookup_timeout = \"soon\"\n").is_err());
        assert!(toml::from_str::<MtaStsConfig>("cache = \"x\"\n").is_err());
    }
}
