//! `[shared]` with Redis Sentinel: a master, a replica and three
//! sentinels (`redis-server` and `redis-sentinel`, each with a password,
//! on loopback ports) inside a network namespace with a test DNS server
//! and MTA-STS policy hosts. The daemon finds the master through the
//! sentinels; the master killed (SIGKILL) while lookups run fails none of
//! them; once the sentinels have promoted the replica, what the daemon
//! learns is written to the new master, and what it learned meanwhile
//! is written there once it answers. A switchover (`SENTINEL
//! FAILOVER`) that leaves the old master running as a replica moves the
//! writes too. All of it over TLS (`rediss://`, `ca_file`) as well.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::fleet::{Fleet, PASSWORD, WAIT, answer, client, metric, publish, status};
use common::netns::Netns;
use common::redis::{Listen, Redis, write_pem_pair};

const MASTER_PORT: u16 = 6401;
const REPLICA_PORT: u16 = 6402;
const SENTINEL_PORTS: [u16; 3] = [26401, 26402, 26403];
const MASTER_NAME: &str = "fleetmaster";
const SENTINEL_PASSWORD: &str = "sentinel-secret-0815";
/// Most domains looked up while the master fails over.
const MAX_LOOKUPS: usize = 1500;
/// Between two lookups of a worker during the failover: two workers take
/// at least 7.5 s for [`MAX_LOOKUPS`].
const PACE: Duration = Duration::from_millis(10);

/// `key:value` lines of `INFO`, or the flat name/value list of
/// `SENTINEL master`: the value of `field`.
fn field(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if let Some(v) = lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
    {
        return Some(v.to_string());
    }
    lines
        .iter()
        .position(|l| *l == name)
        .and_then(|i| lines.get(i + 1))
        .map(|v| v.to_string())
}

/// Wait (bounded) until `check` holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A master, its replica and three sentinels watching them; the
/// `[shared]` keys of a daemon that finds the master through them.
struct Lab {
    f: Fleet,
    master: Redis,
    replica: Redis,
    sentinels: Vec<Redis>,
    keys: String,
}

impl Lab {
    /// With `tls`, every server and sentinel listens on TLS only, with a
    /// certificate for 127.0.0.1 from the fleet's CA, and they reach each
    /// other over TLS; the daemon uses `rediss://` and `ca_file`.
    fn start(ns: &Netns, tls: bool) -> Lab {
        let f = Fleet::new(ns.clone());
        let dir = f.keep.path();
        let listen = |port: u16| {
            if !tls {
                return Listen::Tcp(port);
            }
            let (chain, key) = f.ca.issue(&["127.0.0.1"]);
            let (cert_file, key_file) = (
                dir.join(format!("{port}.pem")),
                dir.join(format!("{port}.key")),
            );
            write_pem_pair(&chain, &key, &cert_file, &key_file);
            Listen::Tls {
                port,
                cert: cert_file,
                key: key_file,
                ca: f.ca_pem.clone(),
                client: None,
            }
        };
        let tls_replication: &[&str] = if tls {
            &["--tls-replication", "yes"]
        } else {
            &[]
        };
        let master = Redis::start(
            ns,
            &dir.join("master"),
            listen(MASTER_PORT),
            PASSWORD,
            tls_replication,
        );
        let master_port = MASTER_PORT.to_string();
        let replica_of = [
            tls_replication,
            &["--replicaof", "127.0.0.1", master_port.as_str()],
        ]
        .concat();
        let replica = Redis::start(
            ns,
            &dir.join("replica"),
            listen(REPLICA_PORT),
            PASSWORD,
            &replica_of,
        );
        wait_until("the replica follows the master", || {
            field(&replica.cli(&["INFO", "replication"]), "master_link_status").as_deref()
                == Some("up")
        });
        let sentinels: Vec<Redis> = SENTINEL_PORTS
            .iter()
            .map(|p| {
                Redis::sentinel(
                    ns,
                    &dir.join(format!("sentinel-{p}")),
                    listen(*p),
                    SENTINEL_PASSWORD,
                    (MASTER_NAME, MASTER_PORT, PASSWORD),
                )
            })
            .collect();
        for s in &sentinels {
            wait_until("each sentinel knows the others and the replica", || {
                let m = s.cli(&["SENTINEL", "MASTER", MASTER_NAME]);
                field(&m, "num-other-sentinels").as_deref() == Some("2")
                    && field(&m, "num-slaves").as_deref() == Some("1")
            });
        }

        let sentinel_password = dir.join("sentinel-password");
        std::fs::write(&sentinel_password, format!("{SENTINEL_PASSWORD}\n")).unwrap();
        let list: Vec<String> = SENTINEL_PORTS
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let mut keys = format!(
            "sentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\npassword_file = \"{}\"\n\
             sentinel_password_file = \"{}\"",
            list.join(", "),
            f.password.display(),
            sentinel_password.display()
        );
        if tls {
            keys += &format!(
                "\nurl = \"rediss://{MASTER_NAME}/0\"\nca_file = \"{}\"",
                f.ca_pem.display()
            );
        }
        Lab {
            f,
            master,
            replica,
            sentinels,
            keys,
        }
    }
}

#[test]
fn a_failover_under_load_fails_no_lookup_and_writes_go_to_the_new_master() {
    let Some(ns) = Netns::for_test("shrs", &["redis-server", "redis-cli", "redis-sentinel"]) else {
        return;
    };
    let lab = Lab::start(&ns, false);
    let Lab {
        f,
        mut master,
        replica,
        sentinels,
        keys,
    } = lab;
    let domains: Vec<String> = (0..MAX_LOOKUPS)
        .map(|i| format!("d{i}.failover.test"))
        .collect();
    for d in &domains {
        publish(&f.dns, &f.https, d);
    }
    publish(&f.dns, &f.https, "before.test");
    let a = f.daemon_keys("a", false, &keys);
    let line = a.wait_for_line(|l| l.contains("shared store connected"));
    assert!(line.contains(&format!("127.0.0.1:{MASTER_PORT}")), "{line}");
    let (code, report) = status(&ns, &a);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["shared"]["url"], format!("redis://{MASTER_NAME}/0"));
    assert_eq!(
        report["shared"]["master"],
        format!("127.0.0.1:{MASTER_PORT}"),
        "{report}"
    );

    // Written to the master, and replicated.
    assert_eq!(
        client(&ns, &a).query("tls_policy", "before.test"),
        answer("before.test")
    );
    master.wait_for_key("tls-policyd:mta-sts:before.test", WAIT);
    replica.wait_for_key("tls-policyd:mta-sts:before.test", WAIT);

    // Lookups (each a local miss that asks the store) on two connections
    // until the replica is the master; the master is killed once both are
    // under way.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let mut c = client(&ns, &a);
            let domains = domains.clone();
            let (tx, stop) = (tx.clone(), stop.clone());
            thread::spawn(move || {
                let mut answers = Vec::new();
                for (i, d) in domains.iter().skip(w).step_by(2).enumerate() {
                    if i == 5 {
                        tx.send(()).unwrap();
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    answers.push((d.clone(), c.query("tls_policy", d)));
                    // Paced, so that the lookups outlast the failover
                    // (the sentinels take a second or more to agree):
                    // unpaced, a fast machine ran them all before it.
                    thread::sleep(PACE);
                }
                answers
            })
        })
        .collect();
    for _ in 0..2 {
        rx.recv_timeout(WAIT).expect("lookups under way");
    }
    master.kill();
    wait_until("the sentinels promote the replica", || {
        replica.cli(&["ROLE"]).lines().next() == Some("master")
    });
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for w in workers {
        for (d, got) in w.join().unwrap() {
            assert_eq!(got, answer(&d), "{d}");
            answered += 1;
        }
    }
    // Still looking up when the replica became the master: the lookups
    // ran through the whole failover.
    assert!(
        answered > 10 && answered < MAX_LOOKUPS,
        "{answered} lookups (the failover must happen while they run)"
    );

    // What is learned from then on reaches the new master.
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        let d = format!("after{i}.failover.test");
        publish(&f.dns, &f.https, &d);
        assert_eq!(client(&ns, &a).query("tls_policy", &d), answer(&d));
        thread::sleep(Duration::from_millis(300));
        let key = format!("tls-policyd:mta-sts:{d}");
        if !replica.cli(&["GET", &key]).trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing written to the new master: {}",
            a.stderr_text()
        );
    }
    let line = a.wait_for_line(|l| l.contains("shared store master changed"));
    assert!(
        line.contains(&format!("127.0.0.1:{MASTER_PORT}"))
            && line.contains(&format!("127.0.0.1:{REPLICA_PORT}")),
        "{line}"
    );
    // What was learned while no master answered reaches the new one too:
    // every policy this host holds is written where the store lacks it.
    wait_until("the new master holds every policy learned", || {
        let keys: usize = replica.cli(&["DBSIZE"]).trim().parse().unwrap_or(0);
        keys > answered
    });
    let (code, report) = status(&ns, &a);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        report["shared"]["master"],
        format!("127.0.0.1:{REPLICA_PORT}"),
        "{report}"
    );
    assert_eq!(
        metric(&ns, &a, "tls_policyd_shared_master_changes_total").as_deref(),
        Some("1")
    );
    assert!(!a.stderr_text().contains(SENTINEL_PASSWORD));
    assert!(a.find_line(|l| l.contains("panicked")).is_none());
    drop(sentinels);
}

#[test]
fn after_a_switchover_writes_leave_the_demoted_master_for_the_new_one() {
    let Some(ns) = Netns::for_test("shrw", &["redis-server", "redis-cli", "redis-sentinel"]) else {
        return;
    };
    let lab = Lab::start(&ns, false);
    let f = &lab.f;
    publish(&f.dns, &f.https, "first.test");
    let a = f.daemon_keys("a", false, &lab.keys);
    let line = a.wait_for_line(|l| l.contains("shared store connected"));
    assert!(line.contains(&format!("127.0.0.1:{MASTER_PORT}")), "{line}");
    assert_eq!(
        client(&ns, &a).query("tls_policy", "first.test"),
        answer("first.test")
    );
    lab.master
        .wait_for_key("tls-policyd:mta-sts:first.test", WAIT);

    // The master stays up, demoted to a replica of the old replica.
    assert_eq!(
        lab.sentinels[0]
            .cli(&["SENTINEL", "FAILOVER", MASTER_NAME])
            .trim(),
        "OK"
    );
    wait_until("the switchover", || {
        lab.replica.cli(&["ROLE"]).lines().next() == Some("master")
            && lab.master.cli(&["ROLE"]).lines().next() == Some("slave")
    });
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        let d = format!("after{i}.switch.test");
        publish(&f.dns, &f.https, &d);
        assert_eq!(client(&ns, &a).query("tls_policy", &d), answer(&d));
        thread::sleep(Duration::from_millis(300));
        let key = format!("tls-policyd:mta-sts:{d}");
        if !lab.replica.cli(&["GET", &key]).trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing written to the new master: {}",
            a.stderr_text()
        );
    }
    a.wait_for_line(|l| l.contains("shared store master changed"));
    let (_, report) = status(&ns, &a);
    assert_eq!(
        report["shared"]["master"],
        format!("127.0.0.1:{REPLICA_PORT}"),
        "{report}"
    );
    assert_eq!(
        metric(&ns, &a, "tls_policyd_shared_master_changes_total").as_deref(),
        Some("1")
    );
    assert!(a.find_line(|l| l.contains("panicked")).is_none());
}

#[test]
fn over_tls_the_sentinels_and_the_masters_are_reached_with_ca_file() {
    let Some(ns) = Netns::for_test("shrz", &["redis-server", "redis-cli", "redis-sentinel"]) else {
        return;
    };
    let mut lab = Lab::start(&ns, true);
    let f = &lab.f;
    publish(&f.dns, &f.https, "first.tls.test");
    let a = f.daemon_keys("a", false, &lab.keys);
    let line = a.wait_for_line(|l| l.contains("shared store connected"));
    assert!(line.contains(&format!("127.0.0.1:{MASTER_PORT}")), "{line}");
    assert!(line.contains("rediss://"), "{line}");
    assert_eq!(
        client(&ns, &a).query("tls_policy", "first.tls.test"),
        answer("first.tls.test")
    );
    lab.master
        .wait_for_key("tls-policyd:mta-sts:first.tls.test", WAIT);
    lab.master.kill();
    wait_until("the sentinels promote the replica", || {
        lab.replica.cli(&["ROLE"]).lines().next() == Some("master")
    });
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        let d = format!("after{i}.tls.test");
        publish(&f.dns, &f.https, &d);
        assert_eq!(client(&ns, &a).query("tls_policy", &d), answer(&d));
        thread::sleep(Duration::from_millis(300));
        let key = format!("tls-policyd:mta-sts:{d}");
        if !lab.replica.cli(&["GET", &key]).trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing written to the new master: {}",
            a.stderr_text()
        );
    }
    a.wait_for_line(|l| l.contains("shared store master changed"));
    assert!(a.find_line(|l| l.contains("panicked")).is_none());
}
