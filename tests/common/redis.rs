//! A real `redis-server` for tests, in a network namespace: with
//! `requirepass`, no persistence, its files in a directory of the test's;
//! on 127.0.0.1:[`REDIS_PORT`] or on a unix socket only.

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
}

impl Redis {
    pub fn start(ns: &Netns, dir: &Path, socket: Option<PathBuf>) -> Redis {
        let mut cmd = ns.cmd("redis-server");
        match &socket {
            Some(p) => cmd
                .args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                .arg(p),
            None => cmd
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(REDIS_PORT.to_string()),
        };
        let child = cmd
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
                .arg(REDIS_PORT.to_string()),
        };
        let out =
            super::run_with_timeout(cmd.args(["-a", PASSWORD, "--no-auth-warning"]).args(args));
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
