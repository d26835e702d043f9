//! Real `redis-server` and `redis-sentinel` processes in a test's network
//! namespace: no persistence, a temporary directory each, killed
//! (SIGKILL) on drop; `redis-cli` to look at what they hold.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::netns::Netns;

/// Longest wait for a server to answer after its start.
const START: Duration = Duration::from_secs(30);

/// Where a server listens.
#[derive(Clone)]
pub enum Listen {
    /// 127.0.0.1:port.
    Tcp(u16),
    /// This unix socket only, no TCP.
    Unix(PathBuf),
    /// TLS on 127.0.0.1:port only (`--port 0`), with this certificate
    /// chain and key (PEM files) and the CA file clients check it with;
    /// with `client` (a certificate and key `redis-cli` uses), clients
    /// need a certificate from that CA.
    Tls {
        port: u16,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// The port and password of the tests' one store, unless they need
/// another.
pub const REDIS_PORT: u16 = 6390;
pub const PASSWORD: &str = "fleet-secret-4711";

/// The user the fleet deployment gives tls-policyd
/// (`postfix-examples/deployments/fleet/redis-acl.conf`).
pub const FLEET_USER: &str = "tls-policyd";

/// `postfix-examples/deployments/fleet/redis-acl.conf` as an ACL file in
/// `dir`, its user's password `password`, plus the `default` user (any
/// command, for the test's redis-cli) with the same password.
pub fn fleet_acl_file(dir: &Path, password: &str) -> PathBuf {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("postfix-examples/deployments/fleet/redis-acl.conf"),
    )
    .expect("read the fleet deployment's redis-acl.conf");
    let user = example
        .lines()
        .find(|l| l.starts_with(&format!("user {FLEET_USER} ")))
        .expect("redis-acl.conf: no user line for tls-policyd");
    assert!(user.contains(">CHANGE-ME"), "{user}");
    let path = dir.join("users.acl");
    std::fs::write(
        &path,
        format!(
            "user default on >{password} ~* &* +@all\n{}\n",
            user.replace("CHANGE-ME", password)
        ),
    )
    .unwrap();
    path
}

/// A `redis-server` or `redis-sentinel`, killed on drop.
pub struct Redis {
    ns: Netns,
    child: Option<Child>,
    listen: Listen,
    password: String,
    dir: PathBuf,
}

impl Redis {
    /// A `redis-server` with `requirepass password` (and `masterauth`),
    /// more arguments after those (e.g. `--replicaof`).
    pub fn start(ns: &Netns, dir: &Path, listen: Listen, password: &str, extra: &[&str]) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = ns.cmd("redis-server");
        match &listen {
            Listen::Unix(p) => cmd
                .args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                .arg(p),
            Listen::Tcp(port) => cmd
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(port.to_string()),
            Listen::Tls {
                port,
                cert,
                key,
                ca,
                client,
            } => cmd
                .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args([
                    "--tls-auth-clients",
                    if client.is_some() { "yes" } else { "no" },
                ])
                .arg("--tls-replication")
                .arg("no"),
        };
        let child = cmd
            .args(["--requirepass", password, "--masterauth", password])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        Redis::started(ns, child, listen, password, dir)
    }

    /// On 127.0.0.1:`port` with `password`.
    pub fn start_on(ns: &Netns, dir: &Path, port: u16, password: &str) -> Redis {
        Redis::start(ns, dir, Listen::Tcp(port), password, &[])
    }

    /// On 127.0.0.1:`port`, with the fleet deployment's ACL user
    /// ([`FLEET_USER`]) and `default`, both with [`PASSWORD`].
    pub fn start_fleet(ns: &Netns, dir: &Path, port: u16) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let acl = fleet_acl_file(dir, PASSWORD);
        let child = ns
            .cmd("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--aclfile")
            .arg(&acl)
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
        Redis::started(ns, child, Listen::Tcp(port), PASSWORD, dir)
    }

    /// Commands the server refused for lack of rights (`ACL LOG`), empty
    /// when none.
    pub fn refused(&self) -> String {
        self.cli(&["ACL", "LOG"]).trim().to_string()
    }

    /// A `redis-sentinel` listening as `listen` (TCP or TLS; with TLS it
    /// reaches the servers and the other sentinels over TLS too) with
    /// `requirepass password`, monitoring `master_name` at
    /// 127.0.0.1:`master_port` (quorum 2, down after 1 s), which it
    /// authenticates to with `master_password`.
    pub fn sentinel(
        ns: &Netns,
        dir: &Path,
        listen: Listen,
        password: &str,
        (master_name, master_port, master_password): (&str, u16, &str),
    ) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("sentinel.conf");
        let ports = match &listen {
            Listen::Tcp(p) => format!("port {p}\n"),
            Listen::Tls {
                port,
                cert,
                key,
                ca,
                ..
            } => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                cert.display(),
                key.display(),
                ca.display()
            ),
            Listen::Unix(_) => panic!("a sentinel listens on TCP"),
        };
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\n{ports}dir {dir}\nlogfile {log}\nrequirepass {password}\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                 sentinel auth-pass {master_name} {master_password}\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir = dir.display(),
                log = dir.join("sentinel.log").display(),
            ),
        )
        .unwrap();
        let child = ns
            .cmd("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel");
        Redis::started(ns, child, listen, password, dir)
    }

    fn started(ns: &Netns, child: Child, listen: Listen, password: &str, dir: &Path) -> Redis {
        let r = Redis {
            ns: ns.clone(),
            child: Some(child),
            listen,
            password: password.to_string(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + START;
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis did not start: {}",
                r.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// What it logged.
    pub fn log(&self) -> String {
        ["redis.log", "sentinel.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }

    pub fn port(&self) -> u16 {
        match &self.listen {
            Listen::Tcp(p) | Listen::Tls { port: p, .. } => *p,
            Listen::Unix(_) => 0,
        }
    }

    /// `redis-cli` in the namespace, authenticated; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self.ns.cmd("redis-cli");
        match &self.listen {
            Listen::Unix(p) => cmd.arg("-s").arg(p),
            Listen::Tcp(port) => cmd.args(["-h", "127.0.0.1", "-p"]).arg(port.to_string()),
            Listen::Tls {
                port, ca, client, ..
            } => {
                cmd.args(["-h", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    .args(["--tls", "--cacert"])
                    .arg(ca);
                if let Some((cert, key)) = client {
                    cmd.arg("--cert").arg(cert).arg("--key").arg(key)
                } else {
                    &mut cmd
                }
            }
        };
        let out = super::run_with_timeout(
            cmd.args(["-a", &self.password, "--no-auth-warning"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait (at most `wait`) until `GET key` gives something; that.
    pub fn wait_for_key(&self, key: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let v = self.cli(&["GET", key]);
            if !v.trim().is_empty() {
                return v;
            }
            assert!(Instant::now() < deadline, "{key} never written");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write a certificate chain and its key as PEM files.
pub fn write_pem_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) {
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let certs: String = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(cert_file, certs).unwrap();
    std::fs::write(key_file, pem("PRIVATE KEY", key.secret_der())).unwrap();
}
