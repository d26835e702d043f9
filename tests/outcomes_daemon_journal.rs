//! The outcome follower in the running daemon with the journal as its log
//! source (`log = "journal:DIR"`): journal files that
//! systemd-journal-remote writes (`tests/common/journal.rs`) with Postfix
//! 3.7's delivery messages as MESSAGE, logged by `postfix/smtp` with this
//! test's pid (this test is the process that makes the socketmap lookups
//! over the unix socket). Checked: the outcome records and their
//! verdicts; the saved state names the journal and the cursor of the last
//! mail entry; after SIGTERM, entries written while the daemon was down
//! and a restart, every delivery is recorded exactly once. A directory
//! with no journal file yet (a log host before its first entry) is waited
//! on, not an error, and what its first file holds is read whole even
//! with `start = "end"`: all of it was written after the daemon started.
//! A journalctl that keeps failing (a stand-in) is one error in the log,
//! and the follower is `failing` in `/health` until one runs.
//!
//! Needs journalctl and systemd-journal-remote; fails when they are
//! missing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::journal::{Fields, journal_remote, mail_entry, write_journal};
use common::maillog::{not_offered, sent_over_tls, sent_plaintext};
use common::{Client, Daemon, Options, WAIT, config_listening, read_json_lines};
use serde_json::Value;

const POLICY: &str = "\
[[rule]]
domains = [\"forced.test\"]
tls = \"encrypt\"

[[rule]]
domains = [\"verified.test\"]
tls = \"secure\"
";

/// The follower on the journal directory `journal`, starting as `start`
/// says when it has no saved cursor.
fn config(journal: &Path, start: &str) -> String {
    config_listening("unix:socketmap.sock", "policy", "")
        + &format!(
            "\n[outcomes]\n\
             log = \"journal:{}\"\n\
             state_file = \"outcomes.state\"\n\
             start = \"{start}\"\n\
             poll_interval = \"20ms\"\n",
            journal.display()
        )
}

/// Journal entries stamped now, one a microsecond after the other.
struct Entries {
    last_us: u64,
}

impl Entries {
    fn now_us(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        self.last_us = now.max(self.last_us + 1);
        self.last_us
    }

    /// `messages` as mail entries of `postfix/smtp[pid]` on host `out`.
    fn postfix(&mut self, pid: u32, messages: &[String]) -> Vec<Fields> {
        messages
            .iter()
            .map(|m| {
                let t = self.now_us();
                mail_entry(t, t, "out", "postfix/smtp", pid, m.as_bytes())
            })
            .collect()
    }

    /// An entry of another facility (daemon), which the follower never
    /// sees.
    fn other(&mut self) -> Fields {
        let t = self.now_us();
        let mut e = mail_entry(t, t, "out", "systemd", 1, b"Started postfix.service.");
        e[4].1 = b"3".to_vec();
        e
    }
}

/// The delivery records in the decision log, once one for `last` (a queue
/// id) is there: (queue id, verdict) in order, and the records.
fn deliveries_until(d: &Daemon, last: &str) -> (Vec<(String, String)>, Vec<Value>) {
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let got: Vec<Value> = read_json_lines(&d.decisions_path())
            .into_iter()
            .filter(|r| r["frontend"] == "delivery")
            .collect();
        if got.iter().any(|r| r["queue_id"] == last) {
            let pairs = got
                .iter()
                .map(|r| {
                    (
                        r["queue_id"].as_str().unwrap().to_string(),
                        r["verdict"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            return (pairs, got);
        }
        assert!(
            Instant::now() < deadline,
            "no delivery record for {last}; records: {got:?}\nstderr:\n{}",
            d.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(q, v)| (q.to_string(), v.to_string()))
        .collect()
}

/// The cursor of the last mail entry in `dir`, as journalctl gives it.
fn last_mail_cursor(dir: &Path) -> String {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(dir)
        .args([
            "--output=json",
            "--lines=1",
            "--no-pager",
            "SYSLOG_FACILITY=2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["__CURSOR"].as_str().unwrap().to_string()
}

fn saved_state(d: &Daemon) -> Value {
    let text = std::fs::read_to_string(d.dir().join("outcomes.state")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn journal_deliveries_are_judged_saved_by_cursor_and_recorded_once_across_a_restart() {
    let remote = journal_remote();
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("remote.journal");
    let mut entries = Entries { last_us: 0 };
    // A log host's journal already holds other entries.
    write_journal(&remote, &file, [&entries.other()]);

    let mut d = Daemon::start_frontend(
        &config(&dir, "beginning"),
        POLICY,
        Options::default(),
        "socketmap",
    );
    let socket = d.dir().join("socketmap.sock");
    let mut c = Client::connect_unix(&socket);
    assert!(
        c.query("tls_policy", "forced.test")
            .starts_with("OK encrypt")
    );
    assert!(
        c.query("tls_policy", "verified.test")
            .starts_with("OK secure")
    );
    let me = std::process::id();
    let lookups = common::wait_for_json_lines(&d.decisions_path(), 2);
    assert_eq!(lookups[1]["client_pid"], me, "{:?}", lookups[1]);

    let mut batch = entries.postfix(me, &sent_over_tls("Verified", "1A", "a@verified.test"));
    batch.extend(entries.postfix(me, &sent_plaintext("2B", "a@forced.test")));
    batch.push(entries.other());
    batch.extend(entries.postfix(me, &not_offered("3C", "b@forced.test")));
    write_journal(&remote, &file, &batch);
    let (got, records) = deliveries_until(&d, "3C");
    assert_eq!(
        got,
        pairs(&[("1A", "verified"), ("2B", "violation"), ("3C", "held")])
    );
    for r in &records {
        assert_eq!(r["decided_by"], "socketmap", "{r}");
        assert_eq!(r["transport"], "postfix/smtp", "{r}");
    }
    assert_eq!(records[0]["tls_trust"], "verified");
    assert_eq!(records[0]["level"], "secure");
    assert_eq!(records[1]["tls_trust"], "none");
    assert_eq!(records[2]["tls_failure"], "not-offered");
    let alarm = d.wait_for_line(|l| l.contains("ERROR") && l.contains("needs an operator"));
    assert!(alarm.contains("2B"), "{alarm}");

    // Stopped: the state names the journal and the last mail entry read.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let state = saved_state(&d);
    assert_eq!(state["journal"], dir.to_str().unwrap(), "{state}");
    let cursor = last_mail_cursor(&dir);
    assert_eq!(state["cursor"], cursor.as_str(), "{state}");

    // Written while the daemon was down (the same verdicts whether the
    // rule or a lookup after the restart governs them), then after the
    // restart and a new lookup.
    let mut down = entries.postfix(me, &sent_plaintext("4D", "c@forced.test"));
    down.extend(entries.postfix(me, &not_offered("5E", "d@forced.test")));
    write_journal(&remote, &file, &down);
    d.restart("socketmap");
    let mut c = Client::connect_unix(&socket);
    assert!(
        c.query("tls_policy", "verified.test")
            .starts_with("OK secure")
    );
    let later = entries.postfix(me, &sent_over_tls("Verified", "6F", "b@verified.test"));
    write_journal(&remote, &file, &later);
    let (got, records) = deliveries_until(&d, "6F");
    assert_eq!(
        got,
        pairs(&[
            ("1A", "verified"),
            ("2B", "violation"),
            ("3C", "held"),
            ("4D", "violation"),
            ("5E", "held"),
            ("6F", "verified"),
        ])
    );
    assert_eq!(records[5]["decided_by"], "socketmap", "{}", records[5]);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let state = saved_state(&d);
    let cursor_after = last_mail_cursor(&dir);
    assert_ne!(cursor_after, cursor);
    assert_eq!(state["cursor"], cursor_after.as_str(), "{state}");
}

#[test]
fn an_empty_journal_directory_is_waited_on_and_its_first_file_read_whole() {
    let remote = journal_remote();
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    let mut d = Daemon::start_frontend(
        &config(&dir, "end"),
        POLICY,
        Options::default(),
        "socketmap",
    );
    let mut c = Client::connect_unix(&d.dir().join("socketmap.sock"));
    assert!(
        c.query("tls_policy", "forced.test")
            .starts_with("OK encrypt")
    );
    common::wait_for_json_lines(&d.decisions_path(), 1);
    d.wait_for_line(|l| l.contains("outcomes: following the journal"));
    // Long enough for a journalctl started on the empty directory to
    // have given up.
    std::thread::sleep(Duration::from_millis(300));
    let me = std::process::id();
    let mut entries = Entries { last_us: 0 };
    let mut batch = vec![entries.other()];
    batch.extend(entries.postfix(me, &sent_plaintext("1A", "a@forced.test")));
    batch.extend(entries.postfix(me, &not_offered("2B", "b@forced.test")));
    write_journal(&remote, &dir.join("remote.journal"), &batch);
    let (got, _) = deliveries_until(&d, "2B");
    assert_eq!(got, pairs(&[("1A", "violation"), ("2B", "held")]));
    let failed = d.find_line(|l| l.contains("cannot read the journal"));
    assert!(failed.is_none(), "{failed:?}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    assert_eq!(saved_state(&d)["cursor"], last_mail_cursor(&dir).as_str());
}

/// The outcome follower's part of `/health` from the metrics listener at
/// `addr` (`...:PORT`).
fn follower_health(addr: &str) -> Value {
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    let health: Value = serde_json::from_str(body).unwrap();
    health["outcomes"].clone()
}

#[test]
fn a_failing_journalctl_is_one_error_and_failing_until_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("remote.journal"), "").unwrap();
    // A journalctl that says why and exits, each run a line in `runs`.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let runs = tmp.path().join("runs");
    std::fs::write(
        bin.join("journalctl"),
        format!(
            "#!/bin/sh\necho run >> {}\necho 'stand-in: cannot read' >&2\nexit 1\n",
            runs.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("journalctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let opts = Options {
        env: vec![("PATH".into(), path)],
        ..Options::default()
    };
    let cfg = config(&dir, "end") + "\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n";
    let d = Daemon::start_frontend(&cfg, POLICY, opts, "socketmap");
    let m = d.listening("metrics");
    d.wait_for_line(|l| l.contains("cannot read the journal"));
    let deadline = Instant::now() + WAIT;
    while follower_health(&m)["state"] != "failing" {
        assert!(Instant::now() < deadline, "{}", follower_health(&m));
        std::thread::sleep(Duration::from_millis(10));
    }
    // From then until it was run again (after a second) and for a while
    // after, the follower is failing, with journalctl's reason.
    let mut quiet_until = None;
    loop {
        let h = follower_health(&m);
        assert_eq!(h["state"], "failing", "{h}");
        assert!(
            h["problem"]
                .as_str()
                .unwrap()
                .contains("stand-in: cannot read"),
            "{h}"
        );
        let n = std::fs::read_to_string(&runs).unwrap().lines().count();
        if n >= 2 && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(300));
        }
        if quiet_until.is_some_and(|t| Instant::now() > t) {
            break;
        }
        assert!(Instant::now() < deadline, "journalctl ran {n} times");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = d.stderr_text();
    let errors = text
        .lines()
        .filter(|l| l.contains("cannot read the journal"))
        .count();
    assert_eq!(errors, 1, "{text}");
    assert!(!text.contains("runs again"), "{text}");
}
