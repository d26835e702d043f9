//! Every deployment in `postfix-examples/deployments/` is loaded into a real
//! Postfix: its `main.cf` and `master.cf` go into a throwaway config
//! directory (only the queue, data and log paths and the `/etc/postfix` map
//! paths are changed), `postfix -c DIR check` and `postconf` must accept
//! them without a warning, and the tables they name must build. Then the
//! deployment's own `tls-policyd.toml` and `policy.toml` run the real
//! daemon, and Postfix's own socketmap client asks it through exactly the
//! map specifications `main.cf` and the forced transport in `master.cf`
//! use (from the queue directory, the working directory of every Postfix
//! daemon). The policy server is asked at the address `main.cf` names, and
//! its FILTER must name a transport `master.cf` defines.
//!
//! The commented-out `submission` and `submissions` entries of `master.cf`
//! are enabled as an administrator would, and on every smtpd service the
//! restriction lists Postfix would use (`postconf -P` over `main.cf`) must
//! reach the policy check with no `permit...` before it, so mail from
//! `mynetworks` and from SASL clients is asked about; their milters must
//! include the one `main.cf` names (`documented_lines` checks that the
//! README and the other example files give the same lines).
//!
//! Nothing is started but tls-policyd, inside a network namespace with
//! only `lo`: the deployments' fixed loopback ports cannot clash with
//! anything, and nothing leaves the machine. Needs root and Postfix
//! (`SKIP_POSTFIX_TESTS=1` skips).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::examples::{
    enable_commented_services, policy_check_problem, policy_service, restriction_items,
};
use common::netns::Netns;
use common::{Daemon, Options, WAIT, policy_request, run_with_timeout};

const DEPLOYMENTS: [&str; 4] = [
    "socketmap-only",
    "socketmap-and-policy",
    "all-front-doors",
    "fleet",
];

/// The master.cf entries the files ship commented out.
const SUBMISSION: [&str; 2] = ["submission", "submissions"];

fn deployment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("postfix-examples/deployments")
        .join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// A deployment's Postfix configuration in a temporary directory.
struct Instance {
    ns: Netns,
    name: String,
    dir: tempfile::TempDir,
}

impl Instance {
    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn queue(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// A Postfix program inside the namespace, on this config directory.
    fn postfix_cmd(&self, program: &str) -> Command {
        let mut c = self.ns.cmd(program);
        c.arg("-c").arg(self.etc());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        run_with_timeout(self.postfix_cmd(program).args(args))
    }

    /// Run, require exit 0 and a silent stderr (no warning of any kind).
    fn run_clean(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {program} {args:?} failed or warned:\n{}{}",
            self.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn param(&self, name: &str) -> String {
        self.run_clean("postconf", &["-h", name]).trim().to_string()
    }

    /// A `-o` setting of a master.cf service (`smtp-tls-forced/unix/NAME`).
    fn service_param(&self, service: &str, name: &str) -> String {
        let key = format!("{service}/{name}");
        let out = self.run_clean("postconf", &["-P", &key]);
        out.trim()
            .strip_prefix(&format!("{key} = "))
            .unwrap_or_else(|| panic!("{}: master.cf has no {key}: {out:?}", self.name))
            .to_string()
    }

    /// The value of `name` for a master.cf service as Postfix applies it:
    /// the service's `-o` override, else main.cf's.
    fn effective(&self, service: &str, name: &str) -> String {
        let key = format!("{service}/{name} = ");
        let all = self.run_clean("postconf", &["-P"]);
        match all.lines().find_map(|l| l.strip_prefix(&key)) {
            Some(v) => v.trim().to_string(),
            None => self.param(name),
        }
    }

    /// The smtpd services of master.cf (`smtp/inet`, `submission/inet`, ...).
    fn smtpd_services(&self) -> Vec<String> {
        self.run_clean("postconf", &["-M"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 8 && f[1] == "inet" && f[7] == "smtpd")
                    .then(|| format!("{}/inet", f[0]))
            })
            .collect()
    }

    /// `postmap -q KEY MAP`, run from the queue directory like a Postfix
    /// daemon.
    fn query(&self, key: &str, map: &str) -> String {
        let out = run_with_timeout(
            self.postfix_cmd("postmap")
                .args(["-q", key, map])
                .current_dir(self.queue()),
        );
        assert!(
            out.status.success(),
            "{}: postmap -q {key} {map}: {}{}",
            self.name,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

/// Copy a deployment into a config directory Postfix can check, and check
/// it.
fn load(ns: &Netns, name: &str) -> Instance {
    let src = deployment(name);
    let dir = tempfile::Builder::new()
        .prefix("tls-policyd-deploy-")
        .tempdir()
        .unwrap();
    let inst = Instance {
        ns: ns.clone(),
        name: name.to_string(),
        dir,
    };
    let etc = inst.etc();
    std::fs::create_dir(&etc).unwrap();
    let main = read(&src.join("main.cf"));
    // Tables named in main.cf under /etc/postfix come from the deployment.
    let mut tables = Vec::new();
    for part in main.split(|c: char| c.is_whitespace() || c == ',') {
        if let Some(file) = part.strip_prefix("hash:/etc/postfix/") {
            let from = src.join(file);
            assert!(
                from.is_file(),
                "{name}: main.cf names {part}, but the deployment has no {file}"
            );
            std::fs::copy(&from, etc.join(file)).unwrap();
            tables.push(etc.join(file));
        }
    }
    let main = main.replace("hash:/etc/postfix/", &format!("hash:{}/", etc.display()));
    std::fs::write(etc.join("main.cf"), main).unwrap();
    // The submission entries enabled, as an administrator would.
    let master = enable_commented_services(&read(&src.join("master.cf")), &SUBMISSION);
    std::fs::write(etc.join("master.cf"), master).unwrap();
    let root = inst.dir.path().display().to_string();
    // Only paths change; postconf -e edits in place, so no "overriding
    // earlier entry" warnings.
    inst.run_clean(
        "postconf",
        &[
            "-e",
            &format!("queue_directory={root}/queue"),
            &format!("data_directory={root}/data"),
            &format!("maillog_file={root}/maillog"),
            &format!("maillog_file_prefixes={root}"),
            "alias_maps=",
            "alias_database=",
        ],
    );
    std::fs::create_dir(inst.queue()).unwrap();
    std::fs::create_dir(inst.dir.path().join("data")).unwrap();
    let chown = run_with_timeout(
        Command::new("chown")
            .arg("postfix:postfix")
            .arg(inst.dir.path().join("data")),
    );
    assert!(chown.status.success(), "{}", text(&chown.stderr));
    for t in &tables {
        inst.run_clean("postmap", &[t.to_str().unwrap()]);
    }
    inst.run_clean("postfix", &["check"]);
    let log = std::fs::read_to_string(inst.dir.path().join("maillog")).unwrap_or_default();
    assert!(
        !log.contains("warning") && !log.contains("fatal"),
        "{name}: postfix check logged:\n{log}"
    );
    inst.run_clean("postconf", &["-n"]);
    inst.run_clean("postconf", &["-M"]);
    inst.run_clean("postconf", &["-P"]);
    inst
}

/// The deployment's tls-policyd config with its paths moved into the
/// test: the spool socket into the instance's queue directory, the policy
/// file and the decision log into the daemon's directory.
fn daemon_config(inst: &Instance) -> String {
    // The fleet's store password (the store itself is not reachable here:
    // the daemon answers on its own).
    let password = inst.dir.path().join("redis-password");
    std::fs::write(&password, "not-the-real-one\n").unwrap();
    read(&deployment(&inst.name).join("tls-policyd.toml"))
        .replace("/var/spool/postfix", &inst.queue().display().to_string())
        .replace("/etc/tls-policyd/policy.toml", "policy.toml")
        .replace("/var/log/tls-policyd/decisions.jsonl", "decisions.jsonl")
        .replace(
            "/etc/tls-policyd/redis-password",
            &password.display().to_string(),
        )
        .replace(
            "/var/lib/tls-policyd",
            &inst.dir.path().display().to_string(),
        )
}

fn start_daemon(inst: &Instance) -> Daemon {
    // The directory the administrator creates for a socket in the spool.
    std::fs::create_dir_all(inst.queue().join("tls-policyd")).unwrap();
    Daemon::start_with(
        &daemon_config(inst),
        &read(&deployment(&inst.name).join("policy.toml")),
        Options {
            netns: Some(inst.ns.name().to_string()),
            ..Default::default()
        },
    )
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// One policy delegation request; the `action=` value. A relative unix
/// socket path is taken from the queue directory, as smtpd(8) does.
fn ask_policy(inst: &Instance, addr: &str, sender: &str, recipient: &str) -> String {
    let mut s: Box<dyn Stream> = if let Some(path) = addr.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(inst.queue().join(path))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        Box::new(s)
    } else {
        let hostport = addr.strip_prefix("inet:").unwrap_or(addr);
        let s = inst
            .ns
            .tcp_connect(hostport)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        Box::new(s)
    };
    let req = policy_request("RCPT", sender, recipient, "a1.b2.c3", "");
    s.write_all(req.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    while !reply.ends_with(b"\n\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "policy reply cut short");
        reply.push(b[0]);
    }
    text(&reply)
        .trim()
        .strip_prefix("action=")
        .unwrap_or_else(|| panic!("not an action: {}", text(&reply)))
        .to_string()
}

/// Every smtpd service, the enabled submission entries included, asks the
/// policy server (when the deployment has one) before anything can permit
/// the mail, and keeps main.cf's milters.
fn check_services_reach_tls_policyd(inst: &Instance, has_policy: bool) {
    let name = &inst.name;
    let services = inst.smtpd_services();
    for s in ["smtp/inet", "submission/inet", "submissions/inet"] {
        assert!(
            services.iter().any(|x| x == s),
            "{name}: no {s} in {services:?}"
        );
    }
    // Relay control is in smtpd_relay_restrictions, for the submission
    // ports too.
    let relay = inst.param("smtpd_relay_restrictions");
    assert!(relay.contains("_unauth_destination"), "{name}: {relay}");
    for service in &services {
        let relay = inst.effective(service, "smtpd_relay_restrictions");
        let items = restriction_items(&relay);
        assert!(
            items
                .iter()
                .any(|i| i == "reject" || i.ends_with("_unauth_destination")),
            "{name} {service}: no relay control in smtpd_relay_restrictions = {relay}"
        );
        let recipient = inst.effective(service, "smtpd_recipient_restrictions");
        if !has_policy {
            assert!(policy_service(&recipient).is_none(), "{name} {service}");
            continue;
        }
        if let Some(problem) = policy_check_problem(&recipient) {
            panic!("{name} {service}: smtpd_recipient_restrictions: {problem}");
        }
        let main_addr = policy_service(&inst.param("smtpd_recipient_restrictions"));
        assert_eq!(policy_service(&recipient), main_addr, "{name} {service}");
        let milters = inst.param("smtpd_milters");
        // The per-message record: the milter's, or else the policy
        // server's at END-OF-DATA.
        let eod = inst.effective(service, "smtpd_end_of_data_restrictions");
        if milters.trim().is_empty() {
            assert_eq!(policy_service(&eod), main_addr, "{name} {service}: {eod}");
        } else {
            assert_eq!(policy_service(&eod), None, "{name} {service}: {eod}");
        }
        for m in restriction_items(&milters) {
            let here = inst.effective(service, "smtpd_milters");
            assert!(
                restriction_items(&here).contains(&m),
                "{name} {service}: smtpd_milters = {here} leaves out {m}"
            );
        }
    }
}

fn check_deployment(name: &str) {
    let Some(ns) = Netns::for_test("tlspd-dep", &["postfix", "postmap", "postconf"]) else {
        return;
    };
    let inst = load(&ns, name);
    let has_policy = read(&deployment(name).join("tls-policyd.toml")).contains("[policy_server]");
    check_services_reach_tls_policyd(&inst, has_policy);
    let forced_service = "smtp-tls-forced/unix";
    // The forced transport exists and cannot fall back to plaintext.
    assert_eq!(
        inst.service_param(forced_service, "smtp_tls_security_level"),
        "encrypt"
    );
    // transport_maps routes partners to it.
    let transport = inst.param("transport_maps");
    assert_eq!(
        inst.query("partner.example", &transport),
        "smtp-tls-forced:"
    );

    let d = start_daemon(&inst);
    let normal = inst.param("smtp_tls_policy_maps");
    let forced = inst.service_param(forced_service, "smtp_tls_policy_maps");
    assert!(normal.starts_with("socketmap:"), "{normal}");
    assert_eq!(inst.query("bank.example", &normal), "encrypt");
    assert_eq!(inst.query("Mail.Bank.Example", &normal), "encrypt");
    assert_eq!(inst.query("other.example", &normal), "may");
    assert_eq!(inst.query("other.example", &forced), "encrypt");
    let records = d.wait_for_decisions(4);
    assert_eq!(records[0]["map"], "tls_policy");
    assert_eq!(records[3]["map"], "tls_forced");

    // `tls-policyd doctor` finds nothing to fix in the deployment as
    // shipped (and asks the running daemon through postmap).
    let doctor = run_with_timeout(
        inst.ns
            .cmd(env!("CARGO_BIN_EXE_tls-policyd"))
            .arg("doctor")
            .arg("--config")
            .arg(d.config_path())
            .arg("--postfix-config")
            .arg(inst.etc()),
    );
    let report = text(&doctor.stdout);
    assert!(
        doctor.status.success(),
        "{name}: doctor:\n{report}{}",
        text(&doctor.stderr)
    );
    assert!(
        report.contains("postmap -q bank.example"),
        "{name}: doctor:\n{report}"
    );

    let restrictions = inst.param("smtpd_recipient_restrictions");
    match policy_service(&restrictions) {
        None => assert!(
            !has_policy,
            "{name}: [policy_server] configured but main.cf never asks it"
        ),
        Some(addr) => {
            assert!(has_policy, "{name}: main.cf asks a policy server at {addr}");
            assert_eq!(
                ask_policy(&inst, &addr, "alice@src.example", "bob@other.example"),
                "DUNNO"
            );
            // A sender rule: FILTER to a transport that master.cf defines.
            let action = ask_policy(&inst, &addr, "cfo@finance.example.com", "bob@other.example");
            let transport = action
                .strip_prefix("FILTER ")
                .and_then(|t| t.strip_suffix(':'))
                .unwrap_or_else(|| panic!("{name}: sender rule answered {action}"));
            let line = inst.run_clean("postconf", &["-M", &format!("{transport}/unix")]);
            assert!(
                line.starts_with(transport),
                "{name}: FILTER {transport}: but master.cf has no such service"
            );
            // Every check_policy_service in main.cf names the same server;
            // with a milter (which writes the per-message record and adds
            // the trace header) it is asked at RCPT only.
            let milter = !inst.param("smtpd_milters").trim().is_empty();
            for p in ["smtpd_data_restrictions", "smtpd_end_of_data_restrictions"] {
                let want = (!milter).then_some(&*addr);
                assert_eq!(policy_service(&inst.param(p)).as_deref(), want, "{p}");
            }
        }
    }
}

#[test]
fn deployment_socketmap_only() {
    check_deployment("socketmap-only");
}

#[test]
fn deployment_socketmap_and_policy() {
    check_deployment("socketmap-and-policy");
}

#[test]
fn deployment_all_front_doors() {
    check_deployment("all-front-doors");
}

#[test]
fn deployment_fleet() {
    check_deployment("fleet");
}

#[test]
fn every_deployment_directory_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(deployment(""))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut listed = DEPLOYMENTS.map(String::from).to_vec();
    listed.sort();
    assert_eq!(found, listed);
    for d in DEPLOYMENTS {
        for f in ["main.cf", "master.cf", "tls-policyd.toml", "policy.toml"] {
            assert!(deployment(d).join(f).is_file(), "{d}/{f}");
        }
    }
}

/// `NAME = VALUE` of a main.cf in the repository (one-line values).
fn main_cf_value(file: &Path, name: &str) -> String {
    read(file)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("{}: no {name}", file.display()))
        .trim()
        .to_string()
}

/// The `-o smtp_tls_policy_maps=…` of a master.cf service.
fn master_cf_map(file: &Path, service: &str) -> String {
    let text = read(file);
    let at = text
        .find(&format!("\n{service} "))
        .unwrap_or_else(|| panic!("{}: no service {service}", file.display()));
    text[at + 1..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.starts_with('\t'))
        .find_map(|l| l.trim().strip_prefix("-o smtp_tls_policy_maps="))
        .unwrap_or_else(|| panic!("{service} has no smtp_tls_policy_maps"))
        .to_string()
}

/// The socketmap-only deployment puts the socket in Postfix's spool and
/// names it relative to the queue directory. This delivers real mail
/// through chrooted smtp(8) transports using exactly its map
/// specifications: forced TLS is enforced (the message to a server without
/// STARTTLS is deferred with "TLS is required"; an unreachable map would
/// have deferred it with "4.7.5 client TLS configuration problem"
/// instead), opportunistic mail is delivered, and the decision log shows
/// the chrooted processes' lookups.
#[test]
fn chrooted_smtp_reaches_the_socket_in_the_spool() {
    use common::postfix::{Mail, Postfix, PostfixOptions};
    use common::smtp::{SinkTls, SmtpSink};
    use std::time::{Duration, Instant};

    let Some(ns) = Netns::for_test("tlspd-chroot", &["postfix", "swaks"]) else {
        return;
    };
    let dep = deployment("socketmap-only");
    let normal = main_cf_value(&dep.join("main.cf"), "smtp_tls_policy_maps");
    let forced = master_cf_map(&dep.join("master.cf"), "smtp-tls-forced");
    assert!(
        normal.starts_with("socketmap:unix:tls-policyd/"),
        "{normal}"
    );
    let (sink25, sink2525) = ns.run_in(|| {
        (
            SmtpSink::start("127.0.0.23", 25, SinkTls::None),
            SmtpSink::start("127.0.0.23", 2525, SinkTls::None),
        )
    });
    let routes = "inline:{ forced.test=smtp-jail:[127.0.0.23]:25, \
                  opp.test=smtp-jail:[127.0.0.23]:2525, \
                  forcedmap.test=smtp-jail-forced:[127.0.0.23]:2525 }";
    let pf = Postfix::start(
        &ns,
        PostfixOptions::default()
            .set("transport_maps", routes)
            .chrooted_master_line(&format!(
                "smtp-jail unix - - y - - smtp\n  -o smtp_tls_policy_maps={normal}"
            ))
            .chrooted_master_line(&format!(
                "smtp-jail-forced unix - - y - - smtp\n  -o smtp_tls_policy_maps={forced}\n  \
                 -o smtp_tls_security_level=encrypt"
            )),
    );
    // What the administrator does: a directory for the socket in the spool.
    let sock_dir = pf.queue_dir().join("tls-policyd");
    std::fs::create_dir(&sock_dir).unwrap();
    let config = format!(
        "[socketmap]\nlisten = \"unix:{}/socketmap.sock\"\nsocket_mode = \"0660\"\n\
         socket_group = \"postfix\"\n[policy]\nfile = \"policy.toml\"\n\
         [log]\ndecisions = \"decisions.jsonl\"\n",
        sock_dir.display()
    );
    let policy = "default = \"opportunistic\"\n[[rule]]\ndomains = [\"[127.0.0.23]:25\"]\n\
                  tls = \"forced\"\nreason = \"partner relay\"\n";
    let d = Daemon::start_with(&config, policy, Options::in_netns(&ns));

    let mark = pf.log_mark();
    let status = |rcpt: &str| {
        let to = format!("to=<{rcpt}>");
        pf.wait_for_log_since(
            mark,
            |l| l.contains(&to) && l.contains("status="),
            Duration::from_secs(20),
        )
    };
    for rcpt in ["a@forced.test", "b@opp.test", "c@forcedmap.test"] {
        let s = pf.send(&Mail::to(&[rcpt]));
        assert!(s.status.success(), "{}", s.transcript);
    }
    let line = status("a@forced.test");
    assert!(
        line.contains("status=deferred") && line.contains("TLS is required, but was not offered"),
        "{line}\n{}",
        pf.diagnostics()
    );
    let line = status("b@opp.test");
    assert!(line.contains("status=sent"), "{line}\n{}", pf.diagnostics());
    let line = status("c@forcedmap.test");
    assert!(
        line.contains("status=deferred") && line.contains("TLS is required, but was not offered"),
        "{line}"
    );
    let deadline = Instant::now() + WAIT;
    while !sink2525
        .messages()
        .iter()
        .any(|m| m.rcpt_to.iter().any(|r| r == "b@opp.test"))
    {
        assert!(Instant::now() < deadline, "b@opp.test never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sink25.messages().is_empty(),
        "forced mail went out in plaintext"
    );
    assert!(
        !sink2525
            .messages()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r == "c@forcedmap.test")),
        "forced-map mail went out in plaintext"
    );
    let recs = d.decisions();
    let find = |key: &str, map: &str| {
        recs.iter()
            .find(|r| r["key"] == key && r["map"] == map)
            .unwrap_or_else(|| panic!("no {map} record for {key}: {recs:?}"))
            .clone()
    };
    assert_eq!(find("[127.0.0.23]:25", "tls_policy")["tls"], "forced");
    assert_eq!(find("[127.0.0.23]:2525", "tls_policy")["level"], "may");
    let raised = find("[127.0.0.23]:2525", "tls_forced");
    assert_eq!(raised["level"], "encrypt");
    assert_eq!(raised["raised"], true);
}
