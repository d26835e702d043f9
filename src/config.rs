//! The daemon's configuration: a TOML file, then `TLS_POLICYD_*`
//! environment overrides (`TLS_POLICYD_SOCKETMAP__LISTEN=inet:127.0.0.1:0`;
//! a double underscore separates section and key).
//!
//! Relative paths in the file are taken relative to the file's directory.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::dns::DnsConfig;
use crate::frontends::milter::MilterConfig;
use crate::frontends::policy_server::PolicyServerConfig;
use crate::prober::ProberConfig;
use crate::shared::SharedConfig;
use crate::sources::dane::DaneConfig;
use crate::sources::mta_sts::MtaStsConfig;

use crate::frontends::socketmap::SocketmapConfig;
use crate::listen::ListenAddr;
use crate::outcomes::config::OutcomesConfig;
use crate::tlsrpt::config::TlsRptConfig;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TLS_POLICYD_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub socketmap: Option<SocketmapConfig>,
    /// The policy delegation server (`check_policy_service`).
    pub policy_server: Option<PolicyServerConfig>,
    /// The milter (`smtpd_milters`, `non_smtpd_milters`).
    pub milter: Option<MilterConfig>,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The STARTTLS prober behind early refusals.
    #[serde(default)]
    pub prober: ProberConfig,
    /// The resolver for MX lookups, and DNSSEC for DANE.
    #[serde(default)]
    pub dns: DnsConfig,
    /// DANE detection; off when the section is absent.
    pub dane: Option<DaneConfig>,
    /// MTA-STS as a policy source; off when absent.
    pub mta_sts: Option<MtaStsConfig>,
    /// The HTTP listener for Prometheus metrics and the health endpoint.
    pub metrics: Option<MetricsConfig>,
    /// The threads that answer Postfix.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The delivery outcome follower; off when absent.
    pub outcomes: Option<OutcomesConfig>,
    /// TLS reports (RFC 8460) from the outcomes; off when absent.
    pub tlsrpt: Option<TlsRptConfig>,
    /// The store a fleet of hosts shares (Redis, Valkey); off when absent.
    pub shared: Option<SharedConfig>,
}

/// Most threads `runtime.threads` accepts.
pub const MAX_THREADS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads answering the front doors (1 to [`MAX_THREADS`]). One is
    /// the cheapest for Postfix: every answer comes from memory, and with
    /// more threads most packets wake a second thread. Writes to the
    /// decision log and the cache file, and reloads, run on threads of
    /// their own either way.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            threads: default_threads(),
        }
    }
}

fn default_threads() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `inet:127.0.0.1:9466` (serves `/metrics` and `/health`) or
    /// `unix:/PATH` (for `tls-policyd status` only).
    pub listen: ListenAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (TOML).
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Decision log path, or `-` for standard output.
    #[serde(default = "default_decisions")]
    pub decisions: PathBuf,
    /// Operational log level (error, warn, info, debug, trace); `RUST_LOG`
    /// overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// How operational log lines are written to standard error.
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`: how the operational log's lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journal` when standard error is the systemd journal (the stream
    /// `JOURNAL_STREAM` names), `text` otherwise.
    #[default]
    Auto,
    /// A timestamp, the level, the target and the message.
    Text,
    /// Each line starts with its syslog priority (`<3>` error, `<4>`
    /// warning, `<6>` info, `<7>` debug and trace), which journald turns
    /// into the entry's priority; no timestamp (the journal has its own).
    Journal,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            decisions: default_decisions(),
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_decisions() -> PathBuf {
    PathBuf::from("-")
}
fn default_level() -> String {
    "info".into()
}

/// A configuration problem: which file (or environment variable), which
/// key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .messages.join("\n"))]
pub struct ConfigError {
    pub messages: Vec<String>,
}

impl ConfigError {
    /// A section's own check, `"key: problem"`, as `section.key`.
    fn in_section(file: &Path, section: &str, message: &str) -> ConfigError {
        match message.split_once(": ") {
            Some((key, problem)) => Self::one(file, &format!("{section}.{key}"), problem),
            None => Self::one(file, section, message),
        }
    }

    fn one(file: &Path, key: &str, problem: impl fmt::Display) -> ConfigError {
        ConfigError {
            messages: vec![format!("{}: key `{key}`: {problem}", file.display())],
        }
    }
}

impl Config {
    /// Load a config file with environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Config, ConfigError> {
        // figment treats a missing file as empty; an administrator who
        // mistyped the path must hear about it.
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError {
                messages: vec![format!("{}: cannot read: {e}", path.display())],
            });
        }
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
        Self::extract(figment, path)
    }

    /// A config from its text, as if read from `path` (no environment
    /// overrides). For checks on the text alone.
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::extract(Figment::new().merge(Toml::string(text)), path)
    }

    fn extract(figment: Figment, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| describe(path, e))?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.policy.file);
        resolve(&mut self.log.decisions);
        if let Some(m) = &mut self.metrics
            && let ListenAddr::Unix(p) = &mut m.listen
        {
            resolve(p);
        }
        if let Some(s) = &mut self.socketmap
            && let ListenAddr::Unix(p) = &mut s.listen
        {
            resolve(p);
        }
        if let Some(s) = &mut self.policy_server
            && let ListenAddr::Unix(p) = &mut s.listen
        {
            resolve(p);
        }
        if let Some(s) = &mut self.milter
            && let ListenAddr::Unix(p) = &mut s.listen
        {
            resolve(p);
        }
        if let Some(p) = &mut self.prober.extra_ca_file {
            resolve(p);
        }
        if let Some(p) = &mut self.dns.trust_anchor {
            resolve(p);
        }
        if let Some(d) = &mut self.dane {
            resolve(&mut d.cache_file);
        }
        if let Some(o) = &mut self.outcomes {
            o.resolve_paths(base);
        }
        if let Some(t) = &mut self.tlsrpt {
            t.resolve_paths(base);
        }
        if let Some(s) = &mut self.shared {
            s.resolve_paths(base);
        }
        if let Some(m) = &mut self.mta_sts {
            resolve(&mut m.cache_file);
            if let Some(p) = &mut m.extra_ca_file {
                resolve(p);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.socketmap.is_none() && self.policy_server.is_none() && self.milter.is_none() {
            return Err(ConfigError::one(
                path,
                "socketmap",
                "no front door is configured; add a [socketmap], [policy_server] or [milter] section with `listen`",
            ));
        }
        if let Some(s) = &self.socketmap {
            s.validate()
                .map_err(|(key, problem)| ConfigError::one(path, key, problem))?;
        }
        if let Some(p) = &self.policy_server {
            p.validate()
                .map_err(|(key, problem)| ConfigError::one(path, key, problem))?;
        }
        if let Some(m) = &self.milter {
            m.validate()
                .map_err(|(key, problem)| ConfigError::one(path, key, problem))?;
        }
        self.prober
            .validate()
            .map_err(|e| ConfigError::in_section(path, "prober", &e))?;
        self.dns
            .validate()
            .map_err(|e| ConfigError::in_section(path, "dns", &e))?;
        if let Some(d) = &self.dane {
            d.validate()
                .map_err(|e| ConfigError::in_section(path, "dane", &e))?;
        }
        if let Some(m) = &self.mta_sts {
            m.validate()
                .map_err(|e| ConfigError::in_section(path, "mta_sts", &e))?;
        }
        if let Some(s) = &self.shared {
            s.validate()
                .map_err(|e| ConfigError::in_section(path, "shared", &e))?;
        }
        if let Some(o) = &self.outcomes {
            o.validate()
                .map_err(|e| ConfigError::in_section(path, "outcomes", &e))?;
        }
        if let Some(t) = &self.tlsrpt {
            t.validate()
                .map_err(|e| ConfigError::in_section(path, "tlsrpt", &e))?;
            if t.enabled && self.outcomes.is_none() {
                return Err(ConfigError::one(
                    path,
                    "tlsrpt",
                    "needs [outcomes]: the sessions reported are the deliveries it reads \
                     (add an [outcomes] section, or set tlsrpt.enabled = false)",
                ));
            }
            if t.enabled && self.mta_sts.as_ref().is_some_and(|m| m.enabled && m.tlsrpt) {
                return Err(ConfigError::one(
                    path,
                    "tlsrpt",
                    "mta_sts.tlsrpt = true is for Postfix's own TLS reports (3.10 and later); with \
                     [tlsrpt] on too the domains would get two reports of the same sessions: \
                     use one of them",
                ));
            }
            if t.enabled
                && let Some(s) = &self.shared
                && let Err(e) = s.host_id()
            {
                return Err(ConfigError::in_section(path, "shared", &e));
            }
            let shared = self
                .mta_sts
                .as_ref()
                .map(|m| &m.cache_file)
                .or(self.dane.as_ref().map(|d| &d.cache_file));
            if let Some(f) = shared
                && *f != t.cache_file
            {
                return Err(ConfigError::one(
                    path,
                    "tlsrpt.cache_file",
                    format!(
                        "{} is not the cache file of [mta_sts]/[dane] ({}): TLS-RPT keeps its \
                         counts in that file (leave both out for the default)",
                        t.cache_file.display(),
                        f.display()
                    ),
                ));
            }
        }
        if let (Some(d), Some(m)) = (&self.dane, &self.mta_sts)
            && d.cache_file != m.cache_file
        {
            return Err(ConfigError::one(
                path,
                "dane.cache_file",
                format!(
                    "{} is not mta_sts.cache_file ({}): DANE and MTA-STS keep one cache file \
                     (leave both out for the default)",
                    d.cache_file.display(),
                    m.cache_file.display()
                ),
            ));
        }
        if !(1..=MAX_THREADS).contains(&self.runtime.threads) {
            return Err(ConfigError::one(
                path,
                "runtime.threads",
                format!(
                    "{} is not between 1 and {MAX_THREADS}",
                    self.runtime.threads
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::one(
                path,
                "log.level",
                format!(
                    "{:?} is not a log level (error, warn, info, debug, trace)",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }
}

/// Turn figment's errors into lines naming origin, key and problem.
fn describe(path: &Path, err: figment::Error) -> ConfigError {
    let messages = err
        .into_iter()
        .map(|e| {
            let origin = match e.metadata.as_ref() {
                Some(md) => match &md.source {
                    Some(figment::Source::File(p)) => p.display().to_string(),
                    _ if !e.path.is_empty() => format!(
                        "environment variable {ENV_PREFIX}{}",
                        e.path.join("__").to_uppercase()
                    ),
                    _ => md.name.to_string(),
                },
                None => path.display().to_string(),
            };
            let problem = problem(&e.kind);
            if e.path.is_empty() {
                format!("{origin}: {problem}")
            } else {
                format!("{origin}: key `{}`: {problem}", e.path.join("."))
            }
        })
        .collect();
    ConfigError { messages }
}

/// figment's text for a problem, without its doubled backquotes around
/// lists of names (``one of `a`, `b```).
fn problem(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    let one_of = |names: &[&str]| match names {
        [] => "none here".to_string(),
        [one] => format!("`{one}`"),
        [first @ .., last] => format!(
            "one of {} or `{last}`",
            first
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    match kind {
        Kind::UnknownField(found, expected) => {
            format!(
                "unknown field: found `{found}`, expected {}",
                one_of(expected)
            )
        }
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown variant: found `{found}`, expected {}",
                one_of(expected)
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontends::socketmap::DefaultReply;
    use std::time::Duration;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const MINIMAL: &str =
        "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\n[policy]\nfile = \"policy.toml\"\n";

    fn no_env() -> Env {
        Env::prefixed("TLS_POLICYD_TEST_UNUSED_PREFIX_")
    }

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), MINIMAL);
        let c = Config::load_with_env(&p, no_env()).unwrap();
        let s = c.socketmap.unwrap();
        assert_eq!(s.map, "tls_policy");
        assert_eq!(s.forced_map, "tls_forced");
        assert_eq!(s.requiretls_map, "requiretls");
        assert_eq!(s.default_reply, DefaultReply::Policy);
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.policy.file, dir.path().join("policy.toml"));
        assert_eq!(c.log.decisions, PathBuf::from("-"));
        assert!(c.dane.is_none(), "DANE is off without a [dane] section");
        assert_eq!(
            c.runtime.threads, 1,
            "one thread answers Postfix by default"
        );
    }

    #[test]
    fn tlsrpt_needs_outcomes_one_cache_file_and_not_postfix_own_reports() {
        let dir = tempfile::tempdir().unwrap();
        let rpt = "[tlsrpt]\norganization_name = \"O\"\ncontact_info = \"c@example.net\"\n\
                   submitter = \"example.net\"\nfrom = \"r@example.net\"\n";
        let outcomes = "[outcomes]\nlog = \"file:/var/log/mail.log\"\n";
        let load = |text: &str| Config::load_with_env(&write(dir.path(), text), no_env());
        let e = load(&format!("{MINIMAL}{rpt}")).unwrap_err().to_string();
        assert!(
            e.contains("key `tlsrpt`") && e.contains("needs [outcomes]"),
            "{e}"
        );
        let c = load(&format!("{MINIMAL}{outcomes}{rpt}")).unwrap();
        assert_eq!(c.tlsrpt.unwrap().submitter, "example.net");
        // Off: no [outcomes] needed.
        assert!(load(&format!("{MINIMAL}{rpt}enabled = false\n")).is_ok());
        let e = load(&format!(
            "{MINIMAL}{outcomes}{rpt}cache_file = \"other.sqlite\"\n[mta_sts]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("tlsrpt.cache_file"), "{e}");
        let e = load(&format!(
            "{MINIMAL}{outcomes}{rpt}[mta_sts]\npostfix_version = \"3.10\"\ntlsrpt = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("two reports"), "{e}");
        let e = load(&format!("{MINIMAL}{outcomes}{rpt}send_delay = \"30h\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `tlsrpt.send_delay`") && e.contains("config.toml"),
            "{e}"
        );
    }

    #[test]
    fn runtime_threads_bounds() {
        let dir = tempfile::tempdir().unwrap();
        for (n, ok) in [
            (0, false),
            (1, true),
            (2, true),
            (MAX_THREADS, true),
            (MAX_THREADS + 1, false),
        ] {
            let p = write(dir.path(), &format!("{MINIMAL}[runtime]\nthreads = {n}\n"));
            match Config::load_with_env(&p, no_env()) {
                Ok(c) => {
                    assert!(ok, "{n} threads accepted");
                    assert_eq!(c.runtime.threads, n);
                }
                Err(e) => {
                    assert!(!ok, "{n} threads refused: {e}");
                    let e = e.to_string();
                    assert!(
                        e.contains("runtime.threads") && e.contains("config.toml"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn dane_section_and_dnssec_settings() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}[dns]\nnameservers = [\"127.0.0.1\"]\ndnssec = \"validate\"\n\
             trust_anchor = \"root.key\"\n[dane]\ncache_file = \"cache.sqlite\"\n\
             on_failure = \"defer\"\n"
        );
        let p = write(dir.path(), &text);
        let c = Config::load_with_env(&p, no_env()).unwrap();
        let d = c.dane.unwrap();
        assert!(d.enabled);
        assert_eq!(d.cache_file, dir.path().join("cache.sqlite"));
        assert_eq!(c.dns.trust_anchor, Some(dir.path().join("root.key")));
        for (extra, want) in [
            (
                "[dane]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n",
                "key `dane.max_ttl`",
            ),
            ("[dane]\nmax_mx = 0\n", "key `dane.max_mx`"),
            ("[dane]\non_failure = \"maybe\"\n", "key `dane.on_failure`"),
            ("[dane]\nenable = true\n", "unknown field: found `enable`"),
            ("[dns]\ndnssec = \"yes\"\n", "key `dns.dnssec`"),
            ("[dns]\ntrust_anchor = \"k\"\n", "key `dns.trust_anchor`"),
        ] {
            let p = write(dir.path(), &format!("{MINIMAL}{extra}"));
            let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(e.contains("config.toml"), "{e}");
        }
    }

    // figment::Jail's closures return figment::Error, which is large.
    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), MINIMAL);
        figment::Jail::expect_with(|jail| {
            jail.set_env("TLS_POLICYD_SOCKETMAP__LISTEN", "inet:127.0.0.1:0");
            jail.set_env("TLS_POLICYD_SOCKETMAP__DEFAULT_REPLY", "notfound");
            let c = Config::load(&p).map_err(|e| e.to_string())?;
            let s = c.socketmap.unwrap();
            assert_eq!(s.listen.to_string(), "inet:127.0.0.1:0");
            assert_eq!(s.default_reply, DefaultReply::Notfound);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn bad_environment_value_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), MINIMAL);
        figment::Jail::expect_with(|jail| {
            jail.set_env("TLS_POLICYD_SOCKETMAP__LISTEN", "localhost:25");
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains("TLS_POLICYD_SOCKETMAP__LISTEN"), "{e}");
            assert!(e.contains("inet:ADDRESS:PORT"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\nlisen = 1\n[policy]\nfile = \"p\"\n",
                "unknown field: found `lisen`",
            ),
            (
                "[socketmap]\nlisten = \"127.0.0.1:10027\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.listen`",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\ndefault_reply = \"maybe\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.default_reply`",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nidle_timeout = \"soon\"\n[policy]\nfile = \"p\"\n",
                "not a duration",
            ),
            ("[policy]\nfile = \"p\"\n", "no front door"),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n[policy]\nfile = \"p\"\n\
                 [dane]\ncache_file = \"/a.sqlite\"\n[mta_sts]\ncache_file = \"/b.sqlite\"\n",
                "key `dane.cache_file`: /a.sqlite is not mta_sts.cache_file (/b.sqlite)",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n",
                "missing field `policy`",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nforced_map = \"tls_policy\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.forced_map`: must differ",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nrequiretls_map = \"tls_policy\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.requiretls_map`: must differ from socketmap.map",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nrequiretls_map = \"tls_forced\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.requiretls_map`: must differ",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nrequiretls_map = \"require tls\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.requiretls_map`: \"require tls\" is not a usable map name",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\nrequiretls_map = \"\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.requiretls_map`: \"\" is not a usable map name",
            ),
            (
                "[socketmap]\nlisten = \"unix:/x\"\nsocket_mode = \"rw\"\n[policy]\nfile = \"p\"\n",
                "key `socketmap.socket_mode`",
            ),
            (
                "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n[policy]\nfile = \"p\"\n[log]\nlevel = \"info,x=loudest\"\n",
                "key `log.level`",
            ),
            ("[socketmap\n", "config.toml"),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), text);
            let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "config {text:?}\nerror: {e}\nwanted: {want}"
            );
            assert!(
                e.contains("config.toml"),
                "error does not name the file: {e}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_listed_without_doubled_backquotes() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("{MINIMAL}[runtime]\nthread = 2\n"));
        let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
        assert!(
            e.ends_with("config.toml: key `runtime.thread`: unknown field: found `thread`, expected `threads`"),
            "{e}"
        );
        let p = write(
            dir.path(),
            &format!("{MINIMAL}[metrics]\nlisten = \"inet:127.0.0.1:1\"\npath = 1\n"),
        );
        let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
        assert!(e.contains("expected `listen`"), "{e}");
        let p = write(dir.path(), &format!("{MINIMAL}[log]\nformat = \"json\"\n"));
        let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
        assert!(
            e.contains("key `log.format`: unknown variant: found `json`, expected one of `auto`, `text` or `journal`"),
            "{e}"
        );
        for text in [
            MINIMAL.replace("[policy]", "lisen = 1\n[policy]"),
            format!("zz_section = 1\n{MINIMAL}"),
        ] {
            let p = write(dir.path(), &text);
            let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
            assert!(!e.contains("``"), "{e}");
            assert!(e.contains("expected one of `"), "{e}");
        }
    }

    #[test]
    fn listen_port_out_of_range_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[socketmap]\nlisten = \"inet:127.0.0.1:99999\"\n[policy]\nfile = \"p\"\n",
        );
        let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
        assert!(
            e.contains("config.toml: key `socketmap.listen`: \"inet:127.0.0.1:99999\": port 99999 is out of range (0 to 65535)"),
            "{e}"
        );
        assert!(!e.contains("IP address"), "{e}");
    }

    #[test]
    fn metrics_section() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), MINIMAL);
        assert_eq!(Config::load_with_env(&p, no_env()).unwrap().metrics, None);
        let p = write(
            dir.path(),
            &format!("{MINIMAL}[metrics]\nlisten = \"inet:127.0.0.1:9466\"\n"),
        );
        let m = Config::load_with_env(&p, no_env())
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(m.listen.to_string(), "inet:127.0.0.1:9466");
        let p = write(
            dir.path(),
            &format!("{MINIMAL}[metrics]\nlisten = \"unix:run/metrics.sock\"\n"),
        );
        let m = Config::load_with_env(&p, no_env())
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(
            m.listen,
            ListenAddr::Unix(dir.path().join("run/metrics.sock"))
        );
        for (extra, want) in [
            ("[metrics]\nlisten = \"9466\"\n", "key `metrics.listen`"),
            (
                "[metrics]\nlisten = \"inet:127.0.0.1:1\"\npath = \"/m\"\n",
                "unknown field: found `path`",
            ),
            ("[metrics]\n", "missing field `listen`"),
        ] {
            let p = write(dir.path(), &format!("{MINIMAL}{extra}"));
            let e = Config::load_with_env(&p, no_env()).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("config.toml"),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load_with_env(Path::new("/nonexistent/tls-policyd.toml"), no_env())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/tls-policyd.toml: cannot read")
        );
    }
}
