//! `[socketmap]`: the socketmap server's configuration and the settings a
//! reload swaps.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::listen::{ListenAddr, SocketOptions, parse_mode};

/// `[socketmap]` in the daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketmapConfig {
    /// `inet:ADDRESS:PORT` or `unix:/PATH`.
    pub listen: ListenAddr,
    /// Unix socket mode, octal (`"0660"`).
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// Map name for `smtp_tls_policy_maps = socketmap:…:NAME`.
    #[serde(default = "default_map")]
    pub map: String,
    /// Map name that never answers weaker than `encrypt`.
    #[serde(default = "default_forced_map")]
    pub forced_map: String,
    /// Map name for Postfix 3.11's `smtp_requiretls_policy =
    /// socketmap:…:NAME`.
    #[serde(default = "default_requiretls_map")]
    pub requiretls_map: String,
    /// What the normal map answers when only the default applies.
    #[serde(default)]
    pub default_reply: DefaultReply,
    /// Connections served at once; more wait in the listen queue.
    #[serde(default = "crate::listen::default_max_connections")]
    pub max_connections: usize,
    /// Close a connection with no request for this long (`"5m"`).
    #[serde(default = "default_idle", with = "crate::util::duration::human")]
    pub idle_timeout: Duration,
}

pub(crate) fn default_map() -> String {
    "tls_policy".into()
}
pub(crate) fn default_forced_map() -> String {
    "tls_forced".into()
}
pub(crate) fn default_requiretls_map() -> String {
    "requiretls".into()
}
pub(crate) fn default_idle() -> Duration {
    Duration::from_secs(300)
}

/// The normal map's answer for a domain no source has a policy for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultReply {
    /// `OK <default level>`: the policy file's default is sent explicitly.
    #[default]
    Policy,
    /// `NOTFOUND `: Postfix applies its own `smtp_tls_security_level`.
    Notfound,
}

impl SocketmapConfig {
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions::of(&self.socket_mode, &self.socket_owner, &self.socket_group)
    }

    /// The checks serde cannot make: `(key, problem)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = self;
        for (key, name) in [
            ("socketmap.map", &s.map),
            ("socketmap.forced_map", &s.forced_map),
            ("socketmap.requiretls_map", &s.requiretls_map),
        ] {
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c == ':' || c.is_control())
            {
                return Err((
                    key,
                    format!("{name:?} is not a usable map name (no spaces or ':')"),
                ));
            }
        }
        if s.map == s.forced_map {
            return Err((
                "socketmap.forced_map",
                format!("must differ from socketmap.map ({:?})", s.map),
            ));
        }
        if s.requiretls_map == s.map || s.requiretls_map == s.forced_map {
            return Err((
                "socketmap.requiretls_map",
                format!(
                    "must differ from socketmap.map ({:?}) and socketmap.forced_map ({:?})",
                    s.map, s.forced_map
                ),
            ));
        }
        if s.max_connections == 0 {
            return Err(("socketmap.max_connections", "must be at least 1".into()));
        }
        if let Some(m) = &s.socket_mode {
            parse_mode(m).map_err(|e| ("socketmap.socket_mode", e))?;
        }
        Ok(())
    }
}

/// The reloadable part of the socketmap settings.
#[derive(Debug, Clone)]
pub struct SocketmapSettings {
    pub map: Arc<str>,
    pub forced_map: Arc<str>,
    pub requiretls_map: Arc<str>,
    pub default_reply: DefaultReply,
    pub idle_timeout: Duration,
}

impl Default for SocketmapSettings {
    fn default() -> Self {
        SocketmapSettings {
            map: Arc::from(default_map()),
            forced_map: Arc::from(default_forced_map()),
            requiretls_map: Arc::from(default_requiretls_map()),
            default_reply: DefaultReply::default(),
            idle_timeout: default_idle(),
        }
    }
}

impl From<&SocketmapConfig> for SocketmapSettings {
    fn from(c: &SocketmapConfig) -> Self {
        SocketmapSettings {
            map: Arc::from(c.map.as_str()),
            forced_map: Arc::from(c.forced_map.as_str()),
            requiretls_map: Arc::from(c.requiretls_map.as_str()),
            default_reply: c.default_reply,
            idle_timeout: c.idle_timeout,
        }
    }
}

impl SocketmapSettings {
    /// Which map `name` is, if any.
    pub fn map_kind(&self, name: &str) -> Option<super::MapKind> {
        if name == &*self.map {
            Some(super::MapKind::Policy)
        } else if name == &*self.forced_map {
            Some(super::MapKind::Forced)
        } else if name == &*self.requiretls_map {
            Some(super::MapKind::RequireTls)
        } else {
            None
        }
    }
}
