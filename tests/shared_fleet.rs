//! `[shared]`: one discovery per domain for the whole fleet. Three daemons
//! share one real `redis-server` inside a network namespace with a test
//! DNS server on 127.0.0.1:53 and policy hosts on 127.0.0.44:443. A
//! thousand first lookups of one new domain at once, spread over the
//! three, make one TXT query and one policy fetch; a domain without
//! MTA-STS makes one TXT query, its "no policy" shared; the host that
//! claimed a discovery killed in the middle of it lets another discover
//! once its claim lapses; a shared "no DANE" is not taken by a host that
//! remembers DANE for the domain (it looks itself), and is by one that
//! does not.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::redis::{FLEET_USER, PASSWORD, REDIS_PORT, Redis};
use common::smtp::TestCa;
use common::{Client, Daemon, Options};
use hickory_proto::rr::RecordType;

/// Longest wait for something asynchronous.
const WAIT: Duration = Duration::from_secs(30);
/// First lookups sent at once.
const LOOKUPS: usize = 1000;
/// What the daemon answers without an MTA-STS policy (`POLICY_DEFAULT`:
/// the default rule, opportunistic TLS): for a domain without MTA-STS,
/// and for a lookup whose discovery did not end within `lookup_timeout`.
const NO_POLICY: &str = "OK may";

fn config(
    url: &str,
    cache: &std::path::Path,
    ca: &std::path::Path,
    pw: &std::path::Path,
    // Lines closing `[mta_sts]` (its timeouts), and any sections after it.
    timeouts: &str,
) -> String {
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
connect_timeout = "2s"
{timeouts}

[shared]
url = "{url}"
username = "{FLEET_USER}"
password_file = "{}"
connect_timeout = "1s"
command_timeout = "500ms"

[metrics]
listen = "inet:127.0.0.1:0"

[policy]
file = "policy.toml"
"#,
        cache.display(),
        ca.display(),
        pw.display()
    )
}

fn answer(domain: &str) -> String {
    format!("OK secure match=mx.{domain} servername=hostname")
}

fn publish(dns: &TestDns, https: &TestHttps, domain: &str, delay: Duration) {
    dns.txt_ttl(&format!("_mta-sts.{domain}"), 0, "v=STSv1; id=f1;");
    dns.a(&format!("mta-sts.{domain}"), HTTPS_IP);
    let text = format!("version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 604800\n");
    https.site(
        &format!("mta-sts.{domain}"),
        Response::policy(&text).delayed(delay),
    );
}

fn txt_queries(dns: &TestDns, domain: &str) -> usize {
    dns.query_count(&format!("_mta-sts.{domain}"), RecordType::TXT)
}

fn client(ns: &Netns, d: &Daemon) -> Client {
    Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
}

/// `GET path` of `d`'s metrics listener: the whole response.
fn http_get(ns: &Netns, d: &Daemon, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = d.listening("metrics");
    let addr = addr.strip_prefix("inet:").unwrap_or(&addr);
    let mut s = ns.tcp_connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `GET /metrics` of `d`: the sample of `series` (0 when not listed).
fn metric(ns: &Netns, d: &Daemon, series: &str) -> u64 {
    let body = http_get(ns, d, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

/// The servers, the store and the files of a test.
struct Fleet {
    ns: Netns,
    dns: TestDns,
    https: TestHttps,
    redis: Redis,
    keep: tempfile::TempDir,
    ca_pem: PathBuf,
    password: PathBuf,
}

impl Fleet {
    fn new(ns: Netns) -> Fleet {
        let ca = Arc::new(TestCa::new());
        let keep = tempfile::tempdir().unwrap();
        let ca_pem = keep.path().join("ca.pem");
        ca.write_pem(&ca_pem);
        let password = keep.path().join("redis-password");
        std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
        let (dns, https) = ns.run_in(move || {
            (
                TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
                TestHttps::start(HTTPS_IP, 443, ca),
            )
        });
        let dir = keep.path().join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let redis = Redis::start_fleet(&ns, &dir, REDIS_PORT);
        Fleet {
            ns,
            dns,
            https,
            redis,
            keep,
            ca_pem,
            password,
        }
    }

    /// A daemon of the fleet, connected to the store and subscribed to
    /// its notices.
    fn daemon(&self, name: &str, timeouts: &str) -> Daemon {
        let url = format!("redis://127.0.0.1:{REDIS_PORT}/0");
        let cache = self.keep.path().join(format!("{name}.sqlite"));
        let conf = config(&url, &cache, &self.ca_pem, &self.password, timeouts);
        let d = Daemon::start_with(&conf, POLICY_DEFAULT, Options::in_netns(&self.ns));
        d.wait_for_line(|l| l.contains("shared store connected"));
        d.wait_for_line(|l| l.contains("shared store notices subscribed"));
        // `/health` says so too.
        let health = http_get(&self.ns, &d, "/health");
        assert!(health.contains("\"notices\": \"subscribed\""), "{health}");
        d
    }

    /// `n` first lookups of `domain` at once, spread over `daemons` (one
    /// connection each, opened before any is sent); the answers.
    fn lookups_at_once(&self, daemons: &[&Daemon], domain: &str, n: usize) -> Vec<String> {
        let clients: Vec<Client> = (0..n)
            .map(|i| client(&self.ns, daemons[i % daemons.len()]))
            .collect();
        let start = Arc::new(Barrier::new(n));
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let start = start.clone();
                let domain = domain.to_string();
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        start.wait();
                        c.query("tls_policy", &domain)
                    })
                    .unwrap()
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

const TIMEOUTS: &str = "lookup_timeout = \"20s\"\nfetch_timeout = \"5s\"";

#[test]
fn a_thousand_first_lookups_over_three_hosts_make_one_discovery() {
    let Some(ns) = Netns::for_test("flt1", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    // The policy takes a moment to come: every lookup is sent while the
    // one discovery runs.
    publish(
        &f.dns,
        &f.https,
        "one.fleet.test",
        Duration::from_millis(300),
    );
    let hosts = [
        f.daemon("a", TIMEOUTS),
        f.daemon("b", TIMEOUTS),
        f.daemon("c", TIMEOUTS),
    ];
    let all: Vec<&Daemon> = hosts.iter().collect();

    let answers = f.lookups_at_once(&all, "one.fleet.test", LOOKUPS);
    assert_eq!(answers.len(), LOOKUPS);
    for a in &answers {
        assert_eq!(a, &answer("one.fleet.test"));
    }
    assert_eq!(txt_queries(&f.dns, "one.fleet.test"), 1);
    assert_eq!(f.https.requests("mta-sts.one.fleet.test"), 1);
    let won: u64 = all
        .iter()
        .map(|d| metric(&ns, d, "tls_policyd_shared_claims_total{result=\"won\"}"))
        .sum();
    assert_eq!(won, 1);
    assert_eq!(
        f.redis
            .cli(&["EXISTS", "tls-policyd:lock:mta-sts:one.fleet.test"])
            .trim(),
        "0",
        "the claim is released"
    );

    // No MTA-STS record: one TXT query for the fleet, the "no policy"
    // shared (a version 2 value, kept at most five minutes).
    let answers = f.lookups_at_once(&all, "none.fleet.test", LOOKUPS);
    for a in &answers {
        assert_eq!(a, NO_POLICY);
    }
    assert_eq!(txt_queries(&f.dns, "none.fleet.test"), 1);
    let value = f.redis.cli(&["GET", "tls-policyd:mta-sts:none.fleet.test"]);
    assert!(value.contains("\"v\":2"), "{value}");
    assert!(value.contains("negative"), "{value}");
    let ttl: u64 = f
        .redis
        .cli(&["TTL", "tls-policyd:mta-sts:none.fleet.test"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "{ttl}");

    // The store's "no policy" never erases a policy a host holds: written
    // over a known domain's key, the hosts keep answering the policy.
    f.redis.cli(&[
        "SET",
        "tls-policyd:mta-sts:one.fleet.test",
        value.trim(),
        "EX",
        "300",
    ]);
    for d in &all {
        assert_eq!(
            client(&ns, d).query("tls_policy", "one.fleet.test"),
            answer("one.fleet.test")
        );
    }
    for d in &all {
        assert!(d.find_line(|l| l.contains("panicked")).is_none());
    }
    // The fleet deployment's ACL user had every right the daemons used.
    assert_eq!(f.redis.refused(), "", "commands refused");
}

#[test]
fn a_host_killed_in_the_middle_of_its_discovery_lets_another_discover_once_its_claim_lapses() {
    let Some(ns) = Netns::for_test("flt2", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    // The claim lasts fetch_timeout + lookup_timeout + 2 s = 7 s.
    let timeouts = "lookup_timeout = \"2s\"\nfetch_timeout = \"3s\"";
    let domain = "slow.fleet.test";
    publish(&f.dns, &f.https, domain, Duration::from_secs(60));
    let mut a = f.daemon("a", timeouts);
    let b = f.daemon("b", timeouts);
    let lock = format!("tls-policyd:lock:mta-sts:{domain}");

    // A claims the discovery and waits for the policy host.
    let mut ca = client(&ns, &a);
    let first = thread::spawn(move || ca.query("tls_policy", "slow.fleet.test"));
    let deadline = Instant::now() + WAIT;
    while f.https.requests(&format!("mta-sts.{domain}")) == 0 {
        assert!(Instant::now() < deadline, "A never fetched");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.redis.cli(&["EXISTS", &lock]).trim(), "1");

    // B finds the claim and waits for A.
    let mut cb = client(&ns, &b);
    let waiting = thread::spawn(move || cb.query("tls_policy", "slow.fleet.test"));
    let deadline = Instant::now() + WAIT;
    while metric(&ns, &b, "tls_policyd_shared_claims_total{result=\"lost\"}") == 0 {
        assert!(Instant::now() < deadline, "B never found the claim");
        thread::sleep(Duration::from_millis(20));
    }
    // A dies; the policy host answers at once from now on.
    a.kill();
    let _ = first.join();
    let text = format!("version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 604800\n");
    f.https
        .respond(&format!("mta-sts.{domain}"), Response::policy(&text));

    // B's lookup ends at its lookup_timeout, answered without MTA-STS
    // while B waits for the claim to lapse.
    assert_eq!(waiting.join().unwrap(), NO_POLICY);
    // Then B discovers itself: once, and the policy is answered.
    let deadline = Instant::now() + WAIT;
    loop {
        let got = client(&ns, &b).query("tls_policy", domain);
        if got == answer(domain) {
            break;
        }
        assert_eq!(got, NO_POLICY);
        assert!(
            Instant::now() < deadline,
            "B never discovered: txt {} https {} lock ttl {} polls {} waits {} {} {} claims {} {}",
            txt_queries(&f.dns, domain),
            f.https.requests(&format!("mta-sts.{domain}")),
            f.redis.cli(&["PTTL", &lock]).trim(),
            metric(
                &ns,
                &b,
                "tls_policyd_shared_requests_total{op=\"poll\",result=\"ok\"}"
            ),
            metric(&ns, &b, "tls_policyd_shared_waits_total{end=\"released\"}"),
            metric(&ns, &b, "tls_policyd_shared_waits_total{end=\"down\"}"),
            metric(&ns, &b, "tls_policyd_shared_waits_total{end=\"notified\"}"),
            metric(&ns, &b, "tls_policyd_shared_claims_total{result=\"won\"}"),
            metric(&ns, &b, "tls_policyd_shared_claims_total{result=\"lost\"}"),
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(txt_queries(&f.dns, domain), 2);
    assert_eq!(f.https.requests(&format!("mta-sts.{domain}")), 2);
    assert_eq!(
        metric(&ns, &b, "tls_policyd_shared_waits_total{end=\"released\"}"),
        1
    );
    assert_eq!(
        metric(&ns, &b, "tls_policyd_shared_claims_total{result=\"won\"}"),
        1
    );
    let value = f
        .redis
        .cli(&["GET", &format!("tls-policyd:mta-sts:{domain}")]);
    assert!(value.contains(&format!("mx.{domain}")), "{value}");
    assert!(b.find_line(|l| l.contains("panicked")).is_none());
    assert_eq!(f.redis.refused(), "", "commands refused");
}

#[test]
fn a_shared_no_dane_is_not_taken_for_a_domain_remembered_with_dane() {
    let Some(ns) = Netns::for_test("flt3", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    // The test DNS server plays a validating resolver (the AD bit).
    f.dns.set_ad_default(true);
    f.dns.mx("had.test", 10, "mx1.had.test");
    f.dns.a("mx1.had.test", "127.0.0.25");
    f.dns.tlsa("_25._tcp.mx1.had.test", 3, 1, 1, &[0x5a; 32]);
    f.dns.mx("plain.test", 10, "mx1.plain.test");
    f.dns.a("mx1.plain.test", "127.0.0.25");
    let dane = |name: &str, ttl: &str| {
        format!(
            "{TIMEOUTS}\n\n[dane]\ncache_file = \"{}\"\n{ttl}",
            f.keep.path().join(format!("{name}.sqlite")).display()
        )
    };
    let a = f.daemon("a", &dane("a", ""));
    // B keeps a DANE result one second: it expires, remembered as DANE.
    let b = f.daemon("b", &dane("b", "min_ttl = \"1s\"\nmax_ttl = \"1s\""));
    let tlsa = || f.dns.query_count("_25._tcp.mx1.had.test", RecordType::TLSA);

    assert_eq!(
        client(&ns, &b).query("tls_policy", "had.test"),
        "OK dane-only"
    );
    let seen = tlsa();
    assert!(seen >= 1);

    // A "no DANE" for had.test in the store, fresh: A's own for
    // plain.test, renamed.
    assert_eq!(client(&ns, &a).query("tls_policy", "plain.test"), "OK may");
    let deadline = Instant::now() + WAIT;
    let plain = loop {
        let v = f.redis.cli(&["GET", "tls-policyd:dane:plain.test"]);
        if !v.trim().is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "A's \"no DANE\" never written");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(plain.contains("\"v\":2"), "{plain}");
    let forged = plain.trim().replace("plain.test", "had.test");
    f.redis
        .cli(&["SET", "tls-policyd:dane:had.test", &forged, "EX", "300"]);
    thread::sleep(Duration::from_millis(1500));

    // B's own result expired: it reads the store, does not take the "no
    // DANE" and looks itself.
    let mark = b.mark();
    assert_eq!(
        client(&ns, &b).query("tls_policy", "had.test"),
        "OK dane-only"
    );
    assert!(tlsa() > seen, "B did not look itself");
    b.wait_for_line_since(mark, |l| {
        l.contains("not taken: this host remembers DANE") && l.contains("had.test")
    });
    // A, which never saw DANE for had.test, takes it (the store is
    // trusted that far).
    let before = tlsa();
    assert_eq!(client(&ns, &a).query("tls_policy", "had.test"), "OK may");
    assert_eq!(tlsa(), before);
}
