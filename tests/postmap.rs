//! The daemon against Postfix's own socketmap client: `postmap -q KEY
//! socketmap:inet:127.0.0.1:PORT:MAP`, as `smtp_tls_policy_maps` would ask.
//!
//! Each test runs the daemon and postmap inside a network namespace of its
//! own that has only `lo`, so nothing can leave the machine. That needs
//! root and Postfix installed (`.ci/run` installs it). Without them these
//! tests fail, unless `SKIP_POSTFIX_TESTS=1` is set, in which case
//! they say so and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{Daemon, Options, config, config_listening, find_tool, run_with_timeout};

/// The socketmap tests' policy (`tests/fixtures/policy-partners.toml`).
const POLICY: &str = common::fixtures::POLICY_PARTNERS;

const PAYROLL: &str = "secure match=mx1.payroll.example:mx2.payroll.example protocols=>=TLSv1.2";

const SKIP_VAR: &str = "SKIP_POSTFIX_TESTS";

/// Why this machine cannot run these tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("these tests need root (to create network namespaces)".into());
    }
    for tool in ["postmap", "ip"] {
        if find_tool(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Fail, or with `SKIP_POSTFIX_TESTS=1` say why the test is skipped.
fn skip_or_fail(why: &str) {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {why} ({SKIP_VAR}=1)");
        return;
    }
    panic!(
        "{why}.\nThese tests run Postfix's postmap inside a network namespace: run them as root \
         on a machine with Postfix installed, as the README's test command `./scripts/test-all` \
         does (it installs it, then runs every test), or set {SKIP_VAR}=1 to skip them."
    );
}

/// A network namespace with only `lo` up, deleted on drop (also when the
/// test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tlspd-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(find_tool("ip").expect("ip"));
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let tool = find_tool("ip").ok_or("`ip` is not installed")?;
    let out = run_with_timeout(Command::new(tool).args(args));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What one `postmap -q` did.
#[derive(Debug)]
struct Lookup {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Lookup {
    /// Postmap found a value and printed it.
    fn found(&self) -> Option<&str> {
        (self.code == Some(0)).then(|| self.stdout.strip_suffix('\n').unwrap_or(&self.stdout))
    }

    /// Postmap's "not found": exit 1, nothing printed, no warning.
    fn is_not_found(&self) -> bool {
        self.code == Some(1) && self.stdout.is_empty() && self.stderr.is_empty()
    }
}

/// A daemon and a Postfix config directory inside a fresh namespace.
/// Fields drop in order: the daemon is stopped before the namespace goes.
struct Lab {
    daemon: Daemon,
    netns: Netns,
    postfix_dir: tempfile::TempDir,
    postmap: PathBuf,
    /// Keys looked up so far, with their map, in order.
    asked: Vec<(String, String)>,
}

impl Lab {
    /// `None` when the test is to be skipped.
    fn start(config_text: &str) -> Option<Lab> {
        Lab::start_with(config_text, POLICY)
    }

    /// [`Lab::start`] with another policy file.
    fn start_with(config_text: &str, policy: &str) -> Option<Lab> {
        if let Some(why) = missing_prerequisite() {
            skip_or_fail(&why);
            return None;
        }
        let netns = match Netns::create() {
            Ok(ns) => ns,
            Err(e) => {
                skip_or_fail(&format!("cannot create a network namespace: {e}"));
                return None;
            }
        };
        // postmap needs a main.cf when /etc/postfix/main.cf is absent; an
        // empty one would do. The compatibility level gives the defaults of
        // a current install (smtputf8_enable = yes, for one) rather than
        // Postfix's backwards-compatible ones.
        let postfix_dir = tempfile::Builder::new()
            .prefix("tls-policyd-postfix.")
            .tempdir()
            .expect("temp dir");
        let main_cf = postfix_dir.path().join("main.cf");
        std::fs::write(&main_cf, "compatibility_level = 3.6\n").expect("write main.cf");
        // Postfix keeps re-reading a config file, for up to a few seconds,
        // while it looks freshly written: make it an hour old.
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&main_cf)
            .and_then(|f| f.set_modified(past))
            .expect("set main.cf mtime");
        let opts = Options {
            netns: Some(netns.name.clone()),
            ..Options::default()
        };
        let daemon = Daemon::start_with(config_text, policy, opts);
        Some(Lab {
            daemon,
            netns,
            postfix_dir,
            postmap: find_tool("postmap").expect("postmap"),
            asked: Vec::new(),
        })
    }

    /// The table name for a map on this daemon's inet listener.
    fn table(&self, map: &str) -> String {
        format!("socketmap:inet:127.0.0.1:{}:{map}", self.daemon.port())
    }

    /// `postmap -q KEY TABLE`, recording the lookup for
    /// [`Lab::check_decision_log`].
    fn query(&mut self, table: &str, map: &str, key: &str) -> Lookup {
        let got = self.postmap(table, key);
        self.asked.push((map.to_string(), key.to_string()));
        got
    }

    /// `postmap -q KEY TABLE` inside the namespace.
    fn postmap(&self, table: &str, key: &str) -> Lookup {
        let mut cmd = self.netns.command(&self.postmap);
        cmd.arg("-c")
            .arg(self.postfix_dir.path())
            .args(["-q", key, table]);
        let out = run_with_timeout(&mut cmd);
        Lookup {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Assert that `key` is answered with `want` (`None`: not found).
    fn expect(&mut self, map: &str, key: &str, want: Option<&str>) {
        let table = self.table(map);
        self.expect_in(&table, map, key, want);
    }

    fn expect_in(&mut self, table: &str, map: &str, key: &str, want: Option<&str>) {
        let got = self.query(table, map, key);
        match want {
            Some(w) => assert_eq!(got.found(), Some(w), "{map} {key:?}: {got:?}"),
            None => assert!(
                got.is_not_found(),
                "{map} {key:?} should be not found: {got:?}"
            ),
        }
    }

    /// Every lookup so far has its own decision log record, in order, with
    /// the key exactly as postmap sent it.
    fn check_decision_log(&self) {
        let recs = self.daemon.wait_for_decisions(self.asked.len());
        let logged: Vec<(String, String)> = recs
            .iter()
            .map(|r| {
                (
                    r["map"].as_str().unwrap_or_default().to_string(),
                    r["key"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(
            logged, self.asked,
            "decision log records do not match the lookups"
        );
    }
}

#[test]
fn postmap_lookups_with_notfound_default() {
    let Some(mut lab) = Lab::start(&config("notfound")) else {
        return;
    };
    let encrypt = Some("encrypt");
    lab.expect("tls_policy", "bank.example", encrypt);
    lab.expect("tls_policy", "unknown.example", None);
    lab.expect("tls_policy", ".com", None);
    // Postfix's parent-domain walk and what a sender may type.
    lab.expect("tls_policy", ".bank.example", encrypt);
    lab.expect("tls_policy", "Bank.EXAMPLE", encrypt);
    lab.expect("tls_policy", "bank.example.", encrypt);
    lab.expect("tls_policy", "mx.bank.example", encrypt);
    // transport_maps next hops.
    lab.expect("tls_policy", "[mx.bank.example]:25", encrypt);
    lab.expect("tls_policy", "[mx.bank.example]", encrypt);
    // Attributes come through in full.
    lab.expect("tls_policy", "payroll.example", Some(PAYROLL));
    lab.expect("tls_policy", "legacy-partner.example", Some("none"));
    // The forced map answers for every domain.
    lab.expect("tls_forced", "unknown.example", encrypt);
    lab.expect("tls_forced", "legacy-partner.example", encrypt);
    lab.expect("tls_forced", "payroll.example", Some(PAYROLL));
    lab.check_decision_log();
}

#[test]
fn postmap_passes_internationalised_names_through() {
    let Some(mut lab) = Lab::start(&config("notfound")) else {
        return;
    };
    let encrypt = Some("encrypt");
    // postmap sends a UTF-8 key as it is (the decision log shows the key
    // as received); the daemon folds U-labels and A-labels together.
    lab.expect("tls_policy", "bücher.example", encrypt);
    lab.expect("tls_policy", "BÜCHER.example.", encrypt);
    lab.expect("tls_policy", "xn--bcher-kva.example", encrypt);
    lab.expect("tls_policy", "müller.example", encrypt);
    lab.expect("tls_policy", "xn--mller-kva.example", encrypt);
    lab.expect("tls_policy", "mx.müller.example", None);
    lab.check_decision_log();
}

#[test]
fn postmap_malformed_keys_naming_a_ruled_domain_are_never_not_found() {
    let Some(mut lab) = Lab::start(&config("notfound")) else {
        return;
    };
    let encrypt = Some("encrypt");
    lab.expect("tls_policy", "bank.example:65535", encrypt);
    lab.expect("tls_policy", "bank.example:65536", encrypt);
    lab.expect("tls_policy", "[bank.example", encrypt);
    lab.expect(
        "tls_policy",
        &format!("{}.bank.example", "a".repeat(64)),
        encrypt,
    );
    lab.expect("tls_policy", "other.example:65536", None);
    // Rules with different answers: a temporary failure, which postmap
    // reports as an error (exit status 2 is not "not found").
    let got = lab.query(
        &lab.table("tls_policy"),
        "tls_policy",
        "bank.example payroll.example",
    );
    assert!(!got.is_not_found() && got.found().is_none(), "{got:?}");
    assert!(got.stderr.contains("key is not a destination"), "{got:?}");
    lab.check_decision_log();
}

#[test]
fn postmap_gets_the_default_level_with_default_reply_policy() {
    let Some(mut lab) = Lab::start(&config("policy")) else {
        return;
    };
    lab.expect("tls_policy", "unknown.example", Some("may"));
    lab.expect("tls_policy", ".com", Some("may"));
    lab.expect("tls_policy", "bank.example", Some("encrypt"));
    lab.expect("tls_forced", "unknown.example", Some("encrypt"));
    lab.check_decision_log();
}

#[test]
fn postmap_asks_the_requiretls_map_as_postfix_3_11_does() {
    // The partners' rules, one with its own REQUIRETLS action.
    let policy = format!(
        "{POLICY}\n[[rule]]\ndomains = [\"relaxed.example\"]\ntls = \"forced\"\n\
         requiretls = \"opportunistic+starttls\"\n\n[[rule]]\ndomains = [\"off.example\"]\n\
         tls = \"opportunistic\"\nrequiretls = \"disable\"\n"
    );
    let Some(mut lab) = Lab::start_with(&config("notfound"), &policy) else {
        return;
    };
    // smtp_requiretls_policy = socketmap:inet:127.0.0.1:PORT:requiretls
    lab.expect("requiretls", "bank.example", Some("enforce"));
    lab.expect("requiretls", "payroll.example", Some("enforce"));
    lab.expect("requiretls", "[relay.example]:587", Some("enforce"));
    // Not forced: opportunistic, also where the TLS map says NOTFOUND.
    lab.expect("requiretls", "unknown.example", Some("opportunistic"));
    lab.expect("tls_policy", "unknown.example", None);
    lab.expect(
        "requiretls",
        "legacy-partner.example",
        Some("opportunistic"),
    );
    // A rule's own action.
    lab.expect(
        "requiretls",
        "relaxed.example",
        Some("opportunistic+starttls"),
    );
    lab.expect("tls_policy", "relaxed.example", Some("encrypt"));
    lab.expect("requiretls", "off.example", Some("disable"));
    // A key that names rules with different answers: a temporary failure.
    let got = lab.query(
        &lab.table("requiretls"),
        "requiretls",
        "bank.example payroll.example",
    );
    assert!(!got.is_not_found() && got.found().is_none(), "{got:?}");
    // Rules with the same TLS answer but different REQUIRETLS actions:
    // held too (the TLS map answers their common level).
    let got = lab.query(
        &lab.table("requiretls"),
        "requiretls",
        "bank.example relaxed.example",
    );
    assert!(!got.is_not_found() && got.found().is_none(), "{got:?}");
    assert!(got.stderr.contains("REQUIRETLS actions"), "{got:?}");
    lab.expect(
        "tls_policy",
        "bank.example relaxed.example",
        Some("encrypt"),
    );
    lab.check_decision_log();
    let recs = lab.daemon.wait_for_decisions(lab.asked.len());
    let r = &recs[0];
    assert_eq!(r["map"], "requiretls", "{r}");
    assert_eq!(r["tls"], "forced", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("REQUIRETLS enforce: "),
        "{r}"
    );
    let r = &recs[6];
    assert_eq!(r["key"], "relaxed.example", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("REQUIRETLS opportunistic+starttls: "),
        "{r}"
    );
}

#[test]
fn postmap_reports_an_unknown_map_name_as_an_error() {
    let Some(mut lab) = Lab::start(&config("policy")) else {
        return;
    };
    let got = lab.postmap(&lab.table("no_such_map"), "bank.example");
    assert_eq!(got.code, Some(1), "{got:?}");
    assert!(got.stdout.is_empty(), "{got:?}");
    // Postfix treats PERM as a lookup error, not as "not found".
    assert!(got.stderr.contains("no_such_map"), "{got:?}");
    assert!(got.stderr.contains("error"), "{got:?}");
    // The server keeps answering.
    lab.expect("tls_policy", "bank.example", Some("encrypt"));
}

#[test]
fn postmap_over_a_unix_socket() {
    let text = config_listening("unix:socketmap.sock", "notfound", "socket_mode = \"0660\"");
    let Some(mut lab) = Lab::start(&text) else {
        return;
    };
    let path = lab
        .daemon
        .address()
        .strip_prefix("unix:")
        .unwrap()
        .to_string();
    for (map, key, want) in [
        ("tls_policy", "Bank.Example.", Some("encrypt")),
        ("tls_policy", "unknown.example", None),
        ("tls_forced", "unknown.example", Some("encrypt")),
    ] {
        lab.expect_in(&format!("socketmap:unix:{path}:{map}"), map, key, want);
    }
    lab.check_decision_log();
}
