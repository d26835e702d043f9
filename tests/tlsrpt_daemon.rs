//! The daemon's own round of TLS reports: the sessions of a day that has
//! ended (already counted in the cache file) go out once, after the day
//! and its `send_delay`, by POST to the domain's collector, and a restart
//! sends nothing again. Inside a network namespace with a test DNS server
//! on 127.0.0.1:53 and the collector on 127.0.0.44:443.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, TestHttps};
use common::netns::Netns;
use common::smtp::TestCa;
use common::tlsrpt::{fill_sessions, gunzip};
use common::{Daemon, Options, WAIT};
use tls_policyd::tlsrpt::report::{day_name, day_start};

const BIN: &str = env!("CARGO_BIN_EXE_tls-policyd");
const COLLECTOR: &str = "reports.test";

fn config(dir: &Path) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[metrics]
listen = "unix:{dir}/metrics.sock"

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
organization_name = "Test Mail"
contact_info = "postmaster@src.example"
submitter = "src.example"
from = "tlsrpt-noreply@src.example"
extra_ca_file = "{dir}/ca.pem"
cache_file = "{dir}/cache.sqlite"
send_delay = "0s"
"#,
        dir = dir.display()
    )
}

#[test]
fn the_daemon_sends_a_finished_days_report_once_and_not_again_after_a_restart() {
    let Some(ns) = Netns::for_test("tlsrpt-d", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    ca.write_pem(&dir.path().join("ca.pem"));
    std::fs::write(dir.path().join("mail.log"), "").unwrap();
    let yesterday = day_start(SystemTime::now()) - Duration::from_secs(86_400);
    fill_sessions(
        &dir.path().join("cache.sqlite"),
        yesterday,
        3,
        &["192.0.2.25"],
        COLLECTOR,
    );
    let (dns, https) = ns.run_in(move || {
        (
            TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
            TestHttps::start(HTTPS_IP, 443, ca),
        )
    });
    dns.a(COLLECTOR, HTTPS_IP);
    https.collector(COLLECTOR);

    let cfg = config(dir.path());
    let mut d = Daemon::start_with(&cfg, POLICY_DEFAULT, Options::in_netns(&ns));
    let deadline = Instant::now() + WAIT;
    while https.posted(COLLECTOR).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no report posted; stderr:\n{}",
            d.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let posts = https.posted(COLLECTOR);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].content_type, "application/tlsrpt+gzip");
    let r = gunzip(&posts[0].body);
    let day = day_name(yesterday);
    assert_eq!(
        r["report-id"],
        format!("{day}_r.example@src.example"),
        "{r}"
    );
    assert_eq!(
        r["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z")
    );
    let p = &r["policies"][0];
    assert_eq!(p["summary"]["total-successful-session-count"], 3, "{r}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{r}");
    let line = d.wait_for_line(|l| l.contains("TLS-RPT: first round done"));
    assert!(line.contains("tried=1"), "{line}");
    let out = common::run_with_timeout(ns.cmd(BIN).args(["status", "-c"]).arg(d.config_path()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reports: built 1, sent 1, retry 0, failed 0"),
        "{text}"
    );

    // Restarted: the day is done; nothing goes out again.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
    d.restart("socketmap");
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
    assert_eq!(dest["state"], "sent", "{list}");
    assert_eq!(dest["attempts"], 1, "{list}");
    // The restarted daemon's first round tried nothing.
    let line = d.wait_for_line(|l| l.contains("TLS-RPT: first round done"));
    assert!(line.contains("tried=0"), "{line}");
    assert_eq!(https.posted(COLLECTOR).len(), 1, "sent twice");
    drop(dns);
}
