//! `[shared]`: what hosts remember, shared through one real
//! `redis-server` inside a network namespace with a test DNS server on
//! 127.0.0.1:53. A domain one daemon found with DANE makes another daemon,
//! whose own DANE lookup of it fails, defer delivery (`defer-known`), as
//! if it had seen the DANE policy itself; a domain nobody saw with DANE,
//! or garbage in the key, leaves that other daemon's answer as it was.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::netns::Netns;
use common::redis::Redis;
use common::{Client, Daemon, Options};

const REDIS_PORT: u16 = 6392;
const PASSWORD: &str = "fleet-memory-4242";
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path, host: &str) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[dane]
cache_file = "{dir}/{host}.sqlite"

[shared]
url = "redis://127.0.0.1:{REDIS_PORT}/0"
password_file = "{dir}/redis-password"
host_id = "{host}"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        dir = dir.display()
    )
}

fn client(ns: &Netns, d: &Daemon) -> Client {
    Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
}

fn wait_for_key(r: &Redis, key: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = r.cli(&["GET", key]);
        if !v.trim().is_empty() {
            return v;
        }
        assert!(Instant::now() < deadline, "{key} never written");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_domain_one_daemon_saw_with_dane_makes_another_defer_when_its_lookup_fails() {
    let Some(ns) = Netns::for_test("shrm", &["redis-server", "redis-cli"]) else {
        return;
    };
    let keep = tempfile::tempdir().unwrap();
    std::fs::write(keep.path().join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    let redis_dir = keep.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = Redis::start_on(&ns, &redis_dir, REDIS_PORT, PASSWORD);
    let dns = ns.run_in(|| TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))));
    // The test DNS server plays a validating resolver (the AD bit).
    dns.set_ad_default(true);
    dns.mx("dane.test", 10, "mx1.dane.test");
    dns.a("mx1.dane.test", "127.0.0.25");
    dns.tlsa("_25._tcp.mx1.dane.test", 3, 1, 1, &[0x5a; 32]);
    let start = |host: &str| {
        let d = Daemon::start_with(
            &config(keep.path(), host),
            POLICY_DEFAULT,
            Options::in_netns(&ns),
        );
        d.wait_for_line(|l| l.contains("shared store connected"));
        d
    };
    let a = start("a");
    let b = start("b");

    assert_eq!(
        client(&ns, &a).query("tls_policy", "dane.test"),
        "OK dane-only"
    );
    let had = wait_for_key(&redis, "tls-policyd:dane-had:dane.test");
    assert!(had.contains("dane-only"), "{had}");
    // B has no DANE policy of its own or from the store (that key gone),
    // and its lookup fails.
    wait_for_key(&redis, "tls-policyd:dane:dane.test");
    assert_eq!(
        redis.cli(&["DEL", "tls-policyd:dane:dane.test"]).trim(),
        "1"
    );
    dns.servfail("dane.test");
    let got = client(&ns, &b).query("tls_policy", "dane.test");
    assert!(got.starts_with("TEMP "), "{got}");
    assert!(got.contains("had DANE"), "{got}");
    b.wait_for_line(|l| l.contains("the fleet's shared store says the domain had DANE"));

    // Nobody saw DANE there, or the key holds garbage: B's answer is what
    // it would be on its own (the next source decides).
    dns.servfail("never.test");
    dns.servfail("junk.test");
    redis.cli(&["SET", "tls-policyd:dane-had:junk.test", "\u{1}not json{"]);
    for domain in ["never.test", "junk.test"] {
        let got = client(&ns, &b).query("tls_policy", domain);
        assert!(!got.starts_with("TEMP"), "{domain}: {got}");
    }
    let line = b.wait_for_line(|l| l.contains("unusable value in the shared store ignored"));
    assert!(line.contains("junk.test"), "{line}");
    assert!(b.find_line(|l| l.contains("panicked")).is_none());
    drop(dns);
}
