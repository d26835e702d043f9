//! A real `redis-server` inside a test's network namespace (with
//! `requirepass`, no persistence, in a temporary directory), and
//! `redis-cli` against it.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::netns::Netns;

/// Longest wait for the server to answer.
const START_WAIT: Duration = Duration::from_secs(30);

/// A `redis-server` on 127.0.0.1:`port`, killed on drop.
pub struct Redis {
    ns: Netns,
    child: Option<Child>,
    port: u16,
    password: String,
}

impl Redis {
    pub fn start(ns: &Netns, dir: &Path, port: u16, password: &str) -> Redis {
        let child = ns
            .cmd("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args([
                "--requirepass",
                password,
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
            port,
            password: password.to_string(),
        };
        let deadline = Instant::now() + START_WAIT;
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `redis-cli` in the namespace, authenticated; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = super::run_with_timeout(
            self.ns
                .cmd("redis-cli")
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-a", &self.password, "--no-auth-warning"])
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
