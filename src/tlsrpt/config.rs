//! `[tlsrpt]`: who sends the reports and how (RFC 8460). Needs
//! `[outcomes]`: the sessions counted are the deliveries it reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Longest `send_delay`: a report is due within a day of its day's end.
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(20 * 3600);
/// Longest `organization_name` / `contact_info` / `submitter` / `from`.
pub const MAX_FIELD_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRptConfig {
    /// `false`: nothing is counted or sent (the section kept for later).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The report's `organization-name`.
    pub organization_name: String,
    /// The report's `contact-info` (an address or URI).
    pub contact_info: String,
    /// The submitter's domain (`TLS-Report-Submitter`, the report ids).
    pub submitter: String,
    /// The envelope and header sender of report mail.
    pub from: String,
    /// Postfix's `sendmail`, for `mailto:` destinations.
    #[serde(default = "default_sendmail")]
    pub sendmail: PathBuf,
    /// More CAs (PEM) trusted for `https:` destinations.
    pub extra_ca_file: Option<PathBuf>,
    /// Reports go out at a random time up to this long after their UTC
    /// day ended.
    #[serde(default = "default_send_delay", with = "crate::util::duration::human")]
    pub send_delay: Duration,
    /// The SQLite file counts are kept in: the cache file of `[mta_sts]`
    /// and `[dane]` (it must be the same file when they are on).
    #[serde(default = "crate::util::paths::default_cache_file")]
    pub cache_file: PathBuf,
}

fn yes() -> bool {
    true
}
fn default_sendmail() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail")
}
fn default_send_delay() -> Duration {
    Duration::from_secs(3600)
}

/// `local@domain` with nothing a header or a command line could take
/// apart.
fn is_plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !local.starts_with('-')
        && crate::engine::key::normalize_domain(domain).is_ok()
        && a.chars()
            .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"".contains(c))
}

impl TlsRptConfig {
    /// `"key: problem"` for the first problem.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("organization_name", &self.organization_name),
            ("contact_info", &self.contact_info),
            ("submitter", &self.submitter),
            ("from", &self.from),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{key}: must not be empty"));
            }
            if v.len() > MAX_FIELD_LEN {
                return Err(format!(
                    "{key}: {} bytes, longer than {MAX_FIELD_LEN}",
                    v.len()
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("{key}: {v:?} holds a control character"));
            }
        }
        match crate::engine::key::normalize_domain(&self.submitter) {
            Ok(d) if d == self.submitter => {}
            _ => {
                return Err(format!(
                    "submitter: {:?} is not a domain in lower case (the report ids end in it)",
                    self.submitter
                ));
            }
        }
        if !is_plain_address(&self.from) {
            return Err(format!(
                "from: {:?} is not a plain address (local@domain)",
                self.from
            ));
        }
        if !self.sendmail.is_absolute() {
            return Err(format!(
                "sendmail: {} is not an absolute path",
                self.sendmail.display()
            ));
        }
        if self.send_delay > MAX_SEND_DELAY {
            return Err(format!(
                "send_delay: {} is longer than {}",
                humantime::format_duration(self.send_delay),
                humantime::format_duration(MAX_SEND_DELAY)
            ));
        }
        if self.cache_file.as_os_str().is_empty() {
            return Err("cache_file: must name a file".into());
        }
        Ok(())
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [Some(&mut self.cache_file), self.extra_ca_file.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn submitter(&self) -> super::report::Submitter {
        super::report::Submitter {
            organization_name: self.organization_name.clone(),
            contact_info: self.contact_info.clone(),
            submitter: self.submitter.clone(),
        }
    }
}

/// Whether `a` is an address a report can be mailed to.
pub fn is_mailto_address(a: &str) -> bool {
    is_plain_address(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "organization_name = \"Example Mail\"\ncontact_info = \"postmaster@example.net\"\nsubmitter = \"example.net\"\nfrom = \"tlsrpt-noreply@example.net\"\n";

    fn parse(extra: &str) -> Result<TlsRptConfig, String> {
        let c: TlsRptConfig =
            toml::from_str(&format!("{BASE}{extra}")).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert!(c.enabled);
        assert_eq!(c.sendmail, PathBuf::from("/usr/sbin/sendmail"));
        assert_eq!(c.send_delay, Duration::from_secs(3600));
        assert_eq!(c.cache_file, crate::util::paths::default_cache_file());
    }

    #[test]
    fn problems_name_their_key() {
        for (extra, want) in [
            ("send_delay = \"21h\"\n", "send_delay:"),
            ("sendmail = \"sendmail\"\n", "sendmail:"),
            ("cache_file = \"\"\n", "cache_file:"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.starts_with(want), "{extra}: {e}");
        }
        assert!(parse("send_delay = \"20h\"\n").is_ok());
        assert!(parse("colour = 1\n").unwrap_err().contains("unknown field"));
        let swap = |key: &str, value: &str| -> String {
            let c: TlsRptConfig = toml::from_str(BASE).unwrap();
            let mut c = c;
            match key {
                "submitter" => c.submitter = value.into(),
                "from" => c.from = value.into(),
                "organization_name" => c.organization_name = value.into(),
                _ => unreachable!(),
            }
            c.validate().unwrap_err()
        };
        assert!(swap("submitter", "Example.NET").starts_with("submitter:"));
        assert!(swap("submitter", "not a domain").starts_with("submitter:"));
        for bad in [
            "no-at",
            "-x@example.net",
            "a@b@",
            "a b@example.net",
            "<a@example.net>",
        ] {
            assert!(swap("from", bad).starts_with("from:"), "{bad}");
        }
        assert!(swap("organization_name", "").starts_with("organization_name:"));
        assert!(swap("organization_name", "a\nb").starts_with("organization_name:"));
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        assert!(swap("organization_name", &long).contains("longer than 255"));
        let just = "x".repeat(MAX_FIELD_LEN);
        let mut c: TlsRptConfig = toml::from_str(BASE).unwrap();
        c.organization_name = just;
        assert!(c.validate().is_ok());
    }
}
