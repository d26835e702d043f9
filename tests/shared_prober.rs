//! `[shared]` and the STARTTLS prober: two probers (two hosts) with a
//! client each of one real `redis-server`, SMTP sinks and a test DNS
//! server, all in a network namespace with only `lo`. What one host's
//! probe found is taken by the other without a probe of its own; "no
//! STARTTLS" from the store counts as knowledge, an unverified
//! certificate from the store never does (another host's CAs); garbage in
//! the key leaves the other host to probe for itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::netns::Netns;
use common::redis::Redis;
use common::smtp::{SinkTls, SmtpSink};
use tls_policyd::dns::{self, DnsConfig};
use tls_policyd::engine::refusal::{Capability, TlsKnowledge};
use tls_policyd::metrics::Metrics;
use tls_policyd::prober::{Prober, ProberConfig};
use tls_policyd::shared::{SharedConfig, SharedStore};
use tokio_util::sync::CancellationToken;

const REDIS_PORT: u16 = 6393;
const PASSWORD: &str = "fleet-prober-1717";
const NET: u8 = 36;
const WAIT: Duration = Duration::from_secs(20);

fn ip(host: u8) -> String {
    format!("127.0.{NET}.{host}")
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn what_one_hosts_probe_found_is_taken_by_another_and_never_refuses_on_another_hosts_cas() {
    let Some(ns) = Netns::for_test("shrprb", &["redis-server", "redis-cli"]) else {
        return;
    };
    ns.enter_thread()
        .unwrap_or_else(|e| panic!("join {}: {e}", ns.name()));
    let keep = tempfile::tempdir().unwrap();
    let redis_dir = keep.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = Redis::start_on(&ns, &redis_dir, REDIS_PORT, PASSWORD);
    let password = keep.path().join("redis-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let dns = TestDns::start(&ip(53));
    let plain = SmtpSink::start(&ip(21), 0, SinkTls::None);
    let port = plain.port();
    let selfsigned = SmtpSink::start(&ip(22), port, SinkTls::self_signed(&["mx1.self.test"]));
    for (domain, host, addr) in [
        ("plain.test", "mx1.plain.test", 21),
        ("junk.test", "mx1.junk.test", 21),
        ("self.test", "mx1.self.test", 22),
    ] {
        dns.mx(domain, 10, host);
        dns.a(host, &ip(addr));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    rt.block_on(async {
        let host = || {
            let mut c = SharedConfig::new(&format!("redis://127.0.0.1:{REDIS_PORT}/0"));
            c.password_file = Some(password.clone());
            c.command_timeout = Duration::from_secs(2);
            let store = SharedStore::new(&c, Arc::new(Metrics::new())).unwrap();
            tokio::spawn(store.clone().run(stop.clone()));
            let resolver = dns::build_resolver(&DnsConfig {
                nameservers: vec![dns.nameserver()],
                timeout: Duration::from_secs(1),
                attempts: 1,
                ..DnsConfig::default()
            })
            .unwrap();
            let p = Prober::new(
                ProberConfig {
                    port,
                    helo_name: "probe.test".into(),
                    connect_timeout: Duration::from_secs(2),
                    smtp_timeout: Duration::from_secs(2),
                    tls_timeout: Duration::from_secs(2),
                    ..ProberConfig::default()
                },
                resolver,
            )
            .unwrap();
            p.set_shared(Arc::new(store.clone()));
            (p, store)
        };
        let (a, store_a) = host();
        let (b, store_b) = host();
        for s in [&store_a, &store_b] {
            wait_for("the store connected", || (s.status().state == "up").then_some(())).await;
        }

        // A probes; B takes it: no connection of its own.
        assert!(a.schedule("plain.test"));
        let own = wait_for("A's probe", || TlsKnowledge::known(&a, "plain.test")).await;
        assert!(matches!(own, Capability::NoStarttls { .. }), "{own:?}");
        wait_for("published", || {
            (!redis.cli(&["GET", "tls-policyd:prober:plain.test"]).trim().is_empty())
                .then_some(())
        })
        .await;
        let connections = plain.connections();
        assert!(b.schedule("plain.test"));
        let taken = wait_for("B's knowledge", || TlsKnowledge::known(&b, "plain.test")).await;
        match &taken {
            Capability::NoStarttls { detail } => {
                assert!(detail.contains("another host of the fleet"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(plain.connections(), connections, "B probed itself");
        assert!(b.known("plain.test").is_none(), "no probe result of B's own");

        // An unverified certificate: knowledge on A, none on B.
        assert!(a.schedule("self.test"));
        let own = wait_for("A's probe", || TlsKnowledge::known(&a, "self.test")).await;
        assert!(matches!(own, Capability::StarttlsUnverified { .. }), "{own:?}");
        wait_for("published", || {
            (!redis.cli(&["GET", "tls-policyd:prober:self.test"]).trim().is_empty())
                .then_some(())
        })
        .await;
        let handshakes = selfsigned.tls_handshakes();
        assert!(b.schedule("self.test"));
        let taken = wait_for("B's knowledge", || TlsKnowledge::known(&b, "self.test")).await;
        match &taken {
            Capability::Unknown { detail } => {
                assert!(detail.contains("no refusal"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(selfsigned.tls_handshakes(), handshakes);

        // Garbage in the key: B probes for itself.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let junk = format!(
            "{{\"v\":1,\"fetched_at\":{now},\"expires_at\":{},\"payload\":\"{{\\\"domain\\\":\\\"junk.test\\\"}}\"}}",
            now + 3600
        );
        redis.cli(&["SET", "tls-policyd:prober:junk.test", &junk]);
        let connections = plain.connections();
        assert!(b.schedule("junk.test"));
        let own = wait_for("B's own probe", || b.known("junk.test")).await;
        assert_eq!(own.domain, "junk.test");
        assert!(plain.connections() > connections, "B did not probe");
        assert!(matches!(
            TlsKnowledge::known(&b, "junk.test"),
            Some(Capability::NoStarttls { .. })
        ));
        stop.cancel();
    });
    drop(dns);
}
