//! The decision-log fixture and helpers shared by the reader's tests.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use flate2::Compression;
use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::{LogQuery, OutputFormat, RunStats, run};

// The fixture: 9 lines, 6 good records, 2 bad lines, 1 blank line.
//
//   #  domain                 tls            level*     source   queue_id  ts (2026-11-24)
//   1  bank.example           forced         encrypt    static   -         10:00:00.000001
//   2  gmail.com              opportunistic  may        default  Q1        10:05:00
//   3  xn--bcher-kva.example  forced         verify     mta-sts  Q2        11:00:00
//   4  (not JSON)
//   5  gmail.com, no ts
//   6  gmail.com              opportunistic  may        default  Q3        12:00:00 (extra fields)
//   7  bank.example           forced         encrypt    static   -         12:30:00 (escaped reason)
//   8  example.net            forced         dane-only  dane     Q4        13:00:00
//   9  (blank)
//
// * effective level: record 3 has level "secure" but policy "verify".
pub(super) const L1: &str = r#"{"ts":"2026-11-24T10:00:00.000001Z","frontend":"socketmap","map":"tls_policy","key":"Bank.Example","domain":"bank.example","tls":"forced","level":"encrypt","policy":"encrypt","source":"static","rule":1,"reason":"PCI partner"}"#;
pub(super) const L2: &str = r#"{"ts":"2026-11-24T10:05:00.000000Z","frontend":"policy","queue_id":"Q1","key":"gmail.com","domain":"gmail.com","tls":"opportunistic","level":"may","policy":"may","source":"default","reason":"no rule matched"}"#;
pub(super) const L3: &str = r#"{"ts":"2026-11-24T11:00:00.000000Z","frontend":"policy","queue_id":"Q2","key":"bücher.example","domain":"xn--bcher-kva.example","tls":"forced","level":"secure","policy":"verify","source":"mta-sts","reason":"mta-sts enforce"}"#;
pub(super) const L4: &str = "this is not json";
pub(super) const L5: &str = r#"{"frontend":"policy","domain":"gmail.com","tls":"forced"}"#;
pub(super) const L6: &str = r#"{"ts":"2026-11-24T12:00:00.000000Z","frontend":"milter","queue_id":"Q3","domain":"gmail.com","tls":"opportunistic","level":"may","source":"default","reason":"no rule matched","sender":"a@b.example","recipients":["x@gmail.com","y@gmail.com"],"future":{"nested":[1,2,3]}}"#;
pub(super) const L7: &str = r#"{"ts":"2026-11-24T12:30:00.000000Z","frontend":"socketmap","key":"bank.example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","reason":"PCI \"partner\"\ttab"}"#;
pub(super) const L8: &str = r#"{"ts":"2026-11-24T13:00:00.000000Z","frontend":"policy","queue_id":"Q4","domain":"example.net","tls":"forced","level":"dane-only","source":"dane","reason":"TLSA published"}"#;

// Delivery records, in the daemon's field order, appended to the fixture by
// `mixed_query`:
//
//   #   queue_id  domain                 status    tls_trust  verdict             ts (2026-11-24)
//   D1  Q1        gmail.com              sent      trusted    encrypted           10:10:00
//   D2  Q2        xn--bcher-kva.example  deferred  none       held                10:20:00
//   D3  Q2        xn--bcher-kva.example  sent      verified   verified            11:30:00
//   D4  Q3        gmail.com              sent      none       plaintext-fallback  12:10:00
//   D5  Q5        (none: "root")         sent      none       undecided           13:10:00
//   D6  Q6        example.net            deferred  none       (unknown word)      13:20:00
pub(super) const D1: &str = r#"{"ts":"2026-11-24T10:10:00.000000Z","frontend":"delivery","queue_id":"Q1","recipient":"a@gmail.com","domain":"gmail.com","relay":"gmail-smtp-in.l.google.com[192.0.2.1]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 2.0.0 OK","tls_trust":"trusted","tls_protocol":"TLSv1.3","tls_cipher":"TLS_AES_256_GCM_SHA384","decided_by":"socketmap","tls":"opportunistic","level":"may","source":"default","reason":"no rule matched","verdict":"encrypted","logged_at":"2026-11-24T10:10:00Z","delay":0.5}"#;
pub(super) const D2: &str = r#"{"ts":"2026-11-24T10:20:00.000000Z","frontend":"delivery","queue_id":"Q2","recipient":"b@bücher.example","domain":"xn--bcher-kva.example","relay":"mx.xn--bcher-kva.example[192.0.2.7]:25","transport":"postfix/smtp","status":"deferred","dsn":"4.7.4","status_text":"TLS is required, but was not offered by host mx.xn--bcher-kva.example[192.0.2.7]","tls_trust":"none","tls_failure":"not-offered","decided_by":"policy","tls":"forced","level":"secure match=mx.xn--bcher-kva.example","source":"mta-sts","reason":"mta-sts enforce","verdict":"held","logged_at":"2026-11-24T10:20:00Z","delay":1.2}"#;
pub(super) const D3: &str = r#"{"ts":"2026-11-24T11:30:00.000000Z","frontend":"delivery","queue_id":"Q2","recipient":"b@bücher.example","domain":"xn--bcher-kva.example","relay":"mx.xn--bcher-kva.example[192.0.2.7]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 ok","tls_trust":"verified","tls_protocol":"TLSv1.3","tls_cipher":"TLS_AES_128_GCM_SHA256","decided_by":"policy","tls":"forced","level":"secure match=mx.xn--bcher-kva.example","source":"mta-sts","reason":"mta-sts enforce","verdict":"verified","logged_at":"2026-11-24T11:30:00Z","delay":4200}"#;
pub(super) const D4: &str = r#"{"ts":"2026-11-24T12:10:00.000000Z","frontend":"delivery","queue_id":"Q3","recipient":"c@gmail.com","domain":"gmail.com","relay":"gmail-smtp-in.l.google.com[192.0.2.1]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 2.0.0 OK","tls_trust":"none","tls_failure":"not-offered","decided_by":"milter","tls":"opportunistic","level":"may","source":"default","reason":"no rule matched","verdict":"plaintext-fallback","logged_at":"2026-11-24T12:10:00Z","delay":0.3}"#;
pub(super) const D5: &str = r#"{"ts":"2026-11-24T13:10:00.000000Z","frontend":"delivery","queue_id":"Q5","recipient":"root","relay":"local","transport":"postfix/local","status":"sent","dsn":"2.0.0","status_text":"delivered to mailbox","tls_trust":"none","verdict":"undecided","logged_at":"2026-11-24T13:10:00Z","delay":0.01}"#;
pub(super) const D6: &str = r#"{"ts":"2026-11-24T13:20:00.000000Z","frontend":"delivery","queue_id":"Q6","recipient":"d@example.net","domain":"example.net","relay":"none","transport":"postfix/smtp","status":"deferred","dsn":"4.4.1","status_text":"connect to mx.example.net[192.0.2.9]:25: Connection refused","tls_trust":"none","decided_by":"rule","tls":"forced","level":"dane-only","source":"dane","reason":"TLSA published","verdict":"not-yet-known","logged_at":"2026-11-24T13:20:00Z","delay":2}"#;

pub(super) fn fixture() -> String {
    [L1, L2, L3, L4, L5, L6, L7, L8, ""]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect()
}

pub(super) fn write_file(dir: &TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    fs::write(&p, data).unwrap();
    p
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Runs `query` against the fixture with the given filters applied.
pub(super) fn fixture_query(f: impl FnOnce(&mut LogQuery)) -> (TempDir, LogQuery) {
    let dir = TempDir::new().unwrap();
    let p = write_file(&dir, "decisions.jsonl", fixture().as_bytes());
    let mut q = LogQuery {
        files: vec![p],
        ..LogQuery::default()
    };
    f(&mut q);
    (dir, q)
}

/// The fixture followed by the delivery records D1 to D6, with the given
/// filters applied.
pub(super) fn mixed_query(f: impl FnOnce(&mut LogQuery)) -> (TempDir, LogQuery) {
    let (dir, mut q) = fixture_query(|_| {});
    let deliveries: String = [D1, D2, D3, D4, D5, D6]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut data = fixture();
    data.push_str(&deliveries);
    q.files = vec![write_file(&dir, "mixed.jsonl", data.as_bytes())];
    f(&mut q);
    (dir, q)
}

pub(super) fn run_to_string(q: &LogQuery, format: OutputFormat) -> (RunStats, String) {
    let mut out = Vec::new();
    let stats = run(q, format, &mut out).unwrap();
    (stats, String::from_utf8(out).unwrap())
}

/// Write `data` as the one file `name` and read it as JSON lines.
pub(super) fn read_one(name: &str, data: &[u8]) -> (RunStats, String) {
    let dir = TempDir::new().unwrap();
    let q = LogQuery {
        files: vec![write_file(&dir, name, data)],
        ..LogQuery::default()
    };
    run_to_string(&q, OutputFormat::Json)
}

/// [`RunStats`] with these counts.
pub(super) fn stats_of(lines: u64, matched: u64, bad_lines: u64) -> RunStats {
    RunStats {
        lines,
        matched,
        bad_lines,
    }
}

pub(super) fn matched(f: impl FnOnce(&mut LogQuery)) -> u64 {
    let (_dir, q) = fixture_query(f);
    run_to_string(&q, OutputFormat::Json).0.matched
}

/// The matching lines (JSON output), in order.
pub(super) fn matched_lines(f: impl FnOnce(&mut LogQuery)) -> Vec<String> {
    let (_dir, q) = fixture_query(f);
    let (_, out) = run_to_string(&q, OutputFormat::Json);
    out.lines().map(str::to_owned).collect()
}

pub(super) fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}
