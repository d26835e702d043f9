//! SIGTERM while clients hammer the three front doors (socketmap, policy
//! server, milter): every request is either answered whole or refused by a
//! closed connection (never half-answered, never left hanging), every
//! answer has its record in the decision log (a milter message answered at
//! end of message has its message record), the listeners close, and the
//! daemon exits with status 0.

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
/// Milter messages to wait for before SIGTERM.
const MILTER_BEFORE_TERM: u64 = 30;
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
    /// Milter messages answered.
    milter: AtomicU64,
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

/// One message per milter connection (as Postfix's smtpd opens one per
/// SMTP session), recorded by queue id when its end of message is
/// answered.
fn milter_client(addr: &str, t: usize, tally: &Tally) {
    use indymilter_test::{MacroStage, Status, TestConnection};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for n in 1..=MAX_REQUESTS / 100 {
            let Ok(mut c) = TestConnection::configure()
                .read_timeout(WAIT)
                .write_timeout(WAIT)
                .open_tcp(addr)
                .await
            else {
                return; // the listener is closed
            };
            let id = format!("M{t}x{n}");
            let steps = async {
                c.connect("client.example", [192, 0, 2, 25]).await?;
                c.mail(["<a@sender.example>"]).await?;
                c.macros(MacroStage::Rcpt, [("i", id.as_str())]).await?;
                c.rcpt([format!("<m{t}-{n}@p.example>")]).await?;
                let (_, status) = c.eom().await?;
                Ok::<Status, indymilter_test::TestError>(status)
            };
            match steps.await {
                Ok(status) => {
                    assert_eq!(status, Status::Continue, "{id}");
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    tally.milter.fetch_add(1, Ordering::Relaxed);
                    tally.keys.lock().unwrap().push(id);
                    let _ = c.close().await;
                }
                Err(e) => {
                    assert!(
                        tally.milter.load(Ordering::Relaxed) > 0 || n > 1,
                        "milter {id}: the first message failed: {e}"
                    );
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
}

#[test]
fn sigterm_under_load_answers_or_refuses_every_request_and_exits_0() {
    let config = "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n\n\
                  [policy_server]\nlisten = \"inet:127.0.0.1:0\"\n\n\
                  [milter]\nlisten = \"inet:127.0.0.1:0\"\n\n\
                  [prober]\nenabled = false\n\n\
                  [policy]\nfile = \"policy.toml\"\n\n\
                  [log]\ndecisions = \"decisions.jsonl\"\n";
    let mut d = Daemon::start_frontend(config, POLICY, Options::default(), "socketmap");
    let sm = addr(&d.listening("socketmap"));
    let policy = addr(&d.listening("policy"));
    let milter = addr(&d.listening("milter"));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for t in 0..THREADS {
        let (tl, a) = (tally.clone(), sm.clone());
        clients.push(thread::spawn(move || socketmap_client(&a, t, &tl)));
        let (tl, a) = (tally.clone(), policy.clone());
        clients.push(thread::spawn(move || policy_client(&a, t, &tl)));
        let (tl, a) = (tally.clone(), milter.clone());
        clients.push(thread::spawn(move || milter_client(&a, t, &tl)));
    }
    let deadline = Instant::now() + WAIT;
    while tally.answered.load(Ordering::Relaxed) < BEFORE_TERM
        || tally.milter.load(Ordering::Relaxed) < MILTER_BEFORE_TERM
    {
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
        let milter_message = v["frontend"] == "milter";
        if milter_message && let Some(q) = v["queue_id"].as_str() {
            logged.insert(q.to_string());
        }
        for field in ["key", "recipient"] {
            if let Some(k) = v[field].as_str() {
                logged.insert(k.to_string());
            }
        }
    }
    let keys = tally.keys.lock().unwrap();
    let policy_answers = keys.iter().filter(|k| k.contains('@')).count();
    let milter_answers = keys.iter().filter(|k| k.starts_with('M')).count();
    assert!(
        policy_answers > 0 && milter_answers > 0 && policy_answers + milter_answers < keys.len(),
        "the three doors answered under load: {policy_answers} policy, {milter_answers} milter, {} in all",
        keys.len()
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
