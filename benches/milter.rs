//! Load generator for the milter front door: `cargo bench --bench milter`.
//!
//! Starts the release `tls-policyd` with a `[milter]` section on a unix
//! socket (trace header on, so every message also gets an end-of-message
//! action) and the decision log written to a file, then drives it with C
//! concurrent MTA connections of the `indymilter-test` client. (A unix
//! socket because that client cannot switch off Nagle's algorithm on TCP,
//! which would add delayed-ACK waits that Postfix does not have.) Each connection sends
//! messages the way Postfix does for one SMTP session per connection:
//! negotiate, connect, HELO, MAIL, two RCPT (a forced and an opportunistic
//! domain), three headers, end of message, quit. It warms up for a second,
//! measures for `BENCH_SECONDS`, and prints messages per second and
//! per-message latency percentiles (connect to end-of-message reply) as a
//! markdown table, plus the decision log's line count, which must equal
//! the messages sent.
//!
//! Knobs (environment): `BENCH_SECONDS` (default 5), `BENCH_CONNS`
//! (default `1,8,64`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indymilter_test::{MacroStage, Status, TestConnection};

const WARMUP: Duration = Duration::from_secs(1);

const POLICY: &str = r#"
[[rule]]
domains = ["bank.example"]
tls = "forced"
reason = "PCI partner"
"#;

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let conns: Vec<usize> = std::env::var("BENCH_CONNS")
        .unwrap_or_else(|_| "1,8,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_tls-policyd"));
    let dir = tempfile::Builder::new()
        .prefix("tls-policyd-bench.")
        .tempdir()
        .expect("temporary directory");
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let config = dir.path().join("tls-policyd.toml");
    std::fs::write(
        &config,
        "[milter]\nlisten = \"unix:milter.sock\"\ntrace_header = \"X-TLS-Policy\"\n\
         [prober]\nenabled = false\n[policy]\nfile = \"policy.toml\"\n\
         [log]\ndecisions = \"decisions.jsonl\"\nlevel = \"warn,tls_policyd=info\"\n",
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tls-policyd");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("tls-policyd exited before listening")
            .unwrap();
        if let Some(at) = line.find("address=unix:") {
            break line[at + "address=unix:".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| C | messages/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|--:|--:|--:|--:|--:|");
    let mut total = 0usize;
    for c in conns {
        let (sent, mut lat, elapsed) = rt.block_on(run(&addr, c, seconds));
        total += sent;
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.2} |",
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
    }
    // Every message, warm-up included, has its record.
    let log = dir.path().join("decisions.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let n = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= total || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("- messages sent: {total}, decision records: {records}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert_eq!(records, total, "a message without its record");
}

/// C connections for warm-up plus `seconds`; returns messages sent in all,
/// the latencies measured after warm-up, and the measured time.
async fn run(addr: &str, conns: usize, seconds: f64) -> (usize, Vec<Duration>, Duration) {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let addr = addr.to_string();
        let (measuring, stop) = (measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                message(&addr, &format!("B{i}N{sent}")).await;
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed());
                }
                sent += 1;
            }
            (sent, lat)
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut sent = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (s, l) = t.await.unwrap();
        sent += s;
        lat.extend(l);
    }
    (sent, lat, elapsed)
}

/// One SMTP session with one message, as Postfix's smtpd drives a milter.
async fn message(addr: &str, id: &str) {
    let mut conn = TestConnection::configure()
        .open_unix(addr)
        .await
        .expect("connect");
    conn.macros(
        MacroStage::Connect,
        [("j", "mx.example"), ("{daemon_name}", "smtpd")],
    )
    .await
    .unwrap();
    conn.connect("client.example", ([192, 0, 2, 25], 41234))
        .await
        .unwrap();
    conn.helo("client.example").await.unwrap();
    conn.macros(MacroStage::Mail, [("{mail_addr}", "alice@src.example")])
        .await
        .unwrap();
    conn.mail(["<alice@src.example>"]).await.unwrap();
    for r in ["a@bank.example", "b@other.example"] {
        conn.macros(MacroStage::Rcpt, [("i", id), ("{rcpt_addr}", r)])
            .await
            .unwrap();
        conn.rcpt([format!("<{r}>")]).await.unwrap();
    }
    for (n, v) in [
        ("From", "alice@src.example"),
        ("Subject", "benchmark"),
        ("Message-ID", "<bench@src.example>"),
    ] {
        conn.header(n, v).await.unwrap();
    }
    conn.macros(MacroStage::Eom, [("i", id)]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(actions.actions.len(), 1, "the trace header");
    conn.close().await.unwrap();
}
