//! The outcome follower on a busy relay's mail log: the whole path a log
//! line takes in the daemon (file → `Follower` → `outcomes::pipeline`:
//! `LineSplitter`, `syslog::parse_line`, `outcomes::event_of`,
//! `ConnectionTracker::observe` → `DecisionIndex::judge` → the outcome
//! record's JSON line).
//!
//!     cargo bench --bench outcomes
//!
//! Knobs: `BENCH_LINES` (lines in the generated log, default 1,000,000),
//! `BENCH_RUNS` (5), `BENCH_PACED_SECONDS` (10), `BENCH_RATE` (deliveries
//! per second written in the paced part, 1000), `BENCH_POLL_MS` (200).
//!
//! What it does: writes a mail log in Postfix's format from the line
//! shapes of `tests/fixtures/postfix-logs/` (per message: smtpd connect,
//! STARTTLS summary for half, client, cleanup, qmgr, disconnect; one smtp
//! connection with 1 to 3 recipients: TLS of the four trust kinds, some
//! reused with `conn_use=2`, plaintext, certificate and handshake failures,
//! `TLS is required` and connect timeouts deferred, bounces; qmgr removed;
//! other programs now and then; the traditional and the RFC 3339 timestamp
//! on alternate messages), then
//! (a) reads it whole, `BENCH_RUNS` times: lines per second (median) and
//!     the deliveries found, checked against what was written;
//! (b) memory: VmHWM and VmRSS of this process before and after, and the
//!     processes the tracker holds;
//! (c) writes at `BENCH_RATE` deliveries per second for
//!     `BENCH_PACED_SECONDS` into a new file while a thread follows it as
//!     the daemon would (read everything new every `BENCH_POLL_MS`), and
//!     reports that thread's CPU time over the wall time.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::time::SystemTime;

use tls_policyd::engine::decision::{Decision, Level, SourceKind};
use tls_policyd::engine::outcome::Verdict;
use tls_policyd::log::record::{DecisionRecord, Detail};
use tls_policyd::metrics::LineKind;
use tls_policyd::outcomes::correlate::{DecisionIndex, IndexLimits, IndexObservers};
use tls_policyd::outcomes::follow::{Follower, Start};
use tls_policyd::outcomes::lines::MAX_LINE_LEN;
use tls_policyd::outcomes::pipeline::Pipeline;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// What the generator wrote, and what the follower found: deliveries,
/// those over TLS, those with TLS failure lines but no TLS summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    deliveries: u64,
    tls: u64,
    failures_only: u64,
}

/// A busy relay's log, message by message (deterministic).
struct Gen {
    rng: u64,
    msg: u64,
    lines: u64,
    wrote: Counts,
}

const CIPHER: &str = "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256";

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: seed | 1,
            msg: 0,
            lines: 0,
            wrote: Counts::default(),
        }
    }

    /// xorshift64*.
    fn pick(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }

    /// One line of `program[pid]` (no pid when 0), dated by the message.
    fn line(&mut self, out: &mut String, program: &str, pid: u32, text: std::fmt::Arguments) {
        let secs = 6 * 3600 + self.msg / 100;
        let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let _ = if self.msg % 2 == 0 {
            write!(out, "Dec  5 {h:02}:{m:02}:{s:02} mx1 ")
        } else {
            let us = self.msg % 100 * 10_000 + self.lines % 10_000;
            write!(out, "2026-12-05T{h:02}:{m:02}:{s:02}.{us:06}+00:00 mx1 ")
        };
        let _ = if pid == 0 {
            write!(out, "{program}: ")
        } else {
            write!(out, "{program}[{pid}]: ")
        };
        let _ = out.write_fmt(text);
        out.push('\n');
        self.lines += 1;
    }

    /// All lines of one message.
    fn message(&mut self, out: &mut String) {
        self.msg += 1;
        let msg = self.msg;
        let qid = format!("{:011X}", msg.wrapping_mul(0x9e37_79b9_7f4a) >> 20);
        let c = self.pick(500);
        let client = format!("client{c}.example[192.0.2.{}]", c % 250 + 1);
        let smtpd = 1000 + self.pick(20) as u32;
        let rcpts = [1, 1, 1, 2, 3][self.pick(5) as usize];
        self.line(
            out,
            "postfix/smtpd",
            smtpd,
            format_args!("connect from {client}"),
        );
        if self.pick(2) == 0 {
            self.line(
                out,
                "postfix/smtpd",
                smtpd,
                format_args!("Anonymous TLS connection established from {client}: {CIPHER}"),
            );
        }
        self.line(
            out,
            "postfix/smtpd",
            smtpd,
            format_args!("{qid}: client={client}"),
        );
        let cleanup = 1100 + self.pick(4) as u32;
        self.line(
            out,
            "postfix/cleanup",
            cleanup,
            format_args!("{qid}: message-id=<{msg}.{qid}@client{c}.example>"),
        );
        let size = 2000 + self.pick(50_000);
        self.line(out, "postfix/qmgr", 999, format_args!(
            "{qid}: from=<sender{c}@client{c}.example>, size={size}, nrcpt={rcpts} (queue active)"
        ));
        self.line(out, "postfix/smtpd", smtpd, format_args!(
            "disconnect from {client} ehlo=2 starttls=1 mail=1 rcpt={rcpts} data=1 quit=1 commands={}",
            6 + rcpts
        ));
        self.delivery(out, &qid, rcpts);
        self.line(out, "postfix/qmgr", 999, format_args!("{qid}: removed"));
        let (program, pid, text) = match self.pick(12) {
            0 => (
                "dovecot",
                0,
                format!(
                    "imap-login: Login: user=<u{c}@mx1.example>, method=PLAIN, rip=192.0.2.{}, \
                     lip=192.0.2.1, mpid={}, TLS",
                    c % 250 + 1,
                    3000 + c
                ),
            ),
            1 => (
                "opendkim",
                700,
                format!("{qid}: DKIM-Signature field added (s=mail, d=mx1.example)"),
            ),
            2 => (
                "kernel",
                0,
                format!("[{msg}.000000] nf_conntrack: table full, dropping packet"),
            ),
            _ => return,
        };
        self.line(out, program, pid, format_args!("{text}"));
    }

    /// One smtp connection carrying `rcpts` recipients of `qid`.
    fn delivery(&mut self, out: &mut String, qid: &str, rcpts: u64) {
        let d = self.pick(5000);
        let mx = format!("mx.d{d}.example");
        let peer = if d % 10 == 0 {
            format!("{mx}[2001:db8::{d:x}]:25")
        } else {
            format!("{mx}[198.51.100.{}]:25", d % 250 + 1)
        };
        let pid = 2000 + self.pick(100) as u32;
        let mut before = Vec::new();
        let mut conn_use = "";
        let (ending, facts) = match self.pick(100) {
            0..=54 => {
                let (trust, cipher) = match self.pick(10) {
                    0..=3 => ("Verified", CIPHER),
                    4..=6 => ("Trusted", CIPHER),
                    7..=8 => ("Untrusted", CIPHER),
                    _ => ("Anonymous", ANON_CIPHER),
                };
                let how = if self.pick(10) == 0 {
                    conn_use = "conn_use=2, ";
                    "reused"
                } else {
                    "established"
                };
                before.push(format!("{trust} TLS connection {how} to {peer}: {cipher}"));
                let ending = if self.pick(20) == 0 { NO_USER } else { SENT };
                (ending, Facts::Tls)
            }
            55..=74 => (SENT, Facts::None),
            75..=81 => {
                before.push(format!(
                    "certificate verification failed for {peer}: self-signed certificate"
                ));
                before.push(format!(
                    "Untrusted TLS connection established to {peer}: {CIPHER}"
                ));
                (NOT_VERIFIED, Facts::Tls)
            }
            82..=85 => {
                before.push(format!("SSL_connect error to {peer}: -1"));
                before.push(LIBRARY_PROBLEM.into());
                (HANDSHAKE, Facts::FailuresOnly)
            }
            86..=89 => (NOT_OFFERED, Facts::None),
            90..=94 => {
                before.push(format!("connect to {peer}: Connection timed out"));
                (TIMED_OUT, Facts::None)
            }
            _ => (NO_USER, Facts::None),
        };
        for text in before {
            self.line(out, "postfix/smtp", pid, format_args!("{text}"));
        }
        let (status, dsn, text) = ending;
        let text = text.replace("{mx}", &mx);
        let relay = if ending == TIMED_OUT { "none" } else { &peer };
        for r in 0..rcpts {
            self.line(
                out,
                "postfix/smtp",
                pid,
                format_args!(
                    "{qid}: to=<u{r}@d{d}.example>, relay={relay}, {conn_use}delay=0.16, \
                     delays=0.03/0.02/0.09/0.02, dsn={dsn}, status={status} ({text})"
                ),
            );
        }
        self.wrote.deliveries += rcpts;
        match facts {
            Facts::Tls => self.wrote.tls += rcpts,
            Facts::FailuresOnly => self.wrote.failures_only += rcpts,
            Facts::None => {}
        }
    }
}

/// What the tracker should attach to a connection's deliveries.
enum Facts {
    None,
    Tls,
    FailuresOnly,
}

/// How a connection's deliveries end: status, dsn, text (`{mx}`: the MX).
type Ending = (&'static str, &'static str, &'static str);

const SENT: Ending = ("sent", "2.0.0", "250 2.0.0 Ok: queued as 4F2A1B3C4D");
const NO_USER: Ending = (
    "bounced",
    "5.1.1",
    "host {mx} said: 550 5.1.1 <u@d.example>: Recipient address rejected: no such user \
     (in reply to RCPT TO command)",
);
const NOT_VERIFIED: Ending = ("deferred", "4.7.5", "Server certificate not verified");
const HANDSHAKE: Ending = ("deferred", "4.7.5", "Cannot start TLS: handshake failure");
const NOT_OFFERED: Ending = (
    "deferred",
    "4.7.4",
    "TLS is required, but was not offered by host {mx}",
);
/// Deferred with `relay=none`: no connection was made.
const TIMED_OUT: Ending = ("deferred", "4.4.1", "connect to {mx}: Connection timed out");
const ANON_CIPHER: &str = "TLSv1.2 with cipher ADH-AES256-GCM-SHA384 (256/256 bits)";
const LIBRARY_PROBLEM: &str = "warning: TLS library problem: error:0A00042E:SSL routines::\
     tlsv1 alert protocol version:../ssl/record/rec_layer_s3.c:1601:SSL alert number 70:";

/// The follower's side, as the daemon runs it: bytes to lines to events
/// to deliveries (`outcomes::pipeline::Pipeline`), each judged against the
/// decision that governed it (`DecisionIndex::judge`, the index holding a
/// socketmap lookup for every domain the log names) and serialised as the
/// outcome record's JSON line (into memory: the writer thread's part).
struct Path2 {
    pipeline: Pipeline,
    index: DecisionIndex,
    json: Vec<u8>,
    found: Counts,
    read: u64,
    bad: u64,
    verdicts: [u64; Verdict::ALL.len()],
}

fn no_rule(_: &str) -> Option<Decision> {
    None
}

impl Path2 {
    fn new() -> Path2 {
        let mut pipeline = Pipeline::new(MAX_LINE_LEN, Vec::new());
        pipeline.set_clock(SystemTime::now(), 0);
        // The log's own times are generated: the lookups govern all of them.
        let limits = IndexLimits {
            hop_window: Duration::from_secs(100 * 365 * 86_400),
            message_window: Duration::from_secs(100 * 365 * 86_400),
            ..IndexLimits::default()
        };
        let index = DecisionIndex::new(limits, IndexObservers::default());
        // Every domain the generator uses, decided a moment ago: forced for
        // a tenth, opportunistic for the rest.
        for d in 0..5000 {
            let level = if d % 10 == 0 {
                Level::Encrypt
            } else {
                Level::May
            };
            let decision = Decision {
                level,
                policy: Arc::from(level.as_str()),
                source: SourceKind::Static,
                rule: Some(1),
                matched: None,
                reason: Arc::from("bench"),
                ttl: Duration::from_secs(60),
                raised: false,
                temporary: false,
                published: None,
            };
            let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
            index.note_hop(&format!("d{d}.example"), None, &decision, ts);
        }
        Path2 {
            pipeline,
            index,
            json: Vec::with_capacity(1 << 16),
            found: Counts::default(),
            read: 0,
            bad: 0,
            verdicts: Default::default(),
        }
    }

    /// Everything the follower has now.
    fn drain(&mut self, f: &mut Follower) {
        while let Some(chunk) = f.read(256 * 1024).expect("read the log") {
            let Path2 {
                pipeline,
                index,
                json,
                found,
                verdicts,
                ..
            } = self;
            pipeline.feed(&chunk.bytes, chunk.fresh, &mut |d, facts| {
                found.deliveries += 1;
                match &d.connection {
                    Some(c) if c.tls.is_some() => found.tls += 1,
                    Some(c) if !c.failures.is_empty() => found.failures_only += 1,
                    _ => {}
                }
                let j = index.judge(d, facts, &no_rule);
                verdicts[j.outcome.verdict as usize] += 1;
                let rec =
                    DecisionRecord::new(Some(j.queue_id), Detail::Delivery(Box::new(j.outcome)));
                json.clear();
                serde_json::to_writer(&mut *json, &rec).unwrap();
            });
            let counts = self.pipeline.take_counts();
            self.read += counts.iter().sum::<u64>();
            self.bad += counts[LineKind::NotSyslog as usize] + counts[LineKind::TooLong as usize];
        }
    }
}

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// (a): the whole file through the path, once.
fn read_whole(log: &Path) -> (Duration, Path2) {
    let start = Instant::now();
    let (mut f, _) = Follower::new(log, None, Start::Beginning);
    let mut path = Path2::new();
    path.drain(&mut f);
    (start.elapsed(), path)
}

/// (c): written at `rate` deliveries/s for `seconds` while a thread follows.
fn paced(
    log: &Path,
    rate: u64,
    seconds: u64,
    poll: Duration,
) -> (Counts, Counts, u64, Duration, Duration) {
    File::create(log).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (log, stop) = (log.to_path_buf(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let cpu0 = thread_cpu();
            let start = Instant::now();
            let (mut f, _) = Follower::new(&log, None, Start::Beginning);
            let mut path = Path2::new();
            loop {
                let last = stop.load(Ordering::Acquire);
                path.drain(&mut f);
                if last {
                    break;
                }
                std::thread::sleep(poll);
            }
            (path.found, thread_cpu() - cpu0, start.elapsed())
        })
    };
    let mut file = File::options().append(true).open(log).unwrap();
    let mut g = Gen::new(0xfeed);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut buf = String::new();
    while Instant::now() < end {
        let due = rate * start.elapsed().as_micros() as u64 / 1_000_000;
        while g.wrote.deliveries < due {
            g.message(&mut buf);
        }
        file.write_all(buf.as_bytes()).unwrap();
        buf.clear();
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Release);
    let (found, cpu, wall) = follower.join().unwrap();
    (g.wrote, found, g.lines, cpu, wall)
}

fn main() {
    let lines = knob("BENCH_LINES", 1_000_000);
    let runs = knob("BENCH_RUNS", 5).max(1);
    let paced_secs = knob("BENCH_PACED_SECONDS", 10);
    let rate = knob("BENCH_RATE", 1000);
    let poll = Duration::from_millis(knob("BENCH_POLL_MS", 200));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");

    let mut g = Gen::new(0x5eed);
    let mut out = std::io::BufWriter::new(File::create(&log).unwrap());
    let mut buf = String::new();
    while g.lines < lines {
        g.message(&mut buf);
        out.write_all(buf.as_bytes()).unwrap();
        buf.clear();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let bytes = std::fs::metadata(&log).unwrap().len();
    println!(
        "command: cargo bench --bench outcomes (BENCH_LINES={lines} BENCH_RUNS={runs} BENCH_PACED_SECONDS={paced_secs} BENCH_RATE={rate} BENCH_POLL_MS={})",
        poll.as_millis()
    );
    println!(
        "log: {} lines, {:.1} MB ({} bytes a line), {} messages, {} deliveries ({} over TLS, {} with TLS failures only)",
        g.lines,
        bytes as f64 / 1e6,
        bytes / g.lines,
        g.msg,
        g.wrote.deliveries,
        g.wrote.tls,
        g.wrote.failures_only
    );

    let (hwm0, rss0) = memory();
    let mut rates = Vec::new();
    let mut tracked = 0;
    let mut verdicts = [0u64; Verdict::ALL.len()];
    for run in 1..=runs {
        let (took, path) = read_whole(&log);
        assert_eq!(path.read, g.lines, "lines read");
        assert_eq!(path.bad, 0, "lines refused");
        assert_eq!(path.found, g.wrote, "deliveries found vs written");
        let per_s = g.lines as f64 / took.as_secs_f64();
        println!(
            "(a) run {run}: {:.3} s, {:.0} lines/s, {:.0} deliveries/s, {} deliveries found",
            took.as_secs_f64(),
            per_s,
            path.found.deliveries as f64 / took.as_secs_f64(),
            path.found.deliveries
        );
        rates.push(per_s);
        tracked = path.pipeline.tracker().len();
        verdicts = path.verdicts;
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "(a) median of {runs}: {:.0} lines/s ({:.2} µs a line)",
        rates[rates.len() / 2],
        1e6 / rates[rates.len() / 2]
    );
    let judged: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| format!("{} {}", v.as_str(), verdicts[*v as usize]))
        .collect();
    println!("(a) verdicts of the last run: {}", judged.join(", "));
    let (hwm1, rss1) = memory();
    println!(
        "(b) memory: before the runs VmHWM {hwm0} KiB, VmRSS {rss0} KiB; after VmHWM {hwm1} KiB, VmRSS {rss1} KiB; the tracker held {tracked} processes at the end"
    );

    let (wrote, found, written_lines, cpu, wall) =
        paced(&dir.path().join("paced.log"), rate, paced_secs, poll);
    assert_eq!(found, wrote, "paced: deliveries found vs written");
    println!(
        "(c) paced: {} deliveries ({:.0}/s), {} lines ({:.0}/s) in {:.1} s; follower thread polling every {} ms: {:.3} s CPU, {:.2}% of one core",
        wrote.deliveries,
        wrote.deliveries as f64 / wall.as_secs_f64(),
        written_lines,
        written_lines as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        poll.as_millis(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}
