//! First contact across a fleet: three tls-policyd daemons sharing one
//! real `redis-server` (with `requirepass`), each asked at the same moment
//! about domains none of them has seen, on socketmap connections of its
//! own. How many TXT queries and policy fetches each new domain costs the
//! fleet, and how long the first lookups wait.
//!
//! Everything runs inside a network namespace the bench creates (only
//! `lo`): a test DNS server on 127.0.0.1:53, the policy host on
//! 127.0.0.44:443 (its answers held back `BENCH_FETCH_DELAY_MS`, default
//! 50, as a distant web server would), the store on 127.0.0.1:6392. Needs
//! root and Debian's `redis-server`.
//!
//! Knobs: `BENCH_DOMAINS` (new domains, one after another; default 100),
//! `BENCH_CONNS` (connections per daemon, each asking about every domain
//! at once; default 4), `BENCH_SHARED=off` (the same three daemons each on
//! their own, for comparison), `BENCH_DAEMON` (another binary).
//!
//!     cargo bench --bench fleet
//!     BENCH_SHARED=off cargo bench --bench fleet

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::smtp::TestCa;
use common::{Client, Daemon, Options};
use hickory_proto::rr::RecordType;

const REDIS_PORT: u16 = 6392;
const PASSWORD: &str = "bench-fleet-2718";
const DAEMONS: usize = 3;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(ns: &Netns, dir: &Path) -> Redis {
    let redis = Redis(
        ns.cmd("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(REDIS_PORT.to_string())
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = common::run_with_timeout(
            ns.cmd("redis-cli")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(REDIS_PORT.to_string())
                .args(["-a", PASSWORD, "--no-auth-warning", "PING"]),
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
            return redis;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        thread::sleep(Duration::from_millis(50));
    }
}

fn config(dir: &Path, name: &str, shared: bool) -> String {
    let shared = if shared {
        format!(
            "[shared]\nurl = \"redis://127.0.0.1:{REDIS_PORT}/0\"\npassword_file = \"{}\"\n",
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
cache_file = "{cache}"
extra_ca_file = "{ca}"
lookup_timeout = "10s"

{shared}
[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache = dir.join(format!("{name}.sqlite")).display(),
        ca = dir.join("ca.pem").display(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let domains = knob("BENCH_DOMAINS", 100);
    let conns = knob("BENCH_CONNS", 4).max(1);
    let delay = Duration::from_millis(knob("BENCH_FETCH_DELAY_MS", 50) as u64);
    let shared = std::env::var("BENCH_SHARED").map_or(true, |v| v != "off");
    let Some(ns) = Netns::for_test("fleetb", &["redis-server", "redis-cli"]) else {
        eprintln!("fleet bench: needs root, ip and redis-server; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    ca.write_pem(&dir.path().join("ca.pem"));
    std::fs::write(dir.path().join("redis-password"), PASSWORD).unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir(&redis_dir).unwrap();
    let _redis = start_redis(&ns, &redis_dir);
    let (dns, https) = ns.run_in({
        let ca = ca.clone();
        move || {
            (
                TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
                TestHttps::start(HTTPS_IP, 443, ca),
            )
        }
    });
    let names: Vec<String> = (0..domains).map(|i| format!("d{i}.first.test")).collect();
    for d in &names {
        dns.txt_ttl(&format!("_mta-sts.{d}"), 0, "v=STSv1; id=b1;");
        dns.a(&format!("mta-sts.{d}"), HTTPS_IP);
        https.site(
            &format!("mta-sts.{d}"),
            Response::policy(&format!(
                "version: STSv1\nmode: enforce\nmx: mx.{d}\nmax_age: 604800\n"
            ))
            .delayed(delay),
        );
    }
    let daemons: Vec<Daemon> = (0..DAEMONS)
        .map(|i| {
            let d = Daemon::start_with(
                &config(dir.path(), &format!("host{i}"), shared),
                POLICY_DEFAULT,
                Options::in_netns(&ns),
            );
            if shared {
                d.wait_for_line(|l| l.contains("shared store connected"));
            }
            d
        })
        .collect();

    // One thread per connection; every one asks about each domain at the
    // same moment (a barrier), then waits for the next.
    let threads = DAEMONS * conns;
    let barrier = Arc::new(Barrier::new(threads));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let mut c = Client::from_tcp(
                ns.tcp_connect(("127.0.0.1", daemons[t % DAEMONS].port()))
                    .unwrap(),
            );
            let names = names.clone();
            let barrier = barrier.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                for d in &names {
                    barrier.wait();
                    let start = Instant::now();
                    let got = c.query("tls_policy", d);
                    let took = start.elapsed();
                    let ok = got == format!("OK secure match=mx.{d} servername=hostname");
                    tx.send((took, ok)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let started = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    let mut wrong = 0usize;
    for (took, ok) in rx {
        lat.push(took);
        wrong += usize::from(!ok);
    }
    let elapsed = started.elapsed();
    for w in workers {
        w.join().unwrap();
    }
    lat.sort();
    let txt: usize = names
        .iter()
        .map(|d| dns.query_count(&format!("_mta-sts.{d}"), RecordType::TXT))
        .sum();
    let fetches: usize = names
        .iter()
        .map(|d| https.requests(&format!("mta-sts.{d}")))
        .sum();
    let most = names
        .iter()
        .map(|d| https.requests(&format!("mta-sts.{d}")))
        .max()
        .unwrap_or(0);
    println!("## First contact across {DAEMONS} daemons");
    println!();
    println!(
        "shared store {}, {domains} new domains one after another, {threads} connections \
         ({conns} per daemon) asking about each at once, policy answers held {} ms; {:.1} s",
        if shared { "on" } else { "off" },
        delay.as_millis(),
        elapsed.as_secs_f64()
    );
    println!();
    println!(
        "| lookups | not the policy's answer | TXT queries / domain | fetches / domain | most fetches of one domain | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    println!(
        "| {} | {wrong} | {:.2} | {:.2} | {most} | {:.1} | {:.1} | {:.1} | {:.1} |",
        lat.len(),
        txt as f64 / domains as f64,
        fetches as f64 / domains as f64,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
    );
    drop(daemons);
}
