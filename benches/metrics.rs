//! Cost of the metrics on the request path: what one socketmap lookup
//! records (`lookup` with its latency histogram, `decision`), single
//! threaded and from two threads at once, and the time to render a scrape.
//!
//!     cargo bench --bench metrics
//!
//! `BENCH_OPS` sets the operations per thread (default 20,000,000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_policyd::engine::decision::{Decision, Level, SourceKind};
use tls_policyd::metrics::{Frontend, Metrics};

fn decision(level: Level, source: SourceKind) -> Decision {
    Decision::bare(level, source, "bench")
}

/// What the socketmap records per request, `ops` times; ns per request.
fn record(m: &Metrics, ops: u64, with_clock: bool) -> f64 {
    let decisions = [
        decision(Level::Encrypt, SourceKind::Static),
        decision(Level::May, SourceKind::Default),
        decision(Level::Secure, SourceKind::Static),
    ];
    let start = Instant::now();
    for i in 0..ops {
        let t = if with_clock {
            Some(Instant::now())
        } else {
            None
        };
        let d = &decisions[(i % 3) as usize];
        let took = t.map_or(Duration::from_micros(40), |t| t.elapsed());
        m.lookup(Frontend::Socketmap, black_box(took));
        m.decision(Frontend::Socketmap, black_box(d));
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn main() {
    let ops: u64 = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    let m = Arc::new(Metrics::new());
    // Warm-up.
    record(&m, ops / 10, true);
    let counters = record(&m, ops, false);
    let with_clock = record(&m, ops, true);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || record(&m, ops, true))
        })
        .collect();
    let contended: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut text = String::new();
    let renders = 1000;
    let start = Instant::now();
    for _ in 0..renders {
        text.clear();
        m.render(&mut text);
    }
    let render_us = start.elapsed().as_secs_f64() * 1e6 / renders as f64;
    assert_eq!(
        m.lookups(Frontend::Socketmap),
        ops / 10 + 2 * ops + 2 * ops,
        "every lookup counted"
    );
    println!("ops per run: {ops}");
    println!("counters only (lookup + histogram + decision): {counters:.1} ns/request");
    println!("with the two clock reads the socketmap adds:   {with_clock:.1} ns/request");
    println!(
        "two threads at once, with clock:               {:.1} / {:.1} ns/request",
        contended[0], contended[1]
    );
    println!("render /metrics: {render_us:.1} µs ({} bytes)", text.len());
}
