//! One runtime, swapped at once: the policy file and every reloadable
//! setting are one value, replaced in one atomic swap on SIGHUP.
//!
//! The real daemon serves all three front doors while the test rewrites
//! its config and policy file between two variants, A and B, and reloads
//! it hundreds of times. Client threads hammer every front door meanwhile;
//! afterwards, new requests get the last variant's answers.
//! Each request's answer depends on the policy file *and* on a front door
//! setting, so a request answered from a half-swapped state (A's settings
//! with B's policy, or the other way round) gets an answer that is neither
//! wholly A's nor wholly B's, and the test fails:
//!
//! - socketmap: `map` and `forced_map` trade names between A and B, and
//!   the policy default differs, so `tls_a c.example` is `OK may` (A) or
//!   `OK dane-only` (B), never `OK dane` or `OK encrypt`;
//! - policy server: a DATA request is answered `PREPEND <trace_header>:
//!   <decision>`, the header name from `[policy_server]`, the decision from
//!   the policy file;
//! - milter: one session per message with recipients in three domains; the
//!   trace header's name comes from `[milter]`, its value from the policy
//!   file's rules and default.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use indymilter_test::{EomAction, Status, TestConnection};

use common::milter::accepted;
use common::{Daemon, Options, WAIT, policy_request};

/// Reloads to make, unless [`MAX_TIME`] runs out first.
const RELOADS: usize = 300;
/// The least number of reloads that must have happened.
const MIN_RELOADS: usize = 200;
/// Longest time to keep reloading.
const MAX_TIME: Duration = Duration::from_secs(60);
/// Client threads per front door.
const THREADS: usize = 2;

/// One of the two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    A,
    B,
}

impl Variant {
    fn other(self) -> Variant {
        match self {
            Variant::A => Variant::B,
            Variant::B => Variant::A,
        }
    }

    /// The config file: the map names swap places, and each trace header
    /// has a name of its own. Listeners, prober, log and metrics stay put.
    fn config(self) -> String {
        let (map, forced_map, policy_header, milter_header, transport) = match self {
            Variant::A => ("tls_a", "tls_b", "X-TLS-A", "X-Milter-A", "smtp-tls-a"),
            Variant::B => ("tls_b", "tls_a", "X-TLS-B", "X-Milter-B", "smtp-tls-b"),
        };
        format!(
            r#"
[socketmap]
listen = "inet:127.0.0.1:0"
map = "{map}"
forced_map = "{forced_map}"
default_reply = "policy"

[policy_server]
listen = "inet:127.0.0.1:0"
trace_header = "{policy_header}"
forced_transport = "{transport}"

[milter]
listen = "unix:milter.sock"
trace_header = "{milter_header}"

[prober]
enabled = false

[policy]
file = "policy.toml"

[log]
decisions = "/dev/null"
level = "info"

[metrics]
listen = "inet:127.0.0.1:0"
"#
        )
    }

    /// The policy file: a.example and b.example trade levels (and rule
    /// numbers), and the default differs.
    fn policy(self) -> &'static str {
        match self {
            Variant::A => {
                r#"
default = "opportunistic"

[[rule]]
domains = ["a.example"]
tls = "forced"

[[rule]]
domains = ["b.example"]
tls = "opportunistic"
"#
            }
            Variant::B => {
                r#"
default = "dane"

[[rule]]
domains = ["b.example"]
tls = "forced"

[[rule]]
domains = ["a.example"]
tls = "opportunistic"
"#
            }
        }
    }
}

/// A question and its answer under A and under B.
struct Expect {
    ask: &'static str,
    a: &'static str,
    b: &'static str,
}

/// Socketmap requests (`NAME KEY`) and their replies. A mixed state would
/// answer `OK dane` / `OK encrypt` to the first and `OK dane-only` /
/// `OK may` to the second.
const SOCKETMAP: &[Expect] = &[
    Expect {
        ask: "tls_a c.example",
        a: "OK may",
        b: "OK dane-only",
    },
    Expect {
        ask: "tls_b c.example",
        a: "OK encrypt",
        b: "OK dane",
    },
];

/// Policy server DATA requests (the recipient) and their actions.
const POLICY: &[Expect] = &[
    Expect {
        ask: "rcpt@a.example",
        a: "PREPEND X-TLS-A: a.example=forced (encrypt, static rule 1)",
        b: "PREPEND X-TLS-B: a.example=opportunistic (may, static rule 2)",
    },
    Expect {
        ask: "rcpt@b.example",
        a: "PREPEND X-TLS-A: b.example=opportunistic (may, static rule 2)",
        b: "PREPEND X-TLS-B: b.example=forced (encrypt, static rule 1)",
    },
    Expect {
        ask: "rcpt@c.example",
        a: "PREPEND X-TLS-A: c.example=opportunistic (may, default)",
        b: "PREPEND X-TLS-B: c.example=opportunistic (dane, default)",
    },
];

/// The milter message's recipients, and its trace header (`Name: value`).
const MILTER_RECIPIENTS: &[&str] = &["<rcpt@a.example>", "<rcpt@b.example>", "<rcpt@c.example>"];
const MILTER: Expect = Expect {
    ask: "one message to a.example, b.example and c.example",
    a: "X-Milter-A: a.example=forced (encrypt, static rule 1); \
        b.example=opportunistic (may, static rule 2); \
        c.example=opportunistic (may, default)",
    b: "X-Milter-B: a.example=opportunistic (may, static rule 2); \
        b.example=forced (encrypt, static rule 1); \
        c.example=opportunistic (dane, default)",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Socketmap = 0,
    Policy = 1,
    Milter = 2,
}

const DOORS: [Door; 3] = [Door::Socketmap, Door::Policy, Door::Milter];

/// What the clients saw, shared with the reloading thread.
#[derive(Default)]
struct Tally {
    /// Set to make the clients stop.
    stop: AtomicBool,
    /// Answers per door.
    done: [AtomicU64; 3],
    /// Answers per door that were wholly A's, wholly B's.
    a: [AtomicU64; 3],
    b: [AtomicU64; 3],
    /// Answers that were neither (the first few).
    mixed: Mutex<Vec<String>>,
}

impl Tally {
    /// Count an answer to `expect`; anything but A's or B's answer is a
    /// mixed state.
    fn record(&self, door: Door, expect: &Expect, got: &str) {
        let i = door as usize;
        if got == expect.a {
            self.a[i].fetch_add(1, Ordering::Relaxed);
        } else if got == expect.b {
            self.b[i].fetch_add(1, Ordering::Relaxed);
        } else {
            let mut mixed = self.mixed.lock().unwrap();
            if mixed.len() < 20 {
                mixed.push(format!(
                    "{door:?} {:?}: got {got:?}, expected {:?} (A) or {:?} (B)",
                    expect.ask, expect.a, expect.b
                ));
            }
            self.stop.store(true, Ordering::Relaxed);
        }
        self.done[i].fetch_add(1, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn done(&self, door: Door) -> u64 {
        self.done[door as usize].load(Ordering::Acquire)
    }

    fn seen(&self, door: Door) -> (u64, u64) {
        let i = door as usize;
        (
            self.a[i].load(Ordering::Relaxed),
            self.b[i].load(Ordering::Relaxed),
        )
    }
}

/// `127.0.0.1:PORT` from an `inet:127.0.0.1:PORT` listen address.
fn socket_addr(listen: &str) -> String {
    listen
        .strip_prefix("inet:")
        .unwrap_or_else(|| panic!("not an inet listener: {listen}"))
        .to_string()
}

/// Socketmap lookups on one persistent connection, as Postfix makes them.
fn socketmap_client(port: u16, tally: &Tally, first: usize) {
    let mut c = common::Client::connect(port);
    let mut n = first;
    while !tally.stopped() {
        let e = &SOCKETMAP[n % SOCKETMAP.len()];
        let got = c.query_payload(e.ask.as_bytes());
        tally.record(Door::Socketmap, e, &got);
        n += 1;
    }
}

/// Policy server DATA requests on one persistent connection, each for a
/// new message with one recipient, so the answer is decided then.
fn policy_client(addr: &str, tally: &Tally, thread: usize) {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut writer = s;
    let mut n = thread;
    while !tally.stopped() {
        let e = &POLICY[n % POLICY.len()];
        let instance = format!("t{thread}.{n}");
        let req = policy_request("DATA", "alice@src.example", e.ask, &instance, "");
        writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut blank = String::new();
        reader.read_line(&mut blank).unwrap();
        assert_eq!(blank, "\n", "reply ends with an empty line");
        let action = line
            .trim_end()
            .strip_prefix("action=")
            .unwrap_or_else(|| panic!("not an action line: {line:?}"));
        tally.record(Door::Policy, e, action);
        n += 1;
    }
}

/// Milter sessions, one message each: a connection is ruled by the
/// configuration in force when it opened. On a unix socket: the client
/// library leaves Nagle on, which would make each session last tens of
/// milliseconds over TCP.
fn milter_client(path: &Path, tally: &Tally) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        while !tally.stopped() {
            let mut conn = TestConnection::configure()
                .read_timeout(WAIT)
                .write_timeout(WAIT)
                .open_unix(path)
                .await
                .unwrap();
            conn.connect("client.example", [192, 0, 2, 25])
                .await
                .unwrap();
            conn.helo("client.example").await.unwrap();
            conn.mail(["<alice@src.example>"]).await.unwrap();
            for r in MILTER_RECIPIENTS {
                assert_eq!(accepted(conn.rcpt([*r]).await.unwrap()), Status::Continue);
            }
            let (actions, status) = conn.eom().await.unwrap();
            assert_eq!(status, Status::Continue);
            let headers: Vec<String> = actions
                .actions
                .iter()
                .filter_map(|a| match a {
                    EomAction::InsertHeader { name, value, .. } => Some(format!(
                        "{}: {}",
                        name.to_string_lossy(),
                        value.to_string_lossy()
                    )),
                    _ => None,
                })
                .collect();
            tally.record(Door::Milter, &MILTER, &headers.join("\n"));
            conn.close().await.unwrap();
        }
    });
}

/// The value of a series in the metrics listener's exposition.
fn metric(listen: &str, series: &str) -> f64 {
    let mut s = TcpStream::connect(socket_addr(listen)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Wait until `door` has answered `n` more requests than `before`, or the
/// clients stopped; false after [`WAIT`].
fn wait_for_answers(tally: &Tally, door: Door, before: u64, n: u64) -> bool {
    let deadline = Instant::now() + WAIT;
    while tally.done(door) < before + n && !tally.stopped() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_micros(200));
    }
    true
}

#[test]
fn reloads_swap_policy_and_settings_at_once_on_every_front_door() {
    let d = Daemon::start_frontend(
        &Variant::A.config(),
        Variant::A.policy(),
        Options::default(),
        "socketmap",
    );
    let socketmap_port = d.port();
    let policy = socket_addr(&d.listening("policy"));
    let milter = d.listening("milter");
    let milter = PathBuf::from(
        milter
            .strip_prefix("unix:")
            .unwrap_or_else(|| panic!("not a unix listener: {milter}")),
    );
    let metrics = d.listening("metrics");

    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for t in 0..THREADS {
        let tl = tally.clone();
        clients.push(thread::spawn(move || {
            socketmap_client(socketmap_port, &tl, t)
        }));
        let (tl, addr) = (tally.clone(), policy.clone());
        clients.push(thread::spawn(move || policy_client(&addr, &tl, t)));
        let (tl, addr) = (tally.clone(), milter.clone());
        clients.push(thread::spawn(move || milter_client(&addr, &tl)));
    }

    // Reload, alternating B and A. After each reload, every door answers
    // a request made after it before the next: THREADS requests may have
    // been under way, the next one started afterwards. So each door sees
    // each variant at least once per reload to it, while requests keep
    // running across every swap.
    let started = Instant::now();
    let mut variant = Variant::A;
    let mut reloads = 0;
    while reloads < RELOADS && started.elapsed() < MAX_TIME && !tally.stopped() {
        variant = variant.other();
        d.write_config(&variant.config());
        d.write_policy(variant.policy());
        let mark = d.mark();
        d.signal(libc::SIGHUP);
        let line = d.wait_for_line_since(mark, |l| {
            l.contains("reloaded") || l.contains("reload failed")
        });
        assert!(line.contains("reloaded"), "reload {reloads}: {line}");
        reloads += 1;
        for door in DOORS {
            let before = tally.done(door);
            assert!(
                wait_for_answers(&tally, door, before, THREADS as u64 + 1),
                "{door:?} answered nothing within {WAIT:?} after reload {reloads}"
            );
        }
    }
    let elapsed = started.elapsed();
    tally.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }

    // The last reload wins: new requests get the last variant's answers.
    let last = |e: &Expect| match variant {
        Variant::A => e.a,
        Variant::B => e.b,
    };
    let mut c = common::Client::connect(socketmap_port);
    for e in SOCKETMAP {
        assert_eq!(c.query_payload(e.ask.as_bytes()), last(e), "{}", e.ask);
    }
    let s = TcpStream::connect(&policy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut writer = s;
    for (n, e) in POLICY.iter().enumerate() {
        let req = policy_request("DATA", "alice@src.example", e.ask, &format!("last.{n}"), "");
        writer.write_all(req.as_bytes()).unwrap();
        let (mut line, mut blank) = (String::new(), String::new());
        reader.read_line(&mut line).unwrap();
        reader.read_line(&mut blank).unwrap();
        assert_eq!(
            line.trim_end().strip_prefix("action="),
            Some(last(e)),
            "{}",
            e.ask
        );
    }

    let mixed = tally.mixed.lock().unwrap();
    assert!(
        mixed.is_empty(),
        "answers mixing A and B after {reloads} reloads:\n{}",
        mixed.join("\n")
    );
    let ok = metric(&metrics, "tls_policyd_reloads_total{result=\"ok\"}");
    let failed = metric(&metrics, "tls_policyd_reloads_total{result=\"failed\"}");
    assert_eq!((ok, failed), (reloads as f64, 0.0), "reload counters");
    assert!(
        reloads >= MIN_RELOADS,
        "only {reloads} reloads in {elapsed:?}"
    );
    let mut summary = Vec::new();
    for door in DOORS {
        let (a, b) = tally.seen(door);
        summary.push(format!("{door:?}: {a} A, {b} B"));
        let least = (reloads / 2) as u64;
        assert!(
            a >= least && b >= least,
            "{door:?} saw A {a} times and B {b} times in {reloads} reloads"
        );
    }
    eprintln!("{reloads} reloads in {elapsed:.1?}; {}", summary.join("; "));
}
