//! SIGTERM while clients hammer the front doors: every request is either
//! answered whole or refused by a closed connection (never half-answered,
//! never left hanging), every answer has its record in the decision log,
//! the listeners close, and the daemon exits with status 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::fixtures::POLICY_BANK as POLICY;
use common::{Daemon, Options, WAIT, netstring, parse_netstring, policy_request};

const THREADS: usize = 6;
/// Answers to wait for before SIGTERM.
const BEFORE_TERM: u64 = 300;
/// Most requests one client makes (bounds the loop if the daemon never
/// stops).
const MAX_REQUESTS: usize = 200_000;

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    /// What was answered: socketmap keys and policy recipients.
    keys: Mutex<Vec<String>>,
    /// Requests that got no answer: the connection was closed.
    refused: AtomicU64,
}

fn addr(listen: &str) -> String {
    listen.strip_prefix("inet:").unwrap().to_string()
}

fn socketmap_client(addr: &str, t: usize, tally: &Tally) {
    let mut n = 0;
    while n < MAX_REQUESTS {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return; // the listener is closed
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        loop {
            n += 1;
            let key = format!("s{t}-{n}.example");
            if s.write_all(&netstring(format!("tls_policy {key}").as_bytes()))
                .is_err()
            {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let mut buf = Vec::new();
            let answer = loop {
                if let Some((payload, _)) = parse_netstring(&buf).unwrap() {
                    break Some(payload);
                }
                let mut chunk = [0u8; 256];
                match s.read(&mut chunk) {
                    Ok(0) => break None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break None,
                    Err(e) => panic!("socketmap {key}: no answer and no close: {e}"),
                }
            };
            match answer {
                Some(p) => {
                    assert_eq!(p, b"OK may", "{key}");
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    tally.keys.lock().unwrap().push(key);
                }
                None => {
                    assert!(buf.is_empty(), "{key} half-answered: {buf:?}");
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

fn policy_client(addr: &str, t: usize, tally: &Tally) {
    let mut n = 0;
    while n < MAX_REQUESTS {
        let Ok(s) = TcpStream::connect(addr) else {
            return;
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut s = BufReader::new(s);
        loop {
            n += 1;
            let rcpt = format!("r{t}-{n}@p.example");
            let req = policy_request("RCPT", "a@sender.example", &rcpt, &format!("i{t}-{n}"), "");
            if s.get_mut().write_all(req.as_bytes()).is_err() {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let mut answer = String::new();
            let whole = loop {
                let mut line = String::new();
                match s.read_line(&mut line) {
                    Ok(0) => break false,
                    Ok(_) if line == "\n" => break true,
                    Ok(_) if !line.ends_with('\n') => break false,
                    Ok(_) => answer.push_str(&line),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break false,
                    Err(e) => panic!("policy {rcpt}: no answer and no close: {e}"),
                }
            };
            if whole {
                assert!(answer.starts_with("action="), "{rcpt}: {answer:?}");
                tally.answered.fetch_add(1, Ordering::Relaxed);
                tally.keys.lock().unwrap().push(rcpt);
            } else {
                assert!(answer.is_empty(), "{rcpt} half-answered: {answer:?}");
                tally.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

#[test]
fn sigterm_under_load_answers_or_refuses_every_request_and_exits_0() {
    let config = "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n\n\
                  [policy_server]\nlisten = \"inet:127.0.0.1:0\"\n\n\
                  [prober]\nenabled = false\n\n\
                  [policy]\nfile = \"policy.toml\"\n\n\
                  [log]\ndecisions = \"decisions.jsonl\"\n";
    let mut d = Daemon::start_frontend(config, POLICY, Options::default(), "socketmap");
    let sm = addr(&d.listening("socketmap"));
    let policy = addr(&d.listening("policy"));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for t in 0..THREADS {
        let (tl, a) = (tally.clone(), sm.clone());
        clients.push(thread::spawn(move || socketmap_client(&a, t, &tl)));
        let (tl, a) = (tally.clone(), policy.clone());
        clients.push(thread::spawn(move || policy_client(&a, t, &tl)));
    }
    let deadline = Instant::now() + WAIT;
    while tally.answered.load(Ordering::Relaxed) < BEFORE_TERM {
        assert!(Instant::now() < deadline, "no load within {WAIT:?}");
        thread::sleep(Duration::from_millis(5));
    }
    d.signal(libc::SIGTERM);
    let status = d.wait_exit();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        d.stderr_text()
    );
    assert!(d.stderr_text().contains("shutting down"));

    // Every answer has its record: the log was flushed before the exit.
    let text = std::fs::read_to_string(d.decisions_path()).unwrap();
    let mut logged = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        for field in ["key", "recipient"] {
            if let Some(k) = v[field].as_str() {
                logged.insert(k.to_string());
            }
        }
    }
    let keys = tally.keys.lock().unwrap();
    let policy_answers = keys.iter().filter(|k| k.contains('@')).count();
    assert!(
        policy_answers > 0 && policy_answers < keys.len(),
        "both doors answered under load"
    );
    let missing: Vec<_> = keys.iter().filter(|k| !logged.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answers have no record, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "{} answered, {} refused by a closed connection",
        keys.len(),
        tally.refused.load(Ordering::Relaxed)
    );
}
