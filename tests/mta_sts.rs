//! The MTA-STS source against a real DNS server and a real HTTPS server
//! (test CA) started here, inside a network namespace with only `lo`: the
//! policy hosts listen on port 443 as on the Internet, and nothing leaves
//! the machine. Needs root (see `common::netns`).

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{Behaviour, TestDns};
use common::https::{Cert, HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::smtp::TestCa;
use hickory_proto::rr::RecordType;
use tls_policyd::dns::{self, DnsConfig};
use tls_policyd::engine::decision::{Decision, Level, SourceKind};
use tls_policyd::engine::key::Destination;
use tls_policyd::engine::policy_file::PolicyFile;
use tls_policyd::engine::{Consulted, Engine, Source};
use tls_policyd::sources::mta_sts::policy::MAX_POLICY_LEN;
use tls_policyd::sources::mta_sts::{CacheState, MtaSts, MtaStsConfig, StsPolicyFailure};
use tls_policyd::store::{Db, Kind};

const DNS_IP: &str = "127.0.0.53";

fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut s = format!("version: STSv1\nmode: {mode}\n");
    for m in mx {
        s.push_str(&format!("mx: {m}\n"));
    }
    s.push_str(&format!("max_age: {max_age}\n"));
    s
}

fn enforce(mx: &[&str]) -> String {
    policy("enforce", mx, 604_800)
}

/// A test's world: DNS, the HTTPS server for every policy host, the test
/// CA (its PEM in the temporary directory) and the cache file's directory.
struct World {
    dns: TestDns,
    https: TestHttps,
    dir: tempfile::TempDir,
    /// Every resolver handed out, so that a change to the DNS table is
    /// seen at once (TTL 0 is not always "no caching").
    resolvers: std::sync::Mutex<Vec<dns::Resolver>>,
}

impl World {
    fn new() -> World {
        let dns = TestDns::start(DNS_IP);
        let ca = Arc::new(TestCa::new());
        let dir = tempfile::tempdir().unwrap();
        ca.write_pem(&dir.path().join("ca.pem"));
        let https = TestHttps::start(HTTPS_IP, 443, ca);
        World {
            dns,
            https,
            dir,
            resolvers: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn host(domain: &str) -> String {
        format!("mta-sts.{domain}")
    }

    /// TXT record `id` and the policy at the policy host.
    fn publish(&self, domain: &str, id: &str, policy: &str) {
        self.set_record(domain, &format!("v=STSv1; id={id};"));
        self.dns.a(&World::host(domain), HTTPS_IP);
        self.https
            .site(&World::host(domain), Response::policy(policy));
    }

    /// Replace the TXT record.
    fn set_record(&self, domain: &str, text: &str) {
        let name = format!("_mta-sts.{domain}");
        self.dns.remove(&name);
        self.dns.txt_ttl(&name, 0, text);
        self.dns_changed();
    }

    /// Make the resolvers forget what they cached.
    fn dns_changed(&self) {
        for r in self.resolvers.lock().unwrap().iter() {
            r.clear_cache();
        }
    }

    fn fetches(&self, domain: &str) -> usize {
        self.https.requests(&World::host(domain))
    }

    fn cache_file(&self) -> PathBuf {
        self.dir.path().join("cache.sqlite")
    }

    fn config(&self) -> MtaStsConfig {
        MtaStsConfig {
            cache_file: self.cache_file(),
            extra_ca_file: Some(self.dir.path().join("ca.pem")),
            lookup_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(5),
            ..MtaStsConfig::default()
        }
    }

    fn source_with(&self, config: &MtaStsConfig) -> MtaSts {
        config.validate().unwrap();
        let resolver = dns::build_resolver(&DnsConfig {
            nameservers: vec![self.dns.nameserver()],
            timeout: Duration::from_secs(1),
            attempts: 1,
            ..DnsConfig::default()
        })
        .unwrap();
        self.resolvers.lock().unwrap().push(resolver.clone());
        let store = Arc::new(tls_policyd::store::Store::open(&config.cache_file).unwrap());
        MtaSts::open(
            config,
            resolver,
            store,
            Arc::new(tls_policyd::cache::NoObserver),
        )
        .unwrap()
    }

    fn source(&self) -> MtaSts {
        self.source_with(&self.config())
    }
}

/// Run `f` on a tokio runtime inside a new network namespace.
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let Some(ns) = Netns::for_test("sts", &[]) else {
        return;
    };
    ns.run_in(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    });
}

#[track_caller]
fn decided(c: &Consulted) -> &Decision {
    match c {
        Consulted::Policy(d) => d,
        Consulted::NoPolicy(why) => panic!("no policy: {why}"),
    }
}

#[track_caller]
fn no_policy(c: &Consulted) -> &str {
    match c {
        Consulted::Policy(d) => panic!("a policy: {d:?}"),
        Consulted::NoPolicy(why) => why,
    }
}

fn id_of(d: &Decision) -> &str {
    d.published
        .as_ref()
        .and_then(|p| p.policy_id.as_deref())
        .expect("a policy id")
}

/// Poll until `f` holds (the waits end as soon as it does).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn enforce_testing_and_none() {
    in_netns(|| async {
        let w = World::new();
        w.publish(
            "enforce.test",
            "e1",
            &enforce(&["mx1.enforce.test", "*.backup.enforce.test"]),
        );
        w.publish(
            "testing.test",
            "t1",
            &policy("testing", &["mx.testing.test"], 86400),
        );
        w.publish("none.test", "n1", &policy("none", &[], 86400));
        let sts = w.source();

        let a = sts.lookup("enforce.test").await;
        let d = decided(&a);
        assert_eq!(d.level, Level::Secure);
        assert_eq!(d.source, SourceKind::MtaSts);
        assert_eq!(
            &*d.policy,
            "secure match=mx1.enforce.test:.backup.enforce.test servername=hostname"
        );
        assert_eq!(id_of(d), "e1");
        assert_eq!(d.published.as_ref().unwrap().mode, Some("enforce"));
        assert!(
            d.reason.contains("MTA-STS policy e1 (enforce"),
            "{}",
            d.reason
        );

        let a = sts.lookup("testing.test").await;
        let d = decided(&a);
        assert_eq!((d.level, &*d.policy), (Level::May, "may"));
        assert_eq!(d.published.as_ref().unwrap().mode, Some("testing"));
        assert!(d.reason.contains("testing mode"), "{}", d.reason);

        let why = no_policy(&sts.lookup("none.test").await).to_string();
        assert!(why.contains("mode none"), "{why}");

        // strict_testing makes testing enforce, on reload, for cached
        // policies too (no new fetch).
        let mut strict = w.config();
        strict.strict_testing = true;
        sts.reconfigure(&strict).unwrap();
        let a = sts.lookup("testing.test").await;
        let d = decided(&a);
        assert_eq!(
            &*d.policy,
            "secure match=mx.testing.test servername=hostname"
        );
        assert!(d.reason.contains("strict_testing"), "{}", d.reason);
        assert_eq!(w.fetches("testing.test"), 1);

        // Postfix older than 3.4: no servername; 3.10 with tlsrpt: the
        // TLSRPT attributes.
        let mut old = w.config();
        old.postfix_version = "3.3".into();
        sts.reconfigure(&old).unwrap();
        assert_eq!(
            &*decided(&sts.lookup("enforce.test").await).policy,
            "secure match=mx1.enforce.test:.backup.enforce.test"
        );
        let mut rpt = w.config();
        rpt.postfix_version = "3.10".into();
        rpt.tlsrpt = true;
        sts.reconfigure(&rpt).unwrap();
        let a = sts.lookup("enforce.test").await;
        let p = &*decided(&a).policy;
        assert!(
            p.starts_with(
                "secure match=mx1.enforce.test:.backup.enforce.test servername=hostname \
                 policy_type=sts policy_domain=enforce.test \
                 mx_host_pattern=mx1.enforce.test mx_host_pattern=*.backup.enforce.test \
                 { policy_string = version: STSv1 }"
            ),
            "{p}"
        );
        assert_eq!(w.fetches("enforce.test"), 1);
    });
}

#[test]
fn no_record_is_no_policy_and_remembered() {
    in_netns(|| async {
        let w = World::new();
        let sts = w.source();
        let why = no_policy(&sts.lookup("plain.test").await).to_string();
        assert!(why.contains("does not exist"), "{why}");
        // Remembered: the second lookup asks DNS nothing.
        let asked = w.dns.query_count("_mta-sts.plain.test", RecordType::TXT);
        no_policy(&sts.lookup("plain.test").await);
        assert_eq!(
            w.dns.query_count("_mta-sts.plain.test", RecordType::TXT),
            asked
        );

        // A record published meanwhile is seen once negative_ttl passed.
        let mut short = w.config();
        short.negative_ttl = Duration::from_secs(1);
        let sts = w.source_with(&short);
        no_policy(&sts.lookup("late.test").await);
        w.publish("late.test", "l1", &enforce(&["mx.late.test"]));
        no_policy(&sts.lookup("late.test").await);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(id_of(decided(&sts.lookup("late.test").await)), "l1");
    });
}

#[test]
fn unchanged_id_is_not_fetched_again_and_a_new_id_is() {
    in_netns(|| async {
        let w = World::new();
        w.publish("ids.test", "v1", &enforce(&["mx1.ids.test"]));
        let sts = w.source();
        assert_eq!(id_of(decided(&sts.lookup("ids.test").await)), "v1");
        assert_eq!(w.fetches("ids.test"), 1);

        // Same id: the TXT record is looked at, the policy is not fetched.
        let txt_before = w.dns.query_count("_mta-sts.ids.test", RecordType::TXT);
        assert_eq!(id_of(decided(&sts.refresh("ids.test", false).await)), "v1");
        assert!(w.dns.query_count("_mta-sts.ids.test", RecordType::TXT) > txt_before);
        assert_eq!(w.fetches("ids.test"), 1);

        // A new id: the new policy is fetched and applies.
        w.https.respond(
            "mta-sts.ids.test",
            Response::policy(&enforce(&["mx2.ids.test"])),
        );
        w.set_record("ids.test", "v=STSv1; id=v2;");
        // Lookups answer from the cache until the check is due.
        assert_eq!(id_of(decided(&sts.lookup("ids.test").await)), "v1");
        let a = sts.refresh("ids.test", false).await;
        let d = decided(&a);
        assert_eq!(id_of(d), "v2");
        assert_eq!(&*d.policy, "secure match=mx2.ids.test servername=hostname");
        assert_eq!(w.fetches("ids.test"), 2);
        assert_eq!(id_of(decided(&sts.lookup("ids.test").await)), "v2");
        // The store has the new one.
        sts.store().unwrap().flush();
        let row = Db::open_read_only(&w.cache_file())
            .unwrap()
            .get(Kind::MtaSts, "ids.test")
            .unwrap()
            .unwrap();
        assert!(row.payload.contains("\"id\":\"v2\""), "{}", row.payload);
    });
}

#[test]
fn lookups_notice_a_new_id_after_check_interval() {
    in_netns(|| async {
        let w = World::new();
        w.publish("check.test", "c1", &enforce(&["mx1.check.test"]));
        let mut c = w.config();
        c.check_interval = Duration::from_secs(1);
        let sts = w.source_with(&c);
        assert_eq!(id_of(decided(&sts.lookup("check.test").await)), "c1");
        w.https.respond(
            "mta-sts.check.test",
            Response::policy(&enforce(&["mx2.check.test"])),
        );
        w.set_record("check.test", "v=STSv1; id=c2;");
        let deadline = Instant::now() + common::WAIT;
        loop {
            // Answered from the cache at once; the check runs behind.
            let a = sts.lookup("check.test").await;
            if id_of(decided(&a)) == "c2" {
                break;
            }
            assert!(Instant::now() < deadline, "new policy id never seen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(w.fetches("check.test"), 2);
    });
}

#[test]
fn removed_record_and_dead_policy_host_keep_the_cached_policy() {
    in_netns(|| async {
        let w = World::new();
        w.publish("keep.test", "k1", &enforce(&["mx.keep.test"]));
        let sts = w.source();
        decided(&sts.lookup("keep.test").await);

        // The downgrade: the TXT record is gone (an attacker strips it).
        w.dns.remove("_mta-sts.keep.test");
        w.dns_changed();
        let a = sts.refresh("keep.test", false).await;
        assert_eq!(
            &*decided(&a).policy,
            "secure match=mx.keep.test servername=hostname"
        );
        // A proactive refresh does not fetch without a record either.
        decided(&sts.refresh("keep.test", true).await);
        assert_eq!(w.fetches("keep.test"), 1);

        // The record is back with a new id but the policy host is down.
        w.set_record("keep.test", "v=STSv1; id=k2;");
        w.https.remove("mta-sts.keep.test");
        let a = sts.refresh("keep.test", false).await;
        assert_eq!(id_of(decided(&a)), "k1");
        // ... or serves garbage.
        w.https
            .site("mta-sts.keep.test", Response::policy("<html>oops</html>"));
        assert_eq!(id_of(decided(&sts.refresh("keep.test", false).await)), "k1");
        assert_eq!(w.fetches("keep.test"), 2, "the new id was tried");
        assert_eq!(id_of(decided(&sts.lookup("keep.test").await)), "k1");

        // DNS fails outright (last: the resolver then rests the server).
        w.dns.behave("_mta-sts.keep.test", Behaviour::ServFail);
        w.dns_changed();
        assert_eq!(id_of(decided(&sts.refresh("keep.test", true).await)), "k1");
        assert_eq!(w.fetches("keep.test"), 2);
    });
}

/// Changes one policy host for a failure case.
type Setup = Box<dyn Fn(&World, &str)>;

#[test]
fn fetch_failures_give_no_policy_with_the_reason() {
    in_netns(|| async {
        let w = World::new();
        let cases: Vec<(&str, Setup, &str)> = vec![
            (
                "down.test",
                Box::new(|w, h| {
                    w.https.remove(h);
                }),
                "TLS",
            ),
            (
                "refused.test",
                Box::new(|w, h| {
                    w.dns.remove(h);
                    w.dns.a(h, "127.0.0.45");
                }),
                "cannot connect to the policy host: 127.0.0.45:443",
            ),
            (
                "redirect.test",
                Box::new(|w, h| {
                    w.https.respond(
                        h,
                        Response::status(301).header(
                            "Location",
                            "https://mta-sts.target.test/.well-known/mta-sts.txt",
                        ),
                    );
                }),
                "redirect (301 to \"https://mta-sts.target.test/.well-known/mta-sts.txt\")",
            ),
            (
                "status.test",
                Box::new(|w, h| {
                    w.https.respond(h, Response::status(404));
                }),
                "HTTP status 404",
            ),
            (
                "html.test",
                Box::new(|w, h| {
                    w.https.respond(
                        h,
                        Response::policy(&enforce(&["mx.html.test"]))
                            .header("Content-Type", "text/html"),
                    );
                }),
                "media type \"text/html\", not text/plain",
            ),
            (
                "notype.test",
                Box::new(|w, h| {
                    let mut r = Response::policy(&enforce(&["mx.notype.test"]));
                    r.headers.clear();
                    w.https.respond(h, r);
                }),
                "media type \"(none)\"",
            ),
            (
                "selfsigned.test",
                Box::new(|w, h| {
                    w.https.cert(h, Cert::SelfSigned);
                }),
                "the policy host's certificate is not valid",
            ),
            (
                "wrongname.test",
                Box::new(|w, h| {
                    w.https
                        .cert(h, Cert::FromCaFor(vec!["mta-sts.other.test".into()]));
                }),
                "not valid for name",
            ),
            (
                "syntax.test",
                Box::new(|w, h| {
                    w.https.respond(
                        h,
                        Response::policy(
                            "version: STSv1\nmode: sometimes\nmx: a.test\nmax_age: 1\n",
                        ),
                    );
                }),
                "invalid policy: mode \"sometimes\"",
            ),
            (
                "nomx.test",
                Box::new(|w, h| {
                    w.https.respond(
                        h,
                        Response::policy(
                            "version: STSv1\nmode: enforce\nmx: 127.0.0.1\nmax_age: 100\n",
                        ),
                    );
                }),
                "no usable mx pattern",
            ),
            (
                "slow.test",
                Box::new(|w, h| {
                    w.https.respond(
                        h,
                        Response::policy(&enforce(&["mx.slow.test"]))
                            .delayed(Duration::from_secs(4)),
                    );
                }),
                "did not finish within 2s",
            ),
        ];
        let mut c = w.config();
        c.fetch_timeout = Duration::from_secs(2);
        let sts = w.source_with(&c);
        for (domain, setup, _) in &cases {
            w.publish(domain, "x1", &enforce(&[&format!("mx.{domain}")]));
            setup(&w, &World::host(domain));
        }
        for (domain, _, want) in &cases {
            let why = no_policy(&sts.lookup(domain).await).to_string();
            assert!(why.contains(want), "{domain}: {why}\nwanted: {want}");
            assert!(
                why.contains("MTA-STS record (id x1) but no usable policy"),
                "{why}"
            );
        }
        // Why, by RFC 8460's result types (Postfix 3.10's policy_failure).
        for (domain, want) in [
            ("selfsigned.test", StsPolicyFailure::WebPkiInvalid),
            ("wrongname.test", StsPolicyFailure::WebPkiInvalid),
            ("syntax.test", StsPolicyFailure::Invalid),
            ("nomx.test", StsPolicyFailure::Invalid),
            ("slow.test", StsPolicyFailure::FetchError),
        ] {
            match sts.cache_state(domain) {
                CacheState::Negative(n) => assert_eq!(n.failure, Some(want), "{domain}"),
                _ => panic!("{domain}: no failure remembered"),
            }
        }
        // A redirect is not followed.
        assert_eq!(w.https.requests("mta-sts.target.test"), 0);
        // Failures are remembered like absent records.
        for (domain, _, _) in &cases {
            let before = w.fetches(domain);
            no_policy(&sts.lookup(domain).await);
            assert_eq!(w.fetches(domain), before, "{domain}");
        }
        // The leniency switch accepts other media types.
        let mut lenient = w.config();
        lenient.lenient_content_type = true;
        let sts = w.source_with(&lenient);
        decided(&sts.lookup("html.test").await);
        decided(&sts.lookup("notype.test").await);
    });
}

#[test]
fn bad_record_syntax_fetches_nothing() {
    in_netns(|| async {
        let w = World::new();
        w.publish("rec.test", "r1", &enforce(&["mx.rec.test"]));
        let sts = w.source();
        for (text, want) in [
            ("v=STSv1; id=bad-id;", "is not 1 to 32 letters and digits"),
            ("v=STSv1;", "no field after v=STSv1"),
            ("v=STSv1; ext=1", "no id= field"),
            ("v=STSv1; id=r1;;", "empty field"),
            ("v=STSv1; id=r1 ", "white space after the last field"),
        ] {
            w.set_record("rec.test", text);
            let why = sts.refresh("rec.test", false).await;
            assert!(no_policy(&why).contains(want), "{text}: {why:?}");
        }
        w.set_record("rec.test", "v=STSv1; id=r1;");
        w.dns.txt_ttl("_mta-sts.rec.test", 0, "v=STSv1; id=r2;");
        w.dns_changed();
        let why = sts.refresh("rec.test", false).await;
        assert!(
            no_policy(&why).contains("2 TXT records start with v=STSv1"),
            "{why:?}"
        );
        assert_eq!(w.fetches("rec.test"), 0);
    });
}

#[test]
fn policy_size_limit() {
    in_netns(|| async {
        let w = World::new();
        let head = enforce(&["mx.size.test"]);
        // One extension field (ignored) fills the policy up to size.
        let padded = |n: usize| format!("{head}x: {}", "#".repeat(n - head.len() - 3));
        w.publish("exact.test", "s1", &padded(MAX_POLICY_LEN));
        w.publish("over.test", "s1", &padded(MAX_POLICY_LEN + 1));
        w.publish("stream.test", "s1", &padded(MAX_POLICY_LEN + 1));
        w.https.respond(
            "mta-sts.stream.test",
            Response::policy(&padded(MAX_POLICY_LEN * 4)).without_length(),
        );
        let sts = w.source();
        decided(&sts.lookup("exact.test").await);
        for d in ["over.test", "stream.test"] {
            let why = no_policy(&sts.lookup(d).await).to_string();
            assert!(why.contains("larger than 65536 bytes"), "{d}: {why}");
        }
    });
}

#[test]
fn concurrent_lookups_share_one_fetch() {
    in_netns(|| async {
        let w = World::new();
        w.publish("busy.test", "b1", &enforce(&["mx.busy.test"]));
        w.https.respond(
            "mta-sts.busy.test",
            Response::policy(&enforce(&["mx.busy.test"])).delayed(Duration::from_millis(300)),
        );
        let sts = w.source();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let s = sts.clone();
            tasks.spawn(async move { s.lookup("busy.test").await });
        }
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            assert_eq!(id_of(decided(&r.unwrap())), "b1");
            n += 1;
        }
        assert_eq!(n, 500);
        assert_eq!(w.fetches("busy.test"), 1);
        assert_eq!(sts.fetches(), 1);
        assert_eq!(w.dns.query_count("_mta-sts.busy.test", RecordType::TXT), 1);
    });
}

#[test]
fn slow_discovery_answers_after_lookup_timeout_then_serves_the_result() {
    in_netns(|| async {
        let w = World::new();
        w.publish("late.test", "l1", &enforce(&["mx.late.test"]));
        w.https.respond(
            "mta-sts.late.test",
            Response::policy(&enforce(&["mx.late.test"])).delayed(Duration::from_millis(1500)),
        );
        let mut c = w.config();
        c.lookup_timeout = Duration::from_millis(200);
        let sts = w.source_with(&c);
        let why = no_policy(&sts.lookup("late.test").await).to_string();
        assert!(why.contains("did not finish within 200ms"), "{why}");
        until("the discovery to finish", || {
            matches!(sts.cache_state("late.test"), CacheState::Policy(_))
        })
        .await;
        assert_eq!(id_of(decided(&sts.lookup("late.test").await)), "l1");
        assert_eq!(w.fetches("late.test"), 1);
    });
}

#[test]
fn restart_keeps_policies_from_the_cache_file() {
    in_netns(|| async {
        let w = World::new();
        w.publish("persist.test", "p1", &enforce(&["mx.persist.test"]));
        {
            let sts = w.source();
            decided(&sts.lookup("persist.test").await);
            sts.store().unwrap().close();
        }
        // The attacker now blocks everything.
        w.dns.remove("_mta-sts.persist.test");
        w.dns_changed();
        w.https.remove("mta-sts.persist.test");
        let sts = w.source();
        let a = sts.lookup("persist.test").await;
        let d = decided(&a);
        assert_eq!(id_of(d), "p1");
        assert_eq!(
            &*d.policy,
            "secure match=mx.persist.test servername=hostname"
        );
        assert_eq!(sts.fetches(), 0);
        assert_eq!(w.fetches("persist.test"), 1);
    });
}

#[test]
fn proactive_refresh_and_expiry() {
    in_netns(|| async {
        let w = World::new();
        w.publish(
            "fresh.test",
            "f1",
            &policy("enforce", &["mx.fresh.test"], 10_000),
        );
        let sts = w.source();
        decided(&sts.lookup("fresh.test").await);
        let CacheState::Policy(first) = sts.cache_state("fresh.test") else {
            panic!("not cached")
        };
        // Not due before half of max_age (refresh_interval is a day).
        assert_eq!(sts.maintenance_round(first.fetched_at + 4_999), 0);
        // Due then: fetched again although the id is the same.
        assert_eq!(sts.maintenance_round(first.fetched_at + 5_000), 1);
        until("the refresh", || w.fetches("fresh.test") == 2).await;
        until("the new entry", || {
            matches!(sts.cache_state("fresh.test"), CacheState::Policy(c) if !Arc::ptr_eq(&c, &first))
        })
        .await;
        // A refresh that fails is retried after check_interval, not at
        // every round.
        w.https.remove("mta-sts.fresh.test");
        let CacheState::Policy(second) = sts.cache_state("fresh.test") else {
            panic!("not cached")
        };
        let t = second.fetched_at + 5_000;
        assert_eq!(sts.maintenance_round(t), 1);
        assert_eq!(sts.maintenance_round(t + 1), 0);
        assert_eq!(sts.maintenance_round(t + 3600), 1);
        // Expired: forgotten in memory and in the file.
        sts.maintenance_round(second.expires_at);
        assert!(matches!(sts.cache_state("fresh.test"), CacheState::Nothing));
        sts.store().unwrap().flush();
        let (rows, _) = Db::open_read_only(&w.cache_file())
            .unwrap()
            .all(None)
            .unwrap();
        assert!(rows.is_empty(), "{rows:?}");
    });
}

#[test]
fn engine_never_asks_for_parent_walk_or_next_hop_keys() {
    in_netns(|| async {
        let w = World::new();
        w.publish("walk.test", "w1", &enforce(&["mx.walk.test"]));
        let sts = w.source();
        let src: Arc<dyn Source> = Arc::new(sts.clone());
        let engine = Engine::with_sources(
            PolicyFile::parse("", Path::new("p.toml")).unwrap(),
            vec![src],
        );
        for key in [
            ".walk.test",
            "[walk.test]",
            "[walk.test]:25",
            "walk.test:25",
        ] {
            let d = engine.decide(&Destination::parse(key).unwrap()).await;
            assert_eq!(d.source, SourceKind::Default, "{key}");
        }
        assert!(
            w.dns
                .queries()
                .iter()
                .all(|q| !q.name.starts_with("_mta-sts"))
        );
        let d = engine
            .decide(&Destination::parse("Walk.Test.").unwrap())
            .await;
        assert_eq!((d.source, d.level), (SourceKind::MtaSts, Level::Secure));
    });
}
