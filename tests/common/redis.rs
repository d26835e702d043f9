//! A real `redis-server` for tests, in a network namespace: with
//! `requirepass` (or the users of an ACL file), no persistence, its files
//! in a directory of the test's; on a loopback port or on a unix socket
//! only.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;

pub const REDIS_PORT: u16 = 6390;
pub const PASSWORD: &str = "fleet-secret-4711";
/// Longest wait for the server to answer.
const WAIT: Duration = Duration::from_secs(30);

/// A `redis-server` in the namespace, killed on drop.
pub struct Redis {
    ns: Netns,
    child: Option<Child>,
    /// Listening on this unix socket only, not on TCP.
    socket: Option<PathBuf>,
    port: u16,
    /// The `default` user's password (redis-cli's).
    password: String,
}

/// How the server is reached and who may use it.
enum Access<'a> {
    Password(&'a str),
    /// An ACL file whose `default` user has this password.
    AclFile(&'a Path, &'a str),
}

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

impl Redis {
    /// On 127.0.0.1:`port`, with the fleet deployment's ACL user
    /// ([`FLEET_USER`]) and `default`, both with [`PASSWORD`].
    pub fn start_fleet(ns: &Netns, dir: &Path, port: u16) -> Redis {
        let acl = fleet_acl_file(dir, PASSWORD);
        Redis::start_with_acl(ns, dir, port, &acl, PASSWORD)
    }

    /// Commands the server refused for lack of rights (`ACL LOG`), empty
    /// when none.
    pub fn refused(&self) -> String {
        self.cli(&["ACL", "LOG"]).trim().to_string()
    }

    /// On 127.0.0.1:[`REDIS_PORT`] (or only on `socket`), password
    /// [`PASSWORD`].
    pub fn start(ns: &Netns, dir: &Path, socket: Option<PathBuf>) -> Redis {
        Redis::spawn(ns, dir, socket, REDIS_PORT, Access::Password(PASSWORD))
    }

    /// On 127.0.0.1:`port` with `password`.
    pub fn start_on(ns: &Netns, dir: &Path, port: u16, password: &str) -> Redis {
        Redis::spawn(ns, dir, None, port, Access::Password(password))
    }

    /// On 127.0.0.1:`port`, with the users of `acl_file`, whose `default`
    /// user has `admin_password`.
    pub fn start_with_acl(
        ns: &Netns,
        dir: &Path,
        port: u16,
        acl_file: &Path,
        admin_password: &str,
    ) -> Redis {
        Redis::spawn(
            ns,
            dir,
            None,
            port,
            Access::AclFile(acl_file, admin_password),
        )
    }

    fn spawn(ns: &Netns, dir: &Path, socket: Option<PathBuf>, port: u16, access: Access) -> Redis {
        let mut cmd = ns.cmd("redis-server");
        match &socket {
            Some(p) => cmd
                .args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                .arg(p),
            None => cmd
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(port.to_string()),
        };
        let password = match access {
            Access::Password(p) => {
                cmd.args(["--requirepass", p]);
                p
            }
            Access::AclFile(file, p) => {
                cmd.arg("--aclfile").arg(file);
                p
            }
        };
        let child = cmd
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
            child: Some(child),
            socket,
            port,
            password: password.to_string(),
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

    /// `redis-cli` in the namespace, authenticated; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self.ns.cmd("redis-cli");
        match &self.socket {
            Some(p) => cmd.arg("-s").arg(p),
            None => cmd
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string()),
        };
        let out = super::run_with_timeout(
            cmd.args(["-a", &self.password, "--no-auth-warning"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

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
