//! `[shared]`: daemons sharing one real `redis-server` (with
//! `requirepass`, no persistence, in a temporary directory), inside a
//! network namespace with a test DNS server on 127.0.0.1:53 and policy
//! hosts on 127.0.0.44:443. A policy learned through one daemon is answered
//! by another without a discovery of its own; garbage in the keys is
//! ignored and logged; the store killed while lookups run fails none of
//! them; a wrong password leaves the daemon running on its own.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::smtp::TestCa;
use common::{Client, Daemon, Options};
use hickory_proto::rr::RecordType;

use common::redis::{PASSWORD, REDIS_PORT, Redis};
/// Longest wait for something asynchronous (a write reaching the store).
const WAIT: Duration = Duration::from_secs(30);

fn config(url: &str, cache: &Path, ca: &Path, password_file: &Path, dane: bool) -> String {
    let dane = if dane {
        format!("[dane]\ncache_file = \"{}\"\n", cache.display())
    } else {
        String::new()
    };
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
lookup_timeout = "5s"
fetch_timeout = "5s"
connect_timeout = "2s"

{dane}
[shared]
url = "{url}"
password_file = "{}"
connect_timeout = "1s"
command_timeout = "300ms"

[metrics]
listen = "inet:127.0.0.1:0"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache.display(),
        ca.display(),
        password_file.display()
    )
}

fn policy_text(domain: &str) -> String {
    format!("version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 604800\n")
}

fn answer(domain: &str) -> String {
    format!("OK secure match=mx.{domain} servername=hostname")
}

fn publish(dns: &TestDns, https: &TestHttps, domain: &str) {
    dns.txt_ttl(&format!("_mta-sts.{domain}"), 0, "v=STSv1; id=f1;");
    dns.a(&format!("mta-sts.{domain}"), HTTPS_IP);
    https.site(
        &format!("mta-sts.{domain}"),
        Response::policy(&policy_text(domain)),
    );
}

fn txt_queries(dns: &TestDns, domain: &str) -> usize {
    dns.query_count(&format!("_mta-sts.{domain}"), RecordType::TXT)
}

fn client(ns: &Netns, d: &Daemon) -> Client {
    Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
}

/// The test's servers and files.
struct Fleet {
    ns: Netns,
    dns: TestDns,
    https: TestHttps,
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
        Fleet {
            ns,
            dns,
            https,
            keep,
            ca_pem,
            password,
        }
    }

    fn redis(&self) -> Redis {
        let dir = self.keep.path().join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        Redis::start(&self.ns, &dir, None)
    }

    /// A daemon with a cache file of its own and `password_file`.
    fn daemon(&self, name: &str, password_file: &Path) -> Daemon {
        self.daemon_with(name, password_file, false)
    }

    /// [`Fleet::daemon`], with DANE on when `dane`.
    fn daemon_with(&self, name: &str, password_file: &Path, dane: bool) -> Daemon {
        let url = format!("redis://127.0.0.1:{REDIS_PORT}/0");
        self.daemon_at(name, password_file, dane, &url)
    }

    /// [`Fleet::daemon_with`] on the store at `url`.
    fn daemon_at(&self, name: &str, password_file: &Path, dane: bool, url: &str) -> Daemon {
        let cache = self.keep.path().join(format!("{name}.sqlite"));
        let conf = config(url, &cache, &self.ca_pem, password_file, dane);
        let d = Daemon::start_with(&conf, POLICY_DEFAULT, Options::in_netns(&self.ns));
        d.wait_for_line(|l| l.contains("shared store") && !l.contains("MTA-STS"));
        d
    }
}

/// `tls-policyd status --json` against `d`: exit code and report.
fn status(ns: &Netns, d: &Daemon) -> (Option<i32>, serde_json::Value) {
    let addr = d.listening("metrics");
    let out = common::run_with_timeout(
        ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"))
            .args(["status", "--json", "--address"])
            .arg(&addr),
    );
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), report)
}

/// `GET /metrics` of `d`: the sample of `series`.
fn metric(ns: &Netns, d: &Daemon, series: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = d.listening("metrics");
    let addr = addr.strip_prefix("inet:").unwrap_or(&addr);
    let mut s = ns.tcp_connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

/// Wait until the store holds `key`; its value.
fn wait_for_key(r: &Redis, key: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = r.cli(&["GET", key]);
        if !v.trim().is_empty() {
            return v;
        }
        assert!(Instant::now() < deadline, "{key} never written");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_policy_learned_by_one_daemon_is_answered_by_another_and_garbage_is_ignored() {
    let Some(ns) = Netns::for_test("shrd", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let redis = f.redis();
    publish(&f.dns, &f.https, "fleet.test");
    let a = f.daemon("a", &f.password);
    let b = f.daemon("b", &f.password);
    a.wait_for_line(|l| l.contains("shared store connected"));
    b.wait_for_line(|l| l.contains("shared store connected"));

    // Learned through A: one TXT query, one fetch, published.
    assert_eq!(
        client(&ns, &a).query("tls_policy", "fleet.test"),
        answer("fleet.test")
    );
    assert_eq!(txt_queries(&f.dns, "fleet.test"), 1);
    assert_eq!(f.https.requests("mta-sts.fleet.test"), 1);
    let value = wait_for_key(&redis, "tls-policyd:mta-sts:fleet.test");
    assert!(value.contains("\"v\":1"), "{value}");
    assert!(value.contains("mx.fleet.test"), "{value}");

    // Answered by B from the store: no TXT query, no fetch of its own.
    assert_eq!(
        client(&ns, &b).query("tls_policy", "fleet.test"),
        answer("fleet.test")
    );
    assert_eq!(txt_queries(&f.dns, "fleet.test"), 1);
    assert_eq!(f.https.requests("mta-sts.fleet.test"), 1);
    b.wait_for_line(|l| {
        l.contains("MTA-STS policy taken from the shared store") && l.contains("fleet.test")
    });
    let recs = b.wait_for_decisions(1);
    assert_eq!(recs[0]["source"], "mta-sts", "{}", recs[0]);
    assert_eq!(recs[0]["policy_id"], "f1", "{}", recs[0]);
    let (code, report) = status(&ns, &b);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["shared"]["state"], "up", "{report}");
    assert_eq!(
        metric(&ns, &b, "tls_policyd_shared_store_up").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(
            &ns,
            &b,
            "tls_policyd_shared_requests_total{op=\"get\",result=\"hit\"}"
        )
        .as_deref(),
        Some("1")
    );

    // Garbage in the keys: ignored, logged, counted; B discovers itself.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let future = format!(
        "{{\"v\":3,\"fetched_at\":{now},\"expires_at\":{},\"payload\":\"{{}}\"}}",
        now + 3600
    );
    let bad_payload = format!(
        "{{\"v\":1,\"fetched_at\":{now},\"expires_at\":{},\"payload\":\"{{\\\"id\\\":7}}\"}}",
        now + 3600
    );
    for (domain, problem) in [
        ("junk.test", "garbage"),
        ("big.test", "oversized"),
        ("future.test", "future_version"),
        ("list.test", "wrong_type"),
        ("payload.test", "payload"),
    ] {
        publish(&f.dns, &f.https, domain);
        let key = format!("tls-policyd:mta-sts:{domain}");
        match domain {
            "junk.test" => redis.cli(&["SET", &key, "\u{1}not json{"]),
            "big.test" => redis.cli(&["SETRANGE", &key, "300000", "x"]),
            "future.test" => redis.cli(&["SET", &key, &future]),
            "list.test" => redis.cli(&["RPUSH", &key, "a", "b"]),
            _ => redis.cli(&["SET", &key, &bad_payload]),
        };
        let mark = b.mark();
        assert_eq!(
            client(&ns, &b).query("tls_policy", domain),
            answer(domain),
            "{domain}"
        );
        assert_eq!(txt_queries(&f.dns, domain), 1, "{domain}");
        let line = b.wait_for_line_since(mark, |l| {
            l.contains("unusable value in the shared store ignored")
        });
        assert!(line.contains(problem), "{domain}: {line}");
        let counted = metric(
            &ns,
            &b,
            &format!("tls_policyd_errors_total{{component=\"shared\",kind=\"{problem}\"}}"),
        );
        assert_eq!(counted.as_deref(), Some("1"), "{domain}");
    }
    assert!(b.find_line(|l| l.contains("panicked")).is_none());
    drop(redis);
}

#[test]
fn the_store_killed_while_lookups_run_fails_none_and_a_restarted_one_is_filled_again() {
    let Some(ns) = Netns::for_test("shrk", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let mut redis = f.redis();
    let domains: Vec<String> = (0..80).map(|i| format!("d{i}.kill.test")).collect();
    for d in &domains {
        publish(&f.dns, &f.https, d);
    }
    let a = f.daemon("a", &f.password);
    a.wait_for_line(|l| l.contains("shared store connected"));

    // First lookups (each a local miss that asks the store) on two
    // connections; the store is killed once both are under way.
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let mut c = client(&ns, &a);
            let domains = domains.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                let mut answers = Vec::new();
                for (i, d) in domains.iter().skip(w).step_by(2).enumerate() {
                    if i == 5 {
                        tx.send(()).unwrap();
                    }
                    answers.push((d.clone(), c.query("tls_policy", d)));
                }
                answers
            })
        })
        .collect();
    for _ in 0..2 {
        rx.recv_timeout(WAIT).expect("lookups under way");
    }
    redis.kill();
    let mut answered = 0;
    for w in workers {
        for (d, got) in w.join().unwrap() {
            assert_eq!(got, answer(&d), "{d}");
            answered += 1;
        }
    }
    assert_eq!(answered, domains.len());
    // Known down: lookups of new domains go straight to discovery.
    for i in 0..5 {
        let d = format!("late{i}.kill.test");
        publish(&f.dns, &f.https, &d);
        assert_eq!(client(&ns, &a).query("tls_policy", &d), answer(&d));
    }
    let line = a.wait_for_line(|l| l.contains("shared store unavailable"));
    assert!(line.contains("own memory"), "{line}");

    // A new, empty store on the same port: once its back-off has passed
    // the daemon sees it back with no lookup asking, and gives it every
    // policy it holds, those learned while the store was down included.
    let mark = a.mark();
    let redis = f.redis();
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
    let line = a
        .try_wait_for_line_since(mark, Duration::from_secs(90), |l| {
            l.contains("shared store given what this host holds")
        })
        .expect("the store was never given what the daemon holds");
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    // Every policy held: written, or already there (a queued write that
    // went out first).
    assert_eq!(field("written") + field("already_there"), 85, "{line}");
    assert_eq!(field("not_written"), 0, "{line}");
    for d in domains
        .iter()
        .take(3)
        .chain([&"late4.kill.test".to_string()])
    {
        assert!(
            !redis
                .cli(&["GET", &format!("tls-policyd:mta-sts:{d}")])
                .trim()
                .is_empty(),
            "{d} not given to the new store"
        );
    }
    assert_eq!(
        metric(
            &ns,
            &a,
            "tls_policyd_shared_requests_total{op=\"replay\",result=\"ok\"}"
        ),
        Some(field("written").to_string())
    );
    // What is learned from then on reaches it too.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    loop {
        let d = format!("again{i}.kill.test");
        publish(&f.dns, &f.https, &d);
        assert_eq!(client(&ns, &a).query("tls_policy", &d), answer(&d));
        thread::sleep(Duration::from_millis(500));
        if !redis
            .cli(&["GET", &format!("tls-policyd:mta-sts:{d}")])
            .trim()
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store was never written again"
        );
        i += 1;
    }
    a.wait_for_line(|l| l.contains("shared store answers again"));
    assert!(a.find_line(|l| l.contains("panicked")).is_none());
}

#[test]
fn a_wrong_password_leaves_the_daemon_running_on_its_own() {
    let Some(ns) = Netns::for_test("shrp", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let redis = f.redis();
    let wrong = f.keep.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    publish(&f.dns, &f.https, "alone.test");
    let a = f.daemon("a", &wrong);
    let line = a.wait_for_line(|l| l.contains("shared store unavailable"));
    assert!(line.contains("authentication refused"), "{line}");
    assert!(!line.contains("not-the-password"), "{line}");
    assert!(
        !a.stderr_text().contains("not-the-password"),
        "the password is never logged"
    );
    assert_eq!(
        client(&ns, &a).query("tls_policy", "alone.test"),
        answer("alone.test")
    );
    assert_eq!(txt_queries(&f.dns, "alone.test"), 1);
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
    let (code, report) = status(&ns, &a);
    assert_eq!(code, Some(2), "{report}");
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(report["shared"]["state"], "down", "{report}");
    let problem = report["shared"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("authentication refused"), "{report}");
    assert_eq!(
        metric(&ns, &a, "tls_policyd_shared_store_up").as_deref(),
        Some("0")
    );
}

#[test]
fn a_dane_policy_found_by_one_daemon_is_answered_by_another() {
    let Some(ns) = Netns::for_test("shrd", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let redis = f.redis();
    // The test DNS server plays a validating resolver (the AD bit).
    f.dns.set_ad_default(true);
    f.dns.mx("dane.test", 10, "mx1.dane.test");
    f.dns.a("mx1.dane.test", "127.0.0.25");
    f.dns.tlsa("_25._tcp.mx1.dane.test", 3, 1, 1, &[0x5a; 32]);
    f.dns.mx("plain.test", 10, "mx1.plain.test");
    f.dns.a("mx1.plain.test", "127.0.0.25");
    let a = f.daemon_with("a", &f.password, true);
    let b = f.daemon_with("b", &f.password, true);
    a.wait_for_line(|l| l.contains("shared store connected"));
    b.wait_for_line(|l| l.contains("shared store connected"));
    let tlsa = || {
        f.dns
            .query_count("_25._tcp.mx1.dane.test", RecordType::TLSA)
    };
    let mx = |d: &str| f.dns.query_count(d, RecordType::MX);

    assert_eq!(
        client(&ns, &a).query("tls_policy", "dane.test"),
        "OK dane-only"
    );
    let (tlsa_a, mx_a) = (tlsa(), mx("dane.test"));
    assert!(tlsa_a >= 1 && mx_a >= 1);
    let value = wait_for_key(&redis, "tls-policyd:dane:dane.test");
    assert!(value.contains("\"v\":1"), "{value}");
    // The claim is released right after the write.
    let deadline = Instant::now() + WAIT;
    while redis
        .cli(&["EXISTS", "tls-policyd:lock:dane:dane.test"])
        .trim()
        != "0"
    {
        assert!(Instant::now() < deadline, "the claim is never released");
        thread::sleep(Duration::from_millis(20));
    }

    assert_eq!(
        client(&ns, &b).query("tls_policy", "dane.test"),
        "OK dane-only"
    );
    assert_eq!(tlsa(), tlsa_a, "B looked the TLSA records up itself");
    assert_eq!(mx("dane.test"), mx_a, "B looked the MX records up itself");
    b.wait_for_line(|l| l.contains("DANE result taken from the shared store"));

    // "No DANE" found by the host that claimed the lookup is shared too
    // (as a version 2 value, kept at most five minutes): B does not look.
    let plain_a = client(&ns, &a).query("tls_policy", "plain.test");
    let value = wait_for_key(&redis, "tls-policyd:dane:plain.test");
    assert!(value.contains("\"v\":2"), "{value}");
    let ttl: u64 = redis
        .cli(&["TTL", "tls-policyd:dane:plain.test"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "{ttl}");
    let plain_b = client(&ns, &b).query("tls_policy", "plain.test");
    assert_eq!(plain_a, plain_b);
    assert_eq!(mx("plain.test"), 1);
}

#[test]
fn a_store_on_a_unix_socket_is_shared_too() {
    let Some(ns) = Netns::for_test("shru", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let dir = f.keep.path().join("redis-unix");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let redis = Redis::start(&ns, &dir, Some(socket.clone()));
    // Database 3: the keys are written there, not in 0.
    let url = format!("redis+unix://{}?db=3", socket.display());
    publish(&f.dns, &f.https, "unix.test");
    let a = f.daemon_at("a", &f.password, false, &url);
    let b = f.daemon_at("b", &f.password, false, &url);
    a.wait_for_line(|l| l.contains("shared store connected"));
    b.wait_for_line(|l| l.contains("shared store connected"));
    assert_eq!(
        client(&ns, &a).query("tls_policy", "unix.test"),
        answer("unix.test")
    );
    let deadline = Instant::now() + WAIT;
    while redis
        .cli(&["-n", "3", "EXISTS", "tls-policyd:mta-sts:unix.test"])
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "never written to database 3");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(redis.cli(&["-n", "0", "DBSIZE"]).trim(), "0");
    assert_eq!(
        client(&ns, &b).query("tls_policy", "unix.test"),
        answer("unix.test")
    );
    assert_eq!(txt_queries(&f.dns, "unix.test"), 1);
    assert_eq!(f.https.requests("mta-sts.unix.test"), 1);
}
