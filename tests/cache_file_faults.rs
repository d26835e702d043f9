//! A damaged, cut-short or locked cache file, or one whose writer was
//! killed mid-write, never keeps the daemon from starting: a damaged file
//! is moved aside with a warning, a new one made, and the daemon answers
//! (the operator's rules at once; published policies are learned again).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::Daemon;
use common::fixtures::POLICY_BANK as POLICY;
use tls_policyd::store::{Db, Entry, Kind};

const MOVED: &str = "cache file damaged; moved aside";

/// The socketmap and MTA-STS (with a DNS server that does not answer:
/// no lookup reaches the network in these tests), the cache file at
/// `cache`.
fn config(cache: &Path) -> String {
    format!(
        "[socketmap]\nlisten = \"inet:127.0.0.1:0\"\n\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\nattempts = 1\n\n\
         [mta_sts]\ncache_file = \"{}\"\n\n\
         [policy]\nfile = \"policy.toml\"\n\n\
         [log]\ndecisions = \"decisions.jsonl\"\n",
        cache.display()
    )
}

/// A real cache file with `n` entries, closed (checkpointed).
fn real_cache(path: &Path, n: usize) {
    let mut db = Db::open(path).unwrap();
    let now = SystemTime::now();
    db.put_all((0..n).map(|i| Entry {
        kind: Kind::MtaSts,
        domain: format!("d{i}.example"),
        fetched_at: now,
        expires_at: now + Duration::from_secs(86400),
        payload: format!("{{\"filler\":\"{}\"}}", "y".repeat(200)),
    }))
    .unwrap();
    drop(db);
}

/// The files moved aside next to `cache`.
fn moved_aside(cache: &Path) -> Vec<PathBuf> {
    let name = cache.file_name().unwrap().to_string_lossy().to_string();
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}.corrupt-"))
                && !f.ends_with("-wal")
                && !f.ends_with("-shm")
        })
        .collect();
    v.sort();
    v
}

/// Start the daemon on `cache` and check that it answers a rule at once.
fn start_and_answer(cache: &Path) -> Daemon {
    let d = Daemon::start(&config(cache), POLICY);
    assert_eq!(d.client().query("tls_policy", "bank.example"), "OK encrypt");
    d
}

fn rows(cache: &Path) -> usize {
    Db::open_read_only(cache)
        .unwrap()
        .all(None)
        .unwrap()
        .0
        .len()
}

#[test]
fn garbage_is_moved_aside_and_the_daemon_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.sqlite");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&cache, &garbage).unwrap();
    let mut d = start_and_answer(&cache);
    let line = d.wait_for_line(|l| l.contains(MOVED));
    assert!(line.contains("WARN") && line.contains("corrupt-"), "{line}");
    let aside = moved_aside(&cache);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage, "kept as it was");
    assert_eq!(rows(&cache), 0, "a new, empty cache file");
    // The next start finds a good file: no crash loop, nothing moved.
    d.kill();
    let d = start_and_answer(&cache);
    assert!(d.find_line(|l| l.contains(MOVED)).is_none());
    assert_eq!(moved_aside(&cache).len(), 1);
}

#[test]
fn a_cache_file_cut_short_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.sqlite");
    real_cache(&cache, 3000);
    let len = std::fs::metadata(&cache).unwrap().len();
    assert!(len > 64 * 1024, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let d = start_and_answer(&cache);
    d.wait_for_line(|l| l.contains(MOVED));
    assert_eq!(moved_aside(&cache).len(), 1);
    assert_eq!(rows(&cache), 0);
}

#[test]
fn a_cache_file_locked_by_another_process_does_not_stop_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.sqlite");
    real_cache(&cache, 100);
    // Another process holds the write lock for the whole test.
    let mut holder = Command::new("sqlite3")
        .arg(&cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3 (the command-line shell) is needed");
    let mut input = holder.stdin.take().unwrap();
    input
        .write_all(
            b"BEGIN EXCLUSIVE;\nDELETE FROM cache WHERE domain = 'd0.example';\nSELECT 'locked';\n",
        )
        .unwrap();
    input.flush().unwrap();
    let mut out = holder.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while !String::from_utf8_lossy(&got).contains("locked") {
        let n = std::io::Read::read(&mut out, &mut b).unwrap();
        assert!(n > 0, "sqlite3 ended");
        got.extend_from_slice(&b[..n]);
    }
    // The lock is held: a writer here is refused.
    let other = rusqlite::Connection::open(&cache).unwrap();
    let e = other
        .execute_batch("BEGIN IMMEDIATE; COMMIT;")
        .expect_err("the lock is held");
    assert!(
        e.to_string().contains("locked") || e.to_string().contains("busy"),
        "{e}"
    );
    drop(other);

    let d = start_and_answer(&cache);
    assert!(
        d.find_line(|l| l.contains(MOVED)).is_none(),
        "a locked file is not damaged"
    );
    assert!(moved_aside(&cache).is_empty());
    drop(input);
    let _ = holder.wait();
    drop(d);
    assert_eq!(
        rows(&cache),
        100,
        "the rows survive (the other's change was never committed)"
    );
}

#[test]
fn a_writer_killed_mid_write_leaves_a_file_the_daemon_starts_on() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.sqlite");
    real_cache(&cache, 100);
    // Another writer killed in the middle of a large transaction.
    let mut writer = Command::new("sqlite3")
        .arg(&cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sqlite3 (the command-line shell) is needed");
    let mut input = writer.stdin.take().unwrap();
    input.write_all(b"BEGIN;\n").unwrap();
    for i in 0..20_000 {
        let line = format!(
            "INSERT OR REPLACE INTO cache VALUES ('mta-sts', 'k{i}.example', 0, 0, '{}');\n",
            "z".repeat(100)
        );
        if input.write_all(line.as_bytes()).is_err() {
            break;
        }
        if i == 10_000 {
            writer.kill().unwrap();
        }
    }
    drop(input);
    let _ = writer.wait();
    start_and_answer(&cache).kill();
    assert!(
        moved_aside(&cache).is_empty(),
        "an interrupted write is not damage"
    );
    assert_eq!(
        rows(&cache),
        100,
        "the interrupted transaction left nothing"
    );

    // The daemon itself killed with -9 at every point of its start
    // (opening, checking, creating the file), then started again.
    let fresh = dir.path().join("fresh.sqlite");
    for i in 0..5u64 {
        let mut d = Daemon::spawn(&config(&fresh), POLICY, Default::default());
        std::thread::sleep(Duration::from_millis(i * 15));
        d.kill();
    }
    let d = start_and_answer(&fresh);
    assert!(d.find_line(|l| l.contains(MOVED)).is_none());
    assert_eq!(rows(&fresh), 0);
}
