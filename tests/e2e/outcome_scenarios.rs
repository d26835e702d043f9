//! The outcome follower's scenarios: a transport that routes around the
//! socketmap (named by doctor, its plaintext delivery a violation), a
//! socketmap Postfix cannot reach (policy-unreachable), and Postfix's log
//! rotated by rename and by copytruncate while mail flows.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::postfix::{PostfixOptions, SENDER};
use crate::common::{self, Client};
use crate::lab::*;

/// A transport that routes `domain` around the socketmap: `-o
/// smtp_tls_policy_maps=` `extra`, chosen by `transport_maps`.
fn transport_for(opts: PostfixOptions, name: &str, domain: &str, extra: &str) -> PostfixOptions {
    opts.master_line(&format!(
        "{name} unix - - n - - smtp\n  -o syslog_name=postfix/{name}\n{extra}"
    ))
    .file("transport", &format!("{domain} {name}:\n"))
    .set("transport_maps", "texthash:$config_directory/transport")
}

#[test]
fn e2e_a_transport_around_the_map_is_named_by_doctor_and_its_plaintext_is_a_violation() {
    let Some(mut lab) = Lab::start_with("e2e-vio", |o| {
        transport_for(
            o,
            "plainout",
            "forced-bypass.test",
            "  -o smtp_tls_policy_maps=\n  -o smtp_tls_security_level=may",
        )
    }) else {
        return;
    };
    lab.bypassed.push("forced-bypass.test");
    // Before any mail: doctor names the transport, with its fix.
    let (code, report) = lab.doctor();
    let problems: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "problem")
        .collect();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(problems.len(), 1, "{report:#}");
    let text = problems[0]["text"].as_str().unwrap();
    assert!(
        text.contains("master.cf service plainout/unix (-o smtp_tls_policy_maps)")
            && text.contains("bypasses tls-policyd"),
        "{text}"
    );
    assert_eq!(
        problems[0]["fix"],
        format!(
            "postconf -c {} -PX 'plainout/unix/smtp_tls_policy_maps'",
            lab.pf.config_dir().display()
        )
    );
    assert!(
        !lab.pf.log_text().contains(" status="),
        "mail went out before doctor"
    );

    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-bypass.test", "b@forced-tls.test"]);
    let line = lab.status(&id, "a@forced-bypass.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    assert!(!received(&lab.plain, "a@forced-bypass.test").tls);
    // The other recipient, through the map: encrypted.
    assert!(received(&lab.tls, "b@forced-tls.test").tls);

    let r = lab.outcome(&id, "a@forced-bypass.test", "sent");
    assert_eq!(r["verdict"], "violation", "{r}");
    assert_eq!(r["tls_trust"], "none", "{r}");
    // The milter's decision for the message governed it: forced, encrypt.
    assert_eq!(r["decided_by"], "milter", "{r}");
    assert_eq!(r["tls"], "forced", "{r}");
    assert_eq!(r["level"], "encrypt", "{r}");
    assert_eq!(r["transport"], "postfix/plainout/smtp", "{r}");
    let r = lab.outcome(&id, "b@forced-tls.test", "sent");
    assert_eq!(r["verdict"], "encrypted", "{r}");
    assert_eq!(r["decided_by"], "socketmap", "{r}");

    let alarm = lab
        .daemon
        .wait_for_line(|l| l.contains("ERROR") && l.contains("delivery needs an operator"));
    assert!(
        alarm.contains(&id) && alarm.contains("violation"),
        "{alarm}"
    );
    assert_eq!(
        lab.metric("tls_policyd_delivery_alarms_total{alarm=\"violation\"}"),
        1
    );
    assert_eq!(
        lab.metric(
            "tls_policyd_deliveries_total{verdict=\"violation\",tls_trust=\"none\",decision=\"forced\"}"
        ),
        1
    );
    let (code, text) = lab.status_report();
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("): degraded\n"), "{text}");
    assert!(
        text.contains("violation: 1") && text.contains(&id),
        "{text}"
    );
    lab.check_log_matches_postfix(true);
    summary(
        "a transport around the map: named by doctor first; its plaintext delivery a violation, alarmed",
    );
}

#[test]
fn e2e_a_socketmap_postfix_cannot_reach_defers_and_is_an_alarm() {
    let Some(mut lab) = Lab::start_with("e2e-unr", |o| {
        transport_for(
            o,
            "nomap",
            "forced-unreach.test",
            "  -o smtp_tls_policy_maps=socketmap:unix:tls-policyd/gone.sock:tls_policy",
        )
    }) else {
        return;
    };
    lab.bypassed.push("forced-unreach.test");
    // The daemon answers for the domain (as to postmap -q): an answer the
    // transport never gets.
    let mut map = Client::from_tcp(
        lab.ns
            .tcp_connect(("127.0.0.1", lab.daemon.port()))
            .unwrap(),
    );
    assert_eq!(map.query("tls_policy", "forced-unreach.test"), "OK encrypt");
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-unreach.test", "b@forced-tls.test"]);
    let line = lab.status(&id, "a@forced-unreach.test", mark);
    assert!(
        line.contains("status=deferred")
            && line.contains("dsn=4.7.5")
            && line.contains("client TLS configuration problem"),
        "{line}"
    );
    let line = lab.status(&id, "b@forced-tls.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    assert!(received(&lab.tls, "b@forced-tls.test").tls);
    never_received(&lab.tls, "a@forced-unreach.test");

    let r = lab.outcome(&id, "a@forced-unreach.test", "deferred");
    assert_eq!(r["verdict"], "policy-unreachable", "{r}");
    // Joined with what it should have had: the milter's decision at
    // receipt, not the lookup it never got.
    assert_eq!(r["decided_by"], "milter", "{r}");
    assert_eq!(r["level"], "encrypt", "{r}");
    assert_eq!(r["tls_failure"], "config-problem", "{r}");
    assert_eq!(r["dsn"], "4.7.5", "{r}");
    assert_eq!(r["transport"], "postfix/nomap/smtp", "{r}");
    let alarm = lab
        .daemon
        .wait_for_line(|l| l.contains("ERROR") && l.contains("delivery needs an operator"));
    assert!(
        alarm.contains(&id) && alarm.contains("policy-unreachable"),
        "{alarm}"
    );
    assert_eq!(
        lab.metric("tls_policyd_delivery_alarms_total{alarm=\"policy-unreachable\"}"),
        1
    );
    let (code, text) = lab.status_report();
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("policy-unreachable: 1") && text.contains(&id),
        "{text}"
    );
    lab.check_log_matches_postfix(true);
    summary(
        "a socketmap Postfix cannot reach: deferred 4.7.5, never sent, policy-unreachable alarmed",
    );
}

/// Status lines (`status=`) in `text` for any of the queue ids `ids`.
fn status_lines_of(text: &str, ids: &[String]) -> usize {
    text.lines()
        .filter(|l| l.contains(" status=") && ids.iter().any(|id| l.contains(&format!(": {id}: "))))
        .count()
}

impl Lab {
    /// The instance's postlogd process (it runs while mail flows).
    fn postlogd(&self) -> i32 {
        let found: Vec<i32> = self
            .ns
            .pids()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "postlogd")
            })
            .collect();
        assert_eq!(found.len(), 1, "postlogd processes: {found:?}");
        found[0]
    }

    /// Send a batch of `n` messages (`tag1@…` on) and, once a third of
    /// them arrived, run `rotate`; returns the queue ids once all arrived
    /// and Postfix logged each delivery. Panics unless the rotated file
    /// and the file after it both hold deliveries of the batch.
    fn rotate_during_batch(&self, tag: &str, n: usize, rotate: impl FnOnce()) -> Vec<String> {
        let before = self.received_count();
        let rotated_before = self.pf.rotated_logs();
        let sender = self.send_batch(batch_rcpts(tag, n), Duration::from_millis(40));
        self.wait_received(before + n / 3);
        rotate();
        let ids = sender.join().expect("the batch sender");
        self.wait_received(before + n);
        let deadline = std::time::Instant::now() + DELIVERY;
        while status_lines_of(&self.pf.log_text(), &ids) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "deliveries not logged"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let new: Vec<PathBuf> = self
            .pf
            .rotated_logs()
            .into_iter()
            .filter(|p| {
                !rotated_before
                    .iter()
                    .any(|b| p.with_extension("") == b.with_extension("") || p == b)
            })
            .collect();
        assert_eq!(new.len(), 1, "{new:?} after {rotated_before:?}");
        let old = status_lines_of(&common::postfix::read_log(&new[0]), &ids);
        let live = status_lines_of(&common::postfix::read_log(&self.pf.log_path()), &ids);
        assert!(
            old > 0 && live > 0 && old + live == n,
            "{tag}: {old} deliveries in {}, {live} in the new log",
            new[0].display()
        );
        ids
    }
}

#[test]
fn e2e_the_log_rotated_during_delivery_loses_and_repeats_no_outcome() {
    let Some(lab) = Lab::start("e2e-rot") else {
        return;
    };
    const N: usize = 30;
    // By rename: `postfix logrotate` moves the file, reloads (postlogd
    // opens a new one) and gzips the old one a second later.
    let renamed = lab.rotate_during_batch("r", N, || {
        lab.pf.run_ok("postfix", &["logrotate"]);
    });
    // By copytruncate: Debian's logrotate copies the file and empties it;
    // postlogd writes on into the same file.
    let conf = lab.dir.path().join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n    copytruncate\n    rotate 2\n    nocompress\n}}\n",
            lab.pf.log_path().display()
        ),
    )
    .unwrap();
    let state = lab.dir.path().join("logrotate.state");
    let truncated = lab.rotate_during_batch("c", N, || {
        // What is written between the copy and the truncation is lost
        // (logrotate(8) says so): postlogd is held for that moment. Mail
        // goes on; its log lines wait in postlogd's socket.
        let postlogd = lab.postlogd();
        // SAFETY: kill(2) on the instance's own postlogd.
        unsafe { libc::kill(postlogd, libc::SIGSTOP) };
        let out = common::run_with_timeout(
            std::process::Command::new("logrotate")
                .arg("-f")
                .arg("-s")
                .arg(&state)
                .arg(&conf),
        );
        // SAFETY: as above.
        unsafe { libc::kill(postlogd, libc::SIGCONT) };
        assert!(
            out.status.success(),
            "logrotate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let rotated = lab.pf.rotated_logs();
    assert!(rotated[0].to_string_lossy().ends_with(".gz"), "{rotated:?}");
    assert!(
        rotated[1].to_string_lossy().ends_with("maillog.1"),
        "{rotated:?}"
    );
    // Each delivery once: the check counts records against every line of
    // the rotated files and the log, and against what the servers got.
    let records = lab.check_log_matches_postfix(true);
    for ids in [&renamed, &truncated] {
        let sent = records
            .iter()
            .filter(|r| r["status"] == "sent" && ids.iter().any(|id| r["queue_id"] == id.as_str()))
            .count();
        assert_eq!(sent, N);
    }
    assert_eq!(lab.received_count(), 2 * N);
    summary(
        "the log rotated by rename and by copytruncate while mail flows: each delivery judged once",
    );
}
