//! `[outcomes]`: where Postfix's log is read from, where the follower
//! keeps its position, and how long decisions govern deliveries.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::correlate::IndexLimits;
use super::lines::MAX_LINE_LEN;

/// Where Postfix's log is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// `file:/var/log/mail.log`: rsyslog's file, or Postfix's own
    /// `maillog_file`.
    File(PathBuf),
    /// `journal` (the system journal) or `journal:/dir` (a journal
    /// directory, as `journalctl --directory`).
    Journal(Option<PathBuf>),
}

impl FromStr for LogSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "journal" {
            return Ok(LogSource::Journal(None));
        }
        let (kind, path) = s.split_once(':').ok_or_else(|| {
            format!(
                "{s:?} is not a log source; write \"file:/var/log/mail.log\", \"journal\" or \
                 \"journal:/directory\""
            )
        })?;
        if path.is_empty() {
            return Err(format!("{s:?} names no path after {kind:?}"));
        }
        match kind {
            "file" => Ok(LogSource::File(PathBuf::from(path))),
            "journal" => Ok(LogSource::Journal(Some(PathBuf::from(path)))),
            _ => Err(format!(
                "{s:?}: unknown log source {kind:?}; use \"file:PATH\", \"journal\" or \
                 \"journal:DIRECTORY\""
            )),
        }
    }
}

impl fmt::Display for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogSource::File(p) => write!(f, "file:{}", p.display()),
            LogSource::Journal(None) => f.write_str("journal"),
            LogSource::Journal(Some(p)) => write!(f, "journal:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for LogSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where reading starts when no saved position applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// What is written from now on.
    #[default]
    End,
    /// The whole file (or journal) first.
    Beginning,
}

/// Where the follower's position is kept unless `state_file` says.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/tls-policyd/outcomes.state";

/// Shortest and longest `max_line_length`.
pub const LINE_LENGTH_RANGE: std::ops::RangeInclusive<usize> = 512..=MAX_LINE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesConfig {
    pub log: LogSource,
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    #[serde(default)]
    pub start: StartAt,
    /// How often the log is checked for new lines when idle.
    #[serde(default = "default_poll", with = "crate::util::duration::human")]
    pub poll_interval: Duration,
    /// Only these Postfix instances (`syslog_name`: `postfix`,
    /// `postfix-out`); empty: every instance.
    #[serde(default)]
    pub syslog_names: Vec<String>,
    /// A socketmap lookup governs the deliveries after it this long.
    #[serde(default = "default_hop_window", with = "crate::util::duration::human")]
    pub hop_window: Duration,
    /// A message's RCPT-time decisions govern its deliveries this long.
    #[serde(
        default = "default_message_window",
        with = "crate::util::duration::human"
    )]
    pub message_window: Duration,
    #[serde(default = "default_max_line")]
    pub max_line_length: usize,
}

fn default_state_file() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_FILE)
}
fn default_poll() -> Duration {
    Duration::from_millis(250)
}
fn default_hop_window() -> Duration {
    IndexLimits::default().hop_window
}
fn default_message_window() -> Duration {
    IndexLimits::default().message_window
}
fn default_max_line() -> usize {
    MAX_LINE_LEN
}

impl OutcomesConfig {
    /// Relative paths are taken from the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.state_file);
        match &mut self.log {
            LogSource::File(p) | LogSource::Journal(Some(p)) => resolve(p),
            LogSource::Journal(None) => {}
        }
    }

    /// `"key: problem"` on the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.state_file.as_os_str().is_empty() {
            return Err("state_file: an empty path is not a file".into());
        }
        if let LogSource::File(p) = &self.log
            && p == &self.state_file
        {
            return Err(format!(
                "state_file: {} is the followed log itself",
                p.display()
            ));
        }
        let poll = Duration::from_millis(10)..=Duration::from_secs(60);
        if !poll.contains(&self.poll_interval) {
            return Err(format!(
                "poll_interval: {:?} is not between 10ms and 60s",
                self.poll_interval
            ));
        }
        if self.hop_window < Duration::from_secs(1) {
            return Err("hop_window: shorter than 1s".into());
        }
        if self.message_window < self.hop_window {
            return Err("message_window: shorter than hop_window".into());
        }
        if !LINE_LENGTH_RANGE.contains(&self.max_line_length) {
            return Err(format!(
                "max_line_length: {} is not between {} and {}",
                self.max_line_length,
                LINE_LENGTH_RANGE.start(),
                LINE_LENGTH_RANGE.end()
            ));
        }
        if let Some(bad) = self
            .syslog_names
            .iter()
            .find(|n| n.is_empty() || n.contains(char::is_whitespace) || n.contains('['))
        {
            return Err(format!("syslog_names: {bad:?} is not a syslog_name"));
        }
        Ok(())
    }

    /// The index's windows (its caps are fixed).
    pub fn limits(&self) -> IndexLimits {
        IndexLimits {
            hop_window: self.hop_window,
            message_window: self.message_window,
            ..IndexLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<OutcomesConfig, String> {
        let c: OutcomesConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn sources() {
        let ok = [
            ("journal", LogSource::Journal(None)),
            (
                "journal:/run/log/journal",
                LogSource::Journal(Some("/run/log/journal".into())),
            ),
            (
                "file:/var/log/mail.log",
                LogSource::File("/var/log/mail.log".into()),
            ),
        ];
        for (text, want) in ok {
            let got: LogSource = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
        }
        for bad in ["/var/log/mail.log", "file:", "syslog:/x", "journal:", ""] {
            assert!(bad.parse::<LogSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_limits() {
        let c = parse("log = \"file:/var/log/mail.log\"").unwrap();
        assert_eq!(c.state_file, PathBuf::from(DEFAULT_STATE_FILE));
        assert_eq!(c.start, StartAt::End);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.limits(), IndexLimits::default());
        assert_eq!(c.max_line_length, MAX_LINE_LEN);
        let bad = [
            ("poll_interval = \"9ms\"", "poll_interval"),
            ("poll_interval = \"61s\"", "poll_interval"),
            ("hop_window = \"0s\"", "hop_window"),
            ("message_window = \"10m\"", "message_window"),
            ("max_line_length = 511", "max_line_length"),
            ("max_line_length = 8193", "max_line_length"),
            ("syslog_names = [\"post fix\"]", "syslog_names"),
            ("state_file = \"/var/log/mail.log\"", "state_file"),
        ];
        for (line, key) in bad {
            let e = parse(&format!("log = \"file:/var/log/mail.log\"\n{line}")).unwrap_err();
            assert!(e.starts_with(key), "{line}: {e}");
        }
        for line in [
            "poll_interval = \"10ms\"",
            "poll_interval = \"60s\"",
            "max_line_length = 512",
            "max_line_length = 8192",
        ] {
            parse(&format!("log = \"journal\"\n{line}")).unwrap();
        }
        let e = parse("log = \"file:/x\"\nfollow = true").unwrap_err();
        assert!(e.contains("follow"), "{e}");
    }
}
