//! Every line of `tests/fixtures/postfix-logs/` (real Postfix 3.7 output and
//! lines written from Postfix's format strings) through the whole chain:
//! split at every byte, parsed, attributed; plus truncations and random
//! bytes, which must never panic.

use std::collections::HashMap;

use super::connections::{ConnectionTracker, ProcessKey};
use super::lines::{Line, LineSplitter};
use super::postfix::{Event, Relay, Status, TlsFailureKind, Trust};
use super::syslog::{YearHint, parse_line};
use super::{PARSED_DAEMONS, event_of};

const OUTBOUND: &str = include_str!("../../tests/fixtures/postfix-logs/postfix-3.7-outbound.log");
const REUSE: &str =
    include_str!("../../tests/fixtures/postfix-logs/postfix-3.7-outbound-reuse.log");
const FROM_SOURCE: &str = include_str!("../../tests/fixtures/postfix-logs/from-source-formats.log");
const ALL: [(&str, &str); 3] = [
    ("outbound", OUTBOUND),
    ("reuse", REUSE),
    ("from-source", FROM_SOURCE),
];

const HINT: YearHint = YearHint {
    year: 2026,
    month: 12,
};

fn event(line: &str) -> Event {
    let l = parse_line(line.as_bytes(), HINT).unwrap_or_else(|e| panic!("{e}: {line}"));
    event_of(&l)
}

/// Messages of parsed daemons that are expected to stay `Unknown`.
fn expected_unknown(msg: &str) -> bool {
    msg.starts_with("CONNECT to ")
        || msg.starts_with("DISCONNECT ")
        || msg.starts_with("warning: TLS server role is disabled")
}

#[test]
fn every_fixture_line_parses() {
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for (name, text) in ALL {
        for line in text.lines() {
            let l =
                parse_line(line.as_bytes(), HINT).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
            assert_eq!(l.time.year, 2026);
            let ev = event_of(&l);
            if PARSED_DAEMONS.contains(&l.daemon()) {
                assert!(
                    ev != Event::Unknown || expected_unknown(l.message),
                    "{name}: not understood: {line}"
                );
            }
            let kind = match ev {
                Event::TlsEstablished(_) => "tls",
                Event::Delivery(_) => "delivery",
                Event::TlsFailure(_) => "failure",
                Event::ConnectFailed { .. } => "connect",
                Event::PolicyLookupFailed { .. } => "policy",
                Event::TableLookupError { .. } => "table",
                Event::TableConnectFailed { .. } => "table-connect",
                Event::Unknown => "unknown",
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    for kind in [
        "tls",
        "delivery",
        "failure",
        "connect",
        "policy",
        "table",
        "table-connect",
    ] {
        assert!(kinds.get(kind).copied().unwrap_or(0) > 0, "no {kind} line");
    }
}

#[test]
fn split_at_every_byte_gives_the_same_lines() {
    for (name, text) in ALL {
        for line in text.lines() {
            let whole = format!("{line}\n");
            let want = event(line);
            for cut in 0..=whole.len() {
                let mut s = LineSplitter::default();
                let mut got = Vec::new();
                for part in [&whole.as_bytes()[..cut], &whole.as_bytes()[cut..]] {
                    s.push(part, |l| match l {
                        Line::Complete(b) => got.push(b.to_vec()),
                        Line::TooLong { len } => panic!("{name}: too long ({len}): {line}"),
                    });
                }
                assert_eq!(got, vec![line.as_bytes().to_vec()], "{name} cut {cut}");
                let l = parse_line(&got[0], HINT).unwrap();
                assert_eq!(event_of(&l), want, "{name} cut {cut}");
            }
        }
        // The whole file byte by byte.
        let mut s = LineSplitter::default();
        let mut n = 0;
        for b in text.as_bytes() {
            s.push(std::slice::from_ref(b), |l| {
                assert!(matches!(l, Line::Complete(_)));
                n += 1;
            });
        }
        assert_eq!(n, text.lines().count(), "{name}");
    }
}

#[test]
fn truncated_lines_never_panic() {
    for (_, text) in ALL {
        for line in text.lines() {
            for cut in 0..line.len() {
                if let Ok(l) = parse_line(&line.as_bytes()[..cut], HINT) {
                    let _ = event_of(&l);
                }
                if let Some(msg) = line.get(cut..) {
                    let _ = super::postfix::parse_message(msg);
                }
            }
        }
    }
}

/// xorshift64*: deterministic pseudo-random bytes without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let lines: Vec<&str> = ALL.iter().flat_map(|(_, t)| t.lines()).collect();
    const ALPHABET: &[u8] = b" :[]<>,()=/.!?\"0123456789abcdefDTZ+-\n\xff";
    let mut tracker = ConnectionTracker::new(16);
    let mut splitter = LineSplitter::new(512);
    for i in 0..20_000 {
        let base = lines[(rng.next() % lines.len() as u64) as usize];
        let mut bytes = base.as_bytes().to_vec();
        let edits = 1 + rng.next() % 4;
        for _ in 0..edits {
            let pos = (rng.next() % (bytes.len() as u64 + 1)) as usize;
            let b = if i % 2 == 0 {
                ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize]
            } else {
                rng.next() as u8
            };
            match rng.next() % 3 {
                0 if pos < bytes.len() => bytes[pos] = b,
                1 => bytes.insert(pos, b),
                _ => bytes.truncate(pos),
            }
        }
        if i % 10 == 0 {
            bytes = (0..rng.next() % 300).map(|_| rng.next() as u8).collect();
        }
        splitter.push(&bytes, |l| {
            if let Line::Complete(b) = l {
                let _ = parse_line(b, HINT);
            }
        });
        if let Ok(l) = parse_line(&bytes, HINT) {
            let key = ProcessKey {
                host: l.host.to_string(),
                program: l.program.to_string(),
                pid: l.pid.unwrap_or(0) % 32,
            };
            let _ = tracker.observe(&key, event_of(&l));
        }
    }
    assert!(tracker.len() <= 16);
}

/// (recipient, trust of the governing connection, TLS failure kinds seen
/// on it, failure named by the status text) for each status line.
type Row = (
    String,
    Option<Trust>,
    Vec<TlsFailureKind>,
    Option<TlsFailureKind>,
);

fn attribute(text: &str) -> Vec<Row> {
    let mut tracker = ConnectionTracker::default();
    let mut rows = Vec::new();
    for line in text.lines() {
        let l = parse_line(line.as_bytes(), HINT).unwrap();
        if !matches!(l.daemon(), "smtp" | "lmtp") {
            continue;
        }
        let key = ProcessKey {
            host: l.host.into(),
            program: l.program.into(),
            pid: l.pid.unwrap(),
        };
        if let Some(a) = tracker.observe(&key, event_of(&l)) {
            let conn = a.connection.as_ref();
            rows.push((
                a.delivery.to.clone(),
                conn.and_then(|c| c.tls.as_ref()).map(|t| t.trust),
                conn.map(|c| c.failures.iter().map(|f| f.kind).collect())
                    .unwrap_or_default(),
                a.delivery.tls_failure(),
            ));
        }
    }
    assert_eq!(tracker.stats().evicted, 0);
    rows
}

fn first<'a>(rows: &'a [Row], to: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.0 == to)
        .unwrap_or_else(|| panic!("no status line for {to}"))
}

/// (recipient, trust, failure lines, failure named by the status text).
type Want = (
    &'static str,
    Option<Trust>,
    &'static [TlsFailureKind],
    Option<TlsFailureKind>,
);

#[test]
fn real_deliveries_get_their_connection_facts() {
    use TlsFailureKind::*;
    let rows = attribute(OUTBOUND);
    let want: [Want; 15] = [
        ("a@verified.test", Some(Trust::Verified), &[], None),
        (
            "\"john doe\"@verified.test",
            Some(Trust::Verified),
            &[],
            None,
        ),
        ("real@verified.test", Some(Trust::Verified), &[], None),
        ("bounce@verified.test", Some(Trust::Verified), &[], None),
        ("b@verified.test", Some(Trust::Verified), &[], None),
        ("a@trusted.test", Some(Trust::Trusted), &[], None),
        ("a@untrusted.test", Some(Trust::Untrusted), &[], None),
        ("a@plain.test", None, &[], None),
        ("a@forced.test", None, &[], Some(NotOffered)),
        (
            "a@badcert.test",
            Some(Trust::Untrusted),
            &[VerificationFailed],
            Some(CertNotVerified),
        ),
        (
            "a@old.test",
            None,
            &[HandshakeFailed, LibraryProblem],
            Some(HandshakeFailed),
        ),
        (
            "a@fp.test",
            Some(Trust::Untrusted),
            &[DaneMismatch],
            Some(CertNotVerified),
        ),
        ("a@ipv6.test", Some(Trust::Trusted), &[], None),
        ("a@out.test", Some(Trust::Untrusted), &[], None),
        ("a@pm.test", None, &[], Some(ConfigProblem)),
    ];
    for (to, trust, failures, text) in want {
        let row = first(&rows, to);
        assert_eq!(
            (row.1, row.2.as_slice(), row.3),
            (trust, failures, text),
            "{to}"
        );
    }
    // Every status line of a verified.test recipient is governed by TLS.
    assert!(
        rows.iter()
            .filter(|r| r.0.ends_with("@verified.test"))
            .all(|r| r.1 == Some(Trust::Verified))
    );
}

#[test]
fn reused_tls_connection_keeps_its_facts() {
    let rows = attribute(REUSE);
    assert_eq!(first(&rows, "b@verified.test").1, Some(Trust::Verified));
    // conn_use=2 over a plaintext connection cached by another process.
    assert_eq!(first(&rows, "c@plain.test").1, None);
    let mut reused = 0;
    for line in REUSE.lines() {
        if let Event::Delivery(d) = event(line) {
            if d.conn_use == Some(2) {
                reused += 1;
                assert_eq!(d.status, Status::Sent);
                assert!(matches!(d.relay, Relay::Peer(_)));
            }
        }
    }
    assert_eq!(reused, 2);
}

#[test]
fn from_source_lines_are_attributed() {
    use TlsFailureKind::*;
    let rows = attribute(FROM_SOURCE);
    assert_eq!(first(&rows, "x@anon.test").1, Some(Trust::Anonymous));
    assert_eq!(first(&rows, "y@nostarttls.test").3, Some(NotOffered));
    assert_eq!(first(&rows, "z@refuse.test").3, Some(StartTlsRefused));
    let dane = first(&rows, "d@dane.test");
    assert_eq!(dane.1, Some(Trust::Untrusted));
    assert_eq!(dane.2, vec![TlsaUnusable, VerificationFailed]);
    assert_eq!(first(&rows, "t@tlsa.test").3, Some(TlsaLookupError));
    assert_eq!(first(&rows, "e@example.test").3, Some(ConfigProblem));
    assert_eq!(first(&rows, "\"odd, >, relay=x\"@example.test").1, None);
}
