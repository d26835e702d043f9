//! Postfix's configuration as `postconf(1)` reports it: the main.cf
//! parameters `doctor` looks at (expanded, defaults included), the
//! master.cf services (`postconf -M`) and their `-o` overrides
//! (`postconf -P`), and the pieces of Postfix syntax the checks read:
//! client endpoints (`inet:host:port`, `unix:path`), table lists and
//! restriction lists with `{ ... }` groups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The restriction lists `check_policy_service` can stand in.
pub const RESTRICTION_LISTS: [&str; 7] = [
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
];

/// The other main.cf parameters the checks read.
pub const PARAMETERS: [&str; 16] = [
    "mail_version",
    "queue_directory",
    "smtp_tls_policy_maps",
    "smtp_tls_security_level",
    "smtp_dns_support_level",
    "smtp_tls_loglevel",
    "lmtp_tls_policy_maps",
    "lmtp_tls_loglevel",
    "relayhost",
    "transport_maps",
    "default_transport",
    "sender_dependent_relayhost_maps",
    "smtpd_policy_service_default_action",
    "smtpd_milters",
    "non_smtpd_milters",
    "milter_default_action",
];

/// Why Postfix's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PostconfError {
    #[error("cannot run postconf (is Postfix installed?): {0}")]
    Run(std::io::Error),
    #[error("postconf {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// One master.cf service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// `inet`, `unix`, `fifo`, `pass`, `unix-dgram`.
    pub kind: String,
    /// Column 5: `Some(true)` for `y`, `None` for `-` (the default: no
    /// chroot since Postfix 3.0).
    pub chroot: Option<bool>,
    /// The daemon: `smtp`, `lmtp`, `smtpd`, ...
    pub command: String,
    /// `-o name=value` overrides.
    pub overrides: BTreeMap<String, String>,
}

impl Service {
    /// `smtp/unix`, as `postconf -P` and `-F` name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.name, self.kind)
    }

    pub fn chrooted(&self) -> bool {
        self.chroot == Some(true)
    }

    /// A parameter as this service sees it: its override, else main.cf's.
    pub fn param<'a>(&'a self, pf: &'a PostfixConfig, name: &str) -> &'a str {
        self.overrides
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| pf.param(name))
    }
}

/// What `postconf` said.
#[derive(Debug, Clone, Default)]
pub struct PostfixConfig {
    /// `-c DIR`, when not the default.
    pub dir: Option<PathBuf>,
    pub params: BTreeMap<String, String>,
    pub services: Vec<Service>,
}

impl PostfixConfig {
    /// Run `postconf` for the parameters, `-M` and `-P`.
    pub fn read(dir: Option<&Path>) -> Result<PostfixConfig, PostconfError> {
        let mut args = vec!["-x".to_string()];
        args.extend(
            PARAMETERS
                .iter()
                .chain(&RESTRICTION_LISTS)
                .map(|p| p.to_string()),
        );
        let params = parse_params(&postconf(dir, &args)?);
        let master = postconf(dir, &["-M".to_string()])?;
        let overrides = postconf(dir, &["-P".to_string(), "-x".to_string()])?;
        Ok(PostfixConfig {
            dir: dir.map(Path::to_path_buf),
            params,
            services: parse_services(&master, &overrides),
        })
    }

    /// A main.cf parameter (`""` when not read).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn queue_directory(&self) -> &Path {
        match self.param("queue_directory") {
            "" => Path::new("/var/spool/postfix"),
            q => Path::new(q),
        }
    }

    /// The `-c DIR` argument for Postfix commands, if any.
    pub fn config_args(&self) -> Vec<String> {
        match &self.dir {
            Some(d) => vec!["-c".into(), d.display().to_string()],
            None => Vec::new(),
        }
    }
}

fn postconf(dir: Option<&Path>, args: &[String]) -> Result<String, PostconfError> {
    let mut cmd = Command::new("postconf");
    if let Some(d) = dir {
        cmd.arg("-c").arg(d);
    }
    cmd.args(args);
    let out = cmd.output().map_err(PostconfError::Run)?;
    if !out.status.success() {
        return Err(PostconfError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `name = value` lines.
pub fn parse_params(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// `postconf -M` lines (one per service) and `postconf -P` lines
/// (`service/type/name = value`).
pub fn parse_services(master: &str, overrides: &str) -> Vec<Service> {
    let mut services: Vec<Service> = master
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || l.starts_with('#') {
                return None;
            }
            Some(Service {
                name: f[0].to_string(),
                kind: f[1].to_string(),
                chroot: match f[4] {
                    "y" => Some(true),
                    "n" => Some(false),
                    _ => None,
                },
                command: f[7].to_string(),
                overrides: BTreeMap::new(),
            })
        })
        .collect();
    for line in overrides.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let mut parts = key.trim().splitn(3, '/');
        let (Some(name), Some(kind), Some(param)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(s) = services
            .iter_mut()
            .find(|s| s.name == name && s.kind == kind)
        {
            s.overrides
                .insert(param.to_string(), value.trim().to_string());
        }
    }
    services
}

/// A client endpoint as Postfix writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostfixEndpoint {
    /// `inet:host:port` (or `host:port`); the host as written.
    Inet { host: String, port: u16 },
    /// `unix:path` (or a bare path); relative paths are relative to the
    /// queue directory.
    Unix(PathBuf),
}

impl PostfixEndpoint {
    /// `inet:127.0.0.1:10028`, `inet:[::1]:10028`, `unix:private/policy`,
    /// `localhost:10028`, `private/policy`.
    pub fn parse(s: &str) -> Option<PostfixEndpoint> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("inet:") {
            return inet(rest);
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            return (!rest.is_empty()).then(|| PostfixEndpoint::Unix(PathBuf::from(rest)));
        }
        if s.is_empty() || s.contains('{') {
            return None;
        }
        inet(s).or_else(|| (!s.contains(':')).then(|| PostfixEndpoint::Unix(PathBuf::from(s))))
    }

    /// The file a unix endpoint names, as a process that works in the
    /// queue directory (chrooted there or not) reaches it.
    pub fn unix_path(&self, queue_dir: &Path, chrooted: bool) -> Option<PathBuf> {
        let PostfixEndpoint::Unix(p) = self else {
            return None;
        };
        Some(if p.is_relative() {
            queue_dir.join(p)
        } else if chrooted {
            queue_dir.join(p.strip_prefix("/").unwrap_or(p))
        } else {
            p.clone()
        })
    }
}

fn inet(s: &str) -> Option<PostfixEndpoint> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| PostfixEndpoint::Inet {
        host: host.to_string(),
        port,
    })
}

/// A socketmap table: `socketmap:inet:host:port:name`,
/// `socketmap:unix:path:name`.
pub fn socketmap(table: &str) -> Option<(PostfixEndpoint, &str)> {
    let rest = table.strip_prefix("socketmap:")?;
    let (endpoint, name) = rest.rsplit_once(':')?;
    Some((PostfixEndpoint::parse(endpoint)?, name))
}

/// A list item: a word, or the inside of a `{ ... }` group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Word(String),
    Group(String),
}

/// Split a Postfix list (commas and/or white space; `{ ... }` groups kept
/// whole, nested braces included).
pub fn list_items(value: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars().peekable();
    let flush = |word: &mut String, items: &mut Vec<Item>| {
        if !word.is_empty() {
            items.push(Item::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                flush(&mut word, &mut items);
                let mut depth = 1;
                let mut inner = String::new();
                for c in chars.by_ref() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    inner.push(c);
                }
                items.push(Item::Group(inner.trim().to_string()));
            }
            c if c == ',' || c.is_whitespace() => flush(&mut word, &mut items),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut items);
    items
}

/// A `{ endpoint, name=value, ... }` group: the endpoint and attributes.
pub fn group_parts(group: &str) -> (String, BTreeMap<String, String>) {
    let mut parts = group.split(',').map(str::trim).filter(|p| !p.is_empty());
    let endpoint = parts.next().unwrap_or("").to_string();
    let attrs = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    (endpoint, attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_overrides() {
        let master = "\
smtp       inet  n       -       y       -       -       smtpd
smtp       unix  -       -       y       -       -       smtp
relay      unix  -       -       -       -       -       smtp -o syslog_name=postfix/$service_name
smtp-tls-forced unix -   -       n       -       -       smtp -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:10027:tls_forced
";
        let p = "smtp-tls-forced/unix/smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10027:tls_forced\nrelay/unix/syslog_name = postfix/$service_name\n";
        let s = parse_services(master, p);
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].id(), "smtp/unix");
        assert!(s[1].chrooted());
        assert_eq!(s[2].chroot, None);
        assert_eq!(s[2].command, "smtp");
        assert_eq!(
            s[3].overrides["smtp_tls_policy_maps"],
            "socketmap:inet:127.0.0.1:10027:tls_forced"
        );
        assert!(s[0].overrides.is_empty());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            PostfixEndpoint::parse("inet:127.0.0.1:10028"),
            Some(PostfixEndpoint::Inet {
                host: "127.0.0.1".into(),
                port: 10028
            })
        );
        assert_eq!(
            PostfixEndpoint::parse("inet:[::1]:25"),
            Some(PostfixEndpoint::Inet {
                host: "::1".into(),
                port: 25
            })
        );
        assert_eq!(
            PostfixEndpoint::parse("unix:tls-policyd/policy.sock"),
            Some(PostfixEndpoint::Unix("tls-policyd/policy.sock".into()))
        );
        assert_eq!(
            PostfixEndpoint::parse("private/policy"),
            Some(PostfixEndpoint::Unix("private/policy".into()))
        );
        assert_eq!(PostfixEndpoint::parse("inet:host:notaport"), None);
        assert_eq!(PostfixEndpoint::parse("unix:"), None);
        let q = Path::new("/var/spool/postfix");
        let rel = PostfixEndpoint::Unix("tls-policyd/s.sock".into());
        assert_eq!(
            rel.unix_path(q, false).unwrap(),
            Path::new("/var/spool/postfix/tls-policyd/s.sock")
        );
        let abs = PostfixEndpoint::Unix("/run/t/s.sock".into());
        assert_eq!(abs.unix_path(q, false).unwrap(), Path::new("/run/t/s.sock"));
        assert_eq!(
            abs.unix_path(q, true).unwrap(),
            Path::new("/var/spool/postfix/run/t/s.sock")
        );
    }

    #[test]
    fn socketmap_tables() {
        let (e, name) = socketmap("socketmap:inet:127.0.0.1:10027:tls_policy").unwrap();
        assert_eq!(name, "tls_policy");
        assert_eq!(
            e,
            PostfixEndpoint::Inet {
                host: "127.0.0.1".into(),
                port: 10027
            }
        );
        let (e, name) = socketmap("socketmap:unix:tls-policyd/socketmap.sock:tls_forced").unwrap();
        assert_eq!(name, "tls_forced");
        assert_eq!(
            e,
            PostfixEndpoint::Unix("tls-policyd/socketmap.sock".into())
        );
        assert!(socketmap("hash:/etc/postfix/tls_policy").is_none());
        assert!(socketmap("socketmap:inet:127.0.0.1:10027").is_none());
    }

    #[test]
    fn lists_with_groups() {
        let v = "permit_mynetworks, check_policy_service { inet:127.0.0.1:10028, default_action=DUNNO },\n  reject_unauth_destination";
        let items = list_items(v);
        assert_eq!(
            items,
            vec![
                Item::Word("permit_mynetworks".into()),
                Item::Word("check_policy_service".into()),
                Item::Group("inet:127.0.0.1:10028, default_action=DUNNO".into()),
                Item::Word("reject_unauth_destination".into()),
            ]
        );
        let (e, attrs) = group_parts("inet:127.0.0.1:10028, default_action=DUNNO");
        assert_eq!(e, "inet:127.0.0.1:10028");
        assert_eq!(attrs["default_action"], "DUNNO");
        assert_eq!(list_items(""), vec![]);
        assert_eq!(
            list_items("{ a { b } }"),
            vec![Item::Group("a { b }".into())]
        );
        // An unclosed group takes the rest.
        assert_eq!(
            list_items("x {y"),
            vec![Item::Word("x".into()), Item::Group("y".into())]
        );
    }
}
