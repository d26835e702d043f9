//! `tls-policyd doctor` against Postfix's own `postconf` and `postmap`:
//! a Postfix configuration directory wired as the README says passes; a
//! planted master.cf transport that bypasses the map, a chrooted client
//! that cannot reach the socket, a policy check after permit_mynetworks,
//! a `smtp_tls_loglevel` below 1 with the outcome follower on, a
//! `relayhost` or `transport_maps` next hop no rule names, an lmtp(8)
//! service, and a daemon that is not running are each named, and the fix
//! doctor prints, run as printed, makes the problem go away.
//!
//! The daemon and doctor (and so postmap) run inside a network namespace
//! with only `lo`. Needs root and Postfix (`.ci/run` installs it).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::netns::Netns;
use common::{Daemon, Options};

const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["bank.example"]
tls = "forced"
reason = "never in plaintext"
"#;

/// Debian's master.cf lines that matter here: smtpd and smtp chrooted.
const MASTER: &str = "\
smtp      inet  n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
  -o syslog_name=postfix/$service_name
";

struct Lab {
    ns: Netns,
    daemon: Daemon,
    postfix: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Lab {
    fn start() -> Option<Lab> {
        let ns = Netns::for_test("doctor", &["postconf", "postmap"])?;
        let config_text = "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n\
             [policy_server]\nlisten = \"inet:127.0.0.1:0\"\n\
             [milter]\nlisten = \"inet:127.0.0.1:0\"\n\
             [policy]\nfile = \"policy.toml\"\n";
        let daemon = Daemon::start_with(
            config_text,
            POLICY,
            Options {
                netns: Some(ns.name().to_string()),
                ..Options::default()
            },
        );
        // doctor reads a config naming the ports the daemon got.
        let (s, p, m) = (
            daemon.listening("socketmap"),
            daemon.listening("policy"),
            daemon.listening("milter"),
        );
        let config = daemon.dir().join("doctor.toml");
        std::fs::write(
            &config,
            format!(
                "[socketmap]\nlisten = \"{s}\"\n[policy_server]\nlisten = \"{p}\"\n\
                 [milter]\nlisten = \"{m}\"\n[policy]\nfile = \"policy.toml\"\n"
            ),
        )
        .unwrap();
        let postfix = tempfile::Builder::new()
            .prefix("tls-policyd-doctor.")
            .tempdir()
            .unwrap();
        let main = format!(
            "compatibility_level = 3.6\n\
             smtp_tls_policy_maps = socketmap:{s}:tls_policy\n\
             smtpd_recipient_restrictions = check_policy_service {{ {p}, default_action=DUNNO }}, permit_mynetworks, reject_unauth_destination\n\
             smtpd_milters = {m}\n\
             non_smtpd_milters = $smtpd_milters\n\
             milter_default_action = accept\n"
        );
        let lab = Lab {
            ns,
            daemon,
            postfix,
            config,
        };
        lab.write("main.cf", &main);
        lab.write("master.cf", MASTER);
        Some(lab)
    }

    /// Write a Postfix file, an hour old (Postfix re-reads files that look
    /// freshly written).
    fn write(&self, name: &str, text: &str) {
        let path = self.postfix.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)))
            .unwrap();
    }

    fn main_cf(&self) -> String {
        std::fs::read_to_string(self.postfix.path().join("main.cf")).unwrap()
    }

    fn doctor(&self) -> (i32, serde_json::Value, String) {
        let run = |json: bool| -> Output {
            let mut c = self.ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"));
            c.arg("doctor")
                .arg("--config")
                .arg(&self.config)
                .arg("--postfix-config")
                .arg(self.postfix.path());
            if json {
                c.arg("--json");
            }
            common::run_with_timeout(&mut c)
        };
        let text = run(false);
        let json = run(true);
        assert_eq!(text.status.code(), json.status.code());
        let report: serde_json::Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json.stdout)));
        (
            text.status.code().unwrap_or(-1),
            report,
            String::from_utf8_lossy(&text.stdout).into_owned(),
        )
    }

    /// Run a fix as doctor printed it (a postconf command with -c DIR).
    fn apply(&self, fix: &str) {
        assert!(fix.starts_with("postconf -c "), "{fix}");
        let out = common::run_with_timeout(Command::new("sh").arg("-c").arg(fix));
        assert!(
            out.status.success(),
            "{fix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn problems(report: &serde_json::Value) -> Vec<&serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "problem")
        .collect()
}

#[test]
fn documented_wiring_passes_and_the_daemon_answers_through_postmap() {
    let Some(lab) = Lab::start() else { return };
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
    assert!(problems(&report).is_empty(), "{text}");
    assert!(text.contains("postmap -q bank.example"), "{text}");
    assert!(
        text.contains(": encrypt (a rule forces TLS for bank.example)"),
        "{text}"
    );
    assert!(
        text.contains("postmap -q tls-policyd-doctor.invalid"),
        "{text}"
    );
    assert_eq!(
        report["mail_version"].as_str().unwrap().split('.').count(),
        3
    );
    assert!(text.ends_with("no problems found\n"), "{text}");
}

#[test]
fn a_bypassing_transport_is_named_and_its_fix_works() {
    let Some(lab) = Lab::start() else { return };
    lab.write(
        "master.cf",
        &format!("{MASTER}  -o smtp_tls_policy_maps=hash:/etc/postfix/tls_policy\n"),
    );
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    let t = p[0]["text"].as_str().unwrap();
    assert!(t.contains("master.cf service relay/unix"), "{t}");
    assert!(t.contains("bypasses tls-policyd"), "{t}");
    lab.apply(p[0]["fix"].as_str().unwrap());
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_policy_check_after_permit_and_a_tempfail_milter_action() {
    let Some(lab) = Lab::start() else { return };
    let main = lab
        .main_cf()
        .replace(
            "check_policy_service {",
            "permit_mynetworks, check_policy_service {",
        )
        .replace("milter_default_action = accept\n", "");
    lab.write("main.cf", &main);
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 2, "{text}");
    assert!(p.iter().any(|f| {
        f["text"]
            .as_str()
            .unwrap()
            .contains("permit_mynetworks comes before check_policy_service")
    }));
    let milter = p
        .iter()
        .find(|f| {
            f["text"]
                .as_str()
                .unwrap()
                .contains("milter_default_action = tempfail")
        })
        .unwrap_or_else(|| panic!("{text}"));
    lab.apply(milter["fix"].as_str().unwrap());
    let (_, report, text) = lab.doctor();
    assert_eq!(problems(&report).len(), 1, "{text}");
}

#[test]
fn a_daemon_that_does_not_answer_is_a_problem() {
    let Some(mut lab) = Lab::start() else { return };
    lab.daemon.kill();
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert!(!p.is_empty(), "{text}");
    assert!(
        p[0]["text"]
            .as_str()
            .unwrap()
            .contains("Postfix's own client could not ask tls-policyd"),
        "{text}"
    );
    assert!(Path::new(&lab.config).exists());
}

#[test]
fn outcomes_without_the_tls_summary_in_postfix_log_is_a_problem_until_fixed() {
    let Some(lab) = Lab::start() else { return };
    // The daemon's configuration with the outcome follower on; Postfix's
    // smtp_tls_loglevel left at its default, 0.
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    config.push_str("[outcomes]\nlog = \"file:/var/log/mail.log\"\n");
    std::fs::write(&lab.config, config).unwrap();
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    let t = p[0]["text"].as_str().unwrap();
    assert!(
        t.starts_with("smtp_tls_loglevel = 0: Postfix logs no TLS summary"),
        "{t}"
    );
    assert_eq!(
        p[0]["fix"],
        format!(
            "postconf -c {} -e 'smtp_tls_loglevel = 1'",
            lab.postfix.path().display()
        )
    );
    lab.apply(p[0]["fix"].as_str().unwrap());
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok       smtp_tls_loglevel = 1 "), "{text}");
    // A transport that lowers it again.
    lab.write("master.cf", &format!("{MASTER}  -o smtp_tls_loglevel=0\n"));
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    assert!(
        p[0]["text"]
            .as_str()
            .unwrap()
            .contains("master.cf service relay/unix sets smtp_tls_loglevel=0"),
        "{text}"
    );
    lab.apply(p[0]["fix"].as_str().unwrap());
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_relayhost_or_transport_next_hop_no_rule_names_is_a_problem_until_a_rule_names_it() {
    let Some(lab) = Lab::start() else { return };
    let main = lab.main_cf();
    lab.write(
        "main.cf",
        &format!("{main}relayhost = [relay.example]:587\n"),
    );
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    let t = p[0]["text"].as_str().unwrap();
    assert!(
        t.starts_with(
            "relayhost = [relay.example]:587 sends mail for bank.example to [relay.example]:587: \
             Postfix asks tls-policyd for [relay.example]:587, not for the recipient domain, and gets may"
        ),
        "{t}"
    );
    // The fix: a rule for the next hop, then a reload.
    let fix = p[0]["fix"].as_str().unwrap();
    assert!(fix.contains("domains = [\"[relay.example]:587\"]"), "{fix}");
    let mark = lab.daemon.mark();
    lab.daemon.write_policy(&format!(
        "{POLICY}\n[[rule]]\ndomains = [\"[relay.example]:587\"]\ntls = \"forced\"\n"
    ));
    lab.daemon.signal(libc::SIGHUP);
    lab.daemon
        .wait_for_line_since(mark, |l| l.contains("reloaded"));
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok       relayhost = [relay.example]:587 sends mail for bank.example to [relay.example]:587; tls-policyd answers encrypt for it"),
        "{text}"
    );

    // transport_maps (read by postmap -q, as Postfix reads it): a next hop
    // named for the domain's parent overrules relayhost, and no rule names it.
    let transport = lab.postfix.path().join("transport");
    std::fs::write(&transport, ".example smtp:[mx.bank.internal]\n").unwrap();
    lab.write(
        "main.cf",
        &format!(
            "{main}relayhost = [relay.example]:587\ntransport_maps = texthash:{}\n",
            transport.display()
        ),
    );
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    let t = p[0]["text"].as_str().unwrap();
    assert!(
        t.starts_with(&format!(
            "transport_maps (.example in texthash:{} -> smtp:[mx.bank.internal]) sends mail for bank.example to [mx.bank.internal]:",
            transport.display()
        )),
        "{t}"
    );
    // `smtp:` with no next hop: the recipient domain again, whatever
    // relayhost says.
    std::fs::write(&transport, "bank.example smtp:\n").unwrap();
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
}

#[test]
fn lmtp_services_are_noted_and_checked_when_they_ask() {
    let Some(lab) = Lab::start() else { return };
    lab.write(
        "master.cf",
        &format!("{MASTER}lmtp      unix  -       -       n       -       -       lmtp\n"),
    );
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "note"
                && f["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("lmtp(8) service lmtp/unix does not ask tls-policyd")),
        "{text}"
    );
    // Asked over LMTP too, with the outcome follower on: lmtp_tls_loglevel
    // must be 1 as well.
    let main = lab.main_cf();
    let maps = main
        .lines()
        .find_map(|l| l.strip_prefix("smtp_tls_policy_maps = "))
        .unwrap()
        .to_string();
    lab.write(
        "main.cf",
        &format!("{main}smtp_tls_loglevel = 1\nlmtp_tls_policy_maps = {maps}\n"),
    );
    let mut config = std::fs::read_to_string(&lab.config).unwrap();
    config.push_str("[outcomes]\nlog = \"file:/var/log/mail.log\"\n");
    std::fs::write(&lab.config, config).unwrap();
    let (code, report, text) = lab.doctor();
    assert_eq!(code, 1, "{text}");
    let p = problems(&report);
    assert_eq!(p.len(), 1, "{text}");
    assert!(
        p[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("lmtp_tls_loglevel = 0: Postfix logs no TLS summary"),
        "{text}"
    );
    assert!(
        text.contains("ok       lmtp_tls_policy_maps (used by lmtp/unix) asks tls-policyd"),
        "{text}"
    );
    lab.apply(p[0]["fix"].as_str().unwrap());
    let (code, _, text) = lab.doctor();
    assert_eq!(code, 0, "{text}");
}
