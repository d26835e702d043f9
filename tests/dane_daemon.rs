//! DANE through the daemon: the socketmap answers `dane-only`, `dane` and
//! `TEMP`, decision records carry `source = "dane"`, the cache file keeps
//! DANE history, and `explain` / `check-config` show the DANE state. The
//! daemon and a test DNS server on 127.0.0.1:53 run inside a network
//! namespace with only `lo` (the DNS server plays a validating resolver:
//! it sets the AD bit). Needs root and `ip`; `SKIP_POSTFIX_TESTS=1` skips.

mod common;

use std::time::Duration;

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::netns::Netns;
use common::{Client, Daemon, Options};

const DIGEST: [u8; 32] = [0x5a; 32];

const POLICY: &str =
    "default = \"opportunistic\"\n\n[[rule]]\ndomains = [\"static.test\"]\ntls = \"forced\"\n";

fn config(dane: &str) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[dane]
cache_file = "cache.sqlite"
{dane}

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#
    )
}

struct Lab {
    ns: Netns,
    dns: TestDns,
    daemon: Daemon,
}

impl Lab {
    fn start(dane: &str) -> Option<Lab> {
        let ns = Netns::for_test("tlspd-daned", &[])?;
        ns.enter_thread()
            .unwrap_or_else(|e| panic!("join {}: {e}", ns.name()));
        let dns = TestDns::start_at("127.0.0.1:53".parse().unwrap());
        dns.set_ad_default(true);
        for (domain, hosts) in [
            (
                "dane.test",
                &[("mx1.dane.test", true), ("mx2.dane.test", true)][..],
            ),
            (
                "some.test",
                &[("mx1.some.test", true), ("mx2.some.test", false)][..],
            ),
            ("static.test", &[("mx.static.test", true)][..]),
            ("plain.test", &[("mx.plain.test", true)][..]),
        ] {
            for (i, (host, tlsa)) in hosts.iter().enumerate() {
                dns.mx(domain, 10 * (i as u16 + 1), host);
                dns.a(host, "127.0.0.25");
                if *tlsa {
                    dns.tlsa(&format!("_25._tcp.{host}"), 3, 1, 1, &DIGEST);
                }
            }
        }
        dns.set_ad("plain.test", false);
        let daemon = Daemon::start_with(&config(dane), POLICY, Options::in_netns(&ns));
        Some(Lab { ns, dns, daemon })
    }

    fn client(&self) -> Client {
        Client::connect(self.daemon.port())
    }

    /// `tls-policyd ARGS` inside the namespace.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"));
        c.args(args);
        common::run_with_timeout(&mut c)
    }
}

#[test]
fn socketmap_answers_from_dane_in_precedence() {
    let Some(lab) = Lab::start("") else {
        return;
    };
    let mut c = lab.client();
    assert_eq!(c.query("tls_policy", "dane.test"), "OK dane-only");
    assert_eq!(c.query("tls_forced", "dane.test"), "OK dane-only");
    assert_eq!(c.query("tls_policy", "Some.Test."), "OK dane");
    assert_eq!(c.query("tls_forced", "some.test"), "OK dane-only");
    // Static rules first: no DNS lookup at all.
    assert_eq!(c.query("tls_policy", "static.test"), "OK encrypt");
    assert_eq!(
        lab.dns
            .query_count("static.test", hickory_proto::rr::RecordType::MX),
        0
    );
    // Unsigned: the default.
    assert_eq!(c.query("tls_policy", "plain.test"), "OK may");
    // Parent-walk keys never start a lookup.
    assert_eq!(c.query("tls_policy", ".test"), "OK may");
    assert_eq!(
        lab.dns
            .query_count("test", hickory_proto::rr::RecordType::MX),
        0
    );

    let recs = lab.daemon.wait_for_decisions(7);
    let dane: Vec<_> = recs.iter().filter(|r| r["domain"] == "dane.test").collect();
    assert_eq!(dane.len(), 2);
    for r in &dane {
        assert_eq!(r["source"], "dane");
        assert_eq!(r["tls"], "forced");
        assert_eq!(r["level"], "dane-only");
        assert_eq!(r["reply"], "OK");
        assert!(r.get("temporary").is_none(), "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("every MX host of dane.test has usable TLSA")
        );
    }
    let some = recs
        .iter()
        .find(|r| r["domain"] == "some.test" && r["map"] == "tls_forced")
        .unwrap();
    assert_eq!(some["raised"], true);
    let plain = recs.iter().find(|r| r["domain"] == "plain.test").unwrap();
    assert_eq!(plain["source"], "default");
}

#[test]
fn failed_lookups_for_a_dane_domain_answer_temp() {
    let Some(lab) = Lab::start("min_ttl = \"1s\"\nmax_ttl = \"1s\"\nfailure_ttl = \"1s\"\n") else {
        return;
    };
    let mut c = lab.client();
    assert_eq!(c.query("tls_policy", "dane.test"), "OK dane-only");
    lab.dns.servfail("dane.test");
    lab.dns.servfail("plain.test");
    std::thread::sleep(Duration::from_millis(1100));
    let reply = c.query("tls_policy", "dane.test");
    assert!(
        reply.starts_with(
            "TEMP dane.test had DANE (dane-only) and its DANE lookup failed, so delivery \
             waits: the MX lookup of dane.test failed: 127.0.0.1:53 answered SERVFAIL"
        ),
        "{reply}"
    );
    let forced = c.query("tls_forced", "dane.test");
    assert!(forced.starts_with("TEMP "), "{forced}");
    // Never had DANE: the next source (the default) decides.
    assert_eq!(c.query("tls_policy", "plain.test"), "OK may");

    let recs = lab.daemon.wait_for_decisions(4);
    let temp: Vec<_> = recs.iter().filter(|r| r["reply"] == "TEMP").collect();
    assert_eq!(temp.len(), 2, "{recs:?}");
    for r in temp {
        assert_eq!(r["source"], "dane");
        assert!(r.get("level").is_none(), "nothing after OK: {r}");
        assert_eq!(r["temporary"], true, "{r}");
    }

    // The history is in the cache file: a restarted daemon defers too.
    let mut daemon = lab.daemon;
    daemon.kill();
    let mut lab = Lab {
        ns: lab.ns,
        dns: lab.dns,
        daemon,
    };
    // The listener moves to a new port: take it from the log.
    lab.daemon.restart("socketmap");
    let reply = lab.client().query("tls_policy", "dane.test");
    assert!(reply.starts_with("TEMP "), "{reply}");
}

#[test]
fn explain_and_check_config_show_dane() {
    let Some(lab) = Lab::start("") else {
        return;
    };
    let config = lab.daemon.config_path();
    let config = config.to_str().unwrap();
    let out = lab.cli(&["explain", "--config", config, "some.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("  dane     DECIDES  policy: 1 of 2 MX hosts of some.test have usable TLSA"),
        "{text}"
    );
    assert!(
        text.contains("some.test: MX RRset DNSSEC-validated"),
        "{text}"
    );
    assert!(
        text.contains(
            "MX 10 mx1.some.test: 1 address(es), DNSSEC-validated; TLSA at \
             _25._tcp.mx1.some.test, DNSSEC-validated: 1 of 1 usable [3 1 1 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a]"
        ),
        "{text}"
    );
    assert!(
        text.contains("MX 20 mx2.some.test: 1 address(es), DNSSEC-validated; no TLSA at _25._tcp.mx2.some.test (validated denial)"),
        "{text}"
    );
    assert!(text.contains("DNSSEC by trust-ad"), "{text}");
    assert!(text.contains("tls_policy -> \"OK dane\""), "{text}");

    let out = lab.cli(&["explain", "--config", config, "--json", "dane.test"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["source"], "dane");
    assert_eq!(v["decision"]["level"], "dane-only");
    let step = &v["steps"][1];
    assert_eq!(step["source"], "dane");
    assert!(step["details"].as_array().unwrap().len() >= 4, "{step}");

    let out = lab.cli(&["check-config", "--config", config]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "  dane          DNSSEC by trust-ad via 127.0.0.1:53; on failure defer-known; cache "
        ),
        "{text}"
    );
}

#[test]
fn dane_wins_over_mta_sts_and_both_share_one_cache_file() {
    use common::https::{Response, TestHttps};
    use common::smtp::TestCa;
    use std::sync::Arc;
    use tls_policyd::store::{Db, Kind};

    let Some(ns) = Netns::for_test("tlspd-danests", &[]) else {
        return;
    };
    ns.enter_thread()
        .unwrap_or_else(|e| panic!("join {}: {e}", ns.name()));
    let keep = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    let ca_pem = keep.path().join("ca.pem");
    ca.write_pem(&ca_pem);
    let cache = keep.path().join("cache.sqlite");
    let dns = TestDns::start_at("127.0.0.1:53".parse().unwrap());
    let https = TestHttps::start("127.0.0.44", 443, ca);
    dns.set_ad_default(true);
    // both.test: DANE and MTA-STS; sts.test: MTA-STS only (unsigned).
    for domain in ["both.test", "sts.test"] {
        let host = format!("mx.{domain}");
        dns.mx(domain, 10, &host);
        dns.a(&host, "127.0.0.25");
        dns.txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=1;");
        dns.a(&format!("mta-sts.{domain}"), "127.0.0.44");
        https.site(
            &format!("mta-sts.{domain}"),
            Response::policy(&format!(
                "version: STSv1\nmode: enforce\nmx: {host}\nmax_age: 86400\n"
            )),
        );
    }
    dns.tlsa("_25._tcp.mx.both.test", 3, 1, 1, &DIGEST);
    dns.set_ad("sts.test", false);
    let conf = format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[dane]
cache_file = "{cache}"

[mta_sts]
cache_file = "{cache}"
extra_ca_file = "{ca}"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache = cache.display(),
        ca = ca_pem.display()
    );
    let mut daemon = Daemon::start_with(&conf, POLICY_DEFAULT, Options::in_netns(&ns));
    let mut c = Client::connect(daemon.port());
    assert_eq!(c.query("tls_policy", "both.test"), "OK dane-only");
    let sts = c.query("tls_policy", "sts.test");
    assert!(sts.starts_with("OK secure match=mx.sts.test"), "{sts}");
    let recs = daemon.wait_for_decisions(2);
    assert_eq!(recs[0]["source"], "dane");
    assert_eq!(recs[1]["source"], "mta-sts");

    let out = common::run_with_timeout(
        ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"))
            .args(["explain", "--config"])
            .arg(daemon.config_path())
            .arg("both.test"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let steps: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["  static ", "  dane ", "  mta-sts ", "  default "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(steps.len(), 4, "{text}");
    assert!(steps[1].starts_with("  dane     DECIDES"), "{text}");
    assert!(
        steps[2].contains("not consulted: a higher-precedence source decided"),
        "{text}"
    );

    // One file, both kinds, after the daemon stopped.
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit();
    let db = Db::open_read_only(&cache).unwrap();
    let (dane, _) = db.all(Some(Kind::Dane)).unwrap();
    let (mta_sts, _) = db.all(Some(Kind::MtaSts)).unwrap();
    let names = |v: &[tls_policyd::store::Entry]| {
        let mut d: Vec<String> = v.iter().map(|e| e.domain.clone()).collect();
        d.sort();
        d
    };
    assert_eq!(names(&dane), ["both.test", "sts.test"]);
    // On first contact MTA-STS is asked side by side with DANE (its
    // policy for both.test may be stored too); DANE's answer decided.
    let sts_names = names(&mta_sts);
    assert!(sts_names.contains(&"sts.test".to_string()), "{sts_names:?}");
    assert!(sts_names.len() <= 2, "{sts_names:?}");
}

#[test]
fn status_is_degraded_while_every_dane_lookup_fails() {
    let metrics = "failure_ttl = \"1s\"\n\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n";
    let Some(lab) = Lab::start(metrics) else {
        return;
    };
    let addr = lab.daemon.listening("metrics");
    let status = |lab: &Lab, addr: &str| {
        let out = lab.cli(&["status", "--address", addr, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), report)
    };
    let mut c = lab.client();
    // One lookup that works: the resolver answers.
    assert_eq!(c.query("tls_policy", "dane.test"), "OK dane-only");
    let (code, report) = status(&lab, &addr);
    assert_eq!((code, report["status"].as_str()), (Some(0), Some("ok")));
    // Then the resolver fails every query: five lookups in a row is not
    // yet a problem while one succeeded moments ago...
    let failing: Vec<String> = (1..=6).map(|i| format!("gone{i}.test")).collect();
    for d in &failing {
        lab.dns.servfail(d);
        c.query("tls_policy", d);
    }
    let (code, report) = status(&lab, &addr);
    assert_eq!(
        (code, report["status"].as_str()),
        (Some(0), Some("ok")),
        "{report}"
    );
    // ...but a daemon that never got an answer is degraded, and says why.
    let mut daemon = lab.daemon;
    daemon.kill();
    let mut lab = Lab {
        ns: lab.ns,
        dns: lab.dns,
        daemon,
    };
    std::fs::remove_file(lab.daemon.dir().join("cache.sqlite")).unwrap();
    lab.daemon.restart("socketmap");
    let addr = lab.daemon.listening("metrics");
    let mut c = lab.client();
    for d in &failing {
        c.query("tls_policy", d);
    }
    let (code, report) = status(&lab, &addr);
    assert_eq!(code, Some(2), "{report}");
    assert_eq!(report["status"], "degraded");
    let problem = report["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with(
            "the last 6 DANE (TLSA) lookups failed and none has succeeded since the start"
        ),
        "{problem}"
    );
    let text = lab.cli(&["status", "--address", &addr]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("problem       the last 6 DANE"));
}
