//! `[policy_server]`: the section and its reloadable part.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::refusal::RefuseMode;
use crate::frontends::message::valid_header_name;
use crate::listen::{ListenAddr, SocketOptions, parse_mode};

/// `[policy_server]` in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServerConfig {
    /// `inet:ADDRESS:PORT` or `unix:/PATH`.
    pub listen: ListenAddr,
    /// Unix socket mode, octal (`"0660"`).
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// What to answer for a recipient whose forced TLS is known to fail,
    /// unless its rule says otherwise.
    #[serde(default)]
    pub refuse: RefuseMode,
    /// The master.cf transport that sender-rule mail is FILTERed to; it
    /// must use the `tls_forced` socketmap name (postfix-examples/master.cf
    /// defines it).
    #[serde(default = "default_forced_transport")]
    pub forced_transport: String,
    /// Header name for the trace header (`"X-TLS-Policy"`); absent = no
    /// header.
    pub trace_header: Option<String>,
    /// Connections served at once (Postfix keeps one per smtpd process).
    #[serde(default = "crate::listen::default_max_connections")]
    pub max_connections: usize,
    /// Close a connection with no request for this long. Longer than
    /// Postfix's `smtpd_policy_service_max_idle` (300 s), so Postfix
    /// closes first.
    #[serde(default = "default_idle", with = "crate::util::duration::human")]
    pub idle_timeout: Duration,
    /// Longest time to answer one request; after it, `DUNNO`.
    #[serde(
        default = "crate::frontends::default_request_timeout",
        with = "crate::util::duration::human"
    )]
    pub request_timeout: Duration,
}

fn default_forced_transport() -> String {
    "smtp-tls-forced".into()
}

fn default_idle() -> Duration {
    Duration::from_secs(600)
}

impl PolicyServerConfig {
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions::of(&self.socket_mode, &self.socket_owner, &self.socket_group)
    }

    /// Check the values on their own. The error names the key
    /// (`policy_server.trace_header`) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("policy_server.max_connections", "must be at least 1".into()));
        }
        if let Some(m) = &self.socket_mode {
            parse_mode(m).map_err(|e| ("policy_server.socket_mode", e))?;
        }
        {
            let t = &self.forced_transport;
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err((
                    "policy_server.forced_transport",
                    format!(
                        "{t:?} is not a master.cf service name (letters, digits, '-', '_', '.'; no ':')"
                    ),
                ));
            }
        }
        if let Some(h) = &self.trace_header {
            if !valid_header_name(h) {
                return Err((
                    "policy_server.trace_header",
                    format!("{h:?} is not a header name (printable ASCII, no spaces or ':')"),
                ));
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(("policy_server.idle_timeout", "must be more than 0".into()));
        }
        if self.request_timeout.is_zero() {
            return Err((
                "policy_server.request_timeout",
                "must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// The reloadable part of the policy server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyServerSettings {
    pub refuse: RefuseMode,
    pub forced_transport: Arc<str>,
    pub trace_header: Option<Arc<str>>,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for PolicyServerSettings {
    fn default() -> Self {
        PolicyServerSettings {
            refuse: RefuseMode::default(),
            forced_transport: Arc::from(default_forced_transport()),
            trace_header: None,
            idle_timeout: default_idle(),
            request_timeout: crate::frontends::default_request_timeout(),
        }
    }
}

impl From<&PolicyServerConfig> for PolicyServerSettings {
    fn from(c: &PolicyServerConfig) -> Self {
        PolicyServerSettings {
            refuse: c.refuse,
            forced_transport: Arc::from(c.forced_transport.as_str()),
            trace_header: c.trace_header.as_deref().map(Arc::from),
            idle_timeout: c.idle_timeout,
            request_timeout: c.request_timeout,
        }
    }
}
