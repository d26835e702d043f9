//! The `[prober]` section: timeouts, limits, the EHLO name.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::engine::key::normalize_domain;

/// The `[prober]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProberConfig {
    /// Background probes from the daemon. `probe` on the command line
    /// works either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SMTP port of the mail exchangers.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name sent in EHLO. Default: this machine's host name, or
    /// `localhost` if it has none that is usable.
    #[serde(default = "default_helo_name")]
    pub helo_name: String,
    /// Time allowed for the TCP connection.
    #[serde(
        default = "default_connect_timeout",
        with = "crate::util::duration::human"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for each SMTP command and its complete reply (and for
    /// the greeting).
    #[serde(
        default = "default_smtp_timeout",
        with = "crate::util::duration::human"
    )]
    pub smtp_timeout: Duration,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_tls_timeout", with = "crate::util::duration::human")]
    pub tls_timeout: Duration,
    /// Domains probed at once (DNS lookups and SMTP); more wait.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// SMTP connections open at once, over all probes; more wait.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Background probes waiting or running at most; `schedule` drops
    /// requests beyond this.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// No new background probe of a domain sooner than this after the
    /// last one started.
    #[serde(
        default = "default_min_interval",
        with = "crate::util::duration::human"
    )]
    pub min_interval: Duration,
    /// How long a result counts as knowledge.
    #[serde(default = "default_ttl", with = "crate::util::duration::human")]
    pub ttl: Duration,
    /// MX hosts probed per domain, most preferred first.
    #[serde(default = "default_max_mx")]
    pub max_mx: usize,
    /// Addresses probed per MX host (IPv4 and IPv6 alternating).
    #[serde(default = "default_max_addresses")]
    pub max_addresses_per_mx: usize,
    /// PEM file of CA certificates trusted in addition to the built-in
    /// Mozilla roots (private CAs).
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Postfix's configuration directory (`/etc/postfix`): the CAs its
    /// `smtp_tls_CAfile` and `smtp_tls_CApath` name are trusted too (read
    /// with `postconf`); when they cannot be read, an untrusted
    /// certificate refuses nothing.
    #[serde(default)]
    pub postfix_config_directory: Option<PathBuf>,
    /// Domains remembered at most; the oldest are forgotten first.
    #[serde(default = "default_max_cache_entries")]
    pub max_cache_entries: usize,
}

fn default_true() -> bool {
    true
}
fn default_port() -> u16 {
    25
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tls_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    8
}
fn default_max_connections() -> usize {
    16
}
fn default_max_pending() -> usize {
    1000
}
fn default_min_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_mx() -> usize {
    5
}
fn default_max_addresses() -> usize {
    2
}
fn default_max_cache_entries() -> usize {
    100_000
}

/// This machine's host name if it is a usable EHLO name, else `localhost`.
pub fn default_helo_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| normalize_domain(h.trim()).ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for ProberConfig {
    fn default() -> Self {
        ProberConfig {
            enabled: true,
            port: default_port(),
            helo_name: default_helo_name(),
            connect_timeout: default_connect_timeout(),
            smtp_timeout: default_smtp_timeout(),
            tls_timeout: default_tls_timeout(),
            concurrency: default_concurrency(),
            max_connections: default_max_connections(),
            max_pending: default_max_pending(),
            min_interval: default_min_interval(),
            ttl: default_ttl(),
            max_mx: default_max_mx(),
            max_addresses_per_mx: default_max_addresses(),
            extra_ca_file: None,
            postfix_config_directory: None,
            max_cache_entries: default_max_cache_entries(),
        }
    }
}

impl ProberConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("port: must be 1 to 65535".into());
        }
        if !valid_helo(&self.helo_name) {
            return Err(format!(
                "helo_name: {:?} is not a host name or an address literal like [192.0.2.1]",
                self.helo_name
            ));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("smtp_timeout", self.smtp_timeout),
            ("tls_timeout", self.tls_timeout),
            ("ttl", self.ttl),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
        }
        for (key, n) in [
            ("concurrency", self.concurrency),
            ("max_connections", self.max_connections),
            ("max_pending", self.max_pending),
            ("max_mx", self.max_mx),
            ("max_addresses_per_mx", self.max_addresses_per_mx),
            ("max_cache_entries", self.max_cache_entries),
        ] {
            if n == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        for (key, n) in [
            ("concurrency", self.concurrency),
            ("max_connections", self.max_connections),
        ] {
            if n > Semaphore::MAX_PERMITS {
                return Err(format!("{key}: too large"));
            }
        }
        Ok(())
    }
}

pub(super) fn valid_helo(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return inner.parse::<IpAddr>().is_ok();
    }
    name.is_ascii() && !name.ends_with('.') && normalize_domain(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c: ProberConfig = toml::from_str("").unwrap();
        assert!(c.enabled);
        assert_eq!(c.port, 25);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.smtp_timeout, Duration::from_secs(30));
        assert_eq!(c.tls_timeout, Duration::from_secs(30));
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.max_connections, 16);
        assert_eq!(c.max_pending, 1000);
        assert_eq!(c.min_interval, Duration::from_secs(300));
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.max_mx, 5);
        assert_eq!(c.max_addresses_per_mx, 2);
        assert_eq!(c.extra_ca_file, None);
        assert_eq!(c.max_cache_entries, 100_000);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert_eq!(c, ProberConfig::default());
    }

    #[test]
    fn config_errors() {
        assert!(toml::from_str::<ProberConfig>("prot = 25\n").is_err());
        assert!(toml::from_str::<ProberConfig>("ttl = \"forever\"\n").is_err());
        for (text, key) in [
            ("port = 0\n", "port"),
            ("concurrency = 0\n", "concurrency"),
            ("max_mx = 0\n", "max_mx"),
            ("ttl = \"0s\"\n", "ttl"),
            ("helo_name = \"bad name\"\n", "helo_name"),
        ] {
            let c: ProberConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        for ok in [
            "mail.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "localhost",
        ] {
            assert!(valid_helo(ok), "{ok}");
        }
    }
}
