//! Drives the `tls-policyd` binary the way an administrator does:
//! `--version`/`--help`, `check-config`, `explain`, `log`, and one `serve`
//! round trip over the socketmap protocol.
//!
//! Every child process runs under a deadline; a hung binary fails the test
//! instead of hanging it.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_tls-policyd");

/// How long any single child process may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// `[milter]` lines switching every action on (shared fixture).
const MILTER_ALL_ACTIONS: &str = include_str!("fixtures/milter-all-actions.toml");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("postfix-examples")
}

fn sample_config() -> PathBuf {
    examples().join("tls-policyd.toml")
}

fn sample_policy() -> PathBuf {
    examples().join("policy.toml")
}

/// The binary, without configuration overrides or log filters inherited
/// from whoever runs the tests.
fn tls_policyd() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TLS_POLICYD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.stdin(Stdio::null());
    cmd
}

/// Exit status and output of a finished command.
struct Run {
    args: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "tls-policyd {}\nstatus: {}\n--- stdout\n{}--- stderr\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts exit 0 and a quiet stderr; returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.status.code(), Some(0), "{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        &self.stdout
    }

    /// Asserts exit 1 with no panic; returns stderr.
    fn fails(&self) -> &str {
        assert_eq!(self.status.code(), Some(1), "{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        assert!(
            !self.stderr.trim().is_empty(),
            "no error message\n{}",
            self.describe()
        );
        &self.stderr
    }
}

/// Reads a child's pipe to the end on its own thread.
fn drain(pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut pipe = pipe;
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` until the deadline; kills it and panics on timeout.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for tls-policyd") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = tls_policyd()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tls-policyd");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_until(&mut child, Instant::now() + DEADLINE, &shown);
    Run {
        args: shown,
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A TOML basic string holding `p`.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("temporary paths are UTF-8"))
}

// ---------------------------------------------------------------------------
// --version, --help

#[test]
fn version_and_help() {
    let r = run(["--version"]);
    assert_eq!(
        r.ok(),
        format!("tls-policyd {}\n", env!("CARGO_PKG_VERSION"))
    );

    let r = run(["--help"]);
    let help = r.ok();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for want in ["serve", "explain", "probe", "check-config", "log", "report"] {
        assert!(
            commands.contains(&want),
            "{want} missing from --help\n{help}"
        );
    }
}

// ---------------------------------------------------------------------------
// check-config

#[test]
fn check_config_accepts_the_sample() {
    let r = run([
        OsStr::new("check-config"),
        OsStr::new("--config"),
        sample_config().as_os_str(),
    ]);
    let out = r.ok();
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains("3 rules"), "{out}");
    assert!(out.contains("inet:127.0.0.1:10027"), "{out}");
    assert!(
        out.contains("tls_policy") && out.contains("tls_forced"),
        "{out}"
    );
}

/// A config in a fresh directory pointing at `policy.toml` next to it.
struct Setup {
    dir: TempDir,
    config: PathBuf,
    policy: PathBuf,
}

fn setup(config_extra: &str, policy: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    let policy_path = dir.path().join("policy.toml");
    write(
        &config,
        &format!(
            "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\n{config_extra}\n[policy]\nfile = \"policy.toml\"\n"
        ),
    );
    if let Some(text) = policy {
        write(&policy_path, text);
    }
    Setup {
        dir,
        config,
        policy: policy_path,
    }
}

fn check_config(s: &Setup) -> Run {
    run([
        OsStr::new("check-config"),
        OsStr::new("--config"),
        s.config.as_os_str(),
    ])
}

const GOOD_POLICY: &str =
    "default = \"opportunistic\"\n\n[[rule]]\ndomains = [\"a.example\"]\ntls = \"forced\"\n";

#[test]
fn check_config_on_a_fresh_setup() {
    let s = setup("", Some(GOOD_POLICY));
    let r = check_config(&s);
    let out = r.ok();
    assert!(out.contains(": 1 rule"), "{out}");
    assert!(out.contains(&s.policy.display().to_string()), "{out}");
    assert!(out.contains("decision log  standard output"), "{out}");
}

#[test]
fn check_config_unknown_key() {
    let s = setup("lisen = \"inet:127.0.0.1:1\"", Some(GOOD_POLICY));
    let r = check_config(&s);
    let err = r.fails();
    assert!(err.contains(&s.config.display().to_string()), "{err}");
    assert!(err.contains("socketmap.lisen"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn check_config_shows_the_shared_store_and_reads_its_files() {
    let sentinels = "[shared]\nsentinels = [\"127.0.0.1:26379\", \"127.0.0.2:26379\"]\n\
                     master_name = \"mymaster\"\npassword_file = \"redis-password\"\n\
                     sentinel_password_file = \"sentinel-password\"\n";
    let s = setup(sentinels, Some(GOOD_POLICY));
    write(&s.dir.path().join("redis-password"), "pw\n");
    let err = check_config(&s).fails().to_string();
    assert!(
        err.contains("key `shared.sentinel_password_file`: cannot read"),
        "{err}"
    );
    write(&s.dir.path().join("sentinel-password"), "spw\n");
    let out = check_config(&s).ok().to_string();
    assert!(
        out.contains(
            "shared store  redis://mymaster/0 (master \"mymaster\" from the sentinels \
             127.0.0.1:26379, 127.0.0.2:26379)"
        ),
        "{out}"
    );
    let s = setup(
        "[shared]\nurl = \"rediss://127.0.0.1:6380/0\"\nca_file = \"ca.pem\"\n",
        Some(GOOD_POLICY),
    );
    let err = check_config(&s).fails().to_string();
    assert!(err.contains("key `shared.ca_file`: cannot read"), "{err}");
    write(&s.dir.path().join("ca.pem"), "not a certificate\n");
    let err = check_config(&s).fails().to_string();
    assert!(
        err.contains("key `shared.ca_file`: ") && err.contains("holds no PEM certificate"),
        "{err}"
    );
    let s = setup(
        "[shared]\nsentinels = [\"127.0.0.1\"]\nmaster_name = \"m\"\n",
        Some(GOOD_POLICY),
    );
    let err = check_config(&s).fails().to_string();
    assert!(
        err.contains("key `shared.sentinels`: \"127.0.0.1\" is not host:port"),
        "{err}"
    );
}

/// A config of `text` (plus the `[policy]` section) in a fresh directory.
fn setup_raw(text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    let policy = dir.path().join("policy.toml");
    write(
        &config,
        &format!(
            "{text}
[policy]
file = \"policy.toml\"\n"
        ),
    );
    write(&policy, GOOD_POLICY);
    Setup {
        dir,
        config,
        policy,
    }
}

#[test]
fn check_config_policy_server_alone() {
    let s = setup_raw(
        "[policy_server]\nlisten = \"inet:127.0.0.1:10028\"\nrefuse = \"reject\"\ntrace_header = \"X-TLS-Policy\"\n",
    );
    let out = check_config(&s).ok().to_string();
    assert!(out.contains("policy server inet:127.0.0.1:10028"), "{out}");
    assert!(out.contains("refuse reject"), "{out}");
    assert!(out.contains("\"smtp-tls-forced\""), "{out}");
    assert!(out.contains("trace header X-TLS-Policy"), "{out}");
    assert!(!out.contains("socketmap"), "{out}");
    assert!(out.contains("background probes on"), "{out}");
}

#[test]
fn check_config_milter_alone() {
    let s = setup_raw("[milter]\nlisten = \"inet:127.0.0.1:10029\"\n");
    let out = check_config(&s).ok().to_string();
    assert!(
        out.contains("milter        inet:127.0.0.1:10029 (records only)"),
        "{out}"
    );
    assert!(!out.contains("socketmap"), "{out}");
    assert!(out.contains("background probes on"), "{out}");
    let s = setup_raw(&format!(
        "[milter]\nlisten = \"inet:127.0.0.1:10029\"\n{MILTER_ALL_ACTIONS}"
    ));
    let out = check_config(&s).ok().to_string();
    assert!(
        out.contains(
            "(refuse defer, trace header X-TLS-Policy, quarantine, routing header X-TLS-Route)"
        ),
        "{out}"
    );
    for (text, key, problem) in [
        (
            "[milter]\nlisten = \"inet:127.0.0.1:10029\"\nrefuse = \"sometimes\"\n",
            "milter.refuse",
            "unknown variant",
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:10029\"\nmax_recipients = 0\n",
            "milter.max_recipients",
            "between 1 and",
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:10029\"\ntrace_header = \"X A\"\n",
            "milter.trace_header",
            "not a header name",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:10029\"\n",
            "milter.listen",
            "inet:ADDRESS:PORT",
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:10029\"\nquarantine = 1\n",
            "milter.quarantine",
            "",
        ),
    ] {
        let s = setup_raw(text);
        let err = check_config(&s).fails().to_string();
        assert!(err.contains(&s.config.display().to_string()), "{err}");
        assert!(err.contains(key), "{text}\n{err}");
        assert!(err.contains(problem), "{text}\n{err}");
    }
}

#[test]
fn check_config_names_the_key_in_new_sections() {
    let listen = "[policy_server]\nlisten = \"inet:127.0.0.1:10028\"\n";
    for (text, key, problem) in [
        ("", "socketmap", "no front door is configured"),
        (
            "[policy_server]\nlisten = \"inet:127.0.0.1:10028\"\nrefuse = \"sometimes\"\n",
            "policy_server.refuse",
            "unknown variant",
        ),
        (
            "[policy_server]\nlisten = \"inet:127.0.0.1:10028\"\nforced_transport = \"smtp:[relay]\"\n",
            "policy_server.forced_transport",
            "not a master.cf service name",
        ),
        (
            "[policy_server]\nlisten = \"inet:127.0.0.1:10028\"\nrequest_timeout = \"soon\"\n",
            "policy_server.request_timeout",
            "not a duration",
        ),
        (
            &format!("{listen}[prober]\nttl = \"0s\"\n"),
            "prober.ttl",
            "longer than zero",
        ),
        (
            &format!("{listen}[prober]\nhelo_name = \"bad name\"\n"),
            "prober.helo_name",
            "not a host name",
        ),
        (
            &format!("{listen}[prober]\nprobe_harder = true\n"),
            "prober.probe_harder",
            "unknown field",
        ),
        (
            &format!("{listen}[dns]\nnameservers = [\"dns.example\"]\n"),
            "dns.nameservers",
            "dns.example",
        ),
        (
            &format!("{listen}[dns]\nattempts = 0\n"),
            "dns.attempts",
            "at least 1",
        ),
    ] {
        let s = setup_raw(text);
        let r = check_config(&s);
        let err = r.fails();
        assert!(err.contains(&s.config.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("`{key}`")) || err.contains(key),
            "{key}: {err}"
        );
        assert!(err.contains(problem), "{key}: {err}");
    }
}

/// Each policy-file problem: the message names the policy file, the rule
/// and what is wrong.
#[test]
fn check_config_policy_errors() {
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "duplicate domain",
            "[[rule]]\ndomains = [\"a.example\"]\ntls = \"forced\"\n\n\
             [[rule]]\ndomains = [\"b.example\", \"A.Example.\"]\ntls = \"opportunistic\"\n",
            &["rule 2", "\"A.Example.\" is already listed in rule 1"],
        ),
        (
            "bad level",
            "[[rule]]\ndomains = [\"a.example\"]\ntls = \"forced\"\n\n\
             [[rule]]\ndomains = [\"b.example\"]\ntls = \"fast\"\n",
            &["rule 2", "key `tls`", "\"fast\""],
        ),
        (
            "match on forced",
            "[[rule]]\ndomains = [\"a.example\"]\ntls = \"forced\"\nmatch = [\"mx.a.example\"]\n",
            &["rule 1", "`match` does not apply"],
        ),
    ];
    for (name, policy, wants) in cases {
        let s = setup("", Some(policy));
        let r = check_config(&s);
        let err = r.fails();
        assert!(
            err.contains(&s.policy.display().to_string()),
            "{name}: policy file not named\n{err}"
        );
        for want in wants {
            assert!(err.contains(want), "{name}: wanted {want:?}\n{err}");
        }
    }
}

#[test]
fn check_config_missing_policy_file() {
    let s = setup("", None);
    let r = check_config(&s);
    let err = r.fails();
    assert!(err.contains(&s.policy.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn check_config_missing_config_and_log_directory() {
    let s = setup("", Some(GOOD_POLICY));
    let missing = s.dir.path().join("nope.toml");
    let r = run([
        OsStr::new("check-config"),
        OsStr::new("--config"),
        missing.as_os_str(),
    ]);
    let err = r.fails();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");

    write(
        &s.config,
        "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\n[policy]\nfile = \"policy.toml\"\n\
         [log]\ndecisions = \"no-such-dir/decisions.jsonl\"\n",
    );
    let r = check_config(&s);
    let err = r.fails();
    assert!(err.contains(&s.config.display().to_string()), "{err}");
    assert!(err.contains("log.decisions"), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
}

// ---------------------------------------------------------------------------
// explain

fn explain(config: &Path, key: &str, json: bool) -> Run {
    let mut args = vec![
        OsStr::new("explain").to_os_string(),
        "--config".into(),
        config.as_os_str().to_os_string(),
    ];
    if json {
        args.push("--json".into());
    }
    args.push(key.into());
    run(args)
}

/// The value after a label at the start of a line of `explain` output.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.strip_prefix(label)
                .filter(|rest| rest.starts_with(' '))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {label:?} line in\n{out}"))
}

/// `explain` lines for the static and default steps.
fn step<'a>(out: &'a str, source: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(&format!("{source} ")) && l.starts_with("  "))
        .unwrap_or_else(|| panic!("no {source} step in\n{out}"))
}

#[test]
fn explain_static_rule() {
    let r = explain(&sample_config(), "Bank.Example.", false);
    let out = r.ok();
    assert_eq!(field(out, "key"), "Bank.Example.");
    assert_eq!(field(out, "destination"), "bank.example (domain key)");
    assert_eq!(
        field(out, "decision"),
        "forced TLS, Postfix level \"encrypt\""
    );
    assert_eq!(field(out, "source"), "static, rule 1");
    assert!(step(out, "static").contains("DECIDES"), "{out}");
    assert!(!step(out, "default").contains("DECIDES"), "{out}");
    assert!(out.contains("tls_policy -> \"OK encrypt\"\n"), "{out}");
    assert!(out.contains("tls_forced -> \"OK encrypt\"\n"), "{out}");
}

#[test]
fn explain_default() {
    let r = explain(&sample_config(), "gmail.com", false);
    let out = r.ok();
    assert_eq!(
        field(out, "decision"),
        "opportunistic TLS, Postfix level \"may\""
    );
    assert_eq!(field(out, "source"), "default");
    assert!(step(out, "default").contains("DECIDES"), "{out}");
    assert!(!step(out, "static").contains("DECIDES"), "{out}");
    assert!(out.contains("tls_policy -> \"OK may\"\n"), "{out}");
    assert!(out.contains("tls_forced -> \"OK encrypt\"\n"), "{out}");
}

#[test]
fn explain_json() {
    let r = explain(&sample_config(), "Bank.Example.", true);
    let v: Value = serde_json::from_str(r.ok()).unwrap_or_else(|e| panic!("{e}\n{}", r.stdout));
    assert_eq!(v["key"], "Bank.Example.");
    assert_eq!(v["destination"]["canonical"], "bank.example");
    let d = &v["decision"];
    assert_eq!(d["tls"], "forced");
    assert_eq!(d["level"], "encrypt");
    assert_eq!(d["policy"], "encrypt");
    assert_eq!(d["source"], "static");
    assert_eq!(d["rule"], 1);
    assert_eq!(d["matched"], "bank.example");
    let steps = v["steps"].as_array().expect("steps is an array");
    let applied: Vec<&Value> = steps.iter().filter(|s| s["applied"] == true).collect();
    assert_eq!(applied.len(), 1, "{steps:?}");
    assert_eq!(applied[0]["source"], "static");
    assert_eq!(v["socketmap"]["tls_policy"], "OK encrypt");
    assert_eq!(v["socketmap"]["tls_forced"], "OK encrypt");

    let r = explain(&sample_config(), "gmail.com", true);
    let v: Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(v["decision"]["tls"], "opportunistic");
    assert_eq!(v["decision"]["source"], "default");
    assert_eq!(v["decision"]["rule"], Value::Null);
    assert_eq!(v["socketmap"]["tls_policy"], "OK may");
    assert_eq!(v["socketmap"]["tls_forced"], "OK encrypt");
}

#[test]
fn explain_parent_key() {
    let r = explain(&sample_config(), ".bank.example", false);
    let out = r.ok();
    assert_eq!(field(out, "destination"), ".bank.example (parent key)");
    assert_eq!(field(out, "source"), "static, rule 1");
    assert!(step(out, "static").contains("\".bank.example\""), "{out}");
    assert!(out.contains("tls_policy -> \"OK encrypt\"\n"), "{out}");
}

#[test]
fn explain_bad_key_falls_back_to_default() {
    let r = explain(&sample_config(), "a..b", false);
    let out = r.ok();
    let dest = field(out, "destination");
    assert!(
        dest.starts_with("none:") && dest.contains("empty label"),
        "{out}"
    );
    assert!(step(out, "static").contains("not a destination"), "{out}");
    assert_eq!(field(out, "source"), "default");
    assert!(out.contains("tls_policy -> \"OK may\"\n"), "{out}");

    let r = explain(&sample_config(), "a..b", true);
    let v: Value = serde_json::from_str(r.ok()).unwrap();
    let e = v["destination"]["error"]
        .as_str()
        .expect("destination.error");
    assert!(e.contains("empty label"), "{v}");
    assert_eq!(v["decision"]["source"], "default");
}

#[test]
fn explain_with_notfound_default_reply() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("notfound.toml");
    write(
        &config,
        &format!(
            "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\ndefault_reply = \"notfound\"\n\
             [policy]\nfile = {}\n",
            toml_path(&sample_policy())
        ),
    );
    let r = explain(&config, "gmail.com", false);
    let out = r.ok();
    assert!(out.contains("tls_policy -> \"NOTFOUND \"\n"), "{out}");
    // The forced map never says NOTFOUND.
    assert!(out.contains("tls_forced -> \"OK encrypt\"\n"), "{out}");

    let r = explain(&config, "gmail.com", true);
    let v: Value = serde_json::from_str(r.ok()).unwrap();
    assert_eq!(v["socketmap"]["tls_policy"], "NOTFOUND ");

    // A rule still answers OK.
    let r = explain(&config, "bank.example", false);
    assert!(
        r.ok().contains("tls_policy -> \"OK encrypt\"\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_with_broken_config_fails() {
    let s = setup("", None);
    let r = explain(&s.config, "gmail.com", false);
    let err = r.fails();
    assert!(err.contains(&s.policy.display().to_string()), "{err}");
}

// ---------------------------------------------------------------------------
// log

/// One decision record in the daemon's format (see src/log/record.rs).
#[derive(Clone)]
struct Rec {
    ts: String,
    frontend: &'static str,
    queue_id: Option<&'static str>,
    map: Option<&'static str>,
    key: &'static str,
    domain: &'static str,
    tls: &'static str,
    /// `None` for a NOTFOUND reply.
    level: Option<&'static str>,
    source: &'static str,
    rule: Option<u32>,
    matched: Option<&'static str>,
    reason: &'static str,
    raised: bool,
}

/// A socketmap lookup on the normal map answered by the default.
fn rec(ts: &str, domain: &'static str, level: Option<&'static str>) -> Rec {
    let forced = level.is_some_and(|l| {
        let word = l.split(' ').next().unwrap_or(l);
        matches!(word, "encrypt" | "dane-only" | "verify" | "secure")
    });
    Rec {
        ts: ts.to_string(),
        frontend: "socketmap",
        queue_id: None,
        map: Some("tls_policy"),
        key: domain,
        domain,
        tls: if forced { "forced" } else { "opportunistic" },
        level,
        source: "default",
        rule: None,
        matched: None,
        reason: "no rule matches; the policy file's default",
        raised: false,
    }
}

impl Rec {
    /// The JSON line, fields in the order the daemon writes them.
    fn line(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap();
        let mut f = vec![
            format!("\"ts\":{}", s(&self.ts)),
            format!("\"frontend\":{}", s(self.frontend)),
        ];
        if let Some(q) = self.queue_id {
            f.push(format!("\"queue_id\":{}", s(q)));
        }
        if let Some(m) = self.map {
            f.push(format!("\"map\":{}", s(m)));
        }
        f.push(format!("\"key\":{}", s(self.key)));
        f.push(format!("\"domain\":{}", s(self.domain)));
        f.push(format!("\"tls\":{}", s(self.tls)));
        if let Some(l) = self.level {
            f.push(format!("\"level\":{}", s(l)));
        }
        let reply = if self.level.is_some() {
            "OK"
        } else {
            "NOTFOUND"
        };
        f.push(format!("\"reply\":{}", s(reply)));
        f.push(format!("\"source\":{}", s(self.source)));
        if let Some(r) = self.rule {
            f.push(format!("\"rule\":{r}"));
        }
        if let Some(m) = self.matched {
            f.push(format!("\"matched\":{}", s(m)));
        }
        f.push(format!("\"reason\":{}", s(self.reason)));
        if self.raised {
            f.push("\"raised\":true".to_string());
        }
        format!("{{{}}}", f.join(","))
    }
}

const QID: &str = "4XyZ1Q2";

/// The fixture history, oldest first, in three files:
///
/// | # | file     | domain          | tls           | level            | source  | queue id |
/// |---|----------|-----------------|---------------|------------------|---------|----------|
/// | 1 | .2.gz    | bank.example    | forced        | encrypt          | static  |          |
/// | 2 | .2.gz    | gmail.com       | opportunistic | may              | default |          |
/// | 3 | .1       | payroll.example | forced        | secure match=... | static  | QID      |
/// | 4 | .1       | gmail.com       | opportunistic | (NOTFOUND)       | default |          |
/// | 5 | live     | x.bank.example  | forced        | encrypt          | static  |          |
/// | 6 | live     | gmail.com       | opportunistic | may              | default | QID      |
/// | 7 | live     | gmail.com       | forced        | encrypt (raised) | default |          |
fn history() -> [Vec<Rec>; 3] {
    let bank = Rec {
        source: "static",
        rule: Some(1),
        matched: Some("bank.example"),
        reason: "PCI partner: never in plaintext",
        ..rec(
            "2026-11-20T08:00:00.000001Z",
            "bank.example",
            Some("encrypt"),
        )
    };
    let oldest = vec![
        bank.clone(),
        rec("2026-11-20T08:01:00Z", "gmail.com", Some("may")),
    ];
    let rotated = vec![
        Rec {
            frontend: "policy",
            queue_id: Some(QID),
            map: None,
            source: "static",
            rule: Some(2),
            matched: Some("payroll.example"),
            reason: "contract requires an authenticated TLS connection",
            ..rec(
                "2026-11-22T09:00:00Z",
                "payroll.example",
                Some("secure match=mx1.payroll.example:mx2.payroll.example"),
            )
        },
        rec("2026-11-22T09:05:00Z", "gmail.com", None),
    ];
    let live = vec![
        Rec {
            ts: "2026-11-24T10:00:00Z".to_string(),
            key: "X.Bank.Example.",
            domain: "x.bank.example",
            matched: Some(".bank.example"),
            ..bank.clone()
        },
        Rec {
            frontend: "policy",
            queue_id: Some(QID),
            map: None,
            ..rec("2026-11-24T10:00:01Z", "gmail.com", Some("may"))
        },
        Rec {
            map: Some("tls_forced"),
            raised: true,
            ..rec("2026-11-24T10:00:02Z", "gmail.com", Some("encrypt"))
        },
    ];
    [oldest, rotated, live]
}

fn lines(recs: &[Rec]) -> String {
    recs.iter().map(|r| r.line() + "\n").collect()
}

/// A directory with a config whose `[log] decisions` is `decisions.jsonl`,
/// the live file, `decisions.jsonl.1` and `decisions.jsonl.2.gz`.
struct LogSetup {
    dir: TempDir,
    config: PathBuf,
    live: PathBuf,
    /// Every fixture line, oldest first.
    all: Vec<String>,
}

fn log_setup() -> LogSetup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    write(
        &config,
        &format!(
            "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\n[policy]\nfile = {}\n\
             [log]\ndecisions = \"decisions.jsonl\"\n",
            toml_path(&sample_policy())
        ),
    );
    let [oldest, rotated, live] = history();
    let live_path = dir.path().join("decisions.jsonl");
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(lines(&oldest).as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("decisions.jsonl.2.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    write(&dir.path().join("decisions.jsonl.1"), &lines(&rotated));
    write(&live_path, &lines(&live));
    let all = oldest
        .iter()
        .chain(&rotated)
        .chain(&live)
        .map(Rec::line)
        .collect();
    LogSetup {
        dir,
        config,
        live: live_path,
        all,
    }
}

impl LogSetup {
    /// `log --config CFG ARGS...`
    fn log(&self, args: &[&str]) -> Run {
        let mut a = vec![
            OsStr::new("log").to_os_string(),
            "--config".into(),
            self.config.as_os_str().to_os_string(),
        ];
        a.extend(args.iter().map(|&s| OsString::from(s)));
        run(a)
    }

    /// The fixture lines with these 1-based numbers.
    fn picked(&self, numbers: &[usize]) -> Vec<String> {
        numbers.iter().map(|&n| self.all[n - 1].clone()).collect()
    }
}

fn json_lines(r: &Run) -> Vec<String> {
    r.ok().lines().map(str::to_string).collect()
}

#[test]
fn log_reads_rotated_and_gzipped_files_oldest_first() {
    let s = log_setup();
    let r = s.log(&["--json"]);
    assert_eq!(
        r.ok(),
        s.all.iter().map(|l| format!("{l}\n")).collect::<String>()
    );
    assert_eq!(r.stderr, "", "{}", r.describe());
}

#[test]
fn log_files_are_read_in_the_order_given() {
    let s = log_setup();
    let gz = s.dir.path().join("decisions.jsonl.2.gz");
    let r = run([
        OsStr::new("log"),
        OsStr::new("--json"),
        OsStr::new("--file"),
        s.live.as_os_str(),
        OsStr::new("--file"),
        gz.as_os_str(),
    ]);
    assert_eq!(json_lines(&r), s.picked(&[5, 6, 7, 1, 2]));
}

#[test]
fn log_filters() {
    let s = log_setup();
    let cases: [(&[&str], &[usize]); 10] = [
        (&["--domain", "gmail.com"], &[2, 4, 6, 7]),
        // Exact domain, case and trailing dot ignored; subdomains excluded.
        (&["--domain", "BANK.Example."], &[1]),
        (&["--queue-id", QID], &[3, 6]),
        (&["--queue-id", "4xyz1q2"], &[]),
        (&["--tls", "forced"], &[1, 3, 5, 7]),
        (&["--tls", "Opportunistic"], &[2, 4, 6]),
        (&["--since", "2026-11-22T00:00:00Z"], &[3, 4, 5, 6, 7]),
        // 10:05+01:00 is 09:05Z, the time of record 4 itself.
        (&["--since", "2026-11-22T10:05:00+01:00"], &[4, 5, 6, 7]),
        (&["--domain", "gmail.com", "--tls", "forced"], &[7]),
        (&["--queue-id", QID, "--since", "2026-11-23"], &[6]),
    ];
    for (args, want) in cases {
        let mut a = args.to_vec();
        a.push("--json");
        let r = s.log(&a);
        assert_eq!(json_lines(&r), s.picked(want), "log {args:?}");
    }
}

#[test]
fn log_since_relative() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.jsonl");
    let now = SystemTime::now();
    let ago = |mins: u64| {
        humantime::format_rfc3339_micros(now - Duration::from_secs(mins * 60)).to_string()
    };
    let recs = [
        rec(&ago(180), "three-hours.example", Some("may")),
        rec(&ago(90), "ninety-minutes.example", Some("may")),
        rec(&ago(30), "thirty-minutes.example", Some("encrypt")),
        rec(&ago(1), "one-minute.example", Some("may")),
    ];
    write(&file, &lines(&recs));
    for (since, want) in [("1h", 2), ("2h", 3), ("1d", 4), ("10s", 0)] {
        let r = run([
            OsStr::new("log"),
            OsStr::new("--json"),
            OsStr::new("--since"),
            OsStr::new(since),
            OsStr::new("--file"),
            file.as_os_str(),
        ]);
        let got = json_lines(&r);
        let expected: Vec<String> = recs[recs.len() - want..].iter().map(Rec::line).collect();
        assert_eq!(got, expected, "--since {since}");
    }
}

/// `title:` sections of `--summary` output as name → count.
fn summary_section(out: &str, title: &str) -> Vec<(String, u64)> {
    let mut rows = Vec::new();
    let mut lines = out.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no {title:?} section in\n{out}");
    for l in lines.take_while(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = l.split_whitespace().collect();
        // name (may contain spaces), count, percent
        let n = words.len();
        assert!(
            n >= 3 && words[n - 1].ends_with('%'),
            "odd row {l:?} in\n{out}"
        );
        let count = words[n - 2]
            .parse()
            .unwrap_or_else(|_| panic!("count in {l:?}"));
        rows.push((words[..n - 2].join(" "), count));
    }
    rows
}

fn rows(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect()
}

#[test]
fn log_summary() {
    let s = log_setup();
    let r = s.log(&["--summary"]);
    let out = r.ok();
    assert!(out.contains("records matched: 7\n"), "{out}");
    assert!(out.contains("lines read:      7\n"), "{out}");
    assert!(out.contains("bad lines:       0\n"), "{out}");
    assert!(
        out.contains(
            "period:          2026-11-20T08:00:00.000001Z .. 2026-11-24T10:00:02.000000Z\n"
        ),
        "{out}"
    );
    assert_eq!(
        summary_section(out, "by tls:"),
        rows(&[("forced", 4), ("opportunistic", 3)])
    );
    assert_eq!(
        summary_section(out, "by source:"),
        rows(&[("default", 4), ("static", 3)])
    );
    assert_eq!(
        summary_section(out, "by level:"),
        rows(&[
            ("encrypt", 3),
            ("may", 2),
            ("-", 1),
            ("secure match=mx1.payroll.example:mx2.payroll.example", 1),
        ])
    );
    assert_eq!(
        summary_section(out, "top domains (4 of 4 distinct):"),
        rows(&[
            ("gmail.com", 4),
            ("bank.example", 1),
            ("payroll.example", 1),
            ("x.bank.example", 1),
        ])
    );

    let r = s.log(&["--summary", "--tls", "forced", "--domain", "gmail.com"]);
    let out = r.ok();
    assert!(out.contains("records matched: 1\n"), "{out}");
    assert_eq!(summary_section(out, "by tls:"), rows(&[("forced", 1)]));
}

#[test]
fn log_table() {
    let s = log_setup();
    let r = s.log(&[]);
    let out = r.ok();
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TS", "FRONTEND", "QUEUE_ID", "DOMAIN", "TLS", "LEVEL", "SOURCE", "REASON"
        ]
    );
    let body: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let [oldest, rotated, live] = history();
    let recs: Vec<Rec> = oldest.into_iter().chain(rotated).chain(live).collect();
    assert_eq!(body.len(), recs.len(), "{out}");
    for (row, rec) in body.iter().zip(&recs) {
        assert_eq!(row[0], rec.ts, "{out}");
        assert_eq!(row[1], rec.frontend, "{out}");
        assert_eq!(row[2], rec.queue_id.unwrap_or("-"), "{out}");
        assert_eq!(row[3], rec.domain, "{out}");
        assert_eq!(row[4], rec.tls, "{out}");
        assert_eq!(
            row[5],
            rec.level.map_or("-", |l| l.split(' ').next().unwrap()),
            "{out}"
        );
    }

    // No match: the header alone.
    let r = s.log(&["--domain", "nowhere.example"]);
    assert_eq!(r.ok().lines().count(), 1, "{}", r.stdout);
}

#[test]
fn log_argument_errors() {
    let s = log_setup();

    let r = s.log(&["--tls", "maybe"]);
    let err = r.fails();
    assert!(err.contains("--tls"), "{err}");
    assert!(err.contains("\"maybe\""), "{err}");
    assert!(
        err.contains("forced") && err.contains("opportunistic"),
        "{err}"
    );

    let r = s.log(&["--since", "yesterday"]);
    let err = r.fails();
    assert!(
        err.contains("--since") && err.contains("\"yesterday\""),
        "{err}"
    );

    let missing = s.dir.path().join("missing.jsonl");
    let r = run([OsStr::new("log"), OsStr::new("--file"), missing.as_os_str()]);
    let err = r.fails();
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let r = run(["log"]);
    let err = r.fails();
    assert!(err.contains("--file") && err.contains("--config"), "{err}");
}

/// Delivery outcome records (one held, then delivered; one sent in
/// plaintext) among the decisions of the live file.
const DELIVERIES: [&str; 3] = [
    r#"{"ts":"2026-11-24T10:05:00.000000Z","frontend":"delivery","queue_id":"4XyZ1Q2","recipient":"pay@payroll.example","domain":"payroll.example","relay":"mx1.payroll.example[192.0.2.3]:25","transport":"postfix/smtp","status":"deferred","dsn":"4.7.5","status_text":"Server certificate not verified","tls_trust":"untrusted","tls_protocol":"TLSv1.3","tls_cipher":"TLS_AES_256_GCM_SHA384","tls_failure":"untrusted","decided_by":"policy","tls":"forced","level":"secure match=mx1.payroll.example:mx2.payroll.example","source":"static","rule":2,"reason":"contract requires an authenticated TLS connection","verdict":"held","logged_at":"2026-11-24T10:05:00Z","delay":300}"#,
    r#"{"ts":"2026-11-24T10:15:00.000000Z","frontend":"delivery","queue_id":"4XyZ1Q2","recipient":"pay@payroll.example","domain":"payroll.example","relay":"mx2.payroll.example[192.0.2.4]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 2.0.0 Ok: queued as 9F","tls_trust":"verified","tls_protocol":"TLSv1.3","tls_cipher":"TLS_AES_256_GCM_SHA384","decided_by":"policy","tls":"forced","level":"secure match=mx1.payroll.example:mx2.payroll.example","source":"static","rule":2,"reason":"contract requires an authenticated TLS connection","verdict":"verified","logged_at":"2026-11-24T10:15:00Z","delay":900}"#,
    r#"{"ts":"2026-11-24T10:20:00.000000Z","frontend":"delivery","queue_id":"5B0A2C3","recipient":"friend@gmail.com","domain":"gmail.com","relay":"gmail-smtp-in.l.google.com[192.0.2.5]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 2.0.0 OK","tls_trust":"none","tls_failure":"not-offered","decided_by":"socketmap","tls":"opportunistic","level":"may","source":"default","reason":"no rule matched","verdict":"plaintext-fallback","logged_at":"2026-11-24T10:20:00Z","delay":0.4}"#,
];

#[test]
fn log_outcomes_and_verdicts() {
    let s = log_setup();
    let live = std::fs::read_to_string(&s.live).unwrap();
    write(&s.live, &format!("{live}{}\n", DELIVERIES.join("\n")));
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--outcomes"], &DELIVERIES),
        (&["--verdict", "held"], &DELIVERIES[..1]),
        (
            &["--verdict", "held,plaintext-fallback"],
            &[DELIVERIES[0], DELIVERIES[2]],
        ),
        (
            &["--verdict", "held", "--verdict", "Verified"],
            &DELIVERIES[..2],
        ),
        (&["--outcomes", "--domain", "gmail.com"], &DELIVERIES[2..]),
        (
            &["--outcomes", "--queue-id", QID, "--tls", "forced"],
            &DELIVERIES[..2],
        ),
        (
            &["--outcomes", "--since", "2026-11-24T10:15:00Z"],
            &DELIVERIES[1..],
        ),
    ];
    for (args, want) in cases {
        let mut a = args.to_vec();
        a.push("--json");
        assert_eq!(json_lines(&s.log(&a)), want.to_vec(), "log {args:?}");
    }
    // Without an outcome filter the deliveries are records like any other.
    assert_eq!(json_lines(&s.log(&["--json", "--queue-id", QID])).len(), 4);

    let r = s.log(&["--outcomes"]);
    let out = r.ok();
    let table: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table[0],
        [
            "TS",
            "QUEUE_ID",
            "DOMAIN",
            "STATUS",
            "TLS_TRUST",
            "VERDICT",
            "RELAY",
            "LEVEL"
        ]
    );
    assert_eq!(
        table[1][..7],
        [
            "2026-11-24T10:05:00.000000Z",
            QID,
            "payroll.example",
            "deferred",
            "untrusted",
            "held",
            "mx1.payroll.example[192.0.2.3]:25"
        ]
    );
    assert_eq!(table.len(), 4, "{out}");

    let r = s.log(&["--summary", "--outcomes"]);
    let out = r.ok();
    assert_eq!(
        summary_section(out, "by verdict (3 delivery records):"),
        rows(&[("held", 1), ("plaintext-fallback", 1), ("verified", 1)])
    );

    let r = s.log(&["--verdict", "held,delivered"]);
    let err = r.fails();
    assert!(
        err.contains(
            "bad --verdict value \"delivered\": expected one of verified, encrypted, \
             plaintext-fallback, held, violation, policy-unreachable, undecided, not-delivered"
        ),
        "{err}"
    );
}

#[test]
fn log_with_stdout_decision_log_needs_a_file() {
    let s = setup("", Some(GOOD_POLICY));
    let r = run([
        OsStr::new("log"),
        OsStr::new("--config"),
        s.config.as_os_str(),
    ]);
    let err = r.fails();
    assert!(err.contains(&s.config.display().to_string()), "{err}");
    assert!(err.contains("--file"), "{err}");
}

/// `tls-policyd log | head -1`: the reader goes away early; the process
/// must end quietly, not panic.
#[test]
fn log_into_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    // Far more output than a pipe buffers.
    let line = rec("2026-11-24T10:00:00Z", "gmail.com", Some("may")).line() + "\n";
    write(&file, &line.repeat(50_000));
    for format in [None, Some("--json")] {
        let mut cmd = tls_policyd();
        cmd.arg("log").arg("--file").arg(&file);
        if let Some(f) = format {
            cmd.arg(f);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tls-policyd log");
        let err = drain(child.stderr.take().unwrap());
        {
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            out.read_line(&mut first).unwrap();
            assert!(!first.is_empty(), "no output ({format:?})");
        }
        let status = wait_until(
            &mut child,
            Instant::now() + DEADLINE,
            "log into a closed pipe",
        );
        let stderr = err.join().unwrap();
        assert!(!stderr.contains("panicked"), "{format:?}: {stderr}");
        assert!(status.success(), "{format:?}: {status}\n{stderr}");
    }
}

// ---------------------------------------------------------------------------
// serve, end to end

/// Kills the daemon if a test fails before it stops.
struct Daemon {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far, for failure messages.
    seen: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = tls_policyd()
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tls-policyd serve");
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line with {needle:?} ({e}); status {:?}; stderr so far:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let status = wait_until(
            &mut self.child,
            Instant::now() + DEADLINE,
            "serve after SIGTERM",
        );
        // Collect what is left of stderr for failure messages.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        status
    }
}

/// A minimal socketmap client: netstring out, netstring back.
struct SocketmapClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl SocketmapClient {
    fn connect(port: u16) -> SocketmapClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to socketmap");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        SocketmapClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn lookup(&mut self, map: &str, key: &str) -> String {
        let query = format!("{map} {key}");
        write!(self.writer, "{}:{query},", query.len()).unwrap();
        self.writer.flush().unwrap();
        let mut len = Vec::new();
        self.reader
            .read_until(b':', &mut len)
            .expect("reply length");
        assert_eq!(
            len.pop(),
            Some(b':'),
            "connection closed while waiting for {query:?}"
        );
        let len: usize = std::str::from_utf8(&len)
            .unwrap()
            .parse()
            .expect("netstring length");
        let mut payload = vec![0; len + 1];
        self.reader.read_exact(&mut payload).expect("reply payload");
        assert_eq!(payload.pop(), Some(b','), "netstring not terminated by ','");
        String::from_utf8(payload).expect("UTF-8 reply")
    }
}

#[test]
fn serve_answers_and_logs_every_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    write(
        &dir.path().join("policy.toml"),
        "default = \"opportunistic\"\n\n\
         [[rule]]\ndomains = [\"bank.example\", \".bank.example\"]\ntls = \"forced\"\nreason = \"PCI partner\"\n",
    );
    write(
        &config,
        "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n[policy]\nfile = \"policy.toml\"\n\
         [log]\ndecisions = \"decisions.jsonl\"\nlevel = \"info\"\n",
    );
    let mut daemon = Daemon::start(&config);
    let marker = "listening frontend=\"socketmap\" address=inet:127.0.0.1:";
    let line = daemon.wait_for_line(marker);
    let port: u16 = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));

    // (map, key, reply, tls logged)
    let lookups = [
        ("tls_policy", "bank.example", "OK encrypt", "forced"),
        ("tls_policy", "gmail.com", "OK may", "opportunistic"),
        ("tls_forced", "gmail.com", "OK encrypt", "forced"),
        ("tls_policy", "MX.Bank.Example.", "OK encrypt", "forced"),
    ];
    let mut client = SocketmapClient::connect(port);
    for (map, key, reply, _) in &lookups[..3] {
        assert_eq!(client.lookup(map, key), *reply, "{map} {key}");
    }
    // A second connection works alongside the first.
    let (map, key, reply, _) = lookups[3];
    assert_eq!(
        SocketmapClient::connect(port).lookup(map, key),
        reply,
        "{map} {key}"
    );
    drop(client);

    let status = daemon.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        daemon.seen.join("\n")
    );

    let log = dir.path().join("decisions.jsonl");
    let r = run([
        OsStr::new("log"),
        OsStr::new("--json"),
        OsStr::new("--file"),
        log.as_os_str(),
    ]);
    let records: Vec<Value> = r
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), lookups.len(), "{}", r.stdout);
    for (v, (map, key, reply, tls)) in records.iter().zip(lookups) {
        assert_eq!(v["frontend"], "socketmap", "{v}");
        assert_eq!(v["map"], map, "{v}");
        assert_eq!(v["key"], key, "{v}");
        assert_eq!(v["tls"], tls, "{v}");
        assert_eq!(v["reply"], "OK", "{v}");
        assert_eq!(
            format!("OK {}", v["level"].as_str().unwrap_or_default()),
            reply,
            "{v}"
        );
    }
    assert_eq!(records[3]["domain"], "mx.bank.example");
    assert_eq!(records[3]["matched"], ".bank.example");
    assert_eq!(records[0]["rule"], 1);

    // The table shows the same four lookups.
    let r = run([OsStr::new("log"), OsStr::new("--file"), log.as_os_str()]);
    let table = r.ok();
    let tls_column: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(4).unwrap_or_default())
        .collect();
    assert_eq!(
        tls_column,
        ["forced", "opportunistic", "forced", "forced"],
        "{table}"
    );

    let r = run([
        OsStr::new("log"),
        OsStr::new("--summary"),
        OsStr::new("--file"),
        log.as_os_str(),
    ]);
    let out = r.ok();
    assert!(out.contains("records matched: 4\n"), "{out}");
    assert_eq!(
        summary_section(out, "by tls:"),
        rows(&[("forced", 3), ("opportunistic", 1)])
    );
    assert_eq!(
        summary_section(out, "by source:"),
        rows(&[("default", 2), ("static", 2)])
    );
}

/// `log --domain` finds lookups made with next-hop and parent-walk keys by
/// their host or domain name: the record's `domain` is the name, the `key`
/// keeps the form Postfix used.
#[test]
fn log_domain_finds_nexthop_and_parent_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    write(
        &dir.path().join("policy.toml"),
        "[[rule]]\ndomains = [\"bank.example\", \".bank.example\"]\ntls = \"forced\"\n",
    );
    write(
        &config,
        "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n[policy]\nfile = \"policy.toml\"\n\
         [log]\ndecisions = \"decisions.jsonl\"\n",
    );
    let mut daemon = Daemon::start(&config);
    let marker = "listening frontend=\"socketmap\" address=inet:127.0.0.1:";
    let line = daemon.wait_for_line(marker);
    let port: u16 = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let mut client = SocketmapClient::connect(port);
    for key in [
        "[MX.Bank.Example]:25",
        ".bank.example",
        "relay.bank.example:2525",
        "bank.example",
    ] {
        assert_eq!(client.lookup("tls_policy", key), "OK encrypt", "{key}");
    }
    drop(client);
    assert_eq!(daemon.terminate().code(), Some(0));
    let log = dir.path().join("decisions.jsonl");
    let keys_for = |domain: &str| -> Vec<String> {
        let r = run([
            OsStr::new("log"),
            OsStr::new("--json"),
            OsStr::new("--domain"),
            OsStr::new(domain),
            OsStr::new("--file"),
            log.as_os_str(),
        ]);
        r.ok()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(keys_for("mx.bank.example"), ["[MX.Bank.Example]:25"]);
    assert_eq!(keys_for("relay.bank.example"), ["relay.bank.example:2525"]);
    assert_eq!(keys_for("Bank.Example."), [".bank.example", "bank.example"]);
}

// ---------------------------------------------------------------------------
// The default config path, the operator's messages, journal priorities

const DEFAULT_CONFIG: &str = "/etc/tls-policyd/config.toml";

#[test]
fn every_command_reading_a_config_defaults_to_the_packaged_one() {
    for cmd in [
        "serve",
        "explain",
        "probe",
        "cache",
        "check-config",
        "log",
        "report",
        "doctor",
        "status",
    ] {
        let help = run([cmd, "--help"]).ok().to_string();
        let mut lines = help.lines();
        let line = lines
            .find(|l| l.trim_start().starts_with("-c, --config <CONFIG>"))
            .unwrap_or_else(|| panic!("{cmd} --help has no -c, --config:\n{help}"));
        let mut text = line.trim_start()["-c, --config <CONFIG>".len()..].trim();
        if text.is_empty() {
            // Help below the option when some option's help is long.
            text = lines.next().unwrap_or_default().trim();
        }
        assert!(
            text.starts_with("The configuration file") || text.starts_with("Read the decision log"),
            "{cmd}: -c, --config has no help text: {line:?}"
        );
        assert!(
            help.contains(&format!("[default: {DEFAULT_CONFIG}]")),
            "{cmd} --help does not show the default config:\n{help}"
        );
    }
    if Path::new(DEFAULT_CONFIG).exists() {
        eprintln!("{DEFAULT_CONFIG} exists: not running commands without --config");
        return;
    }
    // Without --config, each reads the default (here: missing). Only
    // commands without side effects, should the package be installed
    // meanwhile.
    for args in [
        &["check-config"][..],
        &["explain", "a.example"],
        &["cache", "list"],
        &["log"],
        &["report"],
    ] {
        let err = run(args).fails().to_string();
        assert!(
            err.contains(&format!("{DEFAULT_CONFIG}: cannot read")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_port_out_of_range_says_so() {
    let s = setup("", Some(GOOD_POLICY));
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("inet:127.0.0.1:10027", "inet:127.0.0.1:100027");
    write(&s.config, &text);
    let err = check_config(&s).fails().to_string();
    assert!(
        err.contains(&format!(
            "{}: key `socketmap.listen`: \"inet:127.0.0.1:100027\": port 100027 is out of range (0 to 65535)",
            s.config.display()
        )),
        "{err}"
    );
    assert!(!err.contains("IP address"), "{err}");
}

#[test]
fn a_missing_policy_file_names_the_key_and_the_config() {
    let s = setup("", None);
    for cmd in ["check-config", "serve"] {
        let err = run([OsStr::new(cmd), OsStr::new("-c"), s.config.as_os_str()])
            .fails()
            .to_string();
        assert!(
            err.contains(&format!(
                "{}: key `policy.file`: cannot read {}: ",
                s.config.display(),
                s.policy.display()
            )),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn unknown_keys_have_no_doubled_backquotes() {
    let s = setup("lisen = 1", Some(GOOD_POLICY));
    let err = check_config(&s).fails().to_string();
    assert!(!err.contains("``"), "{err}");
    assert!(
        err.contains(
            "key `socketmap.lisen`: unknown field: found `lisen`, expected one of `listen`, "
        ),
        "{err}"
    );
}

#[test]
fn address_in_use_names_the_key_and_the_config() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (extra, key) in [
        ("", "socketmap.listen"),
        (
            "[metrics]\nlisten = \"inet:127.0.0.1:PORT\"\n",
            "metrics.listen",
        ),
    ] {
        let s = setup("", Some(GOOD_POLICY));
        let text = std::fs::read_to_string(&s.config).unwrap();
        let text = if extra.is_empty() {
            text.replace("10027", &port.to_string())
        } else {
            text.replace("10027", "0") + &extra.replace("PORT", &port.to_string())
        };
        write(&s.config, &text);
        let err = run([OsStr::new("serve"), OsStr::new("-c"), s.config.as_os_str()])
            .fails()
            .to_string();
        assert!(
            err.contains(&format!(
                "{}: key `{key}`: cannot listen on inet:127.0.0.1:{port}: ",
                s.config.display()
            )) && err.to_lowercase().contains("address already in use"),
            "{err}"
        );
    }
}

#[test]
fn check_config_prints_every_section_it_validated() {
    let s = setup(
        "[metrics]\nlisten = \"inet:127.0.0.1:9466\"\n[runtime]\nthreads = 2\n\
         [log]\nlevel = \"debug\"\nformat = \"journal\"\n",
        Some(GOOD_POLICY),
    );
    let out = check_config(&s).ok().to_string();
    for want in [
        "  socketmap     inet:127.0.0.1:10027",
        "  policy file   ",
        "  decision log  standard output",
        "  operational   level debug, journal priorities",
        "  metrics       inet:127.0.0.1:9466 (/metrics and /health)",
        "  runtime       2 threads",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
}

/// `serve` with its standard error in `stderr_file` and `env`, until it
/// has started (a warning is logged first: NOTIFY_SOCKET is not usable);
/// then stopped. Its standard error.
fn serve_stderr(config_extra: &str, env: &[(&str, String)], stderr_file: &Path) -> String {
    let s = setup(config_extra, Some(GOOD_POLICY));
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("10027", "0");
    write(&s.config, &text);
    let mut cmd = tls_policyd();
    cmd.args([OsStr::new("serve"), OsStr::new("-c"), s.config.as_os_str()])
        .env("NOTIFY_SOCKET", "relative/notify")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_file).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(stderr_file).unwrap();
        if text.contains("started") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "serve did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_until(&mut child, deadline, "serve");
    assert!(status.success(), "{status}");
    std::fs::read_to_string(stderr_file).unwrap()
}

/// `DEVICE:INODE` of a file, as systemd writes JOURNAL_STREAM.
fn journal_stream(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

fn assert_journal_lines(text: &str) {
    let mut priorities = Vec::new();
    for line in text.lines() {
        let p = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .and_then(|(p, _)| p.parse::<u8>().ok())
            .unwrap_or_else(|| panic!("no <N> priority: {line:?}\n{text}"));
        let rest = &line[line.find('>').unwrap() + 1..];
        // No timestamp: the level word comes first.
        let level = rest.split(' ').next().unwrap();
        let want = match level {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            "DEBUG" | "TRACE" => 7,
            other => panic!("no level after the priority ({other:?}): {line:?}"),
        };
        assert_eq!(p, want, "{line}");
        assert!(
            !rest.chars().take(4).all(|c| c.is_ascii_digit()),
            "a timestamp: {line}"
        );
        priorities.push(p);
    }
    assert!(priorities.contains(&4), "no warning:\n{text}");
    assert!(priorities.contains(&6), "no info line:\n{text}");
}

#[test]
fn under_systemd_log_lines_carry_their_priority() {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    write(&err, "");
    // JOURNAL_STREAM naming the daemon's standard error: journal lines.
    let text = serve_stderr("", &[("JOURNAL_STREAM", journal_stream(&err))], &err);
    assert_journal_lines(&text);
    assert!(
        text.contains("<4>WARN tls_policyd: readiness notification is off"),
        "{text}"
    );
    assert!(text.contains("<6>INFO tls_policyd: tls-policyd "), "{text}");

    // [log] format = "journal" without systemd.
    let text = serve_stderr("[log]\nformat = \"journal\"\n", &[], &err);
    assert_journal_lines(&text);

    // Cannot start: every line of the reason is an error for the journal,
    // whether the config could be read or not.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (config, want) in [
        (
            format!(
                "[socketmap]\nlisten = \"inet:127.0.0.1:{port}\"\n[policy]\nfile = \"p.toml\"\n"
            ),
            "cannot listen on",
        ),
        (
            "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\nlisen = 2\n[policy]\nfile = \"p.toml\"\n"
                .to_string(),
            "key `socketmap.lisen`",
        ),
    ] {
        let s = setup("", Some(GOOD_POLICY));
        write(&s.dir.path().join("p.toml"), GOOD_POLICY);
        write(&s.config, &config);
        let out = tls_policyd()
            .args([OsStr::new("serve"), OsStr::new("-c"), s.config.as_os_str()])
            .env("JOURNAL_STREAM", journal_stream(&err))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert_eq!(out.code(), Some(1));
        let text = std::fs::read_to_string(&err).unwrap();
        assert!(text.contains(want), "{text}");
        assert!(text.lines().count() >= 1, "{text}");
        for line in text.lines() {
            assert!(line.starts_with("<3>tls-policyd: "), "{line:?}\n{text}");
        }
    }
}

#[test]
fn outside_systemd_log_lines_stay_text() {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    write(&err, "");
    let other = dir.path().join("other");
    write(&other, "");
    for (extra, env) in [
        ("", vec![]),
        // Inherited from a service, but not its stream.
        ("", vec![("JOURNAL_STREAM", journal_stream(&other))]),
        // The journal's stream, but text asked for.
        (
            "[log]\nformat = \"text\"\n",
            vec![("JOURNAL_STREAM", journal_stream(&err))],
        ),
    ] {
        let text = serve_stderr(extra, &env, &err);
        let warn = text
            .lines()
            .find(|l| l.contains("readiness notification is off"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(!warn.starts_with('<'), "{warn}");
        // The timestamp first, then the level.
        assert!(
            warn.starts_with(|c: char| c.is_ascii_digit()) && warn.contains(" WARN "),
            "{warn}"
        );
    }
}

// ---------------------------------------------------------------------------
// serve started by hand as root on a directory that belongs to the service

/// `serve` on the setup's config, listening on `port` and logging
/// decisions to `log_file`, expected to stop by itself.
fn serve_once(s: &Setup, port: u16, log_file: &Path) -> Run {
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "listen = \"inet:127.0.0.1:10027\"",
        &format!("listen = \"inet:127.0.0.1:{port}\""),
    );
    write(
        &s.config,
        &format!("{text}\n[log]\ndecisions = {}\n", toml_path(log_file)),
    );
    run([
        OsStr::new("serve"),
        OsStr::new("--config"),
        s.config.as_os_str(),
    ])
}

#[test]
fn serve_as_root_refuses_to_create_files_in_another_users_directory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (run ./scripts/test-all as root)");
        return;
    }
    let s = setup("", Some(GOOD_POLICY));
    // The directory the package makes for the service's files.
    let logs = s.dir.path().join("log");
    std::fs::create_dir(&logs).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(&logs, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    let log_file = logs.join("decisions.jsonl");
    let r = serve_once(&s, 0, &log_file);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "key `log.decisions`: {}: running as root would leave root-owned files in {}, which belongs to nobody",
            log_file.display(),
            logs.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("start it as nobody"), "{}", r.stderr);
    // Nothing was created.
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);
}

#[test]
fn a_start_that_cannot_bind_leaves_no_file_behind() {
    let s = setup("", Some(GOOD_POLICY));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let log_file = s.dir.path().join("decisions.jsonl");
    let r = serve_once(&s, port, &log_file);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("key `socketmap.listen`"), "{}", r.stderr);
    assert!(
        !log_file.exists(),
        "the decision log was created: {}",
        r.stderr
    );
}

#[test]
fn serve_refuses_an_outcome_state_file_it_cannot_write() {
    let s = setup("", Some(GOOD_POLICY));
    let text = std::fs::read_to_string(&s.config).unwrap();
    let state = s.dir.path().join("no-such-dir/outcomes.state");
    write(
        &s.config,
        &format!(
            "{text}\n[outcomes]\nlog = \"file:/var/log/mail.log\"\nstate_file = {}\n",
            toml_path(&state)
        ),
    );
    let log_file = s.dir.path().join("decisions.jsonl");
    let r = serve_once(&s, 0, &log_file);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("key `outcomes.state_file`: {}", state.display())),
        "{}",
        r.stderr
    );
    assert!(!log_file.exists(), "{}", r.stderr);
}
