//! DANE end to end, with real DNSSEC: knot signs the zone `dane.test`
//! (a fresh ECDSA key made with keymgr), unbound validates it with that
//! key's DS as its only trust anchor, and a real Postfix with
//! `smtp_dns_support_level = dnssec` asks tls-policyd (trust-ad, through the
//! same unbound) for the TLS policy of each recipient domain, then
//! authenticates the receiving server by its TLSA record itself.
//!
//! - `good.dane.test`: MX `mx-good` whose `3 1 1` TLSA record matches the
//!   SMTP server's key: tls-policyd answers `dane-only`, Postfix logs
//!   `Verified TLS connection established` and delivers.
//! - `bad.dane.test`: MX `mx-bad` whose TLSA record does not match:
//!   `dane-only` again, and Postfix defers the mail; the server never gets
//!   it.
//!
//! Everything runs inside a network namespace with only `lo`: knot on
//! 127.0.0.2:53, unbound on 127.0.0.1:53 (the namespace's resolv.conf, with
//! `options edns0 trust-ad`), SMTP servers on 127.0.0.31 and .32 port 25,
//! tls-policyd and Postfix. Needs root, `ip`, Postfix, swaks, knot and
//! unbound (`.ci/run` installs them); `SKIP_POSTFIX_TESTS=1` skips.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::dnssec::{self, KNOT, Knot, Zone, hex, start_unbound};
use common::fixtures::POLICY_DEFAULT;
use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use common::smtp::{SinkTls, SmtpSink};
use common::{Daemon, Options};

const TOOLS: &[&str] = &[
    "postfix",
    "postqueue",
    "swaks",
    "knotd",
    "keymgr",
    "unbound",
];

/// How long a delivery may take to show up.
const DELIVERY: Duration = Duration::from_secs(30);

const GOOD: (&str, &str) = ("mx-good.dane.test", "127.0.0.31");
const BAD: (&str, &str) = ("mx-bad.dane.test", "127.0.0.32");

/// Knot serving `dane.test`, signed with a new key.
fn start_knot(ns: &Netns, dir: &Path, good_tlsa: &str, bad_tlsa: &str) -> Knot {
    let records = format!(
        "good MX 10 {good_host}.\n\
         {good_host}. A {good_ip}\n\
         _25._tcp.{good_host}. TLSA 3 1 1 {good_tlsa}\n\
         bad MX 10 {bad_host}.\n\
         {bad_host}. A {bad_ip}\n\
         _25._tcp.{bad_host}. TLSA 3 1 1 {bad_tlsa}\n\
         notlsa MX 10 mx-notlsa\n\
         mx-notlsa A 127.0.0.33",
        good_host = GOOD.0,
        good_ip = GOOD.1,
        bad_host = BAD.0,
        bad_ip = BAD.1,
    );
    dnssec::start_knot(ns, dir, KNOT, &[Zone::signed("dane.test", &records)])
}

const CONFIG: &str = r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "2s"
dnssec = "trust-ad"

[dane]
cache_file = "cache.sqlite"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#;

#[test]
fn postfix_delivers_to_dane_with_verified_tls_and_defers_on_a_tlsa_mismatch() {
    let Some(ns) = Netns::for_test("tlspd-dane-e2e", TOOLS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (good_tls, good_digest) = SinkTls::self_signed_with_spki_sha256(&[GOOD.0]);
    let (bad_tls, bad_digest) = SinkTls::self_signed_with_spki_sha256(&[BAD.0]);
    // mx-bad publishes the digest of some other key.
    let wrong: Vec<u8> = bad_digest.iter().map(|b| b ^ 0xff).collect();
    let knot = start_knot(&ns, dir.path(), &hex(&good_digest), &hex(&wrong));
    let _unbound = start_unbound(&ns, dir.path(), &knot, &["dane.test"]);
    let dnskey = knot.dnskeys[0].clone();
    let (good, bad) = ns.run_in(move || {
        (
            SmtpSink::start(GOOD.1, 25, good_tls),
            SmtpSink::start(BAD.1, 25, bad_tls),
        )
    });

    let daemon = Daemon::start_with(CONFIG, POLICY_DEFAULT, Options::in_netns(&ns));
    let pf = Postfix::start(
        &ns,
        PostfixOptions::default()
            .set(
                "smtp_tls_policy_maps",
                format!("socketmap:{}:tls_policy", daemon.address()),
            )
            .set("smtp_dns_support_level", "dnssec")
            .set("smtp_host_lookup", "dns")
            .set("smtp_tls_loglevel", "1"),
    );

    let mark = pf.log_mark();
    for rcpt in ["a@good.dane.test", "b@bad.dane.test"] {
        let s = pf.send(&Mail::to(&[rcpt]).from(SENDER));
        assert!(s.status.success(), "{}", s.transcript);
    }
    let status = |rcpt: &str| {
        let to = format!("to=<{rcpt}>");
        pf.wait_for_log_since(mark, |l| l.contains(&to) && l.contains("status="), DELIVERY)
    };

    let line = status("a@good.dane.test");
    assert!(line.contains("status=sent"), "{line}");
    let tls = pf.wait_for_log_since(
        mark,
        |l| l.contains("TLS connection established to") && l.contains(GOOD.0),
        DELIVERY,
    );
    assert!(
        tls.contains(&format!(
            "Verified TLS connection established to {}[{}]:25",
            GOOD.0, GOOD.1
        )),
        "{tls}"
    );
    let deadline = Instant::now() + DELIVERY;
    while good.messages().is_empty() {
        assert!(Instant::now() < deadline, "the message never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(good.messages()[0].tls);

    let line = status("b@bad.dane.test");
    assert!(line.contains("status=deferred"), "{line}");
    assert!(line.contains("(Server certificate not verified)"), "{line}");
    assert!(
        bad.messages().is_empty(),
        "delivered despite the TLSA mismatch"
    );

    // tls-policyd saw the same DNSSEC state through unbound.
    let recs = daemon.decisions();
    for domain in ["good.dane.test", "bad.dane.test"] {
        let r = recs
            .iter()
            .find(|r| r["domain"] == domain)
            .unwrap_or_else(|| panic!("no decision for {domain}: {recs:?}"));
        assert_eq!(r["source"], "dane", "{r}");
        assert_eq!(r["level"], "dane-only", "{r}");
        assert_eq!(r["tls"], "forced", "{r}");
    }

    // And explains it.
    let config = daemon.config_path();
    let out = ns.run(
        env!("CARGO_BIN_EXE_tls-policyd"),
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "good.dane.test",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "MX 10 {}: 1 address(es), DNSSEC-validated; TLSA at _25._tcp.{}, DNSSEC-validated: 1 of 1 usable [3 1 1 {}]",
            GOOD.0,
            GOOD.0,
            hex(&good_digest)
        )),
        "{text}"
    );

    // dns.dnssec = "validate": tls-policyd checks knot's signatures itself,
    // with the zone's DNSKEY as trust anchor, asking knot directly.
    let anchor = dir.path().join("anchor.key");
    std::fs::write(&anchor, &dnskey).unwrap();
    let validating = dir.path().join("validate.toml");
    std::fs::write(
        &validating,
        CONFIG
            .replace("127.0.0.1:53", &format!("{KNOT}:53"))
            .replace(
                "dnssec = \"trust-ad\"",
                &format!(
                    "dnssec = \"validate\"\ntrust_anchor = {:?}",
                    anchor.to_str().unwrap()
                ),
            )
            .replace(
                "cache.sqlite",
                &dir.path().join("v.sqlite").display().to_string(),
            )
            .replace(
                "policy.toml",
                &daemon.dir().join("policy.toml").display().to_string(),
            ),
    )
    .unwrap();
    let explain = |domain: &str| {
        let out = ns.run(
            env!("CARGO_BIN_EXE_tls-policyd"),
            &["explain", "--config", validating.to_str().unwrap(), domain],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = explain("good.dane.test");
    assert!(text.contains("DNSSEC by validate"), "{text}");
    assert!(
        text.contains("socketmap    tls_policy -> \"OK dane-only\""),
        "{text}"
    );
    // Knot's NSEC denial of the TLSA record validates.
    let text = explain("notlsa.dane.test");
    assert!(
        text.contains("no TLSA at _25._tcp.mx-notlsa.dane.test (validated denial)"),
        "{text}"
    );
    assert!(text.contains("tls_policy -> \"OK may\""), "{text}");
}
