//! Real journal files for the tests of the journal as the outcome
//! follower's log source: systemd-journal-remote writes them from journal
//! export format, as it does on a log host, and journalctl reads them.
//!
//! Needs journalctl and systemd-journal-remote (Debian: the package
//! `systemd-journal-remote`, which `scripts/test-all` installs);
//! [`journal_remote`] fails the test when they are missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The boot id of every entry written here (one boot).
pub const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// One entry: its fields in journal export format's order.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

/// systemd-journal-remote, where Debian installs it or on `PATH`; checks
/// that journalctl runs too.
pub fn journal_remote() -> PathBuf {
    let found = ["/lib/systemd", "/usr/lib/systemd"]
        .iter()
        .map(|d| Path::new(d).join("systemd-journal-remote"))
        .find(|p| p.exists())
        .or_else(|| {
            let out = Command::new("sh")
                .args(["-c", "command -v systemd-journal-remote"])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?;
            (!path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
        });
    let ok = Command::new("journalctl").arg("--version").output();
    assert!(
        ok.is_ok_and(|o| o.status.success()),
        "journalctl not found: this test needs systemd's journalctl"
    );
    found.expect(
        "systemd-journal-remote not found: this test needs it to write journal files \
         (apt-get install systemd-journal-remote; scripts/test-all installs it)",
    )
}

/// A mail entry (`SYSLOG_FACILITY=2`) of `program[pid]` on `host`, written
/// at `realtime_us` (µs since 1970) and `monotonic_us` in [`BOOT_ID`]. The
/// facility is field 4.
pub fn mail_entry(
    realtime_us: u64,
    monotonic_us: u64,
    host: &str,
    program: &str,
    pid: u32,
    message: &[u8],
) -> Fields {
    vec![
        ("__REALTIME_TIMESTAMP", realtime_us.to_string().into_bytes()),
        (
            "__MONOTONIC_TIMESTAMP",
            monotonic_us.to_string().into_bytes(),
        ),
        ("_BOOT_ID", BOOT_ID.into()),
        ("_HOSTNAME", host.into()),
        ("SYSLOG_FACILITY", b"2".to_vec()),
        ("SYSLOG_IDENTIFIER", program.into()),
        ("SYSLOG_PID", pid.to_string().into_bytes()),
        ("_PID", pid.to_string().into_bytes()),
        ("MESSAGE", message.to_vec()),
    ]
}

/// Journal export format: `NAME=value` lines, a value with a newline or
/// not UTF-8 as `NAME\n`, its length (64 bits, little endian), the bytes
/// and `\n`; a blank line after each entry.
pub fn export<'a>(entries: impl IntoIterator<Item = &'a Fields>) -> Vec<u8> {
    let mut out = Vec::new();
    for fields in entries {
        for (name, value) in fields {
            if value.contains(&b'\n') || std::str::from_utf8(value).is_err() {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Write `entries` to the journal file `file` (appended when it exists)
/// with systemd-journal-remote at `remote`.
pub fn write_journal<'a>(
    remote: &Path,
    file: &Path,
    entries: impl IntoIterator<Item = &'a Fields>,
) {
    let mut child = Command::new(remote)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&export(entries))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        remote.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
