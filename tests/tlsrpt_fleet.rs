//! TLS-RPT for a fleet (`[tlsrpt]` with `[shared]`): three daemons, each
//! with its own counts of yesterday's sessions to `r.example`, share one
//! real `redis-server`. Each publishes its counts; one report with the
//! fleet's counts reaches the collector exactly once, although every
//! host's rounds run; the others note it as sent by the fleet; garbage in
//! the store's fields is left out. Inside a network namespace with a test
//! DNS server on 127.0.0.1:53 and the collector on 127.0.0.44:443.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, TestHttps};
use common::netns::Netns;
use common::redis::{FLEET_USER, PASSWORD, Redis};
use common::smtp::TestCa;
use common::tlsrpt::{fill_sessions, gunzip};
use common::{Daemon, Options};
use tls_policyd::tlsrpt::fleet::FLEET_SETTLE;
use tls_policyd::tlsrpt::report::{day_name, day_start};

const BIN: &str = env!("CARGO_BIN_EXE_tls-policyd");
const COLLECTOR: &str = "reports.test";
const REDIS_PORT: u16 = 6391;
/// Longest wait for something the daemons do in their rounds (a round
/// comes every 15 s while a report waits for the fleet).
const WAIT: Duration = Duration::from_secs(90);

fn config(dir: &Path, host: &str) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"

[outcomes]
log = "file:{dir}/mail.log"
state_file = "{dir}/outcomes.state"

[tlsrpt]
organization_name = "Fleet Mail"
contact_info = "postmaster@src.example"
submitter = "src.example"
from = "tlsrpt-noreply@src.example"
extra_ca_file = "{dir}/ca.pem"
cache_file = "{dir}/cache.sqlite"
send_delay = "0s"

[shared]
url = "redis://127.0.0.1:{REDIS_PORT}/0"
username = "{FLEET_USER}"
password_file = "{dir}/redis-password"
host_id = "{host}"
"#,
        dir = dir.display()
    )
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The day whose report the test has the fleet send: yesterday, due
/// `FLEET_SETTLE` after midnight; in the first minutes of a day, the day
/// before (due already, and among the days a round sends until the next
/// midnight).
fn report_day(now: SystemTime) -> SystemTime {
    let today = day_start(now);
    let into_today = now.duration_since(today).unwrap_or_default();
    let back = if into_today < FLEET_SETTLE + Duration::from_secs(300) {
        2
    } else {
        1
    };
    today - Duration::from_secs(back * 86_400)
}

/// A host's directory under `keep`: the collector's CA, an empty mail
/// log, the store's password and the day's sessions (`ok` successful, one
/// failed per address in `failed`).
fn host_dir(
    keep: &Path,
    host: &str,
    ca: &TestCa,
    (day, ok, failed): (SystemTime, usize, &[&str]),
) -> std::path::PathBuf {
    let dir = keep.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    ca.write_pem(&dir.join("ca.pem"));
    std::fs::write(dir.join("mail.log"), "").unwrap();
    std::fs::write(dir.join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    fill_sessions(&dir.join("cache.sqlite"), day, ok, failed, COLLECTOR);
    dir
}

#[test]
fn the_fleet_sends_one_report_per_domain_and_day_with_every_hosts_counts() {
    let Some(ns) = Netns::for_test("tlsrpt-f", &["redis-server", "redis-cli"]) else {
        return;
    };
    let keep = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    let yesterday = report_day(SystemTime::now());
    let day = day_name(yesterday);
    // a: 3 successful, 1 failed; b: 2 successful; c: 1 successful, 2 failed.
    let hosts: [(&str, usize, &[&str]); 3] = [
        ("a", 3, &["192.0.2.25"]),
        ("b", 2, &[]),
        ("c", 1, &["192.0.2.25", "192.0.2.26"]),
    ];
    for (host, ok, failed) in hosts {
        host_dir(keep.path(), host, &ca, (yesterday, ok, failed));
    }
    let redis_dir = keep.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = Redis::start_fleet(&ns, &redis_dir, REDIS_PORT);
    let (dns, https) = ns.run_in(move || {
        (
            TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
            TestHttps::start(HTTPS_IP, 443, ca),
        )
    });
    dns.a(COLLECTOR, HTTPS_IP);
    https.collector(COLLECTOR);

    // Another host holds the lock until every daemon has published, so
    // that the report does not depend on which daemon starts first.
    let lock = format!("tls-policyd:tlsrpt-send:{day}:r.example");
    let snapshots = format!("tls-policyd:tlsrpt:{day}:r.example");
    assert_eq!(
        redis
            .cli(&["SET", &lock, "held-by-the-test", "PX", "600000"])
            .trim(),
        "OK"
    );
    let daemons: Vec<(&str, Daemon)> = hosts
        .iter()
        .map(|(host, _, _)| {
            let cfg = config(&keep.path().join(host), host);
            (
                *host,
                Daemon::start_with(&cfg, POLICY_DEFAULT, Options::in_netns(&ns)),
            )
        })
        .collect();
    wait_until("every host published its counts", || {
        hosts
            .iter()
            .all(|(h, _, _)| redis.cli(&["HEXISTS", &snapshots, h]).trim() == "1")
    });
    for (_, d) in &daemons {
        d.wait_for_line(|l| l.contains("reports wait for the fleet"));
    }
    assert!(
        https.posted(COLLECTOR).is_empty(),
        "sent while the lock was held"
    );
    let a = redis.cli(&["HGET", &snapshots, "a"]);
    assert!(a.contains("\"host\":\"a\""), "{a}");
    // Garbage beside the hosts' fields: a field that is no snapshot, one
    // whose name cannot be a host, a copy of a's snapshot under another
    // name.
    redis.cli(&["HSET", &snapshots, "junk", "\u{1}not json{"]);
    redis.cli(&["HSET", &snapshots, "no:host", "{}"]);
    redis.cli(&["HSET", &snapshots, "copy", a.trim_end_matches('\n')]);
    assert_eq!(redis.cli(&["DEL", &lock]).trim(), "1");

    wait_until("a report posted", || !https.posted(COLLECTOR).is_empty());
    // Every host's round decides: one built it, the others left it to it.
    let mut winner = None;
    for (host, d) in &daemons {
        let line = d
            .try_wait_for_line_since(0, WAIT, |l| {
                l.contains("the fleet's report is built by this host")
                    || l.contains("the fleet's report is sent by another host")
            })
            .unwrap_or_else(|| panic!("{host} never decided; stderr:\n{}", d.stderr_text()));
        if line.contains("built by this host") {
            assert!(winner.is_none(), "two hosts built the report");
            assert!(line.contains("hosts=a,b,c"), "{line}");
            winner = Some(*host);
        }
    }
    let winner = winner.expect("a host built the report");
    let posts = https.posted(COLLECTOR);
    assert_eq!(posts.len(), 1, "sent more than once");
    let r = gunzip(&posts[0].body);
    assert_eq!(
        r["report-id"],
        format!("{day}_r.example@src.example"),
        "{r}"
    );
    assert_eq!(r["organization-name"], "Fleet Mail", "{r}");
    let p = &r["policies"][0];
    assert_eq!(p["summary"]["total-successful-session-count"], 6, "{r}");
    assert_eq!(p["summary"]["total-failure-session-count"], 3, "{r}");
    let details = p["failure-details"].as_array().unwrap();
    let for_ip = |ip: &str| {
        details
            .iter()
            .find(|f| f["receiving-ip"] == ip)
            .map(|f| f["failed-session-count"].clone())
    };
    assert_eq!(for_ip("192.0.2.25"), Some(2.into()), "{r}");
    assert_eq!(for_ip("192.0.2.26"), Some(1.into()), "{r}");
    let (_, w) = daemons.iter().find(|(h, _)| *h == winner).unwrap();
    let bad = w.wait_for_line(|l| l.contains("unusable TLS-RPT value in the shared store ignored"));
    assert!(bad.contains("tlsrpt"), "{bad}");
    let claim = redis.cli(&["GET", &format!("tls-policyd:tlsrpt-sent:{day}:r.example")]);
    assert!(claim.contains(&format!("\"host\":\"{winner}\"")), "{claim}");
    let dest = redis.cli(&[
        "HGET",
        &format!("tls-policyd:tlsrpt-dest:{day}:r.example"),
        &format!("https://{COLLECTOR}/v1"),
    ]);
    assert_eq!(dest.trim(), format!("sent {winner}"));

    // The others: noted as sent by the fleet, naming the host.
    for (host, d) in &daemons {
        let out = common::run_with_timeout(
            ns.cmd(BIN)
                .args(["tlsrpt", "-c"])
                .arg(d.config_path())
                .args(["list", "--json", "--day", &day]),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dest = &list["domains"][0]["destinations"][0];
        if *host == winner {
            assert_eq!(dest["state"], "sent", "{list}");
        } else {
            assert_eq!(dest["state"], "fleet", "{list}");
            let detail = dest["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(&format!("sent by host {winner}")), "{list}");
        }
        // `tlsrpt send` is the fleet's daemons' job.
        let out = common::run_with_timeout(
            ns.cmd(BIN)
                .args(["tlsrpt", "-c"])
                .arg(d.config_path())
                .args(["send", "--day", &day]),
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("fleet"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Later rounds of every host send nothing again.
    for (_, d) in &daemons {
        let mark = d.mark();
        assert!(
            d.try_wait_for_line_since(mark, Duration::from_secs(1), |l| l.contains("report sent"))
                .is_none()
        );
        assert!(d.find_line(|l| l.contains("panicked")).is_none());
    }
    assert_eq!(https.posted(COLLECTOR).len(), 1, "sent twice");
    // The fleet deployment's ACL user had every right the daemons used.
    assert_eq!(redis.refused(), "", "commands refused");
    drop(dns);
}

/// A host that starts before its store (its first round cannot publish)
/// publishes its counts once the store is up, at the next short round,
/// although no report of its is due: the fleet's report must not lack
/// them for a full round.
#[test]
fn a_host_started_before_the_store_publishes_its_counts_once_the_store_is_up() {
    let Some(ns) = Netns::for_test("tlsrpt-l", &["redis-server", "redis-cli"]) else {
        return;
    };
    let keep = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    let now = SystemTime::now();
    // Today's counts: their report is never due today.
    let today = day_start(now);
    let day = day_name(today);
    let dir = host_dir(keep.path(), "a", &ca, (today, 2, &["192.0.2.25"]));
    let d = Daemon::start_with(&config(&dir, "a"), POLICY_DEFAULT, Options::in_netns(&ns));
    d.wait_for_line(|l| l.contains("first round done"));
    let redis_dir = keep.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = Redis::start_fleet(&ns, &redis_dir, REDIS_PORT);
    let snapshots = format!("tls-policyd:tlsrpt:{day}:r.example");
    // Well within a full round (5 min): the store's back-off and one
    // short round.
    wait_until("the host published its counts", || {
        redis.cli(&["HEXISTS", &snapshots, "a"]).trim() == "1"
    });
    let a = redis.cli(&["HGET", &snapshots, "a"]);
    assert!(a.contains("\"host\":\"a\""), "{a}");
    assert!(d.find_line(|l| l.contains("panicked")).is_none());
    assert_eq!(redis.refused(), "", "commands refused");
}
