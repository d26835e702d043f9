//! A flood of first-contact domains while DNS is silent, through the
//! real socketmap of the running daemon, inside a network namespace whose
//! only nameserver (127.0.0.1:53) reads queries and never answers: every
//! lookup is answered, DANE and MTA-STS wait side by side (once per
//! domain), the discoveries pending are capped, a policy-file rule is
//! answered without waiting, and the timeouts give one warning, not one
//! per lookup.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{Client, Daemon, Options, WAIT};

/// Domains in the flood.
const DOMAINS: usize = 200;
/// Connections the flood is spread over (Postfix's lookups come over
/// several).
const CONNECTIONS: usize = 40;
/// `mta_sts.max_pending`: fewer than the connections, so some lookups
/// find the cap reached.
const STS_PENDING: usize = 20;

fn config(dir: &std::path::Path) -> String {
    let cache = dir.join("cache.sqlite");
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[metrics]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "60s"
attempts = 1

[dane]
lookup_timeout = "1s"
cache_file = "{c}"

[mta_sts]
lookup_timeout = "500ms"
max_pending = {STS_PENDING}
cache_file = "{c}"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        c = cache.display()
    )
}

const POLICY: &str =
    "default = \"opportunistic\"\n\n[[rule]]\ndomains = [\"ruled.flood.test\"]\ntls = \"forced\"\n";

/// The value of one series of the metrics text.
fn series(text: &str, s: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(s)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn scrape(ns: &Netns, d: &Daemon) -> String {
    let addr = d.listening("metrics");
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut s = ns.tcp_connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn first_contact_flood_with_silent_dns_is_answered_side_by_side_and_capped() {
    let Some(ns) = Netns::for_test("flood", &[]) else {
        return;
    };
    // The nameserver: takes every query, answers none (over TCP, the
    // connection is taken and nothing read).
    let sock = ns.udp_socket("127.0.0.1:53");
    let _tcp = ns.tcp_listener("127.0.0.1:53");
    let (stop, stopped) = mpsc::channel::<()>();
    let silent = thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let mut queries = 0u64;
        // Bounded: ends when the test says so, or after 5 minutes.
        let end = Instant::now() + Duration::from_secs(300);
        while stopped.try_recv().is_err() && Instant::now() < end {
            if sock.recv_from(&mut buf).is_ok() {
                queries += 1;
            }
        }
        queries
    });
    let keep = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&config(keep.path()), POLICY, Options::in_netns(&ns));
    let port = d.port();

    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let stream = ns.tcp_connect(("127.0.0.1", port)).unwrap();
            thread::spawn(move || {
                let mut c = Client::from_tcp(stream);
                (w..DOMAINS)
                    .step_by(CONNECTIONS)
                    .map(|i| {
                        let domain = format!("new{i}.flood.test");
                        (domain.clone(), c.query("tls_policy", &domain))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // A rule is answered while the flood waits for DNS.
    let mut c = Client::from_tcp(ns.tcp_connect(("127.0.0.1", port)).unwrap());
    assert_eq!(c.query("tls_policy", "ruled.flood.test"), "OK encrypt");

    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.join().unwrap());
    }
    assert_eq!(answers.len(), DOMAINS);
    for (domain, reply) in &answers {
        // Nothing known, DNS silent: the default (never TEMP for a domain
        // that never had DANE).
        assert_eq!(reply, "OK may", "{domain}");
    }
    let records = d.wait_for_decisions(DOMAINS + 1);
    let ruled: Vec<_> = records
        .iter()
        .filter(|r| r["key"] == "ruled.flood.test")
        .collect();
    assert_eq!(ruled.len(), 1);
    assert_eq!(ruled[0]["source"], "static");
    assert_eq!(
        records.iter().filter(|r| r["source"] == "default").count(),
        DOMAINS
    );

    let m = scrape(&ns, &d);
    let dane_timeouts = series(
        &m,
        "tls_policyd_errors_total{component=\"dane\",kind=\"lookup_timeout\"}",
    );
    let dane_full = series(
        &m,
        "tls_policyd_errors_total{component=\"dane\",kind=\"queue_full\"}",
    );
    let sts_timeouts = series(
        &m,
        "tls_policyd_errors_total{component=\"mta_sts\",kind=\"lookup_timeout\"}",
    );
    let sts_full = series(
        &m,
        "tls_policyd_errors_total{component=\"mta_sts\",kind=\"queue_full\"}",
    );
    let one = series(&m, "tls_policyd_discovery_waits_total{sources=\"one\"}");
    let both = series(
        &m,
        "tls_policyd_discovery_waits_total{sources=\"side_by_side\"}",
    );
    // DANE: the deadline hit once per domain, no cap reached.
    assert_eq!((dane_timeouts, dane_full), (DOMAINS as f64, 0.0), "{m}");
    // MTA-STS: each domain either waited out its deadline or found the
    // cap of pending discoveries reached (the silent DNS keeps them
    // pending), and the cap was reached.
    assert_eq!(sts_timeouts + sts_full, DOMAINS as f64, "{m}");
    assert!(sts_full > 0.0 && sts_timeouts >= 1.0, "{m}");
    // Every lookup waited; those with an MTA-STS discovery pending waited
    // for it and DANE's side by side; the rule waited for nothing.
    assert_eq!(one + both, DOMAINS as f64, "{m}");
    assert_eq!(both, sts_timeouts, "{m}");

    // One warning per kind, not a line per lookup.
    let lines = d.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let dane_lines = count("DANE lookups did not finish in time");
    let sts_lines = count("MTA-STS discovery did not finish in time");
    let full_lines = count("too many MTA-STS discoveries pending");
    assert!((1..=3).contains(&dane_lines), "{dane_lines} DANE warnings");
    assert!((1..=3).contains(&sts_lines), "{sts_lines} MTA-STS warnings");
    assert!((1..=3).contains(&full_lines), "{full_lines} cap warnings");

    drop(d);
    stop.send(()).unwrap();
    let queries = silent.join().unwrap();
    assert!(queries > 0, "the lookups went to the silent nameserver");
}
