//! `[milter]`: the milter's configuration and the settings a reload
//! swaps.

use std::sync::Arc;
use std::time::Duration;

use indymilter::Actions;
use serde::Deserialize;

use crate::engine::refusal::RefuseMode;
use crate::frontends::message::valid_header_name;
use crate::listen::{ListenAddr, SocketOptions, parse_mode};

/// Highest `max_recipients` accepted.
pub const MAX_RECIPIENTS_LIMIT: usize = 100_000;
/// Lowest and highest `max_header_bytes` accepted.
pub const MIN_HEADER_BYTES: usize = 1024;
pub const MAX_HEADER_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// `[milter]` in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    /// `inet:ADDRESS:PORT` or `unix:/PATH`.
    pub listen: ListenAddr,
    /// Unix socket mode, octal (`"0660"`).
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// Refuse a recipient whose forced TLS is known to fail: `"defer"`
    /// (450 4.7.10), `"reject"` (550 5.7.10) or `"off"` (the default).
    #[serde(default = "refuse_off")]
    pub refuse: RefuseMode,
    /// Header name for the trace header; absent = no header.
    pub trace_header: Option<String>,
    /// Hold messages with a forced recipient that cannot be delivered.
    #[serde(default)]
    pub quarantine: bool,
    /// Header name for the routing header; absent = no header (and sender
    /// rules are not applied by the milter).
    pub routing_header: Option<String>,
    /// Recipients remembered per message; more are decided (and refused)
    /// but left out of the record.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Header bytes looked at per message (for `Message-ID` and
    /// `TLS-Required`); later headers are passed through unread.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// MTA connections served at once (Postfix opens one per smtpd
    /// process).
    #[serde(default = "crate::listen::default_max_connections")]
    pub max_connections: usize,
    /// Longest time for one stage; after it, "continue".
    #[serde(
        default = "crate::frontends::default_request_timeout",
        with = "crate::util::duration::human"
    )]
    pub request_timeout: Duration,
}

fn refuse_off() -> RefuseMode {
    RefuseMode::Off
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_header_bytes() -> usize {
    256 * 1024
}

impl MilterConfig {
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions::of(&self.socket_mode, &self.socket_owner, &self.socket_group)
    }

    /// Check the values on their own. The error names the key
    /// (`milter.trace_header`) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(m) = &self.socket_mode {
            parse_mode(m).map_err(|e| ("milter.socket_mode", e))?;
        }
        for (key, name) in [
            ("milter.trace_header", &self.trace_header),
            ("milter.routing_header", &self.routing_header),
        ] {
            if let Some(h) = name
                && !valid_header_name(h)
            {
                return Err((
                    key,
                    format!("{h:?} is not a header name (printable ASCII, no spaces or ':')"),
                ));
            }
        }
        if let (Some(t), Some(r)) = (&self.trace_header, &self.routing_header)
            && t.eq_ignore_ascii_case(r)
        {
            return Err((
                "milter.routing_header",
                format!("must differ from milter.trace_header ({t:?})"),
            ));
        }
        if !(1..=MAX_RECIPIENTS_LIMIT).contains(&self.max_recipients) {
            return Err((
                "milter.max_recipients",
                format!("must be between 1 and {MAX_RECIPIENTS_LIMIT}"),
            ));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES_LIMIT).contains(&self.max_header_bytes) {
            return Err((
                "milter.max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES_LIMIT}"),
            ));
        }
        if self.max_connections == 0 {
            return Err(("milter.max_connections", "must be at least 1".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(("milter.request_timeout", "must be more than 0".into()));
        }
        Ok(())
    }
}

/// The reloadable part of the milter settings. Actions switched on by a
/// reload are negotiated with connections opened afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterSettings {
    pub refuse: RefuseMode,
    pub trace_header: Option<Arc<str>>,
    pub quarantine: bool,
    pub routing_header: Option<Arc<str>>,
    pub max_recipients: usize,
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for MilterSettings {
    fn default() -> Self {
        MilterSettings {
            refuse: RefuseMode::Off,
            trace_header: None,
            quarantine: false,
            routing_header: None,
            max_recipients: default_max_recipients(),
            max_header_bytes: default_max_header_bytes(),
            request_timeout: crate::frontends::default_request_timeout(),
        }
    }
}

impl From<&MilterConfig> for MilterSettings {
    fn from(c: &MilterConfig) -> Self {
        MilterSettings {
            refuse: c.refuse,
            trace_header: c.trace_header.as_deref().map(Arc::from),
            quarantine: c.quarantine,
            routing_header: c.routing_header.as_deref().map(Arc::from),
            max_recipients: c.max_recipients,
            max_header_bytes: c.max_header_bytes,
            request_timeout: c.request_timeout,
        }
    }
}

impl MilterSettings {
    /// The milter actions these settings need.
    pub fn actions(&self) -> Actions {
        let mut a = Actions::empty();
        if self.trace_header.is_some() || self.routing_header.is_some() {
            a |= Actions::ADD_HEADER;
        }
        if self.quarantine {
            a |= Actions::QUARANTINE;
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<MilterConfig, toml::de::Error> {
        toml::from_str(&format!("listen = \"inet:127.0.0.1:0\"\n{extra}"))
    }

    #[test]
    fn config_defaults_are_all_off() {
        let c = config("").unwrap();
        assert_eq!(c.refuse, RefuseMode::Off);
        assert_eq!(c.trace_header, None);
        assert!(!c.quarantine);
        assert_eq!(c.routing_header, None);
        assert_eq!(c.max_recipients, 1000);
        assert_eq!(c.max_header_bytes, 256 * 1024);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.validate().is_ok());
        assert_eq!(MilterSettings::from(&c), MilterSettings::default());
        assert_eq!(MilterSettings::from(&c).actions(), Actions::empty());
    }

    #[test]
    fn actions_follow_settings() {
        let c = config("trace_header = \"X-TLS-Policy\"\n").unwrap();
        assert_eq!(MilterSettings::from(&c).actions(), Actions::ADD_HEADER);
        let c = config("routing_header = \"X-TLS-Route\"\nquarantine = true\n").unwrap();
        assert_eq!(
            MilterSettings::from(&c).actions(),
            Actions::ADD_HEADER | Actions::QUARANTINE
        );
        let c = config("refuse = \"defer\"\n").unwrap();
        assert_eq!(
            MilterSettings::from(&c).actions(),
            Actions::empty(),
            "refusing needs no action"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(config("refuse = \"later\"\n").is_err());
        assert!(config("lisen = \"x\"\n").is_err());
        assert!(config("request_timeout = \"soon\"\n").is_err());
        assert!(config("quarantine = \"yes\"\n").is_err());
        for (extra, key) in [
            ("trace_header = \"X TLS\"\n", "milter.trace_header"),
            ("routing_header = \"X-Route:\"\n", "milter.routing_header"),
            (
                "trace_header = \"X-A\"\nrouting_header = \"x-a\"\n",
                "milter.routing_header",
            ),
            ("max_recipients = 0\n", "milter.max_recipients"),
            ("max_recipients = 100001\n", "milter.max_recipients"),
            ("max_header_bytes = 1023\n", "milter.max_header_bytes"),
            ("max_header_bytes = 16777217\n", "milter.max_header_bytes"),
            ("max_connections = 0\n", "milter.max_connections"),
            ("socket_mode = \"rw\"\n", "milter.socket_mode"),
            ("request_timeout = \"0s\"\n", "milter.request_timeout"),
        ] {
            let e = config(extra).unwrap().validate().unwrap_err();
            assert_eq!(e.0, key, "{extra}");
        }
        for extra in [
            "max_recipients = 1\n",
            "max_recipients = 100000\n",
            "max_header_bytes = 1024\n",
            "max_header_bytes = 16777216\n",
        ] {
            assert!(config(extra).unwrap().validate().is_ok(), "{extra}");
        }
    }
}
