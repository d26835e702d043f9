//! The socketmap front door of the real binary, over loopback TCP and unix
//! sockets: key forms, the two maps, framing limits and errors, concurrency,
//! the decision log, reload, logrotate and shutdown.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use common::{Client, Daemon, Options, config, config_listening, netstring, read_json_lines};
use serde_json::Value;

/// Rules 1 to 6 (`tests/fixtures/policy-partners.toml`).
const POLICY: &str = common::fixtures::POLICY_PARTNERS;

const ENCRYPT: &str = "OK encrypt";
const MAY: &str = "OK may";
const PAYROLL: &str = "OK secure match=mx1.payroll.example:mx2.payroll.example protocols=>=TLSv1.2";
const VERIFY_BANK: &str = "OK verify match=mx.bank.example";
const RELAY: &str = "OK secure match=relay.example";

/// `tls_policy` keys and replies with `default_reply = "policy"`.
const POLICY_CASES: &[(&str, &str)] = &[
    // exact and subdomains
    ("bank.example", ENCRYPT),
    ("mx.bank.example", ENCRYPT),
    ("a.b.c.bank.example", ENCRYPT),
    ("notbank.example", MAY),
    ("bank.example.com", MAY),
    ("example.com", MAY),
    // parent-walk keys
    (".bank.example", ENCRYPT),
    (".sub.bank.example", ENCRYPT),
    (".example", MAY),
    (".com", MAY),
    // case and trailing dot
    ("Bank.EXAMPLE", ENCRYPT),
    ("MX.Bank.Example", ENCRYPT),
    ("bank.example.", ENCRYPT),
    ("MX.BANK.EXAMPLE.", ENCRYPT),
    (".Bank.Example.", ENCRYPT),
    // attributes are sent in full
    ("payroll.example", PAYROLL),
    ("PAYROLL.example.", PAYROLL),
    ("mx.payroll.example", MAY),
    ("legacy-partner.example", "OK none"),
    // most specific entry wins
    ("secure.bank.example", VERIFY_BANK),
    ("mx.secure.bank.example", ENCRYPT),
    ("eu.bank.example", ENCRYPT),
    ("mx.eu.bank.example", VERIFY_BANK),
    (".eu.bank.example", VERIFY_BANK),
    // IDN: rule written as U-label, key as A-label, and the other way round
    ("xn--bcher-kva.example", ENCRYPT),
    ("XN--BCHER-KVA.example.", ENCRYPT),
    ("bücher.example", ENCRYPT),
    ("BÜCHER.Example", ENCRYPT),
    ("müller.example", ENCRYPT),
    ("xn--mller-kva.example", ENCRYPT),
    ("mx.bücher.example", MAY),
    // next-hop keys: [host], [host]:port, host:port
    ("[mx.bank.example]", ENCRYPT),
    ("[mx.bank.example]:25", ENCRYPT),
    ("mx.bank.example:25", ENCRYPT),
    ("[MX.Bank.Example.]:25", ENCRYPT),
    ("[relay.example]:587", RELAY),
    ("[Relay.Example.]:587", RELAY),
    ("relay.example:2525", RELAY),
    ("[relay.example]:25", MAY),
    ("[relay.example]", MAY),
    ("relay.example", MAY),
    ("[192.0.2.7]", RELAY),
    ("[192.0.2.7]:25", RELAY),
    ("[192.0.2.8]:25", MAY),
    // not a destination at all: the default
    ("not a domain", MAY),
    ("a..b", MAY),
];

fn policy_daemon() -> Daemon {
    Daemon::start(&config("policy"), POLICY)
}

fn notfound_daemon() -> Daemon {
    Daemon::start(&config("notfound"), POLICY)
}

#[test]
fn every_key_form_gets_the_right_reply() {
    let d = policy_daemon();
    let mut c = d.client();
    let mut wrong = Vec::new();
    for &(key, want) in POLICY_CASES {
        let got = c.query("tls_policy", key);
        if got != want {
            wrong.push(format!("{key:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong replies:\n{}", wrong.join("\n"));
}

#[test]
fn forced_map_is_never_weaker_than_encrypt() {
    let d = policy_daemon();
    let mut c = d.client();
    let cases = [
        ("example.com", ENCRYPT),
        (".com", ENCRYPT),
        ("bank.example", ENCRYPT),
        ("legacy-partner.example", ENCRYPT),
        ("payroll.example", PAYROLL),
        ("secure.bank.example", VERIFY_BANK),
        ("[relay.example]:587", RELAY),
        ("not a domain", ENCRYPT),
    ];
    for (key, want) in cases {
        assert_eq!(c.query("tls_forced", key), want, "tls_forced {key:?}");
    }
    // The normal map on the same connection is unaffected.
    assert_eq!(c.query("tls_policy", "example.com"), MAY);

    // Opportunistic DANE becomes mandatory DANE, not encrypt.
    let d = Daemon::start(&config("policy"), "default = \"dane\"\n");
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "example.com"), "OK dane");
    assert_eq!(c.query("tls_forced", "example.com"), "OK dane-only");
}

#[test]
fn default_reply_notfound() {
    let d = notfound_daemon();
    let mut c = d.client();
    // Exactly `9:NOTFOUND ,` on the wire, space included.
    c.send_raw(&netstring(b"tls_policy example.com")).unwrap();
    assert_eq!(c.read_raw(12), b"9:NOTFOUND ,");
    for key in [".com", ".example", "[relay.example]:25", "not a domain"] {
        assert_eq!(c.query("tls_policy", key), "NOTFOUND ", "{key:?}");
    }
    // Keys a rule covers are answered, even a rule that says `none`.
    assert_eq!(c.query("tls_policy", "Bank.Example."), ENCRYPT);
    assert_eq!(c.query("tls_policy", ".bank.example"), ENCRYPT);
    assert_eq!(c.query("tls_policy", "legacy-partner.example"), "OK none");
    assert_eq!(c.query("tls_policy", "payroll.example"), PAYROLL);
    // The forced map always answers.
    assert_eq!(c.query("tls_forced", "example.com"), ENCRYPT);

    let recs = d.wait_for_decisions(10);
    let nf = &recs[0];
    assert_eq!(nf["key"], "example.com");
    assert_eq!(nf["reply"], "NOTFOUND");
    assert_eq!(nf["source"], "default");
    assert_eq!(nf["tls"], "opportunistic");
    assert!(
        nf.get("level").is_none(),
        "NOTFOUND record has a level: {nf}"
    );
}

#[test]
fn unknown_map_name_is_perm_and_the_connection_stays_usable() {
    let d = policy_daemon();
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
    let r = c.query("nosuchmap", "bank.example");
    assert!(r.starts_with("PERM "), "{r:?}");
    assert!(
        r.contains("nosuchmap"),
        "reason does not name the map: {r:?}"
    );
    // Map names are exact.
    let r = c.query("TLS_POLICY", "bank.example");
    assert!(r.starts_with("PERM "), "{r:?}");
    assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
    assert_eq!(c.query("tls_forced", "example.com"), ENCRYPT);
}

#[test]
fn request_sent_one_byte_at_a_time() {
    let d = policy_daemon();
    let mut c = d.client();
    for (key, want) in [
        ("[mx.bank.example]:25", ENCRYPT),
        ("payroll.example", PAYROLL),
    ] {
        let req = netstring(format!("tls_policy {key}").as_bytes());
        for b in &req {
            c.send_raw(std::slice::from_ref(b)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.read_reply(), want, "{key:?}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let d = policy_daemon();
    let mut c = d.client();
    let mut two = netstring(b"tls_policy bank.example");
    two.extend(netstring(b"tls_policy example.com"));
    c.send_raw(&two).unwrap();
    assert_eq!(c.read_reply(), ENCRYPT);
    assert_eq!(c.read_reply(), MAY);

    // A whole batch in one write, and one request split across writes.
    let mut batch = Vec::new();
    for &(key, _) in POLICY_CASES {
        batch.extend(netstring(format!("tls_policy {key}").as_bytes()));
    }
    let split = netstring(b"tls_forced example.com");
    batch.extend(&split[..5]);
    c.send_raw(&batch).unwrap();
    for &(key, want) in POLICY_CASES {
        assert_eq!(c.read_reply(), want, "{key:?}");
    }
    c.send_raw(&split[5..]).unwrap();
    assert_eq!(c.read_reply(), ENCRYPT);
}

#[test]
fn many_requests_on_one_connection() {
    let d = policy_daemon();
    let mut c = d.client();
    for i in 0..2000 {
        let (key, want) = POLICY_CASES[i % POLICY_CASES.len()];
        assert_eq!(c.query("tls_policy", key), want, "request {i}: {key:?}");
    }
}

/// `tls_policy ` plus a key that makes the payload exactly `len` bytes.
fn query_of_len(len: usize) -> Vec<u8> {
    let mut p = b"tls_policy ".to_vec();
    p.resize(len, b'a');
    p
}

#[test]
fn query_of_exactly_10000_bytes_is_answered() {
    let d = policy_daemon();
    let mut c = d.client();
    let q = query_of_len(10_000);
    assert_eq!(q.len(), 10_000);
    // The key is far too long for a domain name: the default applies.
    assert_eq!(c.query_payload(&q), MAY);

    // The length alone is not refused; the rest may follow later.
    let wire = netstring(&q);
    c.send_raw(&wire[..6]).unwrap();
    assert_eq!(&wire[..6], b"10000:");
    std::thread::sleep(Duration::from_millis(20));
    c.send_raw(&wire[6..]).unwrap();
    assert_eq!(c.read_reply(), MAY);
    assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
}

#[test]
fn query_of_10001_bytes_closes_the_connection() {
    let d = policy_daemon();
    let mut bystander = d.client();
    assert_eq!(bystander.query("tls_policy", "bank.example"), ENCRYPT);

    let mut c = d.client();
    let addr = c.local_addr();
    // The server may close before it has read everything: ignore EPIPE.
    let _ = c.send_raw(&netstring(&query_of_len(10_001)));
    assert!(
        c.is_closed(),
        "a 10,001 byte query did not close the connection"
    );
    d.wait_for_line(|l| l.contains("WARN") && l.contains(&addr));

    // Refused as soon as the length is known, before any payload.
    let mut c = d.client();
    let addr = c.local_addr();
    c.send_raw(b"10001:").unwrap();
    assert!(c.is_closed(), "length 10001 did not close the connection");
    d.wait_for_line(|l| l.contains("WARN") && l.contains(&addr));

    assert_eq!(bystander.query("tls_policy", "bank.example"), ENCRYPT);
}

#[test]
fn framing_errors_close_only_that_connection() {
    let d = policy_daemon();
    let mut missing_comma = netstring(b"tls_policy bank.example");
    *missing_comma.last_mut().unwrap() = b';';
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad length byte", b"2x:ab,".to_vec()),
        ("negative length", b"-1:a,".to_vec()),
        ("empty length", b":tls_policy bank.example,".to_vec()),
        ("leading zero", b"023:tls_policy bank.example,".to_vec()),
        ("missing comma", missing_comma),
        ("HTTP request", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (
            "non-UTF-8 payload",
            netstring(b"tls_policy \xff\xfe.example"),
        ),
        ("payload without a space", netstring(b"tls_policy")),
        ("empty payload", b"0:,".to_vec()),
    ];
    let mut bystander = d.client();
    assert_eq!(bystander.query("tls_policy", "bank.example"), ENCRYPT);
    for (what, bytes) in cases {
        let mut c = d.client();
        let addr = c.local_addr();
        let _ = c.send_raw(&bytes);
        assert!(c.is_closed(), "{what}: connection not closed");
        let line = d.wait_for_line(|l| l.contains(&addr));
        assert!(
            line.contains("WARN"),
            "{what}: log line is not a warning: {line}"
        );
        assert_eq!(
            bystander.query("tls_policy", "mx.bank.example"),
            ENCRYPT,
            "{what}: another connection stopped answering"
        );
    }
    // New connections are still accepted.
    assert_eq!(d.client().query("tls_policy", "payroll.example"), PAYROLL);
}

#[test]
fn requests_before_a_bad_one_are_answered_then_the_connection_closes() {
    let d = policy_daemon();
    let mut c = d.client();
    let addr = c.local_addr();
    let mut bytes = netstring(b"tls_policy bank.example");
    bytes.extend(netstring(b"tls_policy example.com"));
    bytes.extend(b"GET / HTTP/1.0\r\n\r\n");
    c.send_raw(&bytes).unwrap();
    assert_eq!(c.read_reply(), ENCRYPT);
    assert_eq!(c.read_reply(), MAY);
    assert!(c.is_closed());
    d.wait_for_line(|l| l.contains("WARN") && l.contains(&addr));
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let text = config_listening("inet:127.0.0.1:0", "policy", "idle_timeout = \"1s\"");
    let d = Daemon::start(&text, POLICY);
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
    assert!(
        c.is_closed(),
        "idle connection still open after {:?}",
        common::WAIT
    );
    // The server itself is fine.
    assert_eq!(d.client().query("tls_policy", "bank.example"), ENCRYPT);
}

#[test]
fn concurrent_connections() {
    const CONNECTIONS: usize = 64;
    const LOOKUPS: usize = 200;
    let d = policy_daemon();
    let port = d.port();
    std::thread::scope(|s| {
        for t in 0..CONNECTIONS {
            s.spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..LOOKUPS {
                    let (key, want) = POLICY_CASES[(t * 7 + i) % POLICY_CASES.len()];
                    let (map, want) = if i % 5 == 0 {
                        // The forced map answers encrypt wherever the
                        // normal map would allow plaintext.
                        let w = if want == MAY || want == "OK none" {
                            ENCRYPT
                        } else {
                            want
                        };
                        ("tls_forced", w)
                    } else {
                        ("tls_policy", want)
                    };
                    assert_eq!(
                        c.query(map, key),
                        want,
                        "connection {t}, lookup {i}: {map} {key:?}"
                    );
                }
            });
        }
    });
    let recs = d.wait_for_decisions(CONNECTIONS * LOOKUPS);
    assert_eq!(recs.len(), CONNECTIONS * LOOKUPS);
}

fn assert_has(rec: &Value, field: &str, want: impl Into<Value>) {
    let want = want.into();
    assert_eq!(rec.get(field), Some(&want), "field {field} of {rec}");
}

fn assert_absent(rec: &Value, field: &str) {
    assert!(
        rec.get(field).is_none(),
        "field {field} should be absent: {rec}"
    );
}

#[test]
fn decision_log_has_one_record_per_lookup() {
    let mut d = policy_daemon();
    let mut c = d.client();
    let lookups = [
        ("tls_policy", "MX.Bank.Example.", ENCRYPT),
        ("tls_forced", "example.com", ENCRYPT),
        ("tls_policy", "example.com", MAY),
        ("tls_policy", "payroll.example", PAYROLL),
        ("tls_forced", "legacy-partner.example", ENCRYPT),
        ("tls_policy", "[relay.example]:587", RELAY),
    ];
    for (map, key, want) in lookups {
        assert_eq!(c.query(map, key), want);
    }
    let recs = d.wait_for_decisions(lookups.len());
    assert_eq!(recs.len(), lookups.len(), "{recs:#?}");
    for (rec, (map, key, want)) in recs.iter().zip(lookups) {
        assert_has(rec, "frontend", "socketmap");
        assert_has(rec, "map", map);
        assert_has(rec, "key", key);
        assert_has(rec, "reply", "OK");
        assert_has(rec, "level", want.strip_prefix("OK ").unwrap());
        let ts = rec["ts"].as_str().unwrap_or_else(|| panic!("no ts: {rec}"));
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "ts is not RFC 3339 UTC: {ts}"
        );
        let reason = rec["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason: {rec}"));
        assert!(!reason.is_empty());
    }

    // A static decision: the key as sent, the domain normalised.
    let r = &recs[0];
    assert_has(r, "domain", "mx.bank.example");
    assert_has(r, "tls", "forced");
    assert_has(r, "source", "static");
    assert_has(r, "rule", 1);
    assert_has(r, "matched", ".bank.example");
    assert_has(r, "reason", "PCI partner: never in plaintext");
    assert_absent(r, "raised");

    // The forced map raising the default.
    let r = &recs[1];
    assert_has(r, "domain", "example.com");
    assert_has(r, "tls", "forced");
    assert_has(r, "level", "encrypt");
    assert_has(r, "source", "default");
    assert_has(r, "raised", true);
    assert_absent(r, "rule");
    assert_absent(r, "matched");
    assert!(r["reason"].as_str().unwrap().contains("default"), "{r}");

    // The default on the normal map.
    let r = &recs[2];
    assert_has(r, "domain", "example.com");
    assert_has(r, "tls", "opportunistic");
    assert_has(r, "level", "may");
    assert_has(r, "source", "default");
    assert_absent(r, "rule");
    assert_absent(r, "matched");
    assert_absent(r, "raised");

    let r = &recs[3];
    assert_has(r, "tls", "forced");
    assert_has(r, "rule", 2);
    assert_has(r, "matched", "payroll.example");

    // A static `none` raised by the forced map keeps its rule.
    let r = &recs[4];
    assert_has(r, "tls", "forced");
    assert_has(r, "source", "static");
    assert_has(r, "rule", 3);
    assert_has(r, "raised", true);

    // A next-hop key names its host.
    let r = &recs[5];
    assert_has(r, "domain", "relay.example");
    assert_has(r, "rule", 6);
    assert_has(r, "matched", "[relay.example]:587");

    // Nothing more is written at shutdown: exactly one line per lookup.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    assert_eq!(d.decisions().len(), lookups.len());
}

fn reloaded(d: &Daemon, mark: usize) {
    d.wait_for_line_since(mark, |l| l.contains("reloaded"));
}

#[test]
fn sighup_applies_a_changed_policy() {
    let d = policy_daemon();
    let mut before = d.client();
    assert_eq!(before.query("tls_policy", "example.com"), MAY);
    assert_eq!(before.query("tls_policy", "bank.example"), ENCRYPT);

    d.write_policy(
        "default = \"forced\"\n\
         [[rule]]\n\
         domains = [\"bank.example\"]\n\
         tls = \"none\"\n",
    );
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    reloaded(&d, mark);

    // A connection opened before the reload sees the new policy too.
    assert_eq!(before.query("tls_policy", "example.com"), ENCRYPT);
    assert_eq!(before.query("tls_policy", "bank.example"), "OK none");
    assert_eq!(before.query("tls_policy", "mx.bank.example"), ENCRYPT);
    let mut after = d.client();
    assert_eq!(after.query("tls_policy", "payroll.example"), ENCRYPT);
    assert_eq!(after.query("tls_forced", "bank.example"), ENCRYPT);
}

#[test]
fn sighup_applies_changed_settings() {
    let d = policy_daemon();
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "example.com"), MAY);
    // New default reply, map names and decision log; a new listen address
    // only takes effect on restart.
    let text = config_listening(
        "inet:127.0.0.1:1",
        "notfound",
        "map = \"policy_v2\"\nforced_map = \"forced_v2\"",
    )
    .replace(common::DECISIONS_FILE, "moved.jsonl");
    d.write_config(&text);
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    reloaded(&d, mark);
    d.wait_for_line_since(mark, |l| {
        l.contains("WARN") && l.contains("socketmap.listen")
    });

    assert_eq!(c.query("policy_v2", "example.com"), "NOTFOUND ");
    assert_eq!(c.query("policy_v2", "bank.example"), ENCRYPT);
    assert_eq!(c.query("forced_v2", "example.com"), ENCRYPT);
    assert!(c.query("tls_policy", "bank.example").starts_with("PERM "));
    let moved = common::wait_for_json_lines(&d.dir().join("moved.jsonl"), 3);
    assert_eq!(moved[0]["map"], "policy_v2");
    assert_eq!(moved[2]["map"], "forced_v2");
    // Still on the old port.
    assert_eq!(d.client().query("policy_v2", "payroll.example"), PAYROLL);
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_policy() {
    let d = policy_daemon();
    let mut c = d.client();
    let policy = d.policy_path().display().to_string();
    let config_file = d.config_path().display().to_string();
    let broken: [(&str, String, &[&str]); 3] = [
        (
            "bad TOML",
            "default = \"forced\"\n[[rule]]\ndomains = [\"bank.example\"\ntls = \"none\"\n"
                .to_string(),
            &[policy.as_str(), "line 4"],
        ),
        (
            "duplicate domain",
            "default = \"forced\"\n\
             [[rule]]\ndomains = [\"bank.example\"]\ntls = \"none\"\n\
             [[rule]]\ndomains = [\"Bank.Example.\"]\ntls = \"secure\"\n"
                .to_string(),
            &[
                policy.as_str(),
                "rule 2",
                "\"Bank.Example.\"",
                "already listed",
            ],
        ),
        (
            "unknown level",
            "default = \"sometimes\"\n".to_string(),
            &[policy.as_str(), "sometimes"],
        ),
    ];
    for (what, text, must_mention) in broken {
        d.write_policy(&text);
        let mark = d.mark();
        d.signal(libc::SIGHUP);
        d.wait_for_line_since(mark, |l| l.contains("reload failed"));
        let said = d.stderr_since(mark);
        for m in must_mention {
            assert!(
                said.contains(m),
                "{what}: stderr does not mention {m:?}:\n{said}"
            );
        }
        assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT, "{what}");
        assert_eq!(c.query("tls_policy", "example.com"), MAY, "{what}");
        assert_eq!(
            d.client().query("tls_policy", "payroll.example"),
            PAYROLL,
            "{what}"
        );
    }

    // A broken config file is refused the same way.
    d.write_policy("default = \"forced\"\n");
    d.write_config(&config("policy").replace("[log]\n", "[log]\nrotate = true\n"));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reload failed"));
    let said = d.stderr_since(mark);
    assert!(
        said.contains(&config_file) && said.contains("rotate"),
        "{said}"
    );
    assert_eq!(c.query("tls_policy", "example.com"), MAY);

    // Fixed files load again.
    d.write_config(&config("policy"));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    reloaded(&d, mark);
    assert_eq!(c.query("tls_policy", "example.com"), ENCRYPT);
}

#[test]
fn sighup_reopens_a_rotated_decision_log() {
    let mut d = policy_daemon();
    let mut c = d.client();
    let log = d.decisions_path();
    let rotated: PathBuf = d.dir().join("decisions.jsonl.1");
    assert_eq!(c.query("tls_policy", "one.example"), MAY);
    d.wait_for_decisions(1);

    std::fs::rename(&log, &rotated).unwrap();
    // Until the signal the daemon still writes to the file it has open.
    assert_eq!(c.query("tls_policy", "two.example"), MAY);
    common::wait_for_json_lines(&rotated, 2);

    let mark = d.mark();
    d.signal(libc::SIGHUP);
    reloaded(&d, mark);
    assert_eq!(c.query("tls_policy", "three.example"), MAY);
    let fresh = d.wait_for_decisions(1);
    assert_eq!(fresh[0]["key"], "three.example");

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    let keys = |recs: Vec<Value>| -> Vec<String> {
        recs.iter()
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        keys(read_json_lines(&rotated)),
        ["one.example", "two.example"]
    );
    assert_eq!(keys(read_json_lines(&log)), ["three.example"]);
}

#[test]
fn sighup_reopens_the_decision_log_even_when_the_policy_is_broken() {
    let d = policy_daemon();
    let mut c = d.client();
    let rotated = d.dir().join("decisions.jsonl.1");
    assert_eq!(c.query("tls_policy", "one.example"), MAY);
    d.wait_for_decisions(1);
    std::fs::rename(d.decisions_path(), &rotated).unwrap();
    d.write_policy("default = \"forced\"\n[[rule]]\n");

    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reload failed"));
    // The old policy answers, and its record goes to a fresh file.
    assert_eq!(c.query("tls_policy", "two.example"), MAY);
    let fresh = d.wait_for_decisions(1);
    assert_eq!(fresh[0]["key"], "two.example");
    assert_eq!(read_json_lines(&rotated).len(), 1);
}

#[test]
fn sigterm_exits_promptly_with_an_idle_connection_open() {
    let mut d = policy_daemon();
    let mut idle = d.client();
    assert_eq!(idle.query("tls_policy", "bank.example"), ENCRYPT);
    // Another connection with half a request sent.
    let mut partial = d.client();
    partial.send_raw(b"23:tls_pol").unwrap();
    // The default idle timeout is minutes: exiting within the wait
    // means the daemon did not wait for these connections.
    d.signal(libc::SIGTERM);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", d.stderr_text());
    assert!(idle.is_closed());
    assert!(partial.is_closed());
}

fn unix_daemon(mode: &str) -> (Daemon, PathBuf) {
    let extra = format!("socket_mode = \"{mode}\"");
    // A relative path is taken relative to the config file.
    let d = Daemon::start(
        &config_listening("unix:socketmap.sock", "policy", &extra),
        POLICY,
    );
    let path = PathBuf::from(d.address().strip_prefix("unix:").expect("unix address"));
    assert_eq!(path, d.dir().join("socketmap.sock"));
    (d, path)
}

#[test]
fn unix_socket_listener_has_the_configured_mode() {
    for (mode, want) in [("0600", 0o600), ("0660", 0o660)] {
        let (_daemon, path) = unix_daemon(mode);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            want,
            "socket_mode {mode}"
        );
        let mut c = Client::connect_unix(&path);
        assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
        assert_eq!(c.query("tls_forced", "example.com"), ENCRYPT);
    }
}

#[test]
fn sigterm_removes_the_unix_socket() {
    let (mut d, path) = unix_daemon("0660");
    let mut c = Client::connect_unix(&path);
    assert_eq!(c.query("tls_policy", "payroll.example"), PAYROLL);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0));
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn sigint_exits_cleanly_too() {
    let mut d = policy_daemon();
    assert_eq!(d.client().query("tls_policy", "bank.example"), ENCRYPT);
    d.signal(libc::SIGINT);
    assert_eq!(d.wait_exit().code(), Some(0), "{}", d.stderr_text());
}

#[test]
fn a_socket_left_by_a_killed_daemon_is_replaced() {
    let (mut crashed, path) = unix_daemon("0660");
    assert_eq!(crashed.kill().code(), None);
    assert!(path.exists(), "a killed daemon cannot clean up its socket");
    // A new daemon on the same path (the killed one's directory stays
    // until `crashed` is dropped).
    let listen = format!("unix:{}", path.display());
    let d = Daemon::start(&config_listening(&listen, "policy", ""), POLICY);
    assert_eq!(d.address(), listen);
    let mut c = Client::connect_unix(&path);
    assert_eq!(c.query("tls_policy", "bank.example"), ENCRYPT);
}

#[test]
fn invalid_config_exits_1_before_binding() {
    // Hold the port: a daemon that bound before checking its config would
    // fail with "cannot listen" instead.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let text = config_listening(
        &format!("inet:127.0.0.1:{port}"),
        "policy",
        "lisen = \"inet:127.0.0.1:0\"",
    );
    let mut d = Daemon::spawn(&text, POLICY, Options::default());
    let status = d.wait_exit();
    let err = d.stderr_text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&d.config_path().display().to_string()),
        "file not named: {err}"
    );
    assert!(err.contains("lisen"), "key not named: {err}");
    assert!(!err.contains("cannot listen"), "{err}");
    assert!(d.find_line(|l| l.contains("listening")).is_none(), "{err}");
    assert!(
        !d.decisions_path().exists(),
        "decision log opened for an invalid config"
    );
    drop(held);
}

#[test]
fn broken_policy_at_start_exits_1() {
    let policy = "[[rule]]\ndomains = [\"a.example\", \"A.EXAMPLE\"]\ntls = \"forced\"\n";
    let mut d = Daemon::spawn(&config("policy"), policy, Options::default());
    let status = d.wait_exit();
    let err = d.stderr_text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&d.policy_path().display().to_string()),
        "file not named: {err}"
    );
    assert!(err.contains("\"A.EXAMPLE\""), "{err}");
    assert!(d.find_line(|l| l.contains("listening")).is_none(), "{err}");
}

#[test]
fn environment_overrides_the_listen_address() {
    let text = config_listening("unix:/nonexistent-dir/socketmap.sock", "policy", "");
    let opts = Options {
        env: vec![(
            "TLS_POLICYD_SOCKETMAP__LISTEN".into(),
            "inet:127.0.0.1:0".into(),
        )],
        ..Options::default()
    };
    let d = Daemon::start_with(&text, POLICY, opts);
    assert!(
        d.address().starts_with("inet:127.0.0.1:"),
        "{}",
        d.address()
    );
    assert_eq!(d.client().query("tls_policy", "bank.example"), ENCRYPT);
}

/// `line` with its leading `"ts"` value replaced by a fixed one: the only
/// field that varies between runs.
fn fixed_ts(line: &str) -> String {
    let rest = line
        .strip_prefix("{\"ts\":\"")
        .unwrap_or_else(|| panic!("record does not start with ts: {line}"));
    let end = rest.find('"').unwrap();
    format!(
        "{{\"ts\":\"2026-01-02T03:04:05.123456Z\"{}",
        &rest[end + 1..]
    )
}

/// Golden lines: the exact bytes the daemon writes per lookup (field
/// order, presence, escaping), through the real binary.
#[test]
fn decision_log_lines_byte_for_byte() {
    let d = notfound_daemon();
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "MX.Bank.Example."), ENCRYPT);
    assert_eq!(c.query("tls_policy", "example.com"), "NOTFOUND ");
    assert_eq!(c.query("tls_forced", "legacy-partner.example"), ENCRYPT);
    assert_eq!(c.query("tls_policy", "[relay.example]:587"), RELAY);
    d.wait_for_decisions(4);
    let got: Vec<String> = std::fs::read_to_string(d.decisions_path())
        .unwrap()
        .lines()
        .map(fixed_ts)
        .collect();
    let want = [
        r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"MX.Bank.Example.","domain":"mx.bank.example","tls":"forced","level":"encrypt","reply":"OK","source":"static","rule":1,"matched":".bank.example","reason":"PCI partner: never in plaintext"}"#,
        r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"example.com","domain":"example.com","tls":"opportunistic","reply":"NOTFOUND","source":"default","reason":"no rule matches; the policy file's default"}"#,
        r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_forced","key":"legacy-partner.example","domain":"legacy-partner.example","tls":"forced","level":"encrypt","reply":"OK","source":"static","rule":3,"matched":"legacy-partner.example","reason":"STARTTLS broken on their side","raised":true}"#,
        r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"[relay.example]:587","domain":"relay.example","tls":"forced","level":"secure match=relay.example","reply":"OK","source":"static","rule":6,"matched":"[relay.example]:587","reason":"smarthost"}"#,
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "record {i}");
    }
}

/// Malformed keys that name `bank.example` (rule 1, forced) or a
/// subdomain of it: the exact boundaries of a port, a label and a name.
fn malformed_bank_keys() -> Vec<String> {
    let l64 = "a".repeat(64);
    let l62 = "b".repeat(62);
    // 254 characters under .bank.example.
    let base = format!("{l62}.{l62}.{l62}.bank.example");
    let n254 = format!("{}.{base}", "c".repeat(254 - base.len() - 1));
    vec![
        "bank.example:65536".into(),
        "[bank.example]:65536".into(),
        "[bank.example".into(),
        "[bank.example]x".into(),
        "bank.example\0".into(),
        "bank.example\r\n".into(),
        "bank.exa\nmple".into(),
        "bank.example garbage".into(),
        format!("{l64}.bank.example"),
        n254,
    ]
}

#[test]
fn malformed_keys_naming_a_ruled_domain_get_its_answer_or_temp() {
    for reply in ["policy", "notfound"] {
        let d = Daemon::start(&config(reply), POLICY);
        let mut c = d.client();
        // The well-formed edges are answered as any key.
        let l63 = "a".repeat(63);
        assert_eq!(c.query("tls_policy", "bank.example:65535"), ENCRYPT);
        assert_eq!(
            c.query("tls_policy", &format!("{l63}.bank.example")),
            ENCRYPT
        );
        let keys = malformed_bank_keys();
        for key in &keys {
            assert_eq!(c.query("tls_policy", key), ENCRYPT, "{reply}: {key:?}");
            assert_eq!(c.query("tls_forced", key), ENCRYPT, "{reply}: {key:?}");
        }
        // Rules with different answers (rule 1 encrypt, rule 2 secure):
        // held on both maps.
        for map in ["tls_policy", "tls_forced"] {
            let got = c.query(map, "bank.example\0payroll.example");
            assert!(
                got.starts_with("TEMP key is not a destination"),
                "{map}: {got:?}"
            );
            assert!(got.contains("different answers"), "{got}");
        }
        // No rule could be meant: the default as before.
        let default = if reply == "policy" { MAY } else { "NOTFOUND " };
        assert_eq!(c.query("tls_policy", "nothing..example"), default);
        assert_eq!(c.query("tls_policy", "other.example:65536"), default);

        let n = 2 + 2 * keys.len() + 2 + 2;
        let recs = d.wait_for_decisions(n);
        let r = &recs[2];
        assert_has(r, "key", "bank.example:65536");
        assert_has(r, "reply", "OK");
        assert_has(r, "source", "static");
        assert_has(r, "rule", 1);
        assert_has(r, "matched", "bank.example");
        assert_absent(r, "domain");
        let why = r["reason"].as_str().unwrap();
        assert!(
            why.starts_with("key is not a destination (bad port"),
            "{why}"
        );
        let t = &recs[2 + 2 * keys.len()];
        assert_has(t, "reply", "TEMP");
        assert_has(t, "temporary", true);
        assert_has(t, "rule", 2);
        // Logged (rate-limited: at most 10 a minute).
        let line = d.wait_for_line(|l| l.contains("malformed key names a ruled domain"));
        assert!(line.contains("door=\"socketmap\""), "{line}");
        let logged = d
            .lines()
            .iter()
            .filter(|l| l.contains("malformed key names a ruled domain"))
            .count();
        assert_eq!(logged, 10, "log lines");
    }
}
