//! The DANE source's answer path from its cache: `cargo bench --bench dane`.
//!
//! Fills the cache with `BENCH_DOMAINS` results (as a restart loads them
//! from the cache file: a third `dane-only`, a third `dane`, a third no
//! policy), then answers `BENCH_LOOKUPS` requests for random cached domains
//! through `Source::consult`, first from one task, then from one task per
//! core at once (the cache's lock shared). No DNS query is sent: every
//! answer comes from the cache. Prints lookups per second and nanoseconds
//! per lookup, and the resident memory the filled cache takes.
//!
//! Knobs (environment): `BENCH_DOMAINS` (default 100000), `BENCH_LOOKUPS`
//! (default 2000000 per task).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tls_policyd::dns::DnsConfig;
use tls_policyd::dns::secure::SecureResolver;
use tls_policyd::engine::decision::Level;
use tls_policyd::engine::key::Destination;
use tls_policyd::engine::{Consulted, Source};
use tls_policyd::sources::dane::assess::{
    AddressState, Assessment, MxHost, MxState, TlsaRecord, TlsaState,
};
use tls_policyd::sources::dane::{
    DaneConfig, DaneMemoryStore, DaneRecord, DaneSource, LastDane, Outcome,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn record(i: usize, now: SystemTime) -> (String, DaneRecord) {
    let domain = format!("d{i}.example");
    let host = |n: u16| MxHost {
        preference: Some(n * 10),
        host: format!("mx{n}.{domain}"),
        addresses: AddressState::Secure {
            count: 2,
            via: None,
        },
        tlsa: TlsaState::Secure {
            name: format!("_25._tcp.mx{n}.{domain}"),
            records: vec![TlsaRecord {
                usage: 3,
                selector: 1,
                matching: 1,
                data: "0123456789abcdef...".into(),
                usable: true,
            }],
            total: 1,
            usable: 1,
        },
    };
    let (outcome, last) = match i % 3 {
        0 => (
            Outcome::Policy {
                level: Level::DaneOnly,
                reason: format!("every MX host of {domain} has usable TLSA records (2 of 2)"),
            },
            Some(Level::DaneOnly),
        ),
        1 => (
            Outcome::Policy {
                level: Level::Dane,
                reason: format!("1 of 2 MX hosts of {domain} have usable TLSA records"),
            },
            Some(Level::Dane),
        ),
        _ => (
            Outcome::NoPolicy {
                reason: format!(
                    "the MX records are not DNSSEC-validated: DANE does not apply to {domain}"
                ),
            },
            None,
        ),
    };
    let hosts = if last.is_some() {
        vec![host(1), host(2)]
    } else {
        Vec::new()
    };
    (
        domain.clone(),
        DaneRecord {
            assessment: Assessment {
                domain,
                mx: MxState::Secure { ttl: 3600 },
                hosts,
                skipped: 0,
                ttl: 3600,
                outcome,
            },
            checked_at: now,
            ttl: Duration::from_secs(86_400),
            last_dane: last.map(|level| LastDane { at: now, level }),
        },
    )
}

fn main() {
    let domains = env_usize("BENCH_DOMAINS", 100_000);
    let lookups = env_usize("BENCH_LOOKUPS", 2_000_000);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();

    let now = SystemTime::now();
    let store = DaneMemoryStore::default();
    for i in 0..domains {
        let (d, r) = record(i, now);
        store.save(&d, &r, now);
    }
    let dns = DnsConfig {
        // Never asked: every answer comes from the cache.
        nameservers: vec!["127.0.0.1:9".into()],
        ..DnsConfig::default()
    };
    let resolver = Arc::new(SecureResolver::new(&dns).unwrap());
    let before = rss_kib();
    let source = rt.block_on(async {
        DaneSource::new(
            DaneConfig {
                max_cache_entries: domains.max(1),
                ..DaneConfig::default()
            },
            resolver,
        )
        .unwrap()
        .with_store(Arc::new(store))
    });
    let after = rss_kib();
    let source = Arc::new(source);
    let keys: Arc<Vec<Destination>> = Arc::new(
        (0..4096)
            .map(|i| {
                // A spread of domains, not only the first ones.
                let n = (i * 7919) % domains.max(1);
                Destination::parse(&format!("d{n}.example")).unwrap()
            })
            .collect(),
    );

    println!(
        "DANE cache: {domains} domains loaded, RSS {before} -> {after} KiB (+{} KiB, store copy included)",
        after.saturating_sub(before)
    );
    println!();
    println!("| tasks | lookups | seconds | lookups/s | ns per lookup per task |");
    println!("|--:|--:|--:|--:|--:|");
    for tasks in [1, cores] {
        let start = Instant::now();
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..tasks {
                let source = source.clone();
                let keys = keys.clone();
                set.spawn(async move {
                    let mut policies = 0usize;
                    for i in 0..lookups {
                        let k = &keys[(i + t * 131) % keys.len()];
                        if let Consulted::Policy(_) = source.consult(k).await {
                            policies += 1;
                        }
                    }
                    policies
                });
            }
            let mut total = 0;
            while let Some(r) = set.join_next().await {
                total += r.unwrap();
            }
            assert!(total > 0);
        });
        let secs = start.elapsed().as_secs_f64();
        let n = (lookups * tasks) as f64;
        println!(
            "| {tasks} | {} | {secs:.2} | {:.0} | {:.0} |",
            lookups * tasks,
            n / secs,
            secs * 1e9 / (lookups as f64)
        );
    }
    assert_eq!(source.lookups_started(), 0, "every answer from the cache");
}
