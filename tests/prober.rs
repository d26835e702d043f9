//! The STARTTLS prober against SMTP sinks on 127.0.0.0/8 started here,
//! with DNS answered by the in-process test server. Nothing leaves the
//! machine and the system resolver is never used.
//!
//! Each test's thread joins a network namespace of its own that has only
//! `lo` (needs root; `SKIP_POSTFIX_TESTS=1` skips), so every server and
//! every connection stays inside it. Each test also works in its own
//! 127.0.N.0/24.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::netns::Netns;
use common::smtp::{SinkOptions, SinkTls, SmtpSink, TestCa};
use hickory_proto::rr::RecordType;
use tls_policyd::dns::{self, DnsConfig, LookupError, MxAnswer};
use tls_policyd::metrics::Metrics;
use tls_policyd::prober::{
    DomainProbe, MxStatus, Prober, ProberConfig, TlsCapability, render_json, render_text,
};

/// A multi-threaded runtime whose threads start on the calling thread, so
/// inside its namespace.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// Address `host` in this test's network.
fn ip(net: u8, host: u8) -> String {
    format!("127.0.{net}.{host}")
}

/// A test's world: DNS server, test CA (its PEM in a temp file) and the
/// port every sink of the test shares.
struct World {
    _ns: Netns,
    net: u8,
    dns: TestDns,
    ca: TestCa,
    dir: tempfile::TempDir,
    sinks: Vec<SmtpSink>,
    port: u16,
}

impl World {
    /// `None` when namespace tests are skipped.
    fn new(net: u8) -> Option<World> {
        let ns = Netns::for_test("tlspd-prb", &[])?;
        ns.enter_thread()
            .unwrap_or_else(|e| panic!("join {}: {e}", ns.name()));
        let dns = TestDns::start(&ip(net, 53));
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        ca.write_pem(&dir.path().join("ca.pem"));
        // Reserve a port on .20 that the sinks of this test share.
        let anchor = SmtpSink::start(&ip(net, 20), 0, SinkTls::None);
        let port = anchor.port();
        Some(World {
            _ns: ns,
            net,
            dns,
            ca,
            dir,
            sinks: vec![anchor],
            port,
        })
    }

    fn ip(&self, host: u8) -> String {
        ip(self.net, host)
    }

    /// Start a sink on 127.0.N.`host` at the shared port; returns its index.
    fn sink(&mut self, host: u8, opts: SinkOptions) -> usize {
        self.sinks
            .push(SmtpSink::start_with(&self.ip(host), self.port, opts));
        self.sinks.len() - 1
    }

    fn dns_config(&self) -> DnsConfig {
        DnsConfig {
            nameservers: vec![self.dns.nameserver()],
            timeout: Duration::from_secs(1),
            attempts: 1,
            ..DnsConfig::default()
        }
    }

    fn config(&self) -> ProberConfig {
        ProberConfig {
            port: self.port,
            helo_name: "probe.test".into(),
            connect_timeout: Duration::from_secs(2),
            smtp_timeout: Duration::from_secs(2),
            tls_timeout: Duration::from_secs(2),
            extra_ca_file: Some(self.dir.path().join("ca.pem")),
            ..ProberConfig::default()
        }
    }

    fn prober_with(&self, config: ProberConfig) -> Prober {
        let resolver = dns::build_resolver(&self.dns_config()).unwrap();
        Prober::new(config, resolver).unwrap()
    }

    fn prober(&self) -> Prober {
        self.prober_with(self.config())
    }

    /// MX `host` for `domain`, with an A record at 127.0.N.`addr`.
    fn mx(&self, domain: &str, pref: u16, host: &str, addr: u8) {
        self.dns.mx(domain, pref, host);
        self.dns.a(host, &self.ip(addr));
    }
}

fn tls_ca(ca: &TestCa, names: &[&str]) -> SinkOptions {
    SinkOptions::new(SinkTls::issued_by(ca, names))
}

async fn wait_known(p: &Prober, domain: &str) -> Arc<DomainProbe> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(k) = p.known(domain) {
            return k;
        }
        assert!(Instant::now() < until, "no result for {domain}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn starttls_with_certificate_from_trusted_test_ca() {
    let Some(mut w) = World::new(31) else {
        return;
    };
    let opts = tls_ca(&w.ca, &["mx1.good.test", "mail.good.test"]);
    let s = w.sink(21, opts);
    w.mx("good.test", 10, "mx1.good.test", 21);
    let p = w.prober().probe("Good.Test.").await;

    assert_eq!(p.domain, "good.test");
    assert_eq!(p.dns_error, None);
    assert!(!p.null_mx && !p.implicit_mx);
    assert_eq!(p.mx.len(), 1);
    let m = &p.mx[0];
    assert_eq!(m.host, "mx1.good.test");
    assert_eq!(m.preference, 10);
    assert_eq!(m.address, Some(w.ip(21).parse().unwrap()));
    assert_eq!(m.status, MxStatus::TlsVerified);
    assert!(m.starttls_offered);
    assert_eq!(m.tls_version.as_deref(), Some("TLSv1.3"));
    assert!(
        m.cipher.as_deref().unwrap().starts_with("TLS13_"),
        "{:?}",
        m.cipher
    );
    assert_eq!(m.cert_chain_valid, Some(true));
    assert_eq!(m.cert_error, None);
    assert_eq!(m.cert_names, ["mx1.good.test", "mail.good.test"]);
    assert_eq!(m.cert_matches_host, Some(true));
    assert_eq!(m.error, None);

    assert!(matches!(p.verdict(), TlsCapability::StarttlsVerified(_)));
    assert!(p.any_starttls() && p.any_verified() && p.all_known());
    assert!(!p.all_failed_starttls());
    assert!(p.any_verified_for(&strings(&["hostname"])));
    assert!(p.any_verified_for(&strings(&["mail.good.test"])));
    assert!(p.any_verified_for(&strings(&[".good.test"])));
    assert!(!p.any_verified_for(&strings(&["other.test"])));
    assert!(p.definitely_unverified_for(&strings(&["other.test"])));

    let sink = &w.sinks[s];
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.tls_handshakes(), 1);
    assert_eq!(sink.commands(), ["EHLO probe.test", "STARTTLS", "QUIT"]);
    assert!(sink.messages().is_empty());

    let text = render_text(&p);
    assert!(text.contains("verdict      starttls_verified"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(
        text.contains("names        mx1.good.test, mail.good.test"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&render_json(&p)).unwrap();
    assert_eq!(json["domain"], "good.test");
    assert_eq!(json["verdict"], "starttls_verified");
    assert_eq!(json["mx"][0]["status"], "tls_verified");
    assert_eq!(json["mx"][0]["cert_chain_valid"], true);
    assert_eq!(json["mx"][0]["address"], w.ip(21));
}

#[tokio::test]
async fn test_ca_certificate_is_untrusted_without_extra_ca_file() {
    let Some(mut w) = World::new(32) else {
        return;
    };
    let opts = tls_ca(&w.ca, &["mx1.good.test"]);
    w.sink(21, opts);
    w.mx("good.test", 10, "mx1.good.test", 21);
    let p = w
        .prober_with(ProberConfig {
            extra_ca_file: None,
            ..w.config()
        })
        .probe("good.test")
        .await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::TlsUnverified);
    assert_eq!(m.cert_chain_valid, Some(false));
    assert_eq!(m.cert_matches_host, Some(true));
    assert!(matches!(p.verdict(), TlsCapability::StarttlsUnverified(_)));
}

#[tokio::test]
async fn certificate_for_another_name() {
    let Some(mut w) = World::new(33) else {
        return;
    };
    let opts = tls_ca(&w.ca, &["somewhere.else.test"]);
    w.sink(21, opts);
    w.mx("good.test", 10, "mx1.good.test", 21);
    let p = w.prober().probe("good.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::TlsUnverified);
    assert_eq!(m.cert_chain_valid, Some(true), "the chain itself is fine");
    assert_eq!(m.cert_matches_host, Some(false));
    assert_eq!(m.cert_names, ["somewhere.else.test"]);
    let v = p.verdict();
    assert_eq!(v.as_str(), "starttls_unverified");
    assert!(
        v.detail()
            .contains("certificate for other names (somewhere.else.test)"),
        "{v}"
    );
    // Still verified for a match= naming the certificate's name.
    assert!(p.any_verified_for(&strings(&["somewhere.else.test"])));
}

#[tokio::test]
async fn self_signed_certificate() {
    let Some(mut w) = World::new(34) else {
        return;
    };
    w.sink(
        21,
        SinkOptions::new(SinkTls::self_signed(&["mx1.self.test"])),
    );
    w.mx("self.test", 10, "mx1.self.test", 21);
    let p = w.prober().probe("self.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::TlsUnverified);
    assert!(m.starttls_offered);
    assert!(m.tls_version.is_some() && m.cipher.is_some());
    assert_eq!(m.cert_chain_valid, Some(false));
    assert!(
        m.cert_error.as_deref().unwrap().contains("not trusted"),
        "{:?}",
        m.cert_error
    );
    assert_eq!(m.cert_names, ["mx1.self.test"]);
    assert_eq!(m.cert_matches_host, Some(true));
    assert_eq!(m.error, None);
    let v = p.verdict();
    assert_eq!(v.as_str(), "starttls_unverified");
    assert!(
        v.detail()
            .contains("mx1.self.test: TLS with an untrusted certificate"),
        "{v}"
    );
    assert!(!p.any_verified_for(&strings(&["hostname"])));
    assert!(p.definitely_unverified_for(&strings(&["hostname"])));
    assert!(!p.all_failed_starttls());
}

#[tokio::test]
async fn no_starttls() {
    let Some(mut w) = World::new(35) else {
        return;
    };
    let s = w.sink(21, SinkOptions::new(SinkTls::None));
    w.mx("plain.test", 10, "mx1.plain.test", 21);
    let p = w.prober().probe("plain.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::NoStarttls);
    assert!(!m.starttls_offered);
    assert_eq!(m.tls_version, None);
    assert_eq!(m.cert_chain_valid, None);
    assert_eq!(m.error, None);
    assert!(p.all_failed_starttls());
    assert!(!p.any_starttls());
    assert_eq!(
        p.verdict(),
        TlsCapability::NoStarttls(
            "the MX of plain.test does not offer STARTTLS (mx1.plain.test: EHLO without STARTTLS)"
                .into()
        )
    );
    assert_eq!(w.sinks[s].commands(), ["EHLO probe.test", "QUIT"]);
}

#[tokio::test]
async fn tls12_only_server() {
    let Some(mut w) = World::new(36) else {
        return;
    };
    let mut opts = tls_ca(&w.ca, &["mx1.old.test"]);
    opts.tls12_only = true;
    w.sink(21, opts);
    w.mx("old.test", 10, "mx1.old.test", 21);
    let p = w.prober().probe("old.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::TlsVerified);
    assert_eq!(m.tls_version.as_deref(), Some("TLSv1.2"));
    assert!(
        m.cipher.as_deref().unwrap().starts_with("TLS_ECDHE_"),
        "{:?}",
        m.cipher
    );
}

#[tokio::test]
async fn mx_host_without_address_is_unknown() {
    let Some(w) = World::new(37) else {
        return;
    };
    w.dns.mx("noaddr.test", 10, "mx1.noaddr.test");
    let p = w.prober().probe("noaddr.test").await;
    assert_eq!(p.dns_error, None);
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::Unknown);
    assert_eq!(m.address, None);
    assert!(
        m.error
            .as_deref()
            .unwrap()
            .contains("no address for mx1.noaddr.test"),
        "{:?}",
        m.error
    );
    assert_eq!(p.verdict().as_str(), "unknown");
    assert!(!p.all_failed_starttls() && !p.all_known());
}

#[tokio::test]
async fn connection_refused_is_unknown_not_no_starttls() {
    let Some(w) = World::new(38) else {
        return;
    };
    w.mx("down.test", 10, "mx1.down.test", 99);
    let p = w.prober().probe("down.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::Unknown);
    assert!(!m.starttls_offered);
    let e = m.error.as_deref().unwrap();
    assert!(e.contains("refused") && e.contains(&w.ip(99)), "{e}");
    assert!(!p.all_failed_starttls());
    let v = p.verdict();
    assert_eq!(v.as_str(), "unknown");
    assert!(v.detail().contains("mx1.down.test: connect to"), "{v}");
}

#[tokio::test]
async fn silent_server_times_out_as_unknown() {
    let Some(mut w) = World::new(39) else {
        return;
    };
    let mut opts = SinkOptions::new(SinkTls::None);
    opts.greeting_delay = Duration::from_secs(10);
    w.sink(21, opts);
    w.mx("slow.test", 10, "mx1.slow.test", 21);
    let started = Instant::now();
    let p = w
        .prober_with(ProberConfig {
            smtp_timeout: Duration::from_millis(300),
            ..w.config()
        })
        .probe("slow.test")
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::Unknown);
    assert!(
        m.error.as_deref().unwrap().contains("greeting"),
        "{:?}",
        m.error
    );
    assert_eq!(p.verdict().as_str(), "unknown");
}

#[tokio::test]
async fn refusing_greeting_and_refused_starttls() {
    let Some(mut w) = World::new(40) else {
        return;
    };
    let mut busy = SinkOptions::new(SinkTls::None);
    busy.greeting = Some("554 5.7.1 no service for you".into());
    w.sink(21, busy);
    let mut refuses = tls_ca(&w.ca, &["mx1.notls.test"]);
    refuses.starttls_reply = Some("454 4.7.0 TLS not available due to local problem".into());
    w.sink(22, refuses);
    w.mx("busy.test", 10, "mx1.busy.test", 21);
    w.mx("notls.test", 10, "mx1.notls.test", 22);
    let prober = w.prober();

    let p = prober.probe("busy.test").await;
    assert_eq!(p.mx[0].status, MxStatus::Unknown);
    assert!(
        p.mx[0]
            .error
            .as_deref()
            .unwrap()
            .contains("554 5.7.1 no service"),
        "{:?}",
        p.mx[0].error
    );
    assert_eq!(p.verdict().as_str(), "unknown");

    let p = prober.probe("notls.test").await;
    let m = &p.mx[0];
    assert_eq!(m.status, MxStatus::StarttlsFailed);
    assert!(m.starttls_offered);
    assert!(
        m.error
            .as_deref()
            .unwrap()
            .contains("STARTTLS refused: 454"),
        "{:?}",
        m.error
    );
    assert_eq!(p.verdict().as_str(), "starttls_offered");
    assert!(!p.all_failed_starttls());
    assert!(!p.definitely_unverified_for(&strings(&["hostname"])));
}

#[tokio::test]
async fn null_mx() {
    let Some(w) = World::new(41) else {
        return;
    };
    w.dns.null_mx("nomail.test");
    let p = w.prober().probe("nomail.test").await;
    assert!(p.null_mx);
    assert!(p.mx.is_empty());
    assert_eq!(p.dns_error, None);
    assert_eq!(p.verdict().as_str(), "null_mx");
    assert!(!p.all_failed_starttls());
    assert_eq!(w.sinks[0].connections(), 0);
}

#[tokio::test]
async fn implicit_mx_is_the_domain_itself() {
    let Some(mut w) = World::new(42) else {
        return;
    };
    w.sink(21, SinkOptions::new(SinkTls::None));
    w.dns.a("bare.test", &w.ip(21));
    let p = w.prober().probe("bare.test").await;
    assert!(p.implicit_mx);
    assert_eq!(p.mx.len(), 1);
    assert_eq!(p.mx[0].host, "bare.test");
    assert_eq!(p.mx[0].preference, 0);
    assert_eq!(p.mx[0].status, MxStatus::NoStarttls);
    assert!(render_text(&p).contains("none published"));
}

#[tokio::test]
async fn dns_failures_are_no_knowledge() {
    let Some(w) = World::new(43) else {
        return;
    };
    w.dns.servfail("broken.test");
    w.dns.no_answer("silent.test");
    let prober = w.prober();

    let p = prober.probe("broken.test").await;
    let e = p.dns_error.as_deref().unwrap();
    assert!(e.contains("SERVFAIL"), "{e}");
    assert!(p.mx.is_empty());
    assert_eq!(p.verdict().as_str(), "unknown");
    assert!(!p.all_failed_starttls());

    let p = prober.probe("missing.test").await;
    assert!(
        p.dns_error.as_deref().unwrap().contains("NXDOMAIN"),
        "{:?}",
        p.dns_error
    );
    assert_eq!(p.verdict().as_str(), "unknown");

    let p = prober.probe("silent.test").await;
    assert!(p.dns_error.is_some());
    assert_eq!(p.verdict().as_str(), "unknown");

    let p = prober.probe("not a domain").await;
    assert!(
        p.dns_error
            .as_deref()
            .unwrap()
            .starts_with("not a domain name")
    );
    // Nothing reached an SMTP server.
    assert_eq!(w.sinks[0].connections(), 0);
}

#[tokio::test]
async fn two_mx_one_without_starttls() {
    let Some(mut w) = World::new(44) else {
        return;
    };
    let opts = tls_ca(&w.ca, &["mx1.mixed.test"]);
    let good = w.sink(21, opts);
    let plain = w.sink(22, SinkOptions::new(SinkTls::None));
    // Listed out of order: the result is in preference order.
    w.mx("mixed.test", 20, "mx2.mixed.test", 22);
    w.mx("mixed.test", 10, "mx1.mixed.test", 21);
    let p = w.prober().probe("mixed.test").await;
    let hosts: Vec<_> =
        p.mx.iter()
            .map(|m| (m.host.as_str(), m.preference, m.status))
            .collect();
    assert_eq!(
        hosts,
        [
            ("mx1.mixed.test", 10, MxStatus::TlsVerified),
            ("mx2.mixed.test", 20, MxStatus::NoStarttls)
        ]
    );
    assert!(p.any_starttls());
    assert!(!p.all_failed_starttls());
    assert_eq!(p.verdict().as_str(), "starttls_verified");
    assert_eq!(w.sinks[good].connections(), 1);
    assert_eq!(w.sinks[plain].connections(), 1);

    // Self-signed first MX, plain second: every host answered, none verified.
    let Some(mut w) = World::new(45) else {
        return;
    };
    w.sink(
        21,
        SinkOptions::new(SinkTls::self_signed(&["mx1.mixed.test"])),
    );
    w.sink(22, SinkOptions::new(SinkTls::None));
    w.mx("mixed.test", 10, "mx1.mixed.test", 21);
    w.mx("mixed.test", 20, "mx2.mixed.test", 22);
    let p = w.prober().probe("mixed.test").await;
    let v = p.verdict();
    assert_eq!(v.as_str(), "starttls_unverified");
    assert!(
        v.detail().contains("mx2.mixed.test: EHLO without STARTTLS"),
        "{v}"
    );

    // One MX without STARTTLS, the other unreachable: nothing definite.
    let Some(mut w) = World::new(46) else {
        return;
    };
    w.sink(22, SinkOptions::new(SinkTls::None));
    w.mx("mixed.test", 10, "mx1.mixed.test", 99);
    w.mx("mixed.test", 20, "mx2.mixed.test", 22);
    let p = w.prober().probe("mixed.test").await;
    assert_eq!(p.verdict().as_str(), "unknown");
    assert!(!p.all_failed_starttls());
}

#[tokio::test]
async fn max_mx_and_addresses_per_host() {
    let Some(mut w) = World::new(47) else {
        return;
    };
    w.sink(21, SinkOptions::new(SinkTls::None));
    w.sink(22, SinkOptions::new(SinkTls::None));
    w.sink(23, SinkOptions::new(SinkTls::None));
    w.mx("many.test", 30, "mx3.many.test", 23);
    w.mx("many.test", 10, "mx1.many.test", 21);
    w.mx("many.test", 20, "mx2.many.test", 22);
    // mx1 has a second address where nothing listens.
    w.dns.a("mx1.many.test", &w.ip(98));
    let p = w
        .prober_with(ProberConfig {
            max_mx: 2,
            ..w.config()
        })
        .probe("many.test")
        .await;
    let seen: Vec<_> =
        p.mx.iter()
            .map(|m| (m.host.as_str(), m.address.unwrap().to_string(), m.status))
            .collect();
    assert_eq!(
        seen,
        [
            ("mx1.many.test", w.ip(21), MxStatus::NoStarttls),
            ("mx1.many.test", w.ip(98), MxStatus::Unknown),
            ("mx2.many.test", w.ip(22), MxStatus::NoStarttls),
        ]
    );
    // A host counts as known when one of its addresses answered.
    assert_eq!(p.verdict().as_str(), "no_starttls");
    assert_eq!(w.sinks[3].connections(), 0, "mx3 is beyond max_mx");

    let p = w
        .prober_with(ProberConfig {
            max_addresses_per_mx: 1,
            ..w.config()
        })
        .probe("many.test")
        .await;
    assert_eq!(p.mx.len(), 3);
    assert!(p.mx.iter().all(|m| m.status == MxStatus::NoStarttls));
}

#[tokio::test]
async fn mx_target_behind_cname() {
    let Some(mut w) = World::new(48) else {
        return;
    };
    w.sink(
        21,
        SinkOptions::new(SinkTls::self_signed(&["real.alias.test"])),
    );
    w.dns.mx("alias.test", 10, "mx.alias.test");
    w.dns.cname("mx.alias.test", "real.alias.test");
    w.dns.a("real.alias.test", &w.ip(21));
    let p = w.prober().probe("alias.test").await;
    assert_eq!(p.mx[0].host, "mx.alias.test");
    assert_eq!(p.mx[0].status, MxStatus::TlsUnverified);
    // SNI and the name check use the MX name, not the CNAME target.
    assert_eq!(p.mx[0].cert_matches_host, Some(false));
}

#[tokio::test]
async fn results_are_cached_for_ttl() {
    let Some(mut w) = World::new(49) else {
        return;
    };
    let s = w.sink(21, SinkOptions::new(SinkTls::None));
    w.mx("cache.test", 10, "mx1.cache.test", 21);
    let prober = w.prober_with(ProberConfig {
        ttl: Duration::from_millis(400),
        ..w.config()
    });
    assert!(prober.known("cache.test").is_none());
    let p = prober.probe("cache.test").await;
    let k = prober.known("CACHE.test.").expect("known after a probe");
    assert!(Arc::ptr_eq(&p, &k));
    assert_eq!(w.sinks[s].connections(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(prober.known("cache.test").is_none(), "stale after ttl");
    assert_eq!(prober.cached_domains(), 1);
}

/// The prober counts its verdicts, cache hits and misses, and its size.
#[tokio::test]
async fn probes_and_cache_are_counted_in_metrics() {
    let Some(mut w) = World::new(59) else {
        return;
    };
    w.sink(21, SinkOptions::new(SinkTls::None));
    w.mx("plain.test", 10, "mx1.plain.test", 21);
    let metrics = Arc::new(Metrics::new());
    let prober = Prober::with_observer(
        w.config(),
        dns::build_resolver(&w.dns_config()).unwrap(),
        metrics.cache_observer(tls_policyd::metrics::Cache::Prober),
    )
    .unwrap();
    assert!(prober.known("plain.test").is_none());
    prober.probe("plain.test").await;
    prober.probe("nxdomain.test").await;
    assert!(prober.known("plain.test").is_some());
    assert!(prober.known("Plain.Test.").is_some());
    let mut text = String::new();
    metrics.render(&mut text);
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_string()
    };
    assert_eq!(
        value("tls_policyd_probes_total{verdict=\"no_starttls\"}"),
        "1"
    );
    assert_eq!(value("tls_policyd_probes_total{verdict=\"unknown\"}"), "1");
    assert_eq!(value("tls_policyd_probe_duration_seconds_count"), "2");
    assert_eq!(
        value("tls_policyd_cache_requests_total{cache=\"prober\",result=\"hit\"}"),
        "2"
    );
    assert_eq!(
        value("tls_policyd_cache_requests_total{cache=\"prober\",result=\"miss\"}"),
        "1"
    );
    assert_eq!(value("tls_policyd_cache_entries{cache=\"prober\"}"), "2");
}

#[test]
fn concurrent_schedule_calls_start_one_probe() {
    let Some(mut w) = World::new(50) else {
        return;
    };
    runtime(4).block_on(async move {
        let mut opts = tls_ca(&w.ca, &["mx1.dedup.test"]);
        opts.greeting_delay = Duration::from_millis(100);
        let s = w.sink(21, opts);
        w.mx("dedup.test", 10, "mx1.dedup.test", 21);
        let prober = w.prober();
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (prober, barrier) = (prober.clone(), barrier.clone());
            let name = if i % 2 == 0 {
                "dedup.test"
            } else {
                "DEDUP.test."
            };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                prober.schedule(name)
            }));
        }
        let mut started = 0;
        for t in tasks {
            if t.await.unwrap() {
                started += 1;
            }
        }
        assert_eq!(started, 1);
        let p = wait_known(&prober, "dedup.test").await;
        assert_eq!(p.mx[0].status, MxStatus::TlsVerified);
        assert_eq!(w.sinks[s].connections(), 1);
        assert_eq!(prober.probes_started(), 1);
        // More calls while the result is fresh and min_interval not over: none.
        for _ in 0..5 {
            assert!(!prober.schedule("dedup.test"));
            assert!(prober.known_or_schedule("dedup.test").is_some());
        }
        assert_eq!(w.sinks[s].connections(), 1);
    })
}

#[tokio::test]
async fn min_interval_between_background_probes() {
    let Some(mut w) = World::new(51) else {
        return;
    };
    let s = w.sink(21, SinkOptions::new(SinkTls::None));
    w.mx("rate.test", 10, "mx1.rate.test", 21);
    let min_interval = Duration::from_millis(1500);
    let prober = w.prober_with(ProberConfig {
        ttl: Duration::from_millis(50),
        min_interval,
        ..w.config()
    });
    let first = Instant::now();
    assert!(prober.known_or_schedule("rate.test").is_none());
    wait_known(&prober, "rate.test").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Stale, but the last probe started less than min_interval ago.
    assert!(prober.known("rate.test").is_none());
    assert!(
        first.elapsed() < min_interval,
        "machine too slow for this test"
    );
    assert!(!prober.schedule("rate.test"));
    assert_eq!(w.sinks[s].connections(), 1);
    tokio::time::sleep((first + min_interval + Duration::from_millis(50)) - Instant::now()).await;
    assert!(prober.schedule("rate.test"));
    wait_known(&prober, "rate.test").await;
    assert_eq!(w.sinks[s].connections(), 2);
    // An explicit probe is not rate limited.
    prober.probe("rate.test").await;
    assert_eq!(w.sinks[s].connections(), 3);
}

#[test]
fn concurrency_bounds_open_connections() {
    let Some(mut w) = World::new(52) else {
        return;
    };
    runtime(4).block_on(async move {
        let mut opts = SinkOptions::new(SinkTls::None);
        opts.greeting_delay = Duration::from_millis(200);
        let s = w.sink(21, opts);
        let domains: Vec<String> = (0..6).map(|i| format!("d{i}.busy.test")).collect();
        for d in &domains {
            w.mx(d, 10, "mx.busy.test", 21);
        }
        let prober = w.prober_with(ProberConfig {
            concurrency: 2,
            ..w.config()
        });
        for d in &domains {
            assert!(prober.schedule(d));
        }
        for d in &domains {
            assert_eq!(
                wait_known(&prober, d).await.verdict().as_str(),
                "no_starttls"
            );
        }
        let sink = &w.sinks[s];
        assert_eq!(sink.connections(), 6);
        assert_eq!(sink.max_open_connections(), 2);
    })
}

#[test]
fn max_connections_bounds_connections_within_a_domain() {
    let Some(mut w) = World::new(57) else {
        return;
    };
    runtime(4).block_on(async move {
        let mut opts = SinkOptions::new(SinkTls::None);
        opts.greeting_delay = Duration::from_millis(150);
        let s = w.sink(21, opts);
        for (pref, host) in [
            (10, "mx1.wide.test"),
            (20, "mx2.wide.test"),
            (30, "mx3.wide.test"),
        ] {
            w.mx("wide.test", pref, host, 21);
        }
        let prober = w.prober_with(ProberConfig {
            max_connections: 1,
            ..w.config()
        });
        let p = prober.probe("wide.test").await;
        assert_eq!(p.mx.len(), 3);
        assert_eq!(p.verdict().as_str(), "no_starttls");
        assert_eq!(w.sinks[s].connections(), 3);
        assert_eq!(w.sinks[s].max_open_connections(), 1);
    })
}

#[test]
fn max_pending_drops_excess_requests() {
    let Some(mut w) = World::new(58) else {
        return;
    };
    runtime(2).block_on(async move {
        let mut opts = SinkOptions::new(SinkTls::None);
        opts.greeting_delay = Duration::from_millis(200);
        let s = w.sink(21, opts);
        for d in ["q1.test", "q2.test", "q3.test"] {
            w.mx(d, 10, "mx.q.test", 21);
        }
        let prober = w.prober_with(ProberConfig {
            concurrency: 1,
            max_pending: 2,
            ..w.config()
        });
        assert!(prober.schedule("q1.test"));
        assert!(prober.schedule("q2.test"));
        assert!(!prober.schedule("q3.test"), "queue full");
        assert_eq!(prober.pending(), 2);
        wait_known(&prober, "q1.test").await;
        wait_known(&prober, "q2.test").await;
        let until = Instant::now() + Duration::from_secs(5);
        while prober.pending() > 0 {
            assert!(Instant::now() < until);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Dropped, not remembered as tried: the next miss schedules it.
        assert!(prober.known_or_schedule("q3.test").is_none());
        wait_known(&prober, "q3.test").await;
        assert_eq!(w.sinks[s].connections(), 3);
        assert_eq!(w.sinks[s].max_open_connections(), 1);
    })
}

#[tokio::test]
async fn disabled_prober_schedules_nothing() {
    let Some(mut w) = World::new(53) else {
        return;
    };
    let s = w.sink(21, SinkOptions::new(SinkTls::None));
    w.mx("off.test", 10, "mx1.off.test", 21);
    let prober = w.prober_with(ProberConfig {
        enabled: false,
        ..w.config()
    });
    assert!(!prober.schedule("off.test"));
    assert!(prober.known_or_schedule("off.test").is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.sinks[s].connections(), 0);
    // The explicit probe still works.
    assert_eq!(
        prober.probe("off.test").await.mx[0].status,
        MxStatus::NoStarttls
    );
}

#[test]
fn schedule_outside_a_runtime_does_nothing() {
    let Some(w) = World::new(54) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prober = rt.block_on(async { w.prober() });
    assert!(!prober.schedule("example.test"));
    assert!(prober.known("example.test").is_none());
}

#[test]
fn bad_extra_ca_file_is_an_error() {
    let Some(w) = World::new(55) else {
        return;
    };
    let resolver = dns::build_resolver(&w.dns_config()).unwrap();
    let missing = w.dir.path().join("nope.pem");
    let e = Prober::new(
        ProberConfig {
            extra_ca_file: Some(missing),
            ..w.config()
        },
        resolver,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("prober.extra_ca_file") && e.contains("nope.pem"),
        "{e}"
    );
}

/// The test DNS server itself, through the library's resolver: the record
/// kinds later tests need, the AD bit, TCP, and the failure modes.
#[tokio::test]
async fn test_dns_server_answers() {
    let Some(w) = World::new(56) else {
        return;
    };
    let d = &w.dns;
    d.txt("_mta-sts.sts.test", "v=STSv1; id=20261124");
    d.add(
        "_25._tcp.mx.sts.test",
        hickory_proto::rr::RData::TLSA(hickory_proto::rr::rdata::TLSA::new(
            hickory_proto::rr::rdata::tlsa::CertUsage::DaneEe,
            hickory_proto::rr::rdata::tlsa::Selector::Spki,
            hickory_proto::rr::rdata::tlsa::Matching::Sha256,
            vec![0xab; 32],
        )),
    );
    d.set_ad("_25._tcp.mx.sts.test", true);
    d.aaaa("v6.sts.test", "::1");
    d.a("v6.sts.test", "127.0.0.1");
    // A TXT answer too large for UDP: the resolver must retry over TCP.
    for i in 0..40 {
        d.txt("big.sts.test", &format!("{i:02}{}", "x".repeat(100)));
    }
    d.behave_for(
        "half.sts.test",
        RecordType::AAAA,
        common::dns::Behaviour::ServFail,
    );
    d.a("half.sts.test", "127.0.0.2");

    let r = dns::build_resolver(&w.dns_config()).unwrap();
    assert_eq!(
        dns::lookup_txt(&r, "_mta-sts.sts.test").await.unwrap(),
        ["v=STSv1; id=20261124"]
    );
    let tlsa = dns::lookup(&r, "_25._tcp.mx.sts.test", RecordType::TLSA)
        .await
        .unwrap();
    assert_eq!(tlsa.answers().len(), 1);
    assert!(
        tlsa.message().metadata.authentic_data,
        "AD bit passed through"
    );
    let txt = dns::lookup(&r, "_mta-sts.sts.test", RecordType::TXT)
        .await
        .unwrap();
    assert!(!txt.message().metadata.authentic_data);

    let addrs = dns::lookup_addresses(&r, "v6.sts.test", 5).await.unwrap();
    assert_eq!(
        addrs,
        [
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    let half = dns::lookup_addresses(&r, "half.sts.test", 5).await.unwrap();
    assert_eq!(half.len(), 1, "one family failing is not an error");

    let big = dns::lookup_txt(&r, "big.sts.test").await.unwrap();
    assert_eq!(big.len(), 40);
    assert!(
        w.dns
            .queries()
            .iter()
            .any(|q| q.name == "big.sts.test" && q.tcp),
        "truncated over UDP, retried over TCP"
    );

    assert_eq!(
        dns::lookup_txt(&r, "nothing.sts.test").await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(
        dns::lookup_txt(&r, "v6.sts.test").await,
        Err(LookupError::NoData)
    );
    assert_eq!(dns::lookup_mx(&r, "v6.sts.test").await, Ok(MxAnswer::NoMx));
    d.servfail("sf.sts.test");
    let e = dns::lookup_mx(&r, "sf.sts.test").await.unwrap_err();
    assert!(!e.is_definite());
    assert!(e.to_string().contains("SERVFAIL"), "{e}");
}

/// A Postfix configuration directory whose main.cf holds `lines`.
fn postfix_dir(w: &World, name: &str, lines: &str) -> std::path::PathBuf {
    let dir = w.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!("compatibility_level = 3.6\n{lines}"),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn postfix_cafile_and_capath_are_trusted_and_unknown_ones_never_refuse() {
    use tls_policyd::engine::refusal::{Capability, TlsKnowledge};
    let Some(mut w) = World::new(61) else {
        return;
    };
    if common::find_tool("postconf").is_none() {
        return common::netns::skip_or_fail("postconf is not installed");
    }
    let opts = tls_ca(&w.ca, &["mx1.good.test"]);
    w.sink(21, opts);
    w.mx("good.test", 10, "mx1.good.test", 21);
    let ca = w.dir.path().join("ca.pem");
    let capath = w.dir.path().join("capath");
    std::fs::create_dir_all(&capath).unwrap();
    std::fs::copy(&ca, capath.join("test-ca.pem")).unwrap();
    std::fs::write(capath.join("README"), "not a certificate\n").unwrap();
    let cafile_dir = postfix_dir(
        &w,
        "cafile",
        &format!("smtp_tls_CAfile = {}\n", ca.display()),
    );
    let capath_dir = postfix_dir(
        &w,
        "capath",
        &format!("smtp_tls_CApath = {}\n", capath.display()),
    );
    let prober = |dir: Option<std::path::PathBuf>| {
        w.prober_with(ProberConfig {
            extra_ca_file: None,
            postfix_config_directory: dir,
            ..w.config()
        })
    };
    // The test CA only in Postfix's smtp_tls_CAfile, or in its CApath.
    for dir in [cafile_dir, capath_dir] {
        let p = prober(Some(dir.clone())).probe("good.test").await;
        assert_eq!(p.mx[0].status, MxStatus::TlsVerified, "{}", dir.display());
        assert_eq!(p.mx[0].cert_chain_valid, Some(true));
    }
    // Postfix's defaults (nothing set): the prober's own trust; the test
    // CA is unknown to both, and the certificate is definitely untrusted.
    let defaults = postfix_dir(&w, "defaults", "");
    let p = prober(Some(defaults)).probe("good.test").await;
    assert_eq!(p.mx[0].cert_chain_valid, Some(false));
    assert!(matches!(p.verdict(), TlsCapability::StarttlsUnverified(_)));

    // CA settings the prober cannot load or read: nothing is known about
    // the chain, and refusals get no knowledge from it.
    let missing = postfix_dir(&w, "missing", "smtp_tls_CAfile = /nonexistent/ca.pem\n");
    let no_config = w.dir.path().join("no-such-postfix");
    for dir in [missing, no_config] {
        let p = prober(Some(dir.clone()));
        let probe = p.probe("good.test").await;
        let m = &probe.mx[0];
        assert_eq!(m.status, MxStatus::TlsUnverified, "{}", dir.display());
        assert_eq!(m.cert_chain_valid, None);
        let why = m.cert_error.as_deref().unwrap();
        assert!(
            why.contains("the CAs Postfix trusts are not known"),
            "{why}"
        );
        p.schedule("good.test");
        wait_known(&p, "good.test").await;
        match TlsKnowledge::known(&p, "good.test") {
            Some(Capability::Unknown { detail }) => {
                assert!(detail.contains("whether Postfix trusts"), "{detail}")
            }
            other => panic!("{}: {other:?}", dir.display()),
        }
    }
}
