//! TLS-RPT's share of the outcome follower's thread: each delivery counted
//! as a session (the policy that applied, the session, one row written to
//! the SQLite file), then each domain's report built and compressed.
//!
//! Command: `cargo bench --bench tlsrpt`. Knobs: `BENCH_DELIVERIES`
//! (100,000), `BENCH_DOMAINS` (1,000).
//!
//! The counter runs without a resolver, so every delivery is counted at
//! once (in the daemon, a domain's first deliveries wait for the lookup
//! of its record and MX hosts; after that the path is this one). The file
//! is on the temporary directory's file system, as the cache file is on
//! /var/lib.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tls_policyd::engine::outcome::{TlsTrust, Verdict};
use tls_policyd::log::record::DeliveryOutcome;
use tls_policyd::metrics::Metrics;
use tls_policyd::tlsrpt::counter::Counter;
use tls_policyd::tlsrpt::report::{Report, Submitter, day_name, day_start};
use tls_policyd::tlsrpt::store::TlsRptStore;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn delivery(i: u64, domains: u64, at: SystemTime) -> DeliveryOutcome {
    let d = i % domains;
    let (trust, failure, status) = match i % 10 {
        0 => (TlsTrust::None, Some("not-offered"), "deferred"),
        1 => (
            TlsTrust::Untrusted,
            Some("certificate-not-verified"),
            "deferred",
        ),
        2 | 3 => (TlsTrust::None, None, "sent"),
        _ => (TlsTrust::Verified, None, "sent"),
    };
    DeliveryOutcome {
        recipient: format!("u{i}@d{d}.example"),
        orig_to: None,
        domain: Some(format!("d{d}.example")),
        relay: format!("mx{}.d{d}.example[192.0.2.{}]:25", i % 2, d % 250),
        transport: "postfix/smtp".into(),
        status: status.into(),
        dsn: "2.0.0".into(),
        status_text: "250 2.0.0 Ok".into(),
        tls_trust: trust,
        tls_protocol: None,
        tls_cipher: None,
        tls_failure: failure,
        governing: None,
        verdict: Verdict::Encrypted,
        logged_at: at + Duration::from_micros(i),
        delay: None,
    }
}

fn main() {
    let n = knob("BENCH_DELIVERIES", 100_000);
    let domains = knob("BENCH_DOMAINS", 1_000).max(1);
    println!("command: cargo bench --bench tlsrpt (BENCH_DELIVERIES={n} BENCH_DOMAINS={domains})");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("cache.sqlite");
    let metrics = Arc::new(Metrics::new());
    let counter = Arc::new(Counter::new(
        path.clone(),
        None,
        None,
        None,
        None,
        metrics.clone(),
    ));
    let now = SystemTime::now();
    let outcomes: Vec<DeliveryOutcome> = (0..n).map(|i| delivery(i, domains, now)).collect();
    let started = Instant::now();
    for (i, d) in outcomes.iter().enumerate() {
        counter.count(&format!("Q{i:08X}"), d);
    }
    let took = started.elapsed();
    println!(
        "counting: {n} deliveries in {:.2} s: {:.0} deliveries/s, {:.1} µs each",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64
    );
    // The same again: every attempt is counted already (a log read twice).
    let started = Instant::now();
    for (i, d) in outcomes.iter().enumerate() {
        counter.count(&format!("Q{i:08X}"), d);
    }
    let again = started.elapsed();
    println!(
        "counting the same attempts again (kept once): {:.1} µs each",
        again.as_secs_f64() * 1e6 / n as f64
    );
    let store = TlsRptStore::open(&path).expect("store");
    let day = day_name(day_start(now));
    let submitter = Submitter {
        organization_name: "Bench".into(),
        contact_info: "postmaster@bench.example".into(),
        submitter: "bench.example".into(),
    };
    let started = Instant::now();
    let mut bytes = 0;
    let mut sessions = 0;
    let list = store.domains(&day).expect("domains");
    for (domain, count) in &list {
        let (counts, _) = store.counts(&day, domain).expect("counts");
        let r = Report::build(&submitter, domain, day_start(now), &counts);
        bytes += r.gzip().len();
        sessions += count;
    }
    let built = started.elapsed();
    assert_eq!(sessions, n, "every delivery counted once");
    println!(
        "reports: {} domains in {:.2} s ({:.2} ms each), {} sessions, {:.0} compressed bytes each",
        list.len(),
        built.as_secs_f64(),
        built.as_secs_f64() * 1e3 / list.len() as f64,
        sessions,
        bytes as f64 / list.len() as f64
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("cache.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "file: {:.1} MB ({:.0} bytes a session)",
        size as f64 / 1e6,
        size as f64 / n as f64
    );
}
