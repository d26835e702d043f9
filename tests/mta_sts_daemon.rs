//! MTA-STS in the running daemon, inside a network namespace with a test
//! DNS server on 127.0.0.1:53 and policy hosts on 127.0.0.44:443: the
//! socketmap answers, the decision log, a restart with the persisted
//! cache while everything is blocked, the `cache` and `explain` commands,
//! and real Postfix delivering (or not) by what MTA-STS says.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{Cert, HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use common::smtp::{SinkTls, SmtpSink, TestCa};
use common::{Client, Daemon, Options};

const BIN: &str = env!("CARGO_BIN_EXE_tls-policyd");

fn config(cache: &Path, ca: &Path) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[mta_sts]
cache_file = "{}"
extra_ca_file = "{}"
lookup_timeout = "5s"
fetch_timeout = "5s"
connect_timeout = "2s"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache.display(),
        ca.display()
    )
}

/// DNS and the policy hosts, inside the namespace.
fn servers(ns: &Netns, ca: Arc<TestCa>) -> (TestDns, TestHttps) {
    ns.run_in(move || {
        (
            TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
            TestHttps::start(HTTPS_IP, 443, ca),
        )
    })
}

fn publish(dns: &TestDns, https: &TestHttps, domain: &str, id: &str, policy: &str) {
    dns.txt_ttl(
        &format!("_mta-sts.{domain}"),
        0,
        &format!("v=STSv1; id={id};"),
    );
    dns.a(&format!("mta-sts.{domain}"), HTTPS_IP);
    https.site(&format!("mta-sts.{domain}"), Response::policy(policy));
}

fn client(ns: &Netns, d: &Daemon) -> Client {
    Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
}

fn start(ns: &Netns, config: &str) -> Daemon {
    Daemon::start_with(config, POLICY_DEFAULT, Options::in_netns(ns))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = common::run_with_timeout(cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "version: STSv1\nmode: enforce\nmx: mx.persist.test\nmx: *.backup.persist.test\nmax_age: 604800\n";

#[test]
fn daemon_answers_keeps_policies_across_restart_and_cache_commands_work() {
    let Some(ns) = Netns::for_test("stsd", &[]) else {
        return;
    };
    let ca = Arc::new(TestCa::new());
    let keep = tempfile::tempdir().unwrap();
    let cache = keep.path().join("cache.sqlite");
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let (dns, https) = servers(&ns, ca);
    publish(&dns, &https, "persist.test", "p1", GOOD);
    let conf = config(&cache, &ca_pem);

    let want = "OK secure match=mx.persist.test:.backup.persist.test servername=hostname";
    let mut d = start(&ns, &conf);
    let mut c = client(&ns, &d);
    assert_eq!(c.query("tls_policy", "Persist.Test."), want);
    assert_eq!(c.query("tls_forced", "persist.test"), want);
    // The parent-walk key never starts a lookup.
    assert_eq!(c.query("tls_policy", ".persist.test"), "OK may");
    assert_eq!(c.query("tls_policy", "plain.test"), "OK may");
    let recs = d.wait_for_decisions(4);
    let r = &recs[0];
    assert_eq!(r["source"], "mta-sts", "{r}");
    assert_eq!(r["tls"], "forced", "{r}");
    assert_eq!(r["policy_id"], "p1", "{r}");
    assert_eq!(r["policy_mode"], "enforce", "{r}");
    assert_eq!(recs[2]["source"], "default");
    assert!(recs[2].get("policy_id").is_none());
    assert!(!dns.queries().iter().any(|q| q.name == "_mta-sts.test"));
    assert_eq!(https.requests("mta-sts.persist.test"), 1);

    // explain, in the namespace (it looks up live, stores nothing).
    let (ok, out, err) = run(ns
        .cmd(BIN)
        .args(["explain", "--config"])
        .arg(d.config_path())
        .arg("persist.test"));
    assert!(ok, "{err}");
    assert!(
        out.contains("mta-sts  DECIDES  policy: MTA-STS policy p1 (enforce"),
        "{out}"
    );
    assert!(
        out.contains("record   v=STSv1; id=p1; (_mta-sts.persist.test)"),
        "{out}"
    );
    assert!(out.contains("policy   id p1, mode enforce, max_age 604800, mx mx.persist.test, *.backup.persist.test (fetched now)"), "{out}");
    assert!(out.contains("cache    valid, fetched "), "{out}");
    assert!(out.contains(&format!("tls_policy -> \"{want}\"")), "{out}");
    assert_eq!(
        https.requests("mta-sts.persist.test"),
        2,
        "explain fetched once"
    );

    // Stop, then block everything: no record, no policy host.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    dns.remove("_mta-sts.persist.test");
    https.remove("mta-sts.persist.test");
    let d = start(&ns, &conf);
    d.wait_for_line(|l| l.contains("MTA-STS cache loaded") && l.contains("policies=1"));
    let mut c = client(&ns, &d);
    assert_eq!(c.query("tls_policy", "persist.test"), want);
    assert_eq!(https.requests("mta-sts.persist.test"), 2);

    // The cache commands, on the file the daemon writes.
    let cfg = d.config_path();
    let (ok, out, err) = run(Command::new(BIN)
        .args(["cache", "--config"])
        .arg(&cfg)
        .arg("list"));
    assert!(ok, "{err}");
    assert!(out.contains("mta-sts  persist.test"), "{out}");
    assert!(out.contains("valid"), "{out}");
    assert!(out.contains("id p1 mode enforce"), "{out}");
    assert!(out.contains("1 entry in "), "{out}");
    let (ok, out, err) = run(Command::new(BIN)
        .args(["cache", "--config"])
        .arg(&cfg)
        .args(["show", "Persist.Test."]));
    assert!(ok, "{err}");
    assert!(out.contains("    mx: *.backup.persist.test"), "{out}");
    let (ok, out, _) = run(Command::new(BIN)
        .args(["cache", "--config"])
        .arg(&cfg)
        .args(["--json", "list"]));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["payload"]["id"], "p1");
    let (ok, _, err) = run(Command::new(BIN)
        .args(["cache", "--config"])
        .arg(&cfg)
        .args(["show", "other.test"]));
    assert!(
        !ok && err.contains("nothing cached for other.test"),
        "{err}"
    );

    // Purge, then reload: the daemon forgets the policy, and with the
    // record gone the domain is opportunistic again.
    let (ok, out, err) = run(Command::new(BIN)
        .args(["cache", "--config"])
        .arg(&cfg)
        .args(["purge", "persist.test"]));
    assert!(ok, "{err}");
    assert!(out.contains("removed 1 entry for persist.test"), "{out}");
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reloaded"));
    assert_eq!(c.query("tls_policy", "persist.test"), "OK may");
}

#[test]
fn daemon_answers_without_waiting_longer_than_lookup_timeout() {
    let Some(ns) = Netns::for_test("stsd", &[]) else {
        return;
    };
    let ca = Arc::new(TestCa::new());
    let keep = tempfile::tempdir().unwrap();
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let (dns, https) = servers(&ns, ca);
    publish(&dns, &https, "slow.test", "s1", GOOD);
    https.respond(
        "mta-sts.slow.test",
        Response::policy(GOOD).delayed(Duration::from_secs(2)),
    );
    let conf = config(&keep.path().join("cache.sqlite"), &ca_pem)
        .replace("lookup_timeout = \"5s\"", "lookup_timeout = \"300ms\"");
    let d = start(&ns, &conf);
    let mut c = client(&ns, &d);
    // Nothing known yet: the default, at once; the discovery goes on.
    assert_eq!(c.query("tls_policy", "slow.test"), "OK may");
    assert_eq!(d.wait_for_decisions(1)[0]["source"], "default");
    d.wait_for_line(|l| l.contains("did not finish in time") && l.contains("slow.test"));
    d.wait_for_line(|l| l.contains("MTA-STS policy fetched") && l.contains("slow.test"));
    assert!(
        c.query("tls_policy", "slow.test")
            .starts_with("OK secure match=mx.persist.test")
    );
}

#[test]
fn postfix_3_10_answers_say_why_a_published_policy_is_unusable() {
    let Some(ns) = Netns::for_test("stsd", &[]) else {
        return;
    };
    let ca = Arc::new(TestCa::new());
    let keep = tempfile::tempdir().unwrap();
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let (dns, https) = servers(&ns, ca);
    // A policy host that does not listen: the fetch fails.
    dns.txt_ttl("_mta-sts.down.test", 0, "v=STSv1; id=d1;");
    dns.a("mta-sts.down.test", "127.0.0.45");
    // A certificate that is not for the policy host.
    publish(&dns, &https, "cert.test", "c1", GOOD);
    https.cert(
        "mta-sts.cert.test",
        Cert::FromCaFor(vec!["mta-sts.other.test".into()]),
    );
    // A policy that does not parse, and a TXT record that does not.
    publish(
        &dns,
        &https,
        "bad.test",
        "b1",
        "version: STSv1\nmode: enforce\n",
    );
    dns.txt_ttl("_mta-sts.badtxt.test", 0, "v=STSv1; id=;");
    // Enforced, for the policy's own attributes.
    publish(&dns, &https, "good.test", "g1", GOOD);
    let conf = config(&keep.path().join("cache.sqlite"), &ca_pem).replace(
        "[mta_sts]\n",
        "[mta_sts]\npostfix_version = \"3.10\"\ntlsrpt = true\n",
    );
    let d = start(&ns, &conf);
    let mut c = client(&ns, &d);
    let failed = |domain: &str, kind: &str| {
        format!("OK may policy_type=sts policy_domain={domain} policy_failure={kind}")
    };
    assert_eq!(
        c.query("tls_policy", "down.test"),
        failed("down.test", "sts-policy-fetch-error")
    );
    assert_eq!(
        c.query("tls_policy", "cert.test"),
        failed("cert.test", "sts-webpki-invalid")
    );
    assert_eq!(
        c.query("tls_policy", "bad.test"),
        failed("bad.test", "sts-policy-invalid")
    );
    assert_eq!(
        c.query("tls_policy", "badtxt.test"),
        failed("badtxt.test", "sts-policy-invalid")
    );
    // Asked again: from the remembered failure.
    assert_eq!(
        c.query("tls_policy", "down.test"),
        failed("down.test", "sts-policy-fetch-error")
    );
    // No record: nothing to report, a plain answer.
    assert_eq!(c.query("tls_policy", "plain.test"), "OK may");
    // The forced map never carries them (Postfix would defer on them).
    assert_eq!(c.query("tls_forced", "down.test"), "OK encrypt");
    let good = c.query("tls_policy", "good.test");
    assert!(
        good.starts_with("OK secure match=mx.persist.test:.backup.persist.test servername=hostname policy_type=sts policy_domain=good.test mx_host_pattern="),
        "{good}"
    );
    assert!(
        !good.contains("policy_ttl") && !good.contains("policy_failure"),
        "{good}"
    );
    let recs = d.wait_for_decisions(8);
    assert_eq!(recs[0]["source"], "default", "{}", recs[0]);
}

// Real Postfix delivering by MTA-STS.

const GOOD_MX: (&str, &str) = ("mx.good.sts.test", "127.0.0.21");
const SELF_MX: (&str, &str) = ("mx.self.sts.test", "127.0.0.22");
const PLAIN_MX: (&str, &str) = ("mx.plain.sts.test", "127.0.0.23");
const DELIVERY: Duration = Duration::from_secs(20);

#[test]
fn postfix_delivers_by_mta_sts() {
    let Some(ns) = Netns::for_test("stspf", &["postfix", "postqueue", "swaks"]) else {
        return;
    };
    let ca = Arc::new(TestCa::new());
    let keep = tempfile::tempdir().unwrap();
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let (dns, https) = servers(&ns, ca.clone());
    let (good, selfsigned, plain) = ns.run_in({
        let tls = SinkTls::issued_by(&ca, &[GOOD_MX.0]);
        move || {
            (
                SmtpSink::start(GOOD_MX.1, 25, tls),
                SmtpSink::start(SELF_MX.1, 25, SinkTls::self_signed(&[SELF_MX.0])),
                SmtpSink::start(PLAIN_MX.1, 25, SinkTls::None),
            )
        }
    });
    for (host, ip) in [GOOD_MX, SELF_MX, PLAIN_MX] {
        dns.a(host, ip);
    }
    dns.mx("enforced.test", 10, GOOD_MX.0);
    dns.mx("forged.test", 10, SELF_MX.0);
    dns.mx("trial.test", 10, PLAIN_MX.0);
    publish(
        &dns,
        &https,
        "enforced.test",
        "e1",
        "version: STSv1\nmode: enforce\nmx: mx.good.sts.test\nmax_age: 86400\n",
    );
    publish(
        &dns,
        &https,
        "forged.test",
        "f1",
        "version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 86400\n",
    );
    publish(
        &dns,
        &https,
        "trial.test",
        "t1",
        "version: STSv1\nmode: testing\nmx: *.sts.test\nmax_age: 86400\n",
    );

    let d = start(&ns, &config(&keep.path().join("cache.sqlite"), &ca_pem));
    let pf = Postfix::start(
        &ns,
        PostfixOptions::default()
            .file("ca.pem", ca.pem())
            .set(
                "smtp_tls_policy_maps",
                format!("socketmap:{}:tls_policy", d.address()),
            )
            .set("smtp_tls_CAfile", "$config_directory/ca.pem")
            .set("smtp_tls_loglevel", "1")
            .set("smtp_host_lookup", "dns"),
    );
    let mark = pf.log_mark();
    let send = |rcpt: &str| {
        let s = pf.send(&Mail::to(&[rcpt]).from(SENDER));
        assert!(s.status.success(), "{}", s.transcript);
        s.queue_id()
            .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript))
    };
    let status = |id: &str, rcpt: &str| {
        let to = format!("to=<{rcpt}>");
        let tag = format!(": {id}: ");
        pf.wait_for_log_since(
            mark,
            |l| l.contains(&tag) && l.contains(&to) && l.contains("status="),
            DELIVERY,
        )
    };

    // enforce, MX in the policy, certificate from a trusted CA: sent over
    // verified TLS.
    let id = send("a@enforced.test");
    let line = status(&id, "a@enforced.test");
    assert!(line.contains("status=sent"), "{line}");
    let tls = pf.wait_for_log_since(
        mark,
        |l| l.contains("TLS connection established to") && l.contains(GOOD_MX.0),
        DELIVERY,
    );
    assert!(tls.contains("Verified TLS"), "{tls}");
    assert!(good.wait_for_messages(1, DELIVERY)[0].tls);

    // enforce, but the MX shows a certificate no CA vouches for: the mail
    // waits in the queue.
    let id = send("b@forged.test");
    let line = status(&id, "b@forged.test");
    assert!(line.contains("status=deferred"), "{line}");
    assert!(selfsigned.messages().is_empty());

    // testing: opportunistic; a server without STARTTLS still gets it.
    let id = send("c@trial.test");
    let line = status(&id, "c@trial.test");
    assert!(line.contains("status=sent"), "{line}");
    assert!(!plain.wait_for_messages(1, DELIVERY)[0].tls);

    let recs = d.decisions();
    for (domain, level, mode) in [
        (
            "enforced.test",
            "secure match=mx.good.sts.test servername=hostname",
            "enforce",
        ),
        (
            "forged.test",
            "secure match=.sts.test servername=hostname",
            "enforce",
        ),
        ("trial.test", "may", "testing"),
    ] {
        let r = recs
            .iter()
            .find(|r| r["domain"] == domain)
            .unwrap_or_else(|| panic!("no decision for {domain}"));
        assert_eq!(r["source"], "mta-sts", "{r}");
        assert_eq!(r["level"], level, "{r}");
        assert_eq!(r["policy_mode"], mode, "{r}");
    }
    println!(
        "mta-sts e2e: PASS enforce verified, enforce untrusted deferred, testing opportunistic"
    );
}

#[test]
fn check_config_and_start_name_cache_file_problems() {
    let keep = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let dir = keep.path();
    std::fs::write(dir.join("policy.toml"), POLICY_DEFAULT).unwrap();
    let write = |cache: &Path| {
        let p = dir.join("tls-policyd.toml");
        std::fs::write(&p, config(cache, &ca_pem)).unwrap();
        p
    };

    let cfg = write(&dir.join("cache.sqlite"));
    let (ok, out, err) = run(Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    assert!(out.contains("mta-sts       cache "), "{out}");
    assert!(
        out.contains("(created on start); lookups wait at most 5s; answers for Postfix 3.4"),
        "{out}"
    );

    let cfg = write(&dir.join("missing-dir/cache.sqlite"));
    let (ok, _, err) = run(Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(!ok);
    assert!(err.contains("key `mta_sts.cache_file`: directory"), "{err}");

    // Not a cache: check-config says so, and passes, since the daemon
    // moves such a file aside and starts (tests/cache_file_faults.rs): a
    // reload checked by it is not refused for a file serve copes with.
    let junk = dir.join("junk.sqlite");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let cfg = write(&junk);
    let (ok, out, err) = run(Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    assert!(
        out.contains("junk.sqlite (damaged, moved aside to ")
            && out.contains("junk.sqlite.corrupt-SECONDS on start"),
        "{out}"
    );
    // A file of a newer schema is still refused.
    let newer = dir.join("newer.sqlite");
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let (ok, _, err) = run(Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(write(&newer)));
    assert!(!ok);
    assert!(err.contains("schema version 99 is newer"), "{err}");

    // tlsrpt needs Postfix 3.10.
    let p = dir.join("tls-policyd.toml");
    let text = config(&dir.join("cache.sqlite"), &ca_pem)
        .replace("[mta_sts]\n", "[mta_sts]\ntlsrpt = true\n");
    std::fs::write(&p, text).unwrap();
    let (ok, _, err) = run(Command::new(BIN).args(["check-config", "--config"]).arg(&p));
    assert!(!ok);
    assert!(
        err.contains("key `mta_sts.tlsrpt`: needs Postfix 3.10"),
        "{err}"
    );
}
