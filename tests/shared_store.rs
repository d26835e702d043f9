//! `[shared]`: daemons sharing one real `redis-server` (with
//! `requirepass`, no persistence, in a temporary directory), inside a
//! network namespace with a test DNS server on 127.0.0.1:53 and policy
//! hosts on 127.0.0.44:443. A policy learned through one daemon is answered
//! by another without a discovery of its own; garbage in the keys is
//! ignored and logged; the store killed while lookups run fails none of
//! them; a wrong password leaves the daemon running on its own. A store
//! over TLS (`rediss://`) is checked against `ca_file`: one with a
//! certificate from another CA is not used.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::fleet::{
    Fleet, PASSWORD, WAIT, answer, client, metric, publish, status, txt_queries, wait_for_key,
};
use common::netns::Netns;
use common::redis::{Listen, Redis, write_pem_pair};
use common::smtp::TestCa;
use hickory_proto::rr::RecordType;

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
    let socket = dir.join("redis.sock");
    let redis = Redis::start(&ns, &dir, Listen::Unix(socket.clone()), PASSWORD, &[]);
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

/// A `redis-server` on TLS only (127.0.0.1:`port`), its certificate
/// issued by `issuer` for 127.0.0.1; with `auth_clients`, clients need a
/// certificate from `issuer`.
fn tls_store(f: &Fleet, issuer: &TestCa, port: u16, auth_clients: bool) -> Redis {
    let dir = f.keep.path().join(format!("redis-tls-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key) = issuer.issue(&["127.0.0.1"]);
    let (cert, key_file, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    write_pem_pair(&chain, &key, &cert, &key_file);
    issuer.write_pem(&ca);
    let client = auth_clients.then(|| {
        let (chain, key) = issuer.issue_client(&["redis-cli"]);
        let pair = (dir.join("cli-cert.pem"), dir.join("cli-key.pem"));
        write_pem_pair(&chain, &key, &pair.0, &pair.1);
        pair
    });
    let listen = Listen::Tls {
        port,
        cert,
        key: key_file,
        ca,
        client,
    };
    Redis::start(&f.ns, &dir, listen, PASSWORD, &[])
}

/// `[shared]` keys for the TLS store on `port`, trusting the fleet's CA.
fn tls_keys(f: &Fleet, port: u16) -> String {
    format!(
        "url = \"rediss://127.0.0.1:{port}/0\"\npassword_file = \"{}\"\nca_file = \"{}\"",
        f.password.display(),
        f.ca_pem.display()
    )
}

#[test]
fn a_store_over_tls_with_a_private_ca_is_shared() {
    let Some(ns) = Netns::for_test("shrt", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let redis = tls_store(&f, &f.ca, 6391, false);
    publish(&f.dns, &f.https, "tls.test");
    let a = f.daemon_keys("a", false, &tls_keys(&f, 6391));
    let b = f.daemon_keys("b", false, &tls_keys(&f, 6391));
    a.wait_for_line(|l| l.contains("shared store connected"));
    b.wait_for_line(|l| l.contains("shared store connected"));
    assert_eq!(
        client(&ns, &a).query("tls_policy", "tls.test"),
        answer("tls.test")
    );
    let value = wait_for_key(&redis, "tls-policyd:mta-sts:tls.test");
    assert!(value.contains("mx.tls.test"), "{value}");
    assert_eq!(
        client(&ns, &b).query("tls_policy", "tls.test"),
        answer("tls.test")
    );
    assert_eq!(txt_queries(&f.dns, "tls.test"), 1);
    assert_eq!(f.https.requests("mta-sts.tls.test"), 1);
    let (code, report) = status(&ns, &b);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        report["shared"]["url"], "rediss://127.0.0.1:6391/0",
        "{report}"
    );
}

#[test]
fn a_store_certificate_from_another_ca_leaves_the_daemon_on_its_own() {
    let Some(ns) = Netns::for_test("shrx", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let other = TestCa::new();
    let redis = tls_store(&f, &other, 6392, false);
    publish(&f.dns, &f.https, "untrusted.test");
    let a = f.daemon_keys("a", false, &tls_keys(&f, 6392));
    let line = a.wait_for_line(|l| l.contains("shared store unavailable"));
    assert!(line.contains("certificate"), "{line}");
    assert!(
        a.find_line(|l| l.contains("shared store connected"))
            .is_none()
    );
    assert_eq!(
        client(&ns, &a).query("tls_policy", "untrusted.test"),
        answer("untrusted.test")
    );
    assert_eq!(txt_queries(&f.dns, "untrusted.test"), 1);
    let (code, report) = status(&ns, &a);
    assert_eq!(code, Some(2), "{report}");
    assert_eq!(report["shared"]["state"], "down", "{report}");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
    assert_eq!(
        metric(
            &ns,
            &a,
            "tls_policyd_errors_total{component=\"shared\",kind=\"unavailable\"}"
        )
        .map(|n| n != "0"),
        Some(true)
    );
}

#[test]
fn a_store_asking_for_client_certificates_gets_one_from_client_cert_file() {
    let Some(ns) = Netns::for_test("shrc", &["redis-server", "redis-cli"]) else {
        return;
    };
    let f = Fleet::new(ns.clone());
    let redis = tls_store(&f, &f.ca, 6393, true);
    publish(&f.dns, &f.https, "mutual.test");
    // Without a client certificate: refused, the daemon goes on alone.
    let a = f.daemon_keys("a", false, &tls_keys(&f, 6393));
    a.wait_for_line(|l| l.contains("shared store unavailable"));
    assert!(
        a.find_line(|l| l.contains("shared store connected"))
            .is_none()
    );
    // With one from the CA: connected, the policy written.
    let (chain, key) = f.ca.issue_client(&["mta1.fleet.test"]);
    let (cert_file, key_file) = (
        f.keep.path().join("client.pem"),
        f.keep.path().join("client.key"),
    );
    write_pem_pair(&chain, &key, &cert_file, &key_file);
    let keys = format!(
        "{}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        tls_keys(&f, 6393),
        cert_file.display(),
        key_file.display()
    );
    let b = f.daemon_keys("b", false, &keys);
    b.wait_for_line(|l| l.contains("shared store connected"));
    assert_eq!(
        client(&ns, &b).query("tls_policy", "mutual.test"),
        answer("mutual.test")
    );
    let value = wait_for_key(&redis, "tls-policyd:mta-sts:mutual.test");
    assert!(value.contains("mx.mutual.test"), "{value}");
    assert_eq!(
        client(&ns, &a).query("tls_policy", "mutual.test"),
        answer("mutual.test")
    );
}
