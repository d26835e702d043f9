//! A fleet of daemons sharing a real Redis store (`[shared]`), inside a
//! network namespace with a test DNS server on 127.0.0.1:53 and policy
//! hosts (MTA-STS) on 127.0.0.44:443; each daemon has a cache file of its
//! own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use super::dns::TestDns;
use super::fixtures::POLICY_DEFAULT;
use super::https::{HTTPS_IP, Response, TestHttps};
use super::netns::Netns;
use super::redis::{Listen, Redis};
use super::smtp::TestCa;
use super::{Client, Daemon, Options};

pub use super::redis::{PASSWORD, REDIS_PORT};
/// Longest wait for something asynchronous (a write reaching the store).
pub const WAIT: Duration = Duration::from_secs(30);

/// A daemon's config: `[shared]` with `shared` (its keys but the
/// timeouts: `connect_timeout` 1 s, `command_timeout` 300 ms).
pub fn config(shared: &str, cache: &Path, ca: &Path, dane: bool) -> String {
    let dane = if dane {
        format!("[dane]\ncache_file = \"{}\"\n", cache.display())
    } else {
        String::new()
    };
    format!(
        r#"
[socketmap]
listen = "inet:127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[mta_sts]
cache_file = "{}"
extra_ca_file = "{}"
lookup_timeout = "5s"
fetch_timeout = "5s"
connect_timeout = "2s"

{dane}
[shared]
{shared}
connect_timeout = "1s"
command_timeout = "300ms"

[metrics]
listen = "inet:127.0.0.1:0"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
        cache.display(),
        ca.display(),
    )
}

pub fn policy_text(domain: &str) -> String {
    format!("version: STSv1\nmode: enforce\nmx: mx.{domain}\nmax_age: 604800\n")
}

pub fn answer(domain: &str) -> String {
    format!("OK secure match=mx.{domain} servername=hostname")
}

pub fn publish(dns: &TestDns, https: &TestHttps, domain: &str) {
    dns.txt_ttl(&format!("_mta-sts.{domain}"), 0, "v=STSv1; id=f1;");
    dns.a(&format!("mta-sts.{domain}"), HTTPS_IP);
    https.site(
        &format!("mta-sts.{domain}"),
        Response::policy(&policy_text(domain)),
    );
}

pub fn txt_queries(dns: &TestDns, domain: &str) -> usize {
    dns.query_count(&format!("_mta-sts.{domain}"), RecordType::TXT)
}

pub fn client(ns: &Netns, d: &Daemon) -> Client {
    Client::from_tcp(ns.tcp_connect(("127.0.0.1", d.port())).unwrap())
}

/// The test's servers and files.
pub struct Fleet {
    pub ns: Netns,
    pub dns: TestDns,
    pub https: TestHttps,
    pub keep: tempfile::TempDir,
    /// The test CA (PEM): MTA-STS hosts' certificates, and a TLS store's.
    pub ca: Arc<TestCa>,
    pub ca_pem: PathBuf,
    /// A file holding [`PASSWORD`].
    pub password: PathBuf,
}

impl Fleet {
    pub fn new(ns: Netns) -> Fleet {
        let ca = Arc::new(TestCa::new());
        let keep = tempfile::tempdir().unwrap();
        let ca_pem = keep.path().join("ca.pem");
        ca.write_pem(&ca_pem);
        let password = keep.path().join("redis-password");
        std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
        let for_https = ca.clone();
        let (dns, https) = ns.run_in(move || {
            (
                TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53))),
                TestHttps::start(HTTPS_IP, 443, for_https),
            )
        });
        Fleet {
            ns,
            dns,
            https,
            keep,
            ca,
            ca_pem,
            password,
        }
    }

    pub fn redis(&self) -> Redis {
        let dir = self.keep.path().join("redis");
        Redis::start(&self.ns, &dir, Listen::Tcp(REDIS_PORT), PASSWORD, &[])
    }

    /// A daemon with a cache file of its own and `password_file`.
    pub fn daemon(&self, name: &str, password_file: &Path) -> Daemon {
        self.daemon_with(name, password_file, false)
    }

    /// [`Fleet::daemon`], with DANE on when `dane`.
    pub fn daemon_with(&self, name: &str, password_file: &Path, dane: bool) -> Daemon {
        let url = format!("redis://127.0.0.1:{REDIS_PORT}/0");
        self.daemon_at(name, password_file, dane, &url)
    }

    /// [`Fleet::daemon_with`] on the store at `url`.
    pub fn daemon_at(&self, name: &str, password_file: &Path, dane: bool, url: &str) -> Daemon {
        let keys = format!(
            "url = \"{url}\"\npassword_file = \"{}\"",
            password_file.display()
        );
        self.daemon_keys(name, dane, &keys)
    }

    /// A daemon with these `[shared]` keys.
    pub fn daemon_keys(&self, name: &str, dane: bool, shared: &str) -> Daemon {
        let cache = self.keep.path().join(format!("{name}.sqlite"));
        let conf = config(shared, &cache, &self.ca_pem, dane);
        let d = Daemon::start_with(&conf, POLICY_DEFAULT, Options::in_netns(&self.ns));
        d.wait_for_line(|l| l.contains("shared store") && !l.contains("MTA-STS"));
        d
    }
}

/// `tls-policyd status --json` against `d`: exit code and report.
pub fn status(ns: &Netns, d: &Daemon) -> (Option<i32>, serde_json::Value) {
    let addr = d.listening("metrics");
    let out = super::run_with_timeout(
        ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"))
            .args(["status", "--json", "--address"])
            .arg(&addr),
    );
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), report)
}

/// `GET /metrics` of `d`: the sample of `series`.
pub fn metric(ns: &Netns, d: &Daemon, series: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = d.listening("metrics");
    let addr = addr.strip_prefix("inet:").unwrap_or(&addr);
    let mut s = ns.tcp_connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

/// Wait until the store holds `key`; its value.
pub fn wait_for_key(r: &Redis, key: &str) -> String {
    r.wait_for_key(key, WAIT)
}
