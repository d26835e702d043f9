//! First contact with new MTA-STS domains across a fleet of three daemons:
//! `cargo bench --bench shared_first_contact` (as root, with
//! `redis-server`).
//!
//! Inside a network namespace it creates (only `lo`): a test DNS server on
//! 127.0.0.1:53, the policy hosts on 127.0.0.44:443 (each policy served
//! after `BENCH_POLICY_DELAY_MS`, default 20, as a remote host would take),
//! a `redis-server` on 127.0.0.1:6390 and three release daemons. For each
//! of `BENCH_DOMAINS` new domains (default 200), `BENCH_CONCURRENCY`
//! first lookups (default 30) are sent at once over connections spread
//! evenly over the three daemons, each timed from its send to its answer.
//! Two configurations run on their own domains: `alone` (no `[shared]`:
//! each daemon discovers for itself) and `shared` (one store: one
//! discovery per domain for the fleet). The report: discoveries per domain
//! (TXT queries and policy fetches, counted by the servers), and the
//! median, p99 and largest lookup latency. Every answer is checked to be
//! the domain's enforce answer; every wait is bounded.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::redis::{PASSWORD, REDIS_PORT, Redis};
use common::smtp::TestCa;
use common::{Client, Daemon, Options};
use hickory_proto::rr::RecordType;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn config(shared: bool, dir: &std::path::Path, name: &str) -> String {
    let shared = if shared {
        format!(
            "[shared]\nurl = \"redis://127.0.0.1:{REDIS_PORT}/0\"\npassword_file = \"{}\"\ncommand_timeout = \"500ms\"\n",
            dir.join("redis-password").display()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "2s"
attempts = 1

[mta_sts]
cache_file = "{}"
extra_ca_file = "{}"
lookup_timeout = "20s"
fetch_timeout = "10s"

{shared}
[policy]
file = "policy.toml"
"#,
        dir.join(format!("{name}.sqlite")).display(),
        dir.join("ca.pem").display(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Figures {
    txt_per_domain: f64,
    fetches_per_domain: f64,
    most_fetches: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
}

/// The namespace and its servers.
struct Lab {
    ns: Netns,
    dns: TestDns,
    https: TestHttps,
}

/// What one configuration is run with.
#[derive(Clone, Copy)]
struct Load {
    domains: usize,
    concurrency: usize,
    delay: Duration,
}

fn run(lab: &Lab, daemons: &[Daemon], tag: &str, load: &Load) -> Figures {
    let (ns, dns, https) = (&lab.ns, &lab.dns, &lab.https);
    let Load {
        domains,
        concurrency,
        delay,
    } = *load;
    let mut latencies = Vec::with_capacity(domains * concurrency);
    let (mut txt, mut fetches, mut most) = (0usize, 0usize, 0usize);
    for i in 0..domains {
        let domain = format!("d{i}.{tag}.bench");
        dns.txt_ttl(&format!("_mta-sts.{domain}"), 0, "v=STSv1; id=b1;");
        dns.a(&format!("mta-sts.{domain}"), HTTPS_IP);
        let text = format!("version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 604800\n");
        https.site(
            &format!("mta-sts.{domain}"),
            Response::policy(&text).delayed(delay),
        );
        let want = format!("OK secure match=mx.{domain} servername=hostname");
        let clients: Vec<Client> = (0..concurrency)
            .map(|c| {
                let d = &daemons[c % daemons.len()];
                Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
            })
            .collect();
        let start = Arc::new(Barrier::new(concurrency));
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let start = start.clone();
                let domain = domain.clone();
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        start.wait();
                        let t = Instant::now();
                        let got = c.query("tls_policy", &domain);
                        (got, t.elapsed())
                    })
                    .unwrap()
            })
            .collect();
        for t in threads {
            let (got, took) = t.join().unwrap();
            assert_eq!(got, want, "{domain}");
            latencies.push(took);
        }
        let t = dns.query_count(&format!("_mta-sts.{domain}"), RecordType::TXT);
        let f = https.requests(&format!("mta-sts.{domain}"));
        txt += t;
        fetches += f;
        most = most.max(f);
    }
    latencies.sort();
    Figures {
        txt_per_domain: txt as f64 / domains as f64,
        fetches_per_domain: fetches as f64 / domains as f64,
        most_fetches: most,
        median: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(ns) = Netns::for_test("bsfc", &["redis-server", "redis-cli"]) else {
        eprintln!("shared_first_contact: needs root, network namespaces and redis-server; skipped");
        return;
    };
    let domains = env_or("BENCH_DOMAINS", 200usize);
    let concurrency = env_or("BENCH_CONCURRENCY", 30usize);
    let delay = Duration::from_millis(env_or("BENCH_POLICY_DELAY_MS", 20u64));
    let keep = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    ca.write_pem(&keep.path().join("ca.pem"));
    std::fs::write(keep.path().join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    let (dns, https) = ns.run_in(move || {
        (
            TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
            TestHttps::start(HTTPS_IP, 443, ca),
        )
    });
    let redis_dir = keep.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let _redis = Redis::start_on(&ns, &redis_dir, REDIS_PORT, PASSWORD);
    let lab = Lab {
        ns: ns.clone(),
        dns,
        https,
    };
    let load = Load {
        domains,
        concurrency,
        delay,
    };

    println!(
        "| fleet of 3 | domains | lookups at once | TXT queries per domain | fetches per domain (most) | median | p99 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (tag, shared) in [("alone", false), ("shared", true)] {
        let daemons: Vec<Daemon> = (0..3)
            .map(|i| {
                let name = format!("{tag}{i}");
                let conf = config(shared, keep.path(), &name);
                let d = Daemon::start_with(&conf, POLICY_DEFAULT, Options::in_netns(&ns));
                if shared {
                    d.wait_for_line(|l| l.contains("shared store notices subscribed"));
                }
                d
            })
            .collect();
        let f = run(&lab, &daemons, tag, &load);
        println!(
            "| {tag} | {domains} | {concurrency} | {:.2} | {:.2} ({}) | {:.1} ms | {:.1} ms | {:.1} ms |",
            f.txt_per_domain,
            f.fetches_per_domain,
            f.most_fetches,
            f.median.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3,
        );
    }
}
