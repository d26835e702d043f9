//! The MTA-STS lookup path in-process: `MtaSts::lookup` answered from its
//! cache (20000 enforce policies), 8 tasks on 2 runtime threads, with the
//! metrics observer attached. `cargo bench --bench mta_sts_cache`; prints
//! the wall time per lookup of each of three rounds (compare CPU time,
//! `/usr/bin/time`, on a busy machine).
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_policyd::dns::{DnsConfig, build_resolver};
use tls_policyd::sources::mta_sts::{MtaSts, MtaStsConfig, Persisted, policy};
use tls_policyd::store::{Entry, Kind};

const DOMAINS: usize = 20_000;
const TASKS: usize = 8;
const PER_TASK: usize = 1_000_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resolver = build_resolver(&DnsConfig {
            nameservers: vec!["127.0.0.1:9".into()],
            ..DnsConfig::default()
        })
        .unwrap();
        let now = std::time::SystemTime::now();
        let year = Duration::from_secs(policy::MAX_AGE_LIMIT);
        let entries: Vec<Entry> = (0..DOMAINS)
            .map(|k| {
                let d = format!("s{k}.example");
                let text = format!(
                    "version: STSv1\nmode: enforce\nmx: mx.{d}\nmx: *.backup.{d}\nmax_age: {}\n",
                    year.as_secs()
                );
                let p = Persisted {
                    id: format!("id{k}"),
                    policy: policy::parse(text.as_bytes()).unwrap(),
                    text,
                };
                Entry::new(Kind::MtaSts, &d, now, now + year, &p).unwrap()
            })
            .collect();
        let sts = MtaSts::new(
            &MtaStsConfig::default(),
            resolver,
            entries,
            None,
            Arc::new(tls_policyd::metrics::Metrics::new())
                .cache_observer(tls_policyd::metrics::Cache::MtaSts),
        )
        .unwrap();
        let names: Arc<Vec<String>> =
            Arc::new((0..DOMAINS).map(|k| format!("s{k}.example")).collect());
        for round in 0..3 {
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for t in 0..TASKS {
                let (sts, names) = (sts.clone(), names.clone());
                set.spawn(async move {
                    let mut n = 0usize;
                    for i in 0..PER_TASK {
                        let d = &names[(i * 7919 + t * 104_729) % DOMAINS];
                        if matches!(
                            sts.lookup(d).await,
                            tls_policyd::engine::Consulted::Policy(_)
                        ) {
                            n += 1;
                        }
                    }
                    n
                });
            }
            let mut total = 0;
            while let Some(n) = set.join_next().await {
                total += n.unwrap();
            }
            assert_eq!(total, TASKS * PER_TASK);
            let el = start.elapsed();
            println!(
                "round {round}: {:.1} ns/lookup wall, {:.2} M lookups/s",
                el.as_nanos() as f64 / (TASKS * PER_TASK) as f64,
                (TASKS * PER_TASK) as f64 / el.as_secs_f64() / 1e6
            );
        }
    });
}
