//! One log line split into its syslog parts: timestamp, host, program
//! (`postfix/smtp`, `postfix-out/lmtp`, `postfix/submission/smtpd`), pid and
//! message. Accepts the traditional timestamp (`Dec  5 06:47:46`, also
//! zero-padded `Dec 05` as Postfix's postlogd and `journalctl -o short`
//! write it), which has no year, and RFC 3339 (`2026-12-05T06:47:46.123456+00:00`
//! from rsyslog's high-precision format; `+0000` from `journalctl -o
//! short-iso`; `Z`). Pure; never panics; lines over [`MAX_LINE_LEN`] are an
//! error the caller counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::lines::MAX_LINE_LEN;

/// Why a line is not a syslog line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyslogError {
    #[error("log line of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("log line is not UTF-8")]
    NotUtf8,
    #[error("log line has no valid timestamp")]
    BadTimestamp,
    #[error("log line has no host name")]
    MissingHost,
    #[error("log line has no `program[pid]:` tag")]
    MissingTag,
    #[error("log line has an invalid pid")]
    BadPid,
}

/// A date and time as written in the log. Traditional timestamps carry no
/// zone (`offset` is `None`: the logging host's local time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub nanos: u32,
    /// Offset from UTC in seconds, when the timestamp says.
    pub offset: Option<i32>,
}

impl LogTime {
    /// The instant, reading a zone-less timestamp with `local_offset`
    /// seconds east of UTC. `None` before 1970.
    pub fn to_system_time(&self, local_offset: i32) -> Option<SystemTime> {
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset.unwrap_or(local_offset));
        let secs = u64::try_from(secs).ok()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, self.nanos))
    }

    /// An instant in UTC (`offset` 0), as the journal dates its entries.
    /// An instant before 1970 is 1970-01-01T00:00:00Z.
    pub fn from_system_time(t: SystemTime) -> LogTime {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = unix_secs(t);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let of_day = secs.rem_euclid(86_400);
        LogTime {
            year,
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
            nanos: since.subsec_nanos(),
            offset: Some(0),
        }
    }
}

/// Whole seconds since 1970 (0 before).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        Err(_) => 0,
    }
}

/// Where a year-less (traditional) timestamp is placed: the year and month
/// of "now". A line whose month lies more than one month after `month`
/// belongs to the year before (a December line read in January).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YearHint {
    pub year: i32,
    pub month: u8,
}

impl YearHint {
    /// The UTC year and month of `now`.
    pub fn from_system_time(now: SystemTime) -> YearHint {
        let (year, month, _) = civil_from_days(unix_secs(now).div_euclid(86_400));
        YearHint { year, month }
    }

    fn year_for(&self, month: u8) -> i32 {
        if i32::from(month) > i32::from(self.month) + 1 {
            self.year - 1
        } else {
            self.year
        }
    }
}

/// A syslog line, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyslogLine<'a> {
    pub time: LogTime,
    pub host: &'a str,
    /// The whole tag before `[pid]`, e.g. `postfix-out/smtp`.
    pub program: &'a str,
    pub pid: Option<u32>,
    /// Everything after `: `.
    pub message: &'a str,
}

impl<'a> SyslogLine<'a> {
    /// The `syslog_name` part of a Postfix program tag (`postfix`,
    /// `postfix-out`, `postfix/submission`): everything before the last `/`.
    pub fn syslog_name(&self) -> &'a str {
        self.program
            .rsplit_once('/')
            .map_or(self.program, |(name, _)| name)
    }

    /// The daemon part of a Postfix program tag (`smtp`, `lmtp`, `qmgr`):
    /// everything after the last `/`; empty when there is no `/`.
    pub fn daemon(&self) -> &'a str {
        self.program.rsplit_once('/').map_or("", |(_, d)| d)
    }
}

/// Split one line (without its newline). `hint` places year-less
/// timestamps.
pub fn parse_line(line: &[u8], hint: YearHint) -> Result<SyslogLine<'_>, SyslogError> {
    if line.len() > MAX_LINE_LEN {
        return Err(SyslogError::TooLong {
            len: line.len(),
            max: MAX_LINE_LEN,
        });
    }
    let line = std::str::from_utf8(line).map_err(|_| SyslogError::NotUtf8)?;
    let (time, rest) = if line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        parse_rfc3339(line).ok_or(SyslogError::BadTimestamp)?
    } else {
        parse_traditional(line, hint).ok_or(SyslogError::BadTimestamp)?
    };
    let rest = rest.trim_start_matches(' ');
    let (host, rest) = rest.split_once(' ').ok_or(SyslogError::MissingHost)?;
    if host.is_empty() {
        return Err(SyslogError::MissingHost);
    }
    let rest = rest.trim_start_matches(' ');
    let (tag, message) = match rest.split_once(": ") {
        Some((tag, message)) => (tag, message),
        None => (rest.strip_suffix(':').ok_or(SyslogError::MissingTag)?, ""),
    };
    if tag.is_empty() || tag.contains(' ') {
        return Err(SyslogError::MissingTag);
    }
    let (program, pid) = match tag.strip_suffix(']') {
        Some(t) => {
            let (program, pid) = t.split_once('[').ok_or(SyslogError::BadPid)?;
            let pid = parse_digits(pid)
                .and_then(|p| u32::try_from(p).ok())
                .ok_or(SyslogError::BadPid)?;
            (program, Some(pid))
        }
        None => (tag, None),
    };
    if program.is_empty() {
        return Err(SyslogError::MissingTag);
    }
    Ok(SyslogLine {
        time,
        host,
        program,
        pid,
        message,
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mmm dd HH:MM:SS` (day space- or zero-padded), optionally `.frac`.
fn parse_traditional(s: &str, hint: YearHint) -> Option<(LogTime, &str)> {
    let month = MONTHS.iter().position(|m| s.get(..3) == Some(*m))? as u8 + 1;
    let rest = s.get(3..)?.strip_prefix(' ')?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (day, rest) = rest.split_once(' ')?;
    if day.is_empty() || day.len() > 2 {
        return None;
    }
    let day = u8::try_from(parse_digits(day)?).ok()?;
    let (clock, rest) = parse_clock(rest)?;
    Some((dated(hint.year_for(month), month, day, clock, None)?, rest))
}

/// A valid time from its parts.
fn dated(year: i32, month: u8, day: u8, clock: Clock, offset: Option<i32>) -> Option<LogTime> {
    let (hour, minute, second, nanos) = clock;
    let time = LogTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        nanos,
        offset,
    };
    valid(&time).then_some(time)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|+HHMM)`.
fn parse_rfc3339(s: &str) -> Option<(LogTime, &str)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = i32::try_from(parse_digits(s.get(0..4)?)?).ok()?;
    let month = u8::try_from(parse_digits(s.get(5..7)?)?).ok()?;
    let day = u8::try_from(parse_digits(s.get(8..10)?)?).ok()?;
    let (clock, rest) = parse_clock(s.get(11..)?)?;
    let (offset, rest) = if let Some(r) = rest.strip_prefix(['Z', 'z']) {
        (0, r)
    } else {
        let sign = match rest.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let r = rest.get(1..)?;
        let (hh, mm, r) = if r.as_bytes().get(2) == Some(&b':') {
            (r.get(0..2)?, r.get(3..5)?, r.get(5..)?)
        } else {
            (r.get(0..2)?, r.get(2..4)?, r.get(4..)?)
        };
        let (hh, mm) = (parse_digits(hh)?, parse_digits(mm)?);
        if hh > 23 || mm > 59 {
            return None;
        }
        (sign * i32::try_from(hh * 3600 + mm * 60).ok()?, r)
    };
    Some((dated(year, month, day, clock, Some(offset))?, rest))
}

/// Hour, minute, second and nanoseconds.
type Clock = (u8, u8, u8, u32);

/// `HH:MM:SS[.frac]` at the start of `s`; the rest follows.
fn parse_clock(s: &str) -> Option<(Clock, &str)> {
    let b = s.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let hour = u8::try_from(parse_digits(s.get(0..2)?)?).ok()?;
    let minute = u8::try_from(parse_digits(s.get(3..5)?)?).ok()?;
    let second = u8::try_from(parse_digits(s.get(6..8)?)?).ok()?;
    let mut rest = s.get(8..)?;
    let mut nanos = 0u32;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        for (i, d) in r.bytes().take(n).enumerate() {
            if i < 9 {
                nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
            }
        }
        rest = &r[n..];
    }
    Some(((hour, minute, second, nanos), rest))
}

fn valid(t: &LogTime) -> bool {
    (1..=12).contains(&t.month)
        && t.day >= 1
        && t.day <= days_in_month(t.year, t.month)
        && t.hour < 24
        && t.minute < 60
        && t.second <= 60
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// All-ASCII-digit string as a number (at most 9 digits).
pub(crate) fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (i32::try_from(y).unwrap_or(i32::MAX), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line that must parse (dated by [`HINT`]).
    fn line(s: &[u8]) -> SyslogLine<'_> {
        parse_line(s, HINT).unwrap()
    }

    const HINT: YearHint = YearHint {
        year: 2026,
        month: 12,
    };

    #[test]
    fn traditional_space_padded() {
        let l = line(b"Dec  5 06:47:46 mx1 postfix/smtp[123]: 4F2A1: to=<a@b>");
        assert_eq!(
            (
                l.time.year,
                l.time.month,
                l.time.day,
                l.time.hour,
                l.time.second
            ),
            (2026, 12, 5, 6, 46)
        );
        assert_eq!(l.time.offset, None);
        assert_eq!(l.host, "mx1");
        assert_eq!(l.program, "postfix/smtp");
        assert_eq!((l.syslog_name(), l.daemon()), ("postfix", "smtp"));
        assert_eq!(l.pid, Some(123));
        assert_eq!(l.message, "4F2A1: to=<a@b>");
    }

    #[test]
    fn postlogd_zero_padded_and_instances() {
        let l = line(b"Dec 05 07:30:54 out postfix-out/smtp[4991]: hello: world");
        assert_eq!(l.time.day, 5);
        assert_eq!((l.syslog_name(), l.daemon()), ("postfix-out", "smtp"));
        assert_eq!(l.message, "hello: world");
        let l = line(b"Dec 05 07:30:54 h postfix/submission/smtpd[1]: x");
        assert_eq!(
            (l.syslog_name(), l.daemon()),
            ("postfix/submission", "smtpd")
        );
    }

    #[test]
    fn december_read_in_january_is_last_year() {
        let jan = YearHint {
            year: 2027,
            month: 1,
        };
        let l = parse_line(b"Dec 31 23:59:59 h postfix/smtp[1]: x", jan).unwrap();
        assert_eq!(l.time.year, 2026);
        let l = parse_line(b"Jan  1 00:00:01 h postfix/smtp[1]: x", jan).unwrap();
        assert_eq!(l.time.year, 2027);
        // A line one month ahead (clock skew) stays in this year.
        let l = parse_line(b"Feb  1 00:00:01 h postfix/smtp[1]: x", jan).unwrap();
        assert_eq!(l.time.year, 2027);
    }

    #[test]
    fn rfc3339_variants() {
        let l = line(b"2026-12-05T06:47:46.123456+01:00 mx1 postfix/lmtp[9]: m");
        assert_eq!(l.time.nanos, 123_456_000);
        assert_eq!(l.time.offset, Some(3600));
        assert_eq!(l.daemon(), "lmtp");
        let t = l.time.to_system_time(0).unwrap();
        let want = humantime::parse_rfc3339("2026-12-05T05:47:46.123456Z").unwrap();
        assert_eq!(t, want);
        let l = line(b"2026-12-05T06:47:46+0000 mx1 postfix/smtp[9]: m");
        assert_eq!(l.time.offset, Some(0));
        let l = line(b"2026-12-05T06:47:46Z mx1 postfix/smtp[9]: m");
        assert_eq!(
            l.time.to_system_time(7200).unwrap(),
            humantime::parse_rfc3339("2026-12-05T06:47:46Z").unwrap()
        );
        let l = line(b"2026-12-05T06:47:46-05:30 h p: m");
        assert_eq!(l.time.offset, Some(-(5 * 3600 + 30 * 60)));
        assert_eq!(l.pid, None);
    }

    #[test]
    fn traditional_to_system_time_uses_local_offset() {
        let l = line(b"Dec  5 06:47:46 h postfix/smtp[1]: x");
        assert_eq!(
            l.time.to_system_time(3600).unwrap(),
            humantime::parse_rfc3339("2026-12-05T05:47:46Z").unwrap()
        );
    }

    #[test]
    fn year_hint_from_system_time() {
        for (at, year, month) in [
            ("2027-01-01T00:00:00Z", 2027, 1),
            ("2024-02-29T23:59:59Z", 2024, 2),
        ] {
            let t = humantime::parse_rfc3339(at).unwrap();
            assert_eq!(YearHint::from_system_time(t), YearHint { year, month });
        }
    }

    #[test]
    fn errors() {
        use SyslogError::*;
        let long = vec![b'a'; MAX_LINE_LEN + 1];
        assert!(matches!(parse_line(&long, HINT), Err(TooLong { .. })));
        assert_eq!(parse_line(b"\xff", HINT), Err(NotUtf8));
        assert_eq!(parse_line(b"", HINT), Err(BadTimestamp));
        for bad in [
            &b"Foo  5 06:47:46 h p: m"[..],
            &b"Feb 30 06:47:46 h p: m"[..],
            &b"Dec  5 24:47:46 h p: m"[..],
            &b"2026-13-05T06:47:46Z h p: m"[..],
            &b"2026-12-05T06:47:46 h p: m"[..],
        ] {
            assert_eq!(parse_line(bad, HINT), Err(BadTimestamp), "{bad:?}");
        }
        assert_eq!(parse_line(b"Dec  5 06:47:46 h", HINT), Err(MissingHost));
        assert_eq!(
            parse_line(b"Dec  5 06:47:46 h no tag", HINT),
            Err(MissingTag)
        );
        assert_eq!(parse_line(b"Dec  5 06:47:46 h p[x]: m", HINT), Err(BadPid));
        assert_eq!(parse_line(b"Dec  5 06:47:46 h p[]: m", HINT), Err(BadPid));
        let l = line(b"Dec  5 06:47:46 h postfix/smtp[1]:");
        assert_eq!(l.message, "");
    }

    #[test]
    fn log_time_from_system_time() {
        for at in [
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59.999999Z",
            "2026-12-05T06:47:46.123456789Z",
            "2027-01-01T00:00:00Z",
        ] {
            let t = humantime::parse_rfc3339(at).unwrap();
            let l = LogTime::from_system_time(t);
            assert_eq!(l.offset, Some(0), "{at}");
            assert_eq!(l.to_system_time(3600), Some(t), "{at}");
        }
        let l =
            LogTime::from_system_time(humantime::parse_rfc3339("2026-12-05T06:47:46Z").unwrap());
        assert_eq!(
            (l.year, l.month, l.day, l.hour, l.minute, l.second, l.nanos),
            (2026, 12, 5, 6, 47, 46, 0)
        );
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            LogTime::from_system_time(before).to_system_time(0),
            Some(UNIX_EPOCH)
        );
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000i64, 0, 59, 365, 10_957, 20_792, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
