//! The decision log on a full file system: lookups are answered
//! meanwhile, one error line says so, every record lost is counted, none
//! is half-written, and records resume once there is room again.
//!
//! The log is on a small tmpfs mounted in a mount namespace of the
//! daemon's own (`unshare -m`); the test reaches it through
//! `/proc/PID/root`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fixtures::POLICY_BANK as POLICY;
use common::{Daemon, Options, WAIT, config_listening, find_tool};

fn metric(listen: &str, series: &str) -> f64 {
    let port = listen.rsplit_once(':').unwrap().1;
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Every line of the file, each checked to be one whole JSON record.
fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l:?}", i + 1))
        })
        .collect()
}

/// Wait until `cond` holds, at most [`WAIT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const DROPPED: &str = "tls_policyd_decision_log_dropped_total";

#[test]
fn a_full_disk_drops_whole_records_counts_them_and_recovers() {
    if find_tool("unshare").is_none() {
        panic!("`unshare` (util-linux) is needed");
    }
    // The directory the tmpfs is mounted on exists before the daemon starts.
    let base = tempfile::Builder::new()
        .prefix("tls-policyd-full.")
        .tempdir()
        .unwrap();
    let mount_point = base.path().join("full");
    std::fs::create_dir(&mount_point).unwrap();
    let text = config_listening("inet:127.0.0.1:0", "policy", "").replace(
        "decisions = \"decisions.jsonl\"",
        &format!("decisions = \"{}/decisions.jsonl\"", mount_point.display()),
    ) + "\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n";
    let opts = Options {
        wrap: vec![
            "unshare".into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            "mount -t tmpfs -o size=256k tmpfs \"$0\" && exec \"$@\"".into(),
            mount_point.display().to_string(),
        ],
        ..Options::default()
    };
    let d = Daemon::start_with(&text, POLICY, opts);
    let m = d.listening("metrics");
    // The daemon's view of the tmpfs.
    let inside = PathBuf::from(format!("/proc/{}/root", d.pid()))
        .join(mount_point.strip_prefix("/").unwrap());
    let log = inside.join("decisions.jsonl");
    assert!(
        std::fs::metadata(mount_point.join("decisions.jsonl")).is_err(),
        "the log is on the daemon's own tmpfs, not in the test's view"
    );

    let mut c = d.client();
    let mut asked = 0u64;
    for _ in 0..10 {
        assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");
        asked += 1;
    }
    wait_until("the first records written", || records(&log).len() == 10);

    // Fill the file system.
    let filler = inside.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    let full = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    drop(f);

    // Lookups go on being answered while records cannot be written.
    let mark = d.mark();
    for i in 0..300 {
        assert_eq!(
            c.query("tls_policy", &format!("d{i}.example")),
            "OK may",
            "lookup {i} on a full disk"
        );
        asked += 1;
    }
    wait_until("every record written or counted as dropped", || {
        records(&log).len() as f64 + metric(&m, DROPPED) == asked as f64
    });
    let dropped = metric(&m, DROPPED);
    assert!(dropped > 0.0, "nothing dropped on a full disk");
    let errors: Vec<String> = d
        .stderr_since(mark)
        .lines()
        .filter(|l| l.contains("cannot write decision log"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line, not one per record: {errors:?}"
    );

    // Room again: records resume, whole.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..50 {
        assert_eq!(c.query("tls_policy", &format!("back{i}.example")), "OK may");
        asked += 1;
    }
    wait_until("the records after recovery written", || {
        records(&log)
            .iter()
            .any(|r| r.to_string().contains("back49.example"))
    });
    let recs = records(&log);
    assert_eq!(
        recs.len() as f64 + metric(&m, DROPPED),
        asked as f64,
        "every record is in the file or counted as dropped"
    );
    assert_eq!(
        metric(&m, DROPPED),
        dropped,
        "nothing dropped after recovery"
    );
    let first_back = recs
        .iter()
        .position(|r| r.to_string().contains("back0.example"))
        .expect("the first record after recovery");
    assert_eq!(recs.len() - first_back, 50, "every record after recovery");
    d.wait_for_line_since(mark, |l| l.contains("decision log writable again"));
}
