//! DANE detection against the in-process test DNS server, inside a
//! network namespace the test creates (only `lo`).
//!
//! `trust-ad` tests make the server play a validating resolver (it sets
//! the AD bit where the test says the data is signed); `validate` tests
//! have it sign zones with a fresh key that the resolver gets as its trust
//! anchor, and never set the AD bit. Nothing leaves the machine. Needs root
//! and `ip` (`.ci/run` runs as root); `SKIP_POSTFIX_TESTS=1` skips.
//!
//! Each test works in its own 127.0.N.0/24.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::dns::{Behaviour, TestDns};
use common::netns::Netns;
use hickory_proto::rr::RecordType;
use tls_policyd::dns::DnsConfig;
use tls_policyd::dns::secure::{DnssecMode, SecureResolver};
use tls_policyd::engine::decision::{Level, SourceKind};
use tls_policyd::engine::key::Destination;
use tls_policyd::engine::policy_file::PolicyFile;
use tls_policyd::engine::{Consulted, Engine, Source};
use tls_policyd::sources::dane::assess::{AddressState, MxState, TlsaState};
use tls_policyd::sources::dane::{DaneConfig, DaneMemoryStore, DaneSource, FailPolicy, Outcome};

const DIGEST: [u8; 32] = [0xd1; 32];

struct World {
    _ns: Netns,
    dns: TestDns,
    dir: tempfile::TempDir,
}

impl World {
    /// Join a new namespace (this test's thread, and so its current-thread
    /// runtime, stays there) and start the DNS server in it. `None` when
    /// namespace tests are skipped.
    fn new(net: u8) -> Option<World> {
        let ns = Netns::for_test("tlspd-dane", &[])?;
        ns.enter_thread()
            .unwrap_or_else(|e| panic!("join {}: {e}", ns.name()));
        Some(World {
            _ns: ns,
            dns: TestDns::start(&format!("127.0.{net}.53")),
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn dns_config(&self) -> DnsConfig {
        DnsConfig {
            nameservers: vec![self.dns.nameserver()],
            timeout: Duration::from_millis(500),
            attempts: 1,
            ..DnsConfig::default()
        }
    }

    /// `validate` mode with `anchor` (a DNSKEY line) as the trust anchor.
    fn validating_config(&self, anchor: &str) -> DnsConfig {
        let path = self.dir.path().join("anchor.key");
        std::fs::write(&path, anchor).unwrap();
        DnsConfig {
            dnssec: DnssecMode::Validate,
            trust_anchor: Some(path),
            ..self.dns_config()
        }
    }

    fn source_with(&self, dns: &DnsConfig, dane: DaneConfig) -> DaneSource {
        let resolver = Arc::new(SecureResolver::new(dns).unwrap());
        DaneSource::new(dane, resolver).unwrap()
    }

    fn source(&self) -> DaneSource {
        self.source_with(&self.dns_config(), DaneConfig::default())
    }

    /// MX `host` (preference `pref`) for `domain`, an A record, and a
    /// usable TLSA record when `tlsa`.
    fn mx(&self, domain: &str, pref: u16, host: &str, tlsa: bool) {
        self.dns.mx(domain, pref, host);
        self.dns.a(host, "192.0.2.25");
        if tlsa {
            self.dns.tlsa(&format!("_25._tcp.{host}"), 3, 1, 1, &DIGEST);
        }
    }
}

fn policy(c: &Consulted) -> (Level, bool) {
    match c {
        Consulted::Policy(d) => {
            assert_eq!(d.source, SourceKind::Dane);
            assert_eq!(&*d.policy, d.level.as_str());
            (d.level, d.temporary)
        }
        Consulted::NoPolicy(why) => panic!("no policy: {why}"),
    }
}

fn no_policy(c: &Consulted) -> String {
    match c {
        Consulted::NoPolicy(why) => why.clone(),
        Consulted::Policy(d) => panic!("policy {} ({})", d.policy, d.reason),
    }
}

fn dest(key: &str) -> Destination {
    Destination::parse(key).unwrap()
}

#[tokio::test]
async fn every_mx_with_usable_tlsa_is_dane_only() {
    let Some(w) = World::new(80) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("all.test", 10, "mx1.all.test", true);
    w.mx("all.test", 20, "mx2.all.test", true);
    let s = w.source();
    let c = s.consult_domain("all.test").await;
    assert_eq!(policy(&c), (Level::DaneOnly, false));
    let Consulted::Policy(d) = &c else {
        unreachable!()
    };
    assert!(
        d.reason.contains("every MX host of all.test"),
        "{}",
        d.reason
    );
    assert!(d.ttl > Duration::from_secs(55) && d.ttl <= Duration::from_secs(60));

    let r = s.cached("all.test").unwrap();
    assert_eq!(r.assessment.mx, MxState::Secure { ttl: 60 });
    assert_eq!(r.assessment.hosts.len(), 2);
    for h in &r.assessment.hosts {
        assert!(h.usable(), "{h:?}");
        assert_eq!(
            h.addresses,
            AddressState::Secure {
                count: 1,
                via: None
            }
        );
    }
    let lines = s.details(&dest("all.test"));
    assert!(
        lines[1].starts_with(
            "MX 10 mx1.all.test: 1 address(es), DNSSEC-validated; TLSA at _25._tcp.mx1.all.test, \
             DNSSEC-validated: 1 of 1 usable [3 1 1 d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1]"
        ),
        "{lines:?}"
    );
    assert!(
        lines.last().unwrap().starts_with("DNSSEC by trust-ad"),
        "{lines:?}"
    );

    // Every query asked for DNSSEC: DO and AD bits set.
    let qs = w.dns.queries();
    assert!(!qs.is_empty());
    assert!(qs.iter().all(|q| q.dnssec_ok && q.ad), "{qs:?}");
    // Second request: from the cache.
    s.consult_domain("all.test").await;
    assert_eq!(w.dns.query_count("all.test", RecordType::MX), 1);
    assert_eq!(s.lookups_started(), 1);
}

#[tokio::test]
async fn some_mx_with_tlsa_is_dane() {
    let Some(w) = World::new(81) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("some.test", 10, "mx1.some.test", true);
    w.mx("some.test", 20, "mx2.some.test", false);
    let s = w.source();
    assert_eq!(
        policy(&s.consult_domain("some.test").await),
        (Level::Dane, false)
    );
    let r = s.cached("some.test").unwrap();
    assert_eq!(
        r.assessment.hosts[1].tlsa,
        TlsaState::Absent {
            names: vec!["_25._tcp.mx2.some.test".into()],
            secure: true
        }
    );

    // Only unusable TLSA (PKIX usage, wrong digest length) counts as none.
    w.mx("unusable.test", 10, "mx.unusable.test", false);
    w.dns.tlsa("_25._tcp.mx.unusable.test", 1, 1, 1, &DIGEST);
    w.dns
        .tlsa("_25._tcp.mx.unusable.test", 3, 1, 1, &DIGEST[..31]);
    let why = no_policy(&s.consult_domain("unusable.test").await);
    assert!(
        why.contains("no MX host of unusable.test has usable TLSA"),
        "{why}"
    );
    let lines = s.details(&dest("unusable.test"));
    assert!(lines[1].contains("0 of 2 usable"), "{lines:?}");
}

#[tokio::test]
async fn no_tlsa_anywhere_is_no_policy() {
    let Some(w) = World::new(82) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("none.test", 10, "mx.none.test", false);
    let why = no_policy(&w.source().consult_domain("none.test").await);
    assert!(
        why.contains("no MX host of none.test has usable TLSA"),
        "{why}"
    );
}

#[tokio::test]
async fn unsigned_mx_is_no_policy_and_asks_no_tlsa() {
    let Some(w) = World::new(83) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("plain.test", 10, "mx.plain.test", true);
    w.dns.set_ad("plain.test", false);
    let s = w.source();
    let why = no_policy(&s.consult_domain("plain.test").await);
    assert!(why.contains("MX records are not DNSSEC-validated"), "{why}");
    assert_eq!(
        s.cached("plain.test").unwrap().assessment.mx,
        MxState::Insecure
    );
    assert_eq!(
        w.dns
            .query_count("_25._tcp.mx.plain.test", RecordType::TLSA),
        0
    );

    // Signed MX, unsigned addresses: TLSA is not looked for (RFC 7672
    // 2.2.2), so the host has none.
    w.mx("addr.test", 10, "mx.addr.test", true);
    w.dns.set_ad("mx.addr.test", false);
    let why = no_policy(&s.consult_domain("addr.test").await);
    assert!(
        why.contains("no MX host of addr.test has usable TLSA"),
        "{why}"
    );
    let r = s.cached("addr.test").unwrap();
    assert_eq!(
        r.assessment.hosts[0].addresses,
        AddressState::Insecure { count: 1 }
    );
    assert_eq!(r.assessment.hosts[0].tlsa, TlsaState::NotLooked);
    assert_eq!(
        w.dns.query_count("_25._tcp.mx.addr.test", RecordType::TLSA),
        0
    );

    // Signed MX, unsigned TLSA records.
    w.mx("tlsa.test", 10, "mx.tlsa.test", true);
    w.dns.set_ad("_25._tcp.mx.tlsa.test", false);
    no_policy(&s.consult_domain("tlsa.test").await);
    assert!(matches!(
        s.cached("tlsa.test").unwrap().assessment.hosts[0].tlsa,
        TlsaState::Insecure { .. }
    ));
}

#[tokio::test]
async fn null_mx_and_missing_domains_are_no_policy() {
    let Some(w) = World::new(84) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.dns.null_mx("null.test");
    let s = w.source();
    let why = no_policy(&s.consult_domain("null.test").await);
    assert!(why.contains("null MX"), "{why}");
    assert_eq!(
        s.cached("null.test").unwrap().assessment.mx,
        MxState::NullMx
    );
    let why = no_policy(&s.consult_domain("gone.test").await);
    assert!(why.contains("gone.test does not exist"), "{why}");
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_itself() {
    let Some(w) = World::new(85) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.dns.a("bare.test", "192.0.2.1");
    w.dns.tlsa("_25._tcp.bare.test", 3, 1, 1, &DIGEST);
    let s = w.source();
    assert_eq!(
        policy(&s.consult_domain("bare.test").await),
        (Level::DaneOnly, false)
    );
    let r = s.cached("bare.test").unwrap();
    assert!(matches!(r.assessment.mx, MxState::Implicit { .. }));
    assert_eq!(r.assessment.hosts[0].preference, None);
    assert!(s.details(&dest("bare.test"))[1].starts_with("implicit MX bare.test"));

    // An unvalidated "no MX" is not an implicit MX.
    w.dns.a("bare2.test", "192.0.2.1");
    w.dns.set_ad("bare2.test", false);
    let why = no_policy(&s.consult_domain("bare2.test").await);
    assert!(
        why.contains("answer without MX records is not DNSSEC-validated"),
        "{why}"
    );
}

#[tokio::test]
async fn cnamed_mx_host_tlsa_at_expanded_name_then_original() {
    let Some(w) = World::new(86) else {
        return;
    };
    w.dns.set_ad_default(true);
    // mx.alias.test -> host.provider.test, TLSA at the expanded name.
    w.dns.mx("alias.test", 10, "mx.alias.test");
    w.dns.cname("mx.alias.test", "host.provider.test");
    w.dns.a("host.provider.test", "192.0.2.7");
    w.dns.tlsa("_25._tcp.host.provider.test", 3, 1, 1, &DIGEST);
    // mx.orig.test -> host2.provider.test, TLSA only at the original name.
    w.dns.mx("orig.test", 10, "mx.orig.test");
    w.dns.cname("mx.orig.test", "host2.provider.test");
    w.dns.a("host2.provider.test", "192.0.2.8");
    w.dns.tlsa("_25._tcp.mx.orig.test", 3, 1, 1, &DIGEST);
    let s = w.source();

    assert_eq!(
        policy(&s.consult_domain("alias.test").await),
        (Level::DaneOnly, false)
    );
    let h = &s.cached("alias.test").unwrap().assessment.hosts[0];
    assert_eq!(
        h.addresses,
        AddressState::Secure {
            count: 1,
            via: Some("host.provider.test".into())
        }
    );
    assert!(
        matches!(&h.tlsa, TlsaState::Secure { name, .. } if name == "_25._tcp.host.provider.test")
    );
    assert_eq!(
        w.dns
            .query_count("_25._tcp.mx.alias.test", RecordType::TLSA),
        0
    );

    assert_eq!(
        policy(&s.consult_domain("orig.test").await),
        (Level::DaneOnly, false)
    );
    let h = &s.cached("orig.test").unwrap().assessment.hosts[0];
    assert!(matches!(&h.tlsa, TlsaState::Secure { name, .. } if name == "_25._tcp.mx.orig.test"));
    assert_eq!(
        w.dns
            .query_count("_25._tcp.host2.provider.test", RecordType::TLSA),
        1
    );
    let line = &s.details(&dest("orig.test"))[1];
    assert!(line.contains("CNAME to host2.provider.test"), "{line}");
}

#[tokio::test]
async fn servfail_bogus_and_timeouts_are_never_no_dane() {
    let Some(w) = World::new(87) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("sf.test", 10, "mx.sf.test", true);
    w.dns.servfail("sf.test");
    w.mx("bogus.test", 10, "mx.bogus.test", true);
    w.dns.behave("_25._tcp.mx.bogus.test", Behaviour::Bogus);
    w.mx("slow.test", 10, "mx.slow.test", true);
    w.dns.no_answer("_25._tcp.mx.slow.test");
    let s = w.source();

    for (domain, want) in [
        ("sf.test", "SERVFAIL"),
        (
            "bogus.test",
            "TLSA _25._tcp.mx.bogus.test bogus: 127.0.87.53:",
        ),
        ("slow.test", "no answer within"),
    ] {
        let why = no_policy(&s.consult_domain(domain).await);
        assert!(why.contains(want), "{domain}: {why}");
        // defer-known: never had DANE here, so the next source decides.
        assert!(why.contains("had no DANE policy before"), "{domain}: {why}");
        assert!(matches!(
            s.cached(domain).unwrap().assessment.outcome,
            Outcome::Failed { .. }
        ));
    }
    let r = s.cached("bogus.test").unwrap();
    assert!(matches!(
        r.assessment.hosts[0].tlsa,
        TlsaState::Bogus { .. }
    ));
    assert_eq!(r.ttl, Duration::from_secs(30), "failure_ttl");

    // dane.on_failure = "defer": every failure is temporary.
    let strict = w.source_with(
        &w.dns_config(),
        DaneConfig {
            on_failure: FailPolicy::Defer,
            ..DaneConfig::default()
        },
    );
    assert_eq!(
        policy(&strict.consult_domain("sf.test").await),
        (Level::DaneOnly, true)
    );

    // A failure next to a host with usable TLSA: dane, not a failure.
    w.mx("mixed.test", 10, "mx1.mixed.test", true);
    w.mx("mixed.test", 20, "mx2.mixed.test", true);
    w.dns.no_answer("_25._tcp.mx2.mixed.test");
    let c = s.consult_domain("mixed.test").await;
    assert_eq!(policy(&c), (Level::Dane, false));
}

#[tokio::test]
async fn a_domain_that_had_dane_defers_when_lookups_fail() {
    let Some(w) = World::new(88) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("had.test", 10, "mx.had.test", true);
    let dane = DaneConfig {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(1),
        failure_ttl: Duration::from_secs(1),
        ..DaneConfig::default()
    };
    let store = Arc::new(DaneMemoryStore::default());
    let s = w
        .source_with(&w.dns_config(), dane.clone())
        .with_store(store.clone());
    assert_eq!(
        policy(&s.consult_domain("had.test").await),
        (Level::DaneOnly, false)
    );
    assert_eq!(store.len(), 1, "saved to the store");

    w.dns.servfail("had.test");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = s.consult_domain("had.test").await;
    assert_eq!(policy(&c), (Level::DaneOnly, true));
    let Consulted::Policy(d) = &c else {
        unreachable!()
    };
    assert!(
        d.reason
            .starts_with("had.test had DANE (dane-only) and its DANE lookup failed"),
        "{}",
        d.reason
    );
    assert!(
        s.details(&dest("had.test"))
            .iter()
            .any(|l| l.starts_with("last DANE policy seen")),
    );

    // A new source with the same store (a restart) knows the history.
    let s2 = w
        .source_with(&w.dns_config(), dane)
        .with_store(store.clone());
    assert_eq!(
        policy(&s2.consult_domain("had.test").await),
        (Level::DaneOnly, true)
    );
    assert!(store.get("had.test").unwrap().last_dane.is_some());

    // The domain drops DANE (validated): history is cleared.
    w.dns.remove("had.test");
    w.dns.mx("had.test", 10, "mx.had.test");
    w.dns.remove("_25._tcp.mx.had.test");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    no_policy(&s2.consult_domain("had.test").await);
    assert!(store.get("had.test").unwrap().last_dane.is_none());
}

#[tokio::test]
async fn concurrent_requests_share_one_lookup() {
    let Some(w) = World::new(89) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("busy.test", 10, "mx.busy.test", true);
    let s = w.source();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let s = s.clone();
        set.spawn(async move { s.consult_domain("busy.test").await });
    }
    while let Some(c) = set.join_next().await {
        assert_eq!(policy(&c.unwrap()), (Level::DaneOnly, false));
    }
    assert_eq!(s.lookups_started(), 1);
    assert_eq!(w.dns.query_count("busy.test", RecordType::MX), 1);
    assert_eq!(
        w.dns.query_count("_25._tcp.mx.busy.test", RecordType::TLSA),
        1
    );
}

#[tokio::test]
async fn results_near_their_end_refresh_in_the_background() {
    let Some(w) = World::new(90) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("fresh.test", 10, "mx.fresh.test", true);
    let s = w.source_with(
        &w.dns_config(),
        DaneConfig {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(2),
            ..DaneConfig::default()
        },
    );
    assert_eq!(
        policy(&s.consult_domain("fresh.test").await),
        (Level::DaneOnly, false)
    );
    let first = s.cached("fresh.test").unwrap().checked_at;
    // The domain drops its TLSA records; with more than a quarter of the
    // TTL left, the cached answer stands and nothing is looked up.
    w.dns.remove("_25._tcp.mx.fresh.test");
    assert_eq!(
        policy(&s.consult_domain("fresh.test").await),
        (Level::DaneOnly, false)
    );
    assert_eq!(s.lookups_started(), 1);
    // In the last quarter: the cached answer, and a refresh behind it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        policy(&s.consult_domain("fresh.test").await),
        (Level::DaneOnly, false)
    );
    assert_eq!(s.lookups_started(), 2);
    for _ in 0..200 {
        if s.cached("fresh.test").unwrap().checked_at != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    no_policy(&s.consult_domain("fresh.test").await);
    assert_eq!(s.lookups_started(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_valid_result() {
    let Some(w) = World::new(91) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("keep.test", 10, "mx.keep.test", true);
    let s = w.source_with(
        &w.dns_config(),
        DaneConfig {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(2),
            ..DaneConfig::default()
        },
    );
    s.consult_domain("keep.test").await;
    w.dns.servfail("keep.test");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        policy(&s.consult_domain("keep.test").await),
        (Level::DaneOnly, false)
    );
    for _ in 0..200 {
        if w.dns.query_count("keep.test", RecordType::MX) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = s.cached("keep.test").unwrap();
    assert!(
        matches!(r.assessment.outcome, Outcome::Policy { .. }),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_lookup_slower_than_lookup_timeout_fails() {
    let Some(w) = World::new(92) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("stall.test", 10, "mx.stall.test", true);
    w.dns.no_answer("stall.test");
    let dns = DnsConfig {
        timeout: Duration::from_secs(5),
        ..w.dns_config()
    };
    let s = w.source_with(
        &dns,
        DaneConfig {
            lookup_timeout: Duration::from_millis(300),
            ..DaneConfig::default()
        },
    );
    let why = no_policy(&s.consult_domain("stall.test").await);
    assert!(
        why.contains("did not finish within 300ms (dane.lookup_timeout)"),
        "{why}"
    );
}

#[tokio::test]
async fn more_mx_hosts_than_max_mx_is_at_most_dane() {
    let Some(w) = World::new(93) else {
        return;
    };
    w.dns.set_ad_default(true);
    for i in 1..=3 {
        w.mx("many.test", i * 10, &format!("mx{i}.many.test"), true);
    }
    let s = w.source_with(
        &w.dns_config(),
        DaneConfig {
            max_mx: 2,
            ..DaneConfig::default()
        },
    );
    assert_eq!(
        policy(&s.consult_domain("many.test").await),
        (Level::Dane, false)
    );
    let r = s.cached("many.test").unwrap();
    assert_eq!((r.assessment.hosts.len(), r.assessment.skipped), (2, 1));
    assert_eq!(
        w.dns
            .query_count("_25._tcp.mx3.many.test", RecordType::TLSA),
        0
    );
}

/// A signed zone `dane.test` with an unsigned child `plain.dane.test`.
fn signed_world(net: u8) -> Option<(World, String)> {
    let w = World::new(net)?;
    let anchor = w.dns.sign_zone("dane.test");
    w.mx("all.dane.test", 10, "mx1.all.dane.test", true);
    w.mx("all.dane.test", 20, "mx2.all.dane.test", true);
    w.mx("some.dane.test", 10, "mx1.some.dane.test", true);
    w.mx("some.dane.test", 20, "mx2.some.dane.test", false);
    w.dns.insecure_delegation("plain.dane.test");
    w.mx("plain.dane.test", 10, "mx.plain.dane.test", true);
    w.mx("bogus.dane.test", 10, "mx.bogus.dane.test", true);
    w.dns.break_signatures("_25._tcp.mx.bogus.dane.test");
    Some((w, anchor))
}

#[tokio::test]
async fn validate_mode_checks_signatures_itself() {
    let Some((w, anchor)) = signed_world(94) else {
        return;
    };
    // The server never sets AD: validation happens in process.
    let s = w.source_with(&w.validating_config(&anchor), DaneConfig::default());
    assert_eq!(
        policy(&s.consult_domain("all.dane.test").await),
        (Level::DaneOnly, false)
    );
    assert!(
        s.details(&dest("all.dane.test"))
            .last()
            .unwrap()
            .starts_with("DNSSEC by validate")
    );
    assert_eq!(
        policy(&s.consult_domain("some.dane.test").await),
        (Level::Dane, false)
    );
    // The validated NSEC denial of mx2's TLSA.
    assert_eq!(
        s.cached("some.dane.test").unwrap().assessment.hosts[1].tlsa,
        TlsaState::Absent {
            names: vec!["_25._tcp.mx2.some.dane.test".into()],
            secure: true
        }
    );
    // The insecure delegation: TLSA records there count for nothing.
    let why = no_policy(&s.consult_domain("plain.dane.test").await);
    assert!(why.contains("MX records are not DNSSEC-validated"), "{why}");
    // Broken signatures: bogus, never "no TLSA".
    let why = no_policy(&s.consult_domain("bogus.dane.test").await);
    assert!(why.contains("does not validate"), "{why}");
    assert!(matches!(
        s.cached("bogus.dane.test").unwrap().assessment.hosts[0].tlsa,
        TlsaState::Bogus { .. }
    ));
}

#[tokio::test]
async fn validate_mode_with_the_wrong_anchor_is_bogus() {
    let Some((w, _)) = signed_world(95) else {
        return;
    };
    let other = TestDns::start("127.0.95.54");
    let wrong = other.sign_zone("dane.test");
    let s = w.source_with(&w.validating_config(&wrong), DaneConfig::default());
    let why = no_policy(&s.consult_domain("all.dane.test").await);
    assert!(why.contains("does not validate"), "{why}");
}

#[tokio::test]
async fn trust_ad_mode_ignores_signatures_without_the_ad_bit() {
    let Some((w, _)) = signed_world(96) else {
        return;
    };
    let why = no_policy(&w.source().consult_domain("all.dane.test").await);
    assert!(why.contains("not DNSSEC-validated"), "{why}");
}

#[test]
fn a_missing_trust_anchor_file_is_an_error() {
    let c = DnsConfig {
        nameservers: vec!["127.0.0.1:53".into()],
        dnssec: DnssecMode::Validate,
        trust_anchor: Some(Path::new("/nonexistent/anchor.key").into()),
        ..DnsConfig::default()
    };
    let e = SecureResolver::new(&c).unwrap_err().to_string();
    assert!(
        e.starts_with("dns.trust_anchor: /nonexistent/anchor.key"),
        "{e}"
    );
}

#[tokio::test]
async fn precedence_static_then_dane_then_default() {
    let Some(w) = World::new(97) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("dane.test", 10, "mx.dane.test", true);
    let s = Arc::new(w.source());
    let policy_file = PolicyFile::parse(
        "[[rule]]\ndomains = [\"bank.test\"]\ntls = \"forced\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    w.mx("bank.test", 10, "mx.bank.test", true);
    let e = Engine::with_sources(policy_file, vec![s.clone() as Arc<dyn Source>]);

    let d = e.decide(&dest("bank.test")).await;
    assert_eq!((d.source, d.level), (SourceKind::Static, Level::Encrypt));
    assert_eq!(
        w.dns.query_count("bank.test", RecordType::MX),
        0,
        "static first"
    );
    let d = e.decide(&dest("dane.test")).await;
    assert_eq!((d.source, d.level), (SourceKind::Dane, Level::DaneOnly));
    let d = e.decide(&dest("other.test")).await;
    assert_eq!(d.source, SourceKind::Default);
    // Parent and next-hop keys never start a lookup.
    for key in [".dane.test", "[mx.dane.test]:25"] {
        e.decide(&dest(key)).await;
    }
    assert_eq!(w.dns.query_count("dane.test", RecordType::MX), 1);

    let x = e.explain("dane.test").await;
    assert_eq!(x.steps[1].source, SourceKind::Dane);
    assert!(x.steps[1].applied);
    assert!(
        x.steps[1].detail.starts_with("policy: every MX host"),
        "{}",
        x.steps[1].detail
    );
    assert!(
        x.steps[1]
            .details
            .iter()
            .any(|l| l.contains("TLSA at _25._tcp.mx.dane.test")),
        "{:?}",
        x.steps[1].details
    );
}

#[tokio::test]
async fn large_tlsa_answers_come_over_tcp() {
    let Some(w) = World::new(98) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("big.test", 10, "mx.big.test", false);
    for i in 0..30u8 {
        w.dns.tlsa("_25._tcp.mx.big.test", 3, 1, 2, &[i; 64]);
    }
    let s = w.source();
    assert_eq!(
        policy(&s.consult_domain("big.test").await),
        (Level::DaneOnly, false)
    );
    assert!(
        w.dns
            .queries()
            .iter()
            .any(|q| q.name == "_25._tcp.mx.big.test" && q.tcp),
        "truncated over UDP, asked again over TCP"
    );
    let r = s.cached("big.test").unwrap();
    let TlsaState::Secure {
        records,
        total,
        usable,
        ..
    } = &r.assessment.hosts[0].tlsa
    else {
        panic!("{:?}", r.assessment.hosts[0].tlsa)
    };
    assert_eq!((*total, *usable), (30, 30));
    assert_eq!(
        records.len(),
        tls_policyd::sources::dane::assess::MAX_TLSA_SHOWN
    );
    let line = &s.details(&dest("big.test"))[1];
    assert!(line.ends_with(", and 22 more]"), "{line}");
}

#[tokio::test]
async fn dane_history_survives_a_restart_in_the_cache_file() {
    use tls_policyd::store::{Kind, Store};
    let Some(w) = World::new(99) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("kept.test", 10, "mx.kept.test", true);
    let path = w.dir.path().join("cache.sqlite");
    {
        let store = Arc::new(Store::open(&path).unwrap());
        let s = w.source().with_store(store.clone());
        assert_eq!(
            policy(&s.consult_domain("kept.test").await),
            (Level::DaneOnly, false)
        );
        store.close();
        let (rows, skipped) = store.load(Kind::Dane).unwrap();
        assert_eq!((rows.len(), skipped), (1, 0));
        assert_eq!(rows[0].domain, "kept.test");
        // Kept for the DANE history (30 days), beyond the result's TTL.
        let keep = rows[0]
            .expires_at
            .duration_since(rows[0].fetched_at)
            .unwrap();
        assert_eq!(keep, Duration::from_secs(30 * 86_400));
    }
    // The new process: the result is there before any lookup.
    let store = Arc::new(Store::open(&path).unwrap());
    let s = w.source().with_store(store);
    assert_eq!(s.cached_domains(), 1);
    assert_eq!(
        policy(&s.consult_domain("kept.test").await),
        (Level::DaneOnly, false)
    );
    assert_eq!(s.lookups_started(), 0, "answered from the stored result");
}

#[tokio::test]
async fn expired_rows_leave_the_cache_file_with_dane_alone() {
    use tls_policyd::store::{Kind, Store};
    let Some(w) = World::new(100) else {
        return;
    };
    w.dns.set_ad_default(true);
    w.mx("brief.test", 10, "mx.brief.test", true);
    let path = w.dir.path().join("cache.sqlite");
    let store = Arc::new(Store::open(&path).unwrap());
    let dane = DaneConfig {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(1),
        remember: Duration::from_secs(1),
        ..DaneConfig::default()
    };
    let s = w
        .source_with(&w.dns_config(), dane)
        .with_store(store.clone());
    assert_eq!(
        policy(&s.consult_domain("brief.test").await),
        (Level::DaneOnly, false)
    );
    let rows = || {
        // A read-only look at what the writer has written so far.
        let (rows, _) = Store::open(&path).unwrap().load(Kind::Dane).unwrap();
        rows.len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rows() == 0 {
        assert!(std::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the row's keep-until: the maintenance round removes it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(rows(), 1, "nothing removes rows without maintenance");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(s.clone().maintain_store(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rows() != 0 {
        assert!(std::time::Instant::now() < deadline, "expired row kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    store.close();
}
