//! The outcome follower in the running daemon: socketmap lookups over a
//! unix socket (the asking process named by SO_PEERCRED), Postfix's lines
//! for that process appended to a followed mail log, and the outcome
//! records, verdicts, metrics and status that come of them; then a restart
//! and a rotation by rename with lines written while the daemon was down
//! (the decisions made before the restart read back from the log); a
//! connection and a lookup from before a restart govern the delivery
//! logged after it.
//! The lines are Postfix 3.7's own (tests/fixtures/postfix-logs/), with
//! this test's pid, since this test is the process that asked.

mod common;

use common::maillog::{self, append, log_lines, sent_over_tls, sent_plaintext, stamp};
use common::{Client, Daemon, Options, config_listening, wait_for_json_lines};
use serde_json::Value;

const POLICY: &str = "\
[[rule]]
domains = [\"forced.test\"]
tls = \"encrypt\"

[[rule]]
domains = [\"verified.test\"]
tls = \"secure\"
";

fn outcomes_config() -> String {
    config_listening("unix:socketmap.sock", "policy", "")
        + "\n[outcomes]\n\
           log = \"file:mail.log\"\n\
           state_file = \"outcomes.state\"\n\
           start = \"beginning\"\n\
           poll_interval = \"20ms\"\n"
}

fn verified(pid: u32, queue_id: &str) -> String {
    log_lines(pid, &sent_over_tls("Verified", queue_id, "a@verified.test"))
}

fn plaintext(pid: u32, queue_id: &str) -> String {
    log_lines(pid, &sent_plaintext(queue_id, "a@forced.test"))
}

fn not_offered(pid: u32, queue_id: &str) -> String {
    log_lines(pid, &maillog::not_offered(queue_id, "b@forced.test"))
}

fn deliveries(d: &Daemon, n: usize) -> Vec<Value> {
    let all = wait_for_json_lines(&d.decisions_path(), n);
    all.into_iter()
        .filter(|r| r["frontend"] == "delivery")
        .collect()
}

fn verdicts(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["queue_id"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn deliveries_are_judged_against_the_lookup_of_the_process_that_asked() {
    let mut d = Daemon::start_frontend(&outcomes_config(), POLICY, Options::default(), "socketmap");
    let log = d.dir().join("mail.log");
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
    let lookups = wait_for_json_lines(&d.decisions_path(), 2);
    let me = std::process::id();
    assert_eq!(lookups[0]["client_pid"], me, "{:?}", lookups[0]);

    // Lines of other programs and a line cut off mid-way come too.
    let now = stamp();
    append(
        &log,
        &format!(
            "{now} out postfix/qmgr[77]: 1A: from=<s@example.org>, size=300, nrcpt=1 (queue active)\n\
             not a syslog line\n{}{}{}",
            verified(me, "1A"),
            plaintext(me, "2B"),
            not_offered(me, "3C")
        ),
    );
    let got = deliveries(&d, 5);
    assert_eq!(
        verdicts(&got),
        [
            ("1A".into(), "verified".into()),
            ("2B".into(), "violation".into()),
            ("3C".into(), "held".into())
        ]
    );
    for r in &got {
        assert_eq!(r["decided_by"], "socketmap", "{r}");
        assert_eq!(r["transport"], "postfix/smtp");
    }
    assert_eq!(got[0]["level"], "secure");
    assert_eq!(got[0]["tls_trust"], "verified");
    assert_eq!(got[1]["tls_trust"], "none");
    assert_eq!(got[2]["tls_failure"], "not-offered");
    // The violation is an alarm: logged at error level with what to check.
    let alarm = d.wait_for_line(|l| l.contains("ERROR") && l.contains("needs an operator"));
    assert!(
        alarm.contains("2B") && alarm.contains("smtp_tls_policy_maps"),
        "{alarm}"
    );

    // Stopped, the log rotated by rename and written on meanwhile: after
    // the restart the rest of the old file, then the new one, each line
    // once.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    append(&log, &plaintext(me, "4D"));
    std::fs::rename(&log, d.dir().join("mail.log.1")).unwrap();
    append(&log, &not_offered(me, "5E"));
    d.restart("socketmap");
    let got = deliveries(&d, 7);
    assert_eq!(
        verdicts(&got),
        [
            ("1A".into(), "verified".into()),
            ("2B".into(), "violation".into()),
            ("3C".into(), "held".into()),
            ("4D".into(), "violation".into()),
            ("5E".into(), "held".into()),
        ]
    );
    // The lookups made before the restart were read back from the
    // decision log: they still govern that process's deliveries.
    assert_eq!(got[3]["decided_by"], "socketmap", "{}", got[3]);
    assert_eq!(got[4]["decided_by"], "socketmap", "{}", got[4]);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tls-policyd"))
        .args([
            "log",
            "--outcomes",
            "--verdict",
            "violation",
            "--json",
            "--file",
        ])
        .arg(d.decisions_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn a_connection_and_a_lookup_from_before_a_restart_govern_the_delivery_logged_after_it() {
    let mut d = Daemon::start_frontend(&outcomes_config(), POLICY, Options::default(), "socketmap");
    let log = d.dir().join("mail.log");
    let mut c = Client::connect_unix(&d.dir().join("socketmap.sock"));
    assert!(
        c.query("tls_policy", "verified.test")
            .starts_with("OK secure")
    );
    wait_for_json_lines(&d.decisions_path(), 1);
    let me = std::process::id();
    // The smtp process's TLS line is logged; then tls-policyd stops, and
    // the delivery over that connection is logged while it is down.
    let lines = verified(me, "6F");
    let (tls, delivery) = lines.split_at(lines.find('\n').unwrap() + 1);
    append(&log, tls);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let state = std::fs::read_to_string(d.dir().join("outcomes.state")).unwrap();
    assert!(state.contains("\"connections\""), "{state}");
    append(&log, delivery);
    d.restart("socketmap");
    let got = deliveries(&d, 2);
    assert_eq!(verdicts(&got), [("6F".into(), "verified".into())]);
    let r = &got[0];
    assert_eq!(r["tls_trust"], "verified", "{r}");
    assert_eq!(r["decided_by"], "socketmap", "{r}");
    assert_eq!(r["level"], "secure", "{r}");
    assert!(
        d.find_line(|l| l.contains("outcomes: decisions read back from the decision log"))
            .is_some_and(|l| l.contains("lookups=1")),
        "{}",
        d.stderr_text()
    );
}
