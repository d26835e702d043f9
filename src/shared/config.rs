//! The `[shared]` section: the Redis (or Valkey) store a fleet of hosts
//! shares. Off when the section is absent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Longest `key_prefix`, in bytes.
pub const MAX_KEY_PREFIX: usize = 64;
/// Longest password read from `password_file`, in bytes.
pub const MAX_PASSWORD: usize = 4096;
/// Longest `host_id`, in bytes.
pub const MAX_HOST_ID: usize = 64;
/// Most entries in `sentinels`.
pub const MAX_SENTINELS: usize = 16;
/// Longest `master_name`, in bytes.
pub const MAX_MASTER_NAME: usize = 128;
/// Largest `ca_file` or `client_cert_file`/`client_key_file`, in bytes.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// The `[shared]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or
    /// `redis+unix:///path`; no user name or password in it. With
    /// `sentinels`: optional, `redis://MASTER_NAME/db` or
    /// `rediss://MASTER_NAME/db` (the database and whether TLS is used;
    /// the sentinels say where the master is).
    #[serde(default)]
    pub url: String,
    /// Sentinels (`host:port`) asked where the master of `master_name` is.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    #[serde(default)]
    pub master_name: Option<String>,
    /// The ACL user on the sentinels, when they need one.
    #[serde(default)]
    pub sentinel_username: Option<String>,
    /// A file holding the sentinels' password (their `requirepass`).
    #[serde(default)]
    pub sentinel_password_file: Option<PathBuf>,
    /// Certificates (PEM) trusted for `rediss://` instead of the public
    /// roots: a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This host's certificate chain (PEM), for servers with
    /// `tls-auth-clients yes`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
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
            sentinels: Vec::new(),
            master_name: None,
            sentinel_username: None,
            sentinel_password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
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
        for p in [
            &mut self.password_file,
            &mut self.sentinel_password_file,
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Whether the master is found through `sentinels`.
    pub fn uses_sentinels(&self) -> bool {
        !self.sentinels.is_empty()
    }

    /// The URL shown in logs and `/health`: `url`, or with sentinels and
    /// no `url`, `redis://MASTER_NAME/0`.
    pub fn shown_url(&self) -> String {
        match (&self.master_name, self.url.is_empty()) {
            (Some(m), true) => format!("redis://{m}/0"),
            _ => self.url.clone(),
        }
    }

    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.uses_sentinels() || self.master_name.is_some() {
            self.validate_sentinels()?;
        } else if self.url.is_empty() {
            return Err("url: missing (or give sentinels and master_name)".into());
        }
        let tls = match self.address().map_err(|e| format!("url: {e}"))? {
            Address::Tcp { tls, .. } => tls,
            Address::Unix { .. } => false,
        };
        self.validate_tls(tls)?;
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

    /// `sentinels`, `master_name` and the keys that go with them.
    fn validate_sentinels(&self) -> Result<(), String> {
        if self.sentinels.is_empty() {
            return Err(
                "sentinels: missing or empty (master_name is the name the sentinels know the master by)"
                    .into(),
            );
        }
        if self.sentinels.len() > MAX_SENTINELS {
            return Err(format!(
                "sentinels: {} entries, at most {MAX_SENTINELS}",
                self.sentinels.len()
            ));
        }
        for s in &self.sentinels {
            sentinel_addr(s).map_err(|e| format!("sentinels: {e}"))?;
        }
        let Some(name) = &self.master_name else {
            return Err("master_name: missing (the name the sentinels monitor the master under, e.g. \"mymaster\")".into());
        };
        if name.is_empty()
            || name.len() > MAX_MASTER_NAME
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "master_name: {name:?} is not printable ASCII of 1 to {MAX_MASTER_NAME} bytes without spaces"
            ));
        }
        if !self.url.is_empty() {
            let authority = self
                .url
                .split_once("://")
                .map(|(_, r)| r.split(['/', '?']).next().unwrap_or(""));
            let scheme_ok = self.url.starts_with("redis://") || self.url.starts_with("rediss://");
            if !scheme_ok || authority != Some(name.as_str()) {
                return Err(format!(
                    "url: with sentinels it is redis://{name}/DB or rediss://{name}/DB (the master's name, no port: the sentinels say where it is), not {:?}",
                    self.url
                ));
            }
        }
        if let Some(u) = &self.sentinel_username
            && (u.is_empty() || u.len() > 256 || !u.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "sentinel_username: {u:?} is not printable ASCII of 1 to 256 bytes without spaces"
            ));
        }
        if self.sentinel_username.is_some() && self.sentinel_password_file.is_none() {
            return Err("sentinel_username: needs sentinel_password_file".into());
        }
        Ok(())
    }

    /// `ca_file`, `client_cert_file` and `client_key_file`: only for TLS,
    /// readable PEM now.
    fn validate_tls(&self, tls: bool) -> Result<(), String> {
        if !self.uses_sentinels()
            && (self.sentinel_username.is_some() || self.sentinel_password_file.is_some())
        {
            return Err("sentinel_password_file: only with sentinels".into());
        }
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            let Some(path) = file else { continue };
            if !tls {
                return Err(format!("{key}: only for TLS (a rediss:// url)"));
            }
            let pem = read_pem(path).map_err(|e| format!("{key}: {e}"))?;
            let found = if key == "client_key_file" {
                usize::from(PrivateKeyDer::from_pem_slice(&pem).is_ok())
            } else {
                CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map_err(|e| format!("{key}: {}: {e}", path.display())))
                    .collect::<Result<Vec<_>, _>>()?
                    .len()
            };
            if found == 0 {
                return Err(format!(
                    "{key}: {} holds no PEM {}",
                    path.display(),
                    if key == "client_key_file" {
                        "private key"
                    } else {
                        "certificate"
                    }
                ));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(format!(
                "{}: needs {} too",
                if self.client_cert_file.is_some() {
                    "client_cert_file"
                } else {
                    "client_key_file"
                },
                if self.client_cert_file.is_some() {
                    "client_key_file"
                } else {
                    "client_cert_file"
                }
            ));
        }
        Ok(())
    }

    /// The store's address, from `url` (with sentinels, its host is the
    /// master's name and its port means nothing).
    pub fn address(&self) -> Result<Address, String> {
        if let (Some(name), true) = (&self.master_name, self.url.is_empty()) {
            return Ok(Address::Tcp {
                host: name.clone(),
                port: 6379,
                db: 0,
                tls: false,
            });
        }
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

/// One entry of `sentinels`: `host:port`, the port required.
pub fn sentinel_addr(s: &str) -> Result<(String, u16), String> {
    let has_port = match s.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(_, a)| a.starts_with(':')),
        None => s.contains(':') && !s.ends_with(':'),
    };
    if !has_port {
        return Err(format!(
            "{s:?} is not host:port (a sentinel's port, usually 26379)"
        ));
    }
    split_host_port(s).map_err(|e| format!("{s:?}: {e}"))
}

/// A PEM file's bytes, bounded.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(format!(
            "{} is larger than {MAX_PEM_FILE} bytes",
            path.display()
        ));
    }
    Ok(bytes)
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
        let e = err("url = \"redis://h/0\"\nsentinel = [\"h:26379\"]\n");
        assert!(e.contains("unknown field: found `sentinel`"), "{e}");
        let e = err("url = \"redis://h/0\"\nsentinels = [\"h:26379\"]\n");
        assert!(e.contains("key `shared.master_name`: missing"), "{e}");
        let e = err("sentinels = [\"h\"]\nmaster_name = \"m\"\n");
        assert!(
            e.contains("key `shared.sentinels`: \"h\" is not host:port"),
            "{e}"
        );
        let e = err("ca_file = \"missing.pem\"\nurl = \"rediss://h/0\"\n");
        assert!(
            e.contains("key `shared.ca_file`: cannot read /etc/tls-policyd/missing.pem"),
            "{e}"
        );
        let c = crate::config::Config::from_text(
            &text("sentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]\nmaster_name = \"mymaster\"\nsentinel_password_file = \"spw\"\n"),
            path,
        )
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!(s.shown_url(), "redis://mymaster/0");
        assert_eq!(
            s.sentinel_password_file.as_deref(),
            Some(Path::new("/etc/tls-policyd/spw"))
        );
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

    fn sentinel_config() -> SharedConfig {
        let mut c = SharedConfig::new("");
        c.sentinels = vec!["127.0.0.1:26379".into(), "[::1]:26380".into()];
        c.master_name = Some("mymaster".into());
        c
    }

    #[test]
    fn sentinel_keys_are_checked() {
        let ok = sentinel_config();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            ok.address(),
            Ok(Address::Tcp {
                host: "mymaster".into(),
                port: 6379,
                db: 0,
                tls: false
            })
        );
        let err = |f: &dyn Fn(&mut SharedConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        // The list: 1 to MAX_SENTINELS entries, each host:port.
        let mut full = ok.clone();
        full.sentinels = (0..MAX_SENTINELS)
            .map(|i| format!("10.0.0.{i}:26379"))
            .collect();
        assert_eq!(full.validate(), Ok(()));
        full.sentinels.push("10.0.1.1:26379".into());
        assert_eq!(
            full.validate(),
            Err(format!(
                "sentinels: {} entries, at most {MAX_SENTINELS}",
                MAX_SENTINELS + 1
            ))
        );
        assert_eq!(
            err(&|c| c.sentinels.clear()),
            "sentinels: missing or empty (master_name is the name the sentinels know the master by)"
        );
        for bad in [
            "h", "h:", "h:0", "h:65536", ":26379", "[::1]", "a b:1", "h:x",
        ] {
            let e = err(&|c| c.sentinels = vec![bad.into()]);
            assert!(e.starts_with("sentinels: "), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(sentinel_addr("h:65535"), Ok(("h".into(), 65535)));
        // master_name: printable, bounded, required.
        assert!(err(&|c| c.master_name = None).starts_with("master_name: missing"));
        assert!(err(&|c| c.master_name = Some(String::new())).starts_with("master_name: "));
        assert!(err(&|c| c.master_name = Some("my master".into())).starts_with("master_name: "));
        assert!(err(&|c| c.master_name = Some("m\u{1}".into())).starts_with("master_name: "));
        assert!(
            err(&|c| c.master_name = Some("m".repeat(MAX_MASTER_NAME + 1)))
                .starts_with("master_name: ")
        );
        let mut exact = ok.clone();
        exact.master_name = Some("m".repeat(MAX_MASTER_NAME));
        assert_eq!(exact.validate(), Ok(()));
        // A master_name without sentinels.
        let mut lone = SharedConfig::new("redis://h/0");
        lone.master_name = Some("mymaster".into());
        assert!(lone.validate().unwrap_err().starts_with("sentinels: "));
        // url: the scheme and database only, its host the master's name.
        let mut tls = ok.clone();
        tls.url = "rediss://mymaster/3".into();
        assert_eq!(tls.validate(), Ok(()));
        assert_eq!(
            tls.address(),
            Ok(Address::Tcp {
                host: "mymaster".into(),
                port: 6379,
                db: 3,
                tls: true
            })
        );
        for bad in [
            "redis://other/0",
            "redis://mymaster:6379/0",
            "redis+unix:///run/redis.sock",
            "mymaster",
        ] {
            assert!(err(&|c| c.url = bad.into()).starts_with("url: "), "{bad}");
        }
        assert_eq!(
            err(&|c| c.sentinel_username = Some("s".into())),
            "sentinel_username: needs sentinel_password_file"
        );
        let mut plain = SharedConfig::new("redis://h/0");
        plain.sentinel_password_file = Some("/p".into());
        assert_eq!(
            plain.validate(),
            Err("sentinel_password_file: only with sentinels".into())
        );
        assert_eq!(
            SharedConfig::new("").validate(),
            Err("url: missing (or give sentinels and master_name)".into())
        );
    }

    #[test]
    fn tls_files_are_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["redis.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let mut c = SharedConfig::new("rediss://redis.test:6380/0");
        c.ca_file = Some(ca.clone());
        assert_eq!(c.validate(), Ok(()));
        c.client_cert_file = Some(ca.clone());
        assert_eq!(
            c.validate(),
            Err("client_cert_file: needs client_key_file too".into())
        );
        c.client_key_file = Some(key_file.clone());
        assert_eq!(c.validate(), Ok(()));
        c.client_key_file = Some(ca.clone());
        assert!(c.validate().unwrap_err().starts_with("client_key_file: "));
        let mut plain = SharedConfig::new("redis://h/0");
        plain.ca_file = Some(ca.clone());
        assert_eq!(
            plain.validate(),
            Err("ca_file: only for TLS (a rediss:// url)".into())
        );
        let mut c = SharedConfig::new("rediss://h/0");
        c.ca_file = Some(dir.path().join("missing.pem"));
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("ca_file: cannot read ")
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        c.ca_file = Some(empty.clone());
        assert_eq!(
            c.validate(),
            Err(format!(
                "ca_file: {} holds no PEM certificate",
                empty.display()
            ))
        );
        let big = dir.path().join("big.pem");
        let mut text = cert.pem();
        text.push_str(&" ".repeat(usize::try_from(MAX_PEM_FILE).unwrap() - text.len()));
        std::fs::write(&big, &text).unwrap();
        c.ca_file = Some(big.clone());
        assert_eq!(c.validate(), Ok(()));
        text.push(' ');
        std::fs::write(&big, &text).unwrap();
        assert!(c.validate().unwrap_err().contains("is larger than"));
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
