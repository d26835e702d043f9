//! A fleet end to end: two Postfix instances, each with its own
//! tls-policyd on its `smtp_tls_policy_maps`, sharing one real
//! `redis-server` as the ACL user of the fleet deployment
//! (`postfix-examples/deployments/fleet/redis-acl.conf`), inside a network namespace with a
//! test DNS server on 127.0.0.1:53 (Postfix's resolver and the daemons'),
//! the MTA-STS policy host on 127.0.0.44:443 and two SMTP servers: one
//! with a certificate from the test CA, one self-signed.
//!
//! A domain's MTA-STS policy is learned through the first Postfix. Then
//! its `_mta-sts` TXT record disappears from DNS and its MX is pointed at
//! the self-signed server (what an attacker on the path would do): the
//! second Postfix, which never saw the domain, still gets the forced
//! answer from its daemon (taken from the shared store) and defers the
//! mail instead of handing it to the wrong server.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::fixtures::POLICY_DEFAULT;
use common::https::{HTTPS_IP, Response, TestHttps};
use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use common::smtp::{SinkTls, SmtpSink, TestCa};
use common::{Daemon, Options};
use hickory_proto::rr::RecordType;

const REDIS_PORT: u16 = 6391;
const PASSWORD: &str = "fleet-postfix-0815";
const WAIT: Duration = Duration::from_secs(30);

const DOMAIN: &str = "fleet.test";
const GOOD_MX: (&str, &str) = ("mx.fleet.test", "127.0.0.21");
const FORGED_MX: (&str, &str) = ("mx-forged.other.test", "127.0.0.22");

/// The ACL user the fleet deployment gives tls-policyd.
const ACL_USER: &str = "tls-policyd";

/// `postfix-examples/deployments/fleet/redis-acl.conf` with the password
/// filled in, plus an administrator (`default`) for the test's redis-cli.
fn acl_file(dir: &Path) -> std::path::PathBuf {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("postfix-examples/deployments/fleet/redis-acl.conf"),
    )
    .unwrap();
    let user = example
        .lines()
        .find(|l| l.starts_with("user "))
        .expect("redis-acl.conf: no user line");
    assert!(user.contains(">CHANGE-ME"), "{user}");
    let path = dir.join("users.acl");
    std::fs::write(
        &path,
        format!(
            "user default on >{ADMIN} ~* &* +@all\n{}\n",
            user.replace("CHANGE-ME", PASSWORD)
        ),
    )
    .unwrap();
    path
}

const ADMIN: &str = "fleet-admin-4242";

/// A `redis-server` on 127.0.0.1:REDIS_PORT in the namespace, with the
/// users of [`acl_file`], killed on drop.
struct Redis {
    ns: Netns,
    child: Child,
}

impl Redis {
    fn start(ns: &Netns, dir: &Path) -> Redis {
        let child = ns
            .cmd("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(REDIS_PORT.to_string())
            .arg("--aclfile")
            .arg(acl_file(dir))
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = Redis {
            ns: ns.clone(),
            child,
        };
        let deadline = Instant::now() + WAIT;
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = common::run_with_timeout(
            self.ns
                .cmd("redis-cli")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(REDIS_PORT.to_string())
                .args(["-a", ADMIN, "--no-auth-warning"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, name: &str) -> String {
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[mta_sts]
cache_file = "{cache}"
extra_ca_file = "{ca}"
lookup_timeout = "5s"

[shared]
url = "redis://127.0.0.1:{REDIS_PORT}/0"
username = "{ACL_USER}"
password_file = "{password}"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache = dir.join(format!("{name}.sqlite")).display(),
        ca = dir.join("ca.pem").display(),
        password = dir.join("redis-password").display(),
    )
}

/// One host of the fleet: its daemon and its Postfix, wired as the README
/// says (`smtp_tls_policy_maps = socketmap:…:tls_policy`).
struct Host {
    pf: Postfix,
    daemon: Daemon,
}

impl Host {
    fn start(ns: &Netns, dir: &Path, name: &str, port: u16, ca: &TestCa) -> Host {
        let daemon = Daemon::start_with(&config(dir, name), POLICY_DEFAULT, Options::in_netns(ns));
        daemon.wait_for_line(|l| l.contains("shared store connected"));
        let pf = Postfix::start(
            ns,
            PostfixOptions::default()
                .port(port)
                .file("ca.pem", ca.pem())
                .set(
                    "smtp_tls_policy_maps",
                    format!("socketmap:{}:tls_policy", daemon.address()),
                )
                .set("smtp_tls_CAfile", "$config_directory/ca.pem")
                .set("smtp_tls_loglevel", "1")
                .set("smtp_host_lookup", "dns"),
        );
        Host { pf, daemon }
    }

    /// Send one message to `rcpt`; Postfix's delivery line for it.
    fn deliver(&self, rcpt: &str) -> String {
        let mark = self.pf.log_mark();
        let s = self.pf.send(&Mail::to(&[rcpt]).from(SENDER));
        assert!(s.status.success(), "{}", s.transcript);
        let id = s
            .queue_id()
            .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript));
        let (tag, to) = (format!(": {id}: "), format!("to=<{rcpt}>"));
        self.pf.wait_for_log_since(
            mark,
            |l| l.contains(&tag) && l.contains(&to) && l.contains("status="),
            WAIT,
        )
    }

    /// The socketmap's records for the domain.
    fn map_records(&self) -> Vec<serde_json::Value> {
        self.daemon
            .decisions()
            .into_iter()
            .filter(|r| r["frontend"] == "socketmap" && r["domain"] == DOMAIN)
            .collect()
    }
}

#[test]
fn a_policy_learned_through_one_postfix_keeps_the_other_forced_after_its_record_is_gone() {
    let Some(ns) = Netns::for_test(
        "fleetpf",
        &["postfix", "swaks", "redis-server", "redis-cli"],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(TestCa::new());
    ca.write_pem(&dir.path().join("ca.pem"));
    std::fs::write(dir.path().join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir(&redis_dir).unwrap();
    let redis = Redis::start(&ns, &redis_dir);

    let (dns, https, good, forged) = ns.run_in({
        let ca = ca.clone();
        move || {
            (
                TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
                TestHttps::start(HTTPS_IP, 443, ca.clone()),
                SmtpSink::start(GOOD_MX.1, 25, SinkTls::issued_by(&ca, &[GOOD_MX.0])),
                SmtpSink::start(FORGED_MX.1, 25, SinkTls::self_signed(&[FORGED_MX.0])),
            )
        }
    });
    dns.a(GOOD_MX.0, GOOD_MX.1).a(FORGED_MX.0, FORGED_MX.1);
    dns.mx(DOMAIN, 10, GOOD_MX.0);
    dns.txt_ttl(&format!("_mta-sts.{DOMAIN}"), 0, "v=STSv1; id=fleet1;");
    dns.a(&format!("mta-sts.{DOMAIN}"), HTTPS_IP);
    https.site(
        &format!("mta-sts.{DOMAIN}"),
        Response::policy(&format!(
            "version: STSv1\nmode: enforce\nmx: {}\nmax_age: 604800\n",
            GOOD_MX.0
        )),
    );

    let first = Host::start(&ns, dir.path(), "first", 2525, &ca);
    let second = Host::start(&ns, dir.path(), "second", 2526, &ca);
    let forced = format!("secure match={} servername=hostname", GOOD_MX.0);

    // Through the first host: discovered, delivered over verified TLS,
    // published to the store.
    let line = first.deliver(&format!("a@{DOMAIN}"));
    assert!(line.contains("status=sent"), "{line}");
    assert!(good.wait_for_messages(1, WAIT)[0].tls);
    let recs = first.map_records();
    assert!(!recs.is_empty());
    assert!(
        recs.iter()
            .all(|r| r["source"] == "mta-sts" && r["level"] == forced.as_str()),
        "{recs:?}"
    );
    let key = format!("tls-policyd:mta-sts:{DOMAIN}");
    let deadline = Instant::now() + WAIT;
    while redis.cli(&["EXISTS", &key]).trim() != "1" {
        assert!(Instant::now() < deadline, "{key} never written");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        dns.query_count(&format!("_mta-sts.{DOMAIN}"), RecordType::TXT),
        1
    );

    // The record is gone and the MX now points at a server no CA vouches
    // for, under another name.
    dns.remove(&format!("_mta-sts.{DOMAIN}"));
    dns.remove(DOMAIN);
    dns.mx(DOMAIN, 10, FORGED_MX.0);

    // The second host never saw the domain: its daemon answers with the
    // policy from the store, and Postfix defers rather than deliver to the
    // forged server.
    let line = second.deliver(&format!("b@{DOMAIN}"));
    assert!(line.contains("status=deferred"), "{line}");
    assert!(forged.messages().is_empty(), "delivered to the forged MX");
    let recs = second.map_records();
    assert!(!recs.is_empty());
    for r in &recs {
        assert_eq!(r["source"], "mta-sts", "{r}");
        assert_eq!(r["level"], forced.as_str(), "{r}");
        assert_eq!(r["policy_id"], "fleet1", "{r}");
    }
    second
        .daemon
        .wait_for_line(|l| l.contains("MTA-STS policy taken from the shared store"));
    // The second host fetched nothing itself.
    assert_eq!(https.requests(&format!("mta-sts.{DOMAIN}")), 1);
    // The deployment's ACL user had every right the daemons used.
    assert_eq!(redis.cli(&["ACL", "LOG"]).trim(), "", "commands refused");
    for d in [&first.daemon, &second.daemon] {
        assert!(
            d.find_line(|l| l.contains("shared store unavailable"))
                .is_none(),
            "{}",
            d.stderr_text()
        );
    }
    drop(redis);
}
