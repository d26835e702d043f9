//! The `[shared]` section: the Redis (or Valkey) store a fleet of hosts
//! shares. Off when the section is absent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Longest `key_prefix`, in bytes.
pub const MAX_KEY_PREFIX: usize = 64;
/// Longest password read from `password_file`, in bytes.
pub const MAX_PASSWORD: usize = 4096;
/// Longest `host_id`, in bytes.
pub const MAX_HOST_ID: usize = 64;

/// The `[shared]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or
    /// `redis+unix:///path`; no user name or password in it.
    pub url: String,
    /// The ACL user (Redis 6 and later); `requirepass` needs none.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (read at start, never logged).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Put before every key this daemon reads or writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Time allowed to connect (and authenticate).
    #[serde(
        default = "default_connect_timeout",
        with = "crate::util::duration::human"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for one command; a lookup never waits longer for the
    /// store.
    #[serde(
        default = "default_command_timeout",
        with = "crate::util::duration::human"
    )]
    pub command_timeout: Duration,
    /// This host's name in what it publishes for the fleet (TLS-RPT
    /// counts); the system's host name when unset. Unique per host.
    #[serde(default)]
    pub host_id: Option<String>,
}

fn default_key_prefix() -> String {
    "tls-policyd:".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_command_timeout() -> Duration {
    Duration::from_millis(200)
}

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
        db: i64,
        tls: bool,
    },
    Unix {
        path: PathBuf,
        db: i64,
    },
}

impl SharedConfig {
    /// A section with `url` and every default (tests, examples).
    pub fn new(url: &str) -> SharedConfig {
        SharedConfig {
            url: url.to_string(),
            username: None,
            password_file: None,
            key_prefix: default_key_prefix(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            host_id: None,
        }
    }

    /// Relative paths are taken relative to `base` (the file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.password_file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        self.address().map_err(|e| format!("url: {e}"))?;
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
            if d > Duration::from_secs(60) {
                return Err(format!(
                    "{key}: {} is longer than a minute",
                    humantime::format_duration(d)
                ));
            }
        }
        if self.key_prefix.len() > MAX_KEY_PREFIX
            || !self.key_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "key_prefix: {:?} is not printable ASCII of at most {MAX_KEY_PREFIX} bytes without spaces",
                self.key_prefix
            ));
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.len() > 256 || !u.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "username: {u:?} is not printable ASCII of 1 to 256 bytes without spaces"
            ));
        }
        if let Some(h) = &self.host_id {
            check_host_id(h).map_err(|e| format!("host_id: {e}"))?;
        }
        if self.username.is_some() && self.password_file.is_none() {
            return Err(
                "username: needs password_file (an ACL user authenticates with a password)".into(),
            );
        }
        Ok(())
    }

    /// The store's address, from `url`.
    pub fn address(&self) -> Result<Address, String> {
        let url = self.url.as_str();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "{url:?} is not redis://host:port/db, rediss://host:port/db or redis+unix:///path"
            ));
        };
        let (rest, db) = match rest.split_once('?') {
            Some((r, q)) => (r, query_db(q)?),
            None => (rest, None),
        };
        match scheme {
            "redis" | "rediss" => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                if authority.contains('@') {
                    return Err(
                        "no user name or password in the URL: use username and password_file"
                            .into(),
                    );
                }
                let (host, port) = split_host_port(authority)?;
                let db = match (path, db) {
                    ("", d) => d.unwrap_or(0),
                    (p, None) => parse_db(p)?,
                    (_, Some(_)) => return Err("the database is given twice".into()),
                };
                Ok(Address::Tcp {
                    host,
                    port,
                    db,
                    tls: scheme == "rediss",
                })
            }
            "redis+unix" | "unix" => {
                if !rest.starts_with('/') || rest.len() < 2 {
                    return Err(format!(
                        "{url:?}: the socket must be an absolute path (redis+unix:///run/redis/redis.sock)"
                    ));
                }
                Ok(Address::Unix {
                    path: PathBuf::from(rest),
                    db: db.unwrap_or(0),
                })
            }
            other => Err(format!(
                "scheme {other:?} is not redis, rediss or redis+unix"
            )),
        }
    }
}

/// Whether `id` can name a host in keys: 1 to [`MAX_HOST_ID`] bytes of
/// letters, digits, `.`, `-` and `_` (no `:`, the keys' separator).
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_HOST_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{:?} is not 1 to {MAX_HOST_ID} letters, digits, '.', '-' or '_'",
            crate::util::text::printable_ascii(id, 80)
        ));
    }
    Ok(())
}

impl SharedConfig {
    /// This host's name for the fleet: `host_id`, or the system's host
    /// name (its first label when the whole name does not fit).
    pub fn host_id(&self) -> Result<String, String> {
        if let Some(h) = &self.host_id {
            return Ok(h.clone());
        }
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| format!("host_id: unset, and the host name cannot be read: {e}"))?;
        let name = name.trim().to_ascii_lowercase();
        let name = if name.len() > MAX_HOST_ID {
            name.split('.').next().unwrap_or_default().to_string()
        } else {
            name
        };
        check_host_id(&name)
            .map(|()| name)
            .map_err(|e| format!("host_id: unset, and the host name {e}; set host_id"))
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{authority:?}: unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{p:?} is not a port (1 to 65535)")),
        },
    };
    Ok((host.to_string(), port))
}

fn parse_db(p: &str) -> Result<i64, String> {
    match p.parse::<i64>() {
        Ok(n) if (0..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{p:?} is not a database number")),
    }
}

fn query_db(q: &str) -> Result<Option<i64>, String> {
    let mut db = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("db", v)) => db = Some(parse_db(v)?),
            _ => {
                return Err(format!(
                    "{pair:?}: the only URL parameter is db= (user name and password have keys of their own)"
                ));
            }
        }
    }
    Ok(db)
}

/// Read the password: the file's first line, without its line end.
pub fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() > MAX_PASSWORD + 2 {
        return Err(format!(
            "{} is longer than {MAX_PASSWORD} bytes",
            path.display()
        ));
    }
    let text =
        String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("{} holds no password", path.display()));
    }
    if line.len() > MAX_PASSWORD {
        return Err(format!(
            "{} is longer than {MAX_PASSWORD} bytes",
            path.display()
        ));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(url: &str) -> Result<Address, String> {
        SharedConfig::new(url).address()
    }

    #[test]
    fn urls() {
        assert_eq!(
            addr("redis://127.0.0.1:6380/2"),
            Ok(Address::Tcp {
                host: "127.0.0.1".into(),
                port: 6380,
                db: 2,
                tls: false
            })
        );
        assert_eq!(
            addr("rediss://cache.example"),
            Ok(Address::Tcp {
                host: "cache.example".into(),
                port: 6379,
                db: 0,
                tls: true
            })
        );
        assert_eq!(
            addr("redis://[::1]:7000/0"),
            Ok(Address::Tcp {
                host: "::1".into(),
                port: 7000,
                db: 0,
                tls: false
            })
        );
        assert_eq!(
            addr("redis+unix:///run/redis/redis.sock?db=3"),
            Ok(Address::Unix {
                path: "/run/redis/redis.sock".into(),
                db: 3
            })
        );
        for bad in [
            "127.0.0.1:6379",
            "http://h:1/0",
            "redis://u:secret@h:1/0",
            "redis://h:0/0",
            "redis://h:65536/0",
            "redis://h:1/x",
            "redis://h:1/-1",
            "redis://:1/0",
            "redis://h/1?db=2",
            "redis+unix://relative.sock",
            "redis+unix:///s?password=x",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let ok = SharedConfig::new("redis://127.0.0.1:6379/0");
        assert_eq!(ok.validate(), Ok(()));
        let err = |f: &dyn Fn(&mut SharedConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(err(&|c| c.url = "x".into()).starts_with("url: "));
        assert!(err(&|c| c.command_timeout = Duration::ZERO).starts_with("command_timeout: "));
        assert!(
            err(&|c| c.connect_timeout = Duration::from_secs(61)).starts_with("connect_timeout: ")
        );
        assert!(err(&|c| c.key_prefix = "a b".into()).starts_with("key_prefix: "));
        assert!(err(&|c| c.key_prefix = "k".repeat(65)).starts_with("key_prefix: "));
        let mut exact = ok.clone();
        exact.key_prefix = "k".repeat(MAX_KEY_PREFIX);
        assert_eq!(exact.validate(), Ok(()));
        assert!(err(&|c| c.username = Some("fleet".into())).starts_with("username: "));
        assert!(err(&|c| c.host_id = Some("mx:1".into())).starts_with("host_id: "));
        assert!(err(&|c| c.host_id = Some(String::new())).starts_with("host_id: "));
        assert!(err(&|c| c.host_id = Some("h".repeat(MAX_HOST_ID + 1))).starts_with("host_id: "));
        let mut exact = ok.clone();
        exact.host_id = Some("h".repeat(MAX_HOST_ID));
        assert_eq!(exact.validate(), Ok(()));
        assert_eq!(exact.host_id().unwrap(), "h".repeat(MAX_HOST_ID));
        let mut named = ok.clone();
        named.host_id = Some("mx-1.example_a".into());
        assert_eq!(named.validate(), Ok(()));
        // Unset: the system's name, usable in keys.
        let own = ok.host_id().unwrap();
        assert_eq!(check_host_id(&own), Ok(()));
    }

    #[test]
    fn config_errors_name_the_file_and_key() {
        let path = Path::new("/etc/tls-policyd/config.toml");
        let text = |shared: &str| {
            format!(
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n[policy]\nfile = \"p.toml\"\n[shared]\n{shared}"
            )
        };
        let err = |shared: &str| {
            crate::config::Config::from_text(&text(shared), path)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("url = \"redis://u:pw@h/0\"\n").starts_with(
                "/etc/tls-policyd/config.toml: key `shared.url`: no user name or password"
            ),
            "{}",
            err("url = \"redis://u:pw@h/0\"\n")
        );
        let e = err("url = \"redis://h/0\"\ncommand_timeout = \"0s\"\n");
        assert!(
            e.contains("key `shared.command_timeout`: must be longer than zero"),
            "{e}"
        );
        let e = err("url = \"redis://h/0\"\nsentinels = [\"h:26379\"]\n");
        assert!(e.contains("unknown field: found `sentinels`"), "{e}");
        let e = err("url = \"redis://h/0\"\nconnect_timeout = \"soon\"\n");
        assert!(e.contains("shared.connect_timeout"), "{e}");
        let c = crate::config::Config::from_text(
            &text("url = \"redis+unix:///run/redis/redis.sock\"\npassword_file = \"pw\"\n"),
            path,
        )
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!(
            s.password_file.as_deref(),
            Some(Path::new("/etc/tls-policyd/pw"))
        );
        assert_eq!(s.key_prefix, "tls-policyd:");
        assert_eq!(s.command_timeout, Duration::from_millis(200));
    }

    #[test]
    fn password_file_first_line_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_password(&p).as_deref(), Ok("s3cret"));
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password(&p).is_err());
        std::fs::write(&p, "p".repeat(MAX_PASSWORD)).unwrap();
        assert_eq!(read_password(&p).map(|s| s.len()), Ok(MAX_PASSWORD));
        std::fs::write(&p, "p".repeat(MAX_PASSWORD + 1)).unwrap();
        assert!(read_password(&p).is_err());
        assert!(read_password(&dir.path().join("missing")).is_err());
    }
}
