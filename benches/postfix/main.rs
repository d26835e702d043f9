//! What tls-policyd costs Postfix's own throughput:
//! `cargo bench --bench postfix` (as root, with Debian's postfix).
//!
//! Inside a network namespace it creates (only `lo`), the benchmark runs
//! Postfix's `smtp-sink` on 127.0.0.2:25 (the MX of `dest.example`, by
//! `/etc/hosts`), a private Postfix instance on 127.0.0.1:25 and the
//! release `tls-policyd` with all three front doors on loopback TCP, as
//! `postfix-examples/deployments/all-front-doors` configures them (its
//! `tls-policyd.toml`, `policy.toml` and main.cf lines, read from the
//! files). Postfix's `smtp-source` then injects messages
//! (3 recipients, 2 KB, one SMTP session per message, S sessions in
//! parallel) from 127.0.0.1, a client in `mynetworks`, and each run is
//! timed until the sink has counted every message.
//!
//! Configurations, switched with `postconf -e` and a Postfix restart and
//! run interleaved (one of each per repetition), each after a short
//! untimed warm-up:
//! - `plain`: no front door;
//! - `socketmap`: `smtp_tls_policy_maps`;
//! - `policy`: `check_policy_service` where the deployment asks it (at
//!   RCPT: its milter writes the per-message record);
//! - `milter`: `smtpd_milters`;
//! - `all`: the three together;
//! - `floor-policy`, `floor-milter`, `floor-all`: the same main.cf lines
//!   answered by bare responders that hold the same conversations and do
//!   nothing else (`floor.rs`): what the protocol exchanges alone cost on
//!   this machine. Their CPU column is the responders'. Not run by
//!   default.
//!
//! Every run is checked: every message reached the sink, the queue is
//! empty, and the decision log gained exactly one policy-server record per
//! recipient (plus one per message if the deployment asks the policy
//! server at END-OF-DATA), one milter record per message, and at
//! least one socketmap record (Postfix reuses a cached connection's policy,
//! so socketmap lookups are fewer than deliveries). The report is a
//! markdown table per session count: median messages/s, the ratio to
//! `plain`, the daemon's CPU seconds per 1,000 messages (from
//! `/proc/PID/stat`), its context switches per message (every thread's,
//! from `/proc/PID/task/*/status`: how often it was woken), and on one
//! session the time each configuration adds
//! per message. It ends with the targets checked against these figures.
//!
//! Knobs (environment): `BENCH_MESSAGES` (default 3000), `BENCH_SESSIONS`
//! (default `8,32`), `BENCH_SINGLE_MESSAGES` (messages for the
//! one-session latency runs, default 300; 0 skips them),
//! `BENCH_SENDMAIL_MESSAGES` (messages submitted with `sendmail(1)` one
//! after another, with and without the milter as `non_smtpd_milters`,
//! default 100; 0 skips them), `BENCH_REPS`
//! (default 5), `BENCH_CONFIGS` (default `plain,socketmap,policy,milter,all`),
//! `BENCH_SOCKETS` (`inet`, the default: the deployment's loopback TCP
//! addresses; `unix`: unix sockets in Postfix's queue directory instead,
//! as the Debian package has them), `BENCH_DAEMON` (another `tls-policyd`
//! binary to run, for figures before a change).
//! Every wait is bounded; a run that does not finish fails the benchmark.

#[path = "../../tests/common/mod.rs"]
mod common;

mod deployment;
mod floor;
mod lab;
mod records;

use std::time::Duration;

use lab::{Config, Lab, Measurement};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The medians of one configuration at one session count.
struct Summary {
    config: Config,
    msgs_per_sec: f64,
    cpu_ms_per_msg: f64,
    switches_per_msg: f64,
    ms_per_msg: f64,
}

fn summarise(config: Config, runs: &[Measurement]) -> Summary {
    Summary {
        config,
        msgs_per_sec: median(runs.iter().map(|m| m.msgs_per_sec()).collect()),
        cpu_ms_per_msg: median(runs.iter().map(|m| m.daemon_cpu_ms_per_msg()).collect()),
        switches_per_msg: median(runs.iter().map(|m| m.daemon_switches_per_msg()).collect()),
        ms_per_msg: median(runs.iter().map(|m| m.ms_per_msg()).collect()),
    }
}

fn run_level(
    lab: &mut Lab,
    configs: &[Config],
    sessions: usize,
    messages: usize,
    reps: usize,
) -> Vec<Summary> {
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); configs.len()];
    for rep in 0..reps {
        for (i, &config) in configs.iter().enumerate() {
            let m = lab.run(config, sessions, messages);
            eprintln!(
                "rep {}/{reps} sessions {sessions} {:<9} {:>7.1} msgs/s, daemon {:.3} CPU ms/msg, \
                 {:.2} switches/msg, {} socketmap lookups",
                rep + 1,
                config.name(),
                m.msgs_per_sec(),
                m.daemon_cpu_ms_per_msg(),
                m.daemon_switches_per_msg(),
                m.socketmap_records,
            );
            runs[i].push(m);
        }
    }
    configs
        .iter()
        .zip(&runs)
        .map(|(&c, r)| summarise(c, r))
        .collect()
}

fn print_table(sessions: usize, messages: usize, reps: usize, rows: &[Summary]) {
    let plain = rows
        .iter()
        .find(|s| s.config == Config::Plain)
        .map(|s| s.msgs_per_sec);
    println!("\n### {sessions} sessions, {messages} messages x 3 recipients, median of {reps}\n");
    println!(
        "| front doors | msgs/s | vs plain | daemon CPU s / 1,000 msgs | daemon context switches / msg |"
    );
    println!("|---|---:|---:|---:|---:|");
    for s in rows {
        let ratio = plain.map_or(String::from("-"), |p| format!("{:.2}", s.msgs_per_sec / p));
        println!(
            "| {} | {:.0} | {ratio} | {:.3} | {:.2} |",
            s.config.name(),
            s.msgs_per_sec,
            s.cpu_ms_per_msg,
            s.switches_per_msg
        );
    }
}

fn main() {
    if std::env::var_os(floor::FLOOR_ENV).is_some() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        floor::main(&args);
        return;
    }
    let messages: usize = env_or("BENCH_MESSAGES", 3000);
    let single: usize = env_or("BENCH_SINGLE_MESSAGES", 300);
    let reps: usize = env_or("BENCH_REPS", 5).max(1);
    let sendmail: usize = env_or("BENCH_SENDMAIL_MESSAGES", 100);
    let sessions: Vec<usize> = std::env::var("BENCH_SESSIONS")
        .unwrap_or_else(|_| "8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .collect();
    let configs: Vec<Config> = std::env::var("BENCH_CONFIGS")
        .unwrap_or_else(|_| "plain,socketmap,policy,milter,all".into())
        .split(',')
        .map(|s| Config::parse(s.trim()).unwrap_or_else(|| panic!("unknown configuration {s:?}")))
        .collect();

    let unix = std::env::var("BENCH_SOCKETS").is_ok_and(|v| v == "unix");
    let Some(mut lab) = Lab::start(unix) else {
        eprintln!("postfix benchmark skipped: needs root, ip, postfix, smtp-source and smtp-sink");
        return;
    };
    println!("## Postfix throughput, plain vs tls-policyd's front doors");
    println!("\n{}", lab.describe());

    let mut targets: Vec<(String, bool)> = Vec::new();
    if single > 0 {
        let rows = run_level(&mut lab, &configs, 1, single, reps);
        print_table(1, single, reps, &rows);
        if let Some(plain) = rows.iter().find(|s| s.config == Config::Plain) {
            println!("\n| front doors | ms per message, one session | added vs plain |");
            println!("|---|---:|---:|");
            for s in &rows {
                let added = s.ms_per_msg - plain.ms_per_msg;
                println!(
                    "| {} | {:.2} | {added:+.2} |",
                    s.config.name(),
                    s.ms_per_msg
                );
                if s.config == Config::Milter {
                    targets.push((
                        format!(
                            "the milter adds {added:.2} ms per message on one session (< 1 ms)"
                        ),
                        added < 1.0,
                    ));
                }
            }
        }
    }
    if sendmail > 0 {
        // Mail submitted with sendmail(1): cleanup speaks to the milter
        // (non_smtpd_milters) without an smtpd in between.
        let mut plain = Vec::new();
        let mut with = Vec::new();
        for _ in 0..reps {
            plain.push(lab.sendmail_run(false, sendmail).as_secs_f64() * 1000.0 / sendmail as f64);
            with.push(lab.sendmail_run(true, sendmail).as_secs_f64() * 1000.0 / sendmail as f64);
        }
        let (plain, with) = (median(plain), median(with));
        println!("\n### sendmail(1), {sendmail} messages one after another, median of {reps}\n");
        println!("| non_smtpd_milters | ms per message |");
        println!("|---|---:|");
        println!("| none | {plain:.2} |");
        println!("| tls-policyd milter | {with:.2} |");
        // A submission costs ~15 ms of process start-up either way; a
        // packet waiting for the delayed ACK would add 40.
        targets.push((
            format!(
                "the milter adds {:.2} ms per sendmail(1) message (< 5 ms: no delayed-ACK wait)",
                with - plain
            ),
            with - plain < 5.0,
        ));
    }
    for &s in &sessions {
        let rows = run_level(&mut lab, &configs, s, messages, reps);
        print_table(s, messages, reps, &rows);
        let plain = rows.iter().find(|r| r.config == Config::Plain);
        if let (Some(plain), Some(all)) = (plain, rows.iter().find(|r| r.config == Config::All)) {
            let ratio = all.msgs_per_sec / plain.msgs_per_sec;
            targets.push((
                format!("all three front doors at {s} sessions: {ratio:.3} of plain (>= 0.95)"),
                ratio >= 0.95,
            ));
            targets.push((
                format!(
                    "all three front doors at {s} sessions: {:.3} daemon CPU ms per message (<= 0.15)",
                    all.cpu_ms_per_msg
                ),
                all.cpu_ms_per_msg <= 0.15,
            ));
        }
    }
    if !targets.is_empty() {
        println!("\n### Targets\n");
        for (what, met) in &targets {
            println!("- [{}] {what}", if *met { "x" } else { " " });
        }
    }
    lab.stop(Duration::from_secs(10));
}
