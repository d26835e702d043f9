//! Real DNS servers for the end-to-end tests: knot as the authoritative
//! server for signed and unsigned zones (a fresh ECDSA key per signed zone,
//! made with keymgr) and unbound as the validating resolver in front of
//! it, with each signed zone's DS as its only trust anchors. Both run
//! inside the test's network namespace; unbound refuses every name outside
//! the zones it is told about, so nothing is ever asked of the outside.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::find_tool;
use super::netns::Netns;

/// Where the tests' Knot listens, in a test's network namespace.
pub const KNOT: &str = "127.0.0.2";

/// A server process in the namespace, killed (and reaped) on drop.
pub struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    pub fn spawn(ns: &Netns, name: &'static str, args: &[&str], dir: &Path) -> Server {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let program = find_tool(name).unwrap_or_else(|| panic!("`{name}` is not installed"));
        let child = ns
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Server { name, child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `addr` accepts TCP connections inside the namespace.
    pub fn wait_listening(&mut self, ns: &Netns, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ns.tcp_connect(addr).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} does not listen on {addr}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log\n{}", self.name, self.log_text());
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run a tool in the namespace; its standard output, or a panic with
/// both outputs.
pub fn run_ok(ns: &Netns, program: &str, args: &[&str]) -> String {
    let tool = find_tool(program).unwrap_or_else(|| panic!("`{program}` is not installed"));
    let out = ns.run(tool.to_str().unwrap(), args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One zone for knot: its name (no trailing dot), its records (zone-file
/// lines relative to the origin; SOA and NS are added) and whether knot
/// signs it.
pub struct Zone {
    pub name: String,
    pub records: String,
    pub signed: bool,
}

impl Zone {
    pub fn unsigned(name: &str, records: &str) -> Zone {
        Zone {
            name: name.to_string(),
            records: records.to_string(),
            signed: false,
        }
    }

    pub fn signed(name: &str, records: &str) -> Zone {
        Zone {
            name: name.to_string(),
            records: records.to_string(),
            signed: true,
        }
    }
}

/// Knot, authoritative for the zones it was started with.
pub struct Knot {
    pub server: Server,
    pub ip: String,
    /// The SHA-256 DS record of each signed zone, as keymgr prints it.
    pub ds: Vec<String>,
    /// The DNSKEY records of each signed zone, as keymgr prints them.
    pub dnskeys: Vec<String>,
}

/// Knot on `ip`:53, serving `zones` from files in `dir`.
pub fn start_knot(ns: &Netns, dir: &Path, ip: &str, zones: &[Zone]) -> Knot {
    let d = dir.display();
    let conf = dir.join("knot.conf");
    let mut text = format!(
        "server:\n    listen: {ip}@53\n    rundir: {d}\n\
         database:\n    storage: {d}\n\
         log:\n  - target: stderr\n    any: info\n\
         policy:\n  - id: manual\n    manual: on\n    single-type-signing: on\n\
         zone:\n"
    );
    for z in zones {
        let file = dir.join(format!("{}.zone", z.name));
        text.push_str(&format!(
            "  - domain: {}\n    file: {}\n",
            z.name,
            file.display()
        ));
        if z.signed {
            text.push_str("    dnssec-signing: on\n    dnssec-policy: manual\n");
        }
        std::fs::write(
            &file,
            format!(
                "$ORIGIN {}.\n$TTL 60\n\
                 @ SOA ns hostmaster 1 3600 600 86400 60\n\
                 @ NS ns\n\
                 ns A {ip}\n\
                 {}\n",
                z.name, z.records
            ),
        )
        .unwrap();
    }
    std::fs::write(&conf, text).unwrap();
    let conf = conf.to_str().unwrap();
    let mut ds = Vec::new();
    let mut dnskeys = Vec::new();
    for z in zones.iter().filter(|z| z.signed) {
        let zone = format!("{}.", z.name);
        run_ok(
            ns,
            "keymgr",
            &[
                "-c",
                conf,
                &zone,
                "generate",
                "algorithm=ecdsap256sha256",
                "ksk=yes",
                "zsk=yes",
            ],
        );
        ds.push(
            run_ok(ns, "keymgr", &["-c", conf, &zone, "ds"])
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("2"))
                .unwrap_or_else(|| panic!("keymgr printed no SHA-256 DS for {zone}"))
                .trim()
                .to_string(),
        );
        dnskeys.push(run_ok(ns, "keymgr", &["-c", conf, &zone, "dnskey"]));
    }
    let mut server = Server::spawn(ns, "knotd", &["-c", conf], dir);
    server.wait_listening(ns, SocketAddr::new(ip.parse().unwrap(), 53));
    Knot {
        server,
        ip: ip.to_string(),
        ds,
        dnskeys,
    }
}

/// The unbound configuration for [`start_unbound`].
pub fn unbound_conf(dir: &Path, knot: &Knot, zones: &[&str]) -> PathBuf {
    let conf = dir.join("unbound.conf");
    let mut text = format!(
        "server:\n\
         \x20   interface: 127.0.0.1\n\
         \x20   port: 53\n\
         \x20   do-daemonize: no\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   directory: \"{d}\"\n\
         \x20   pidfile: \"\"\n\
         \x20   use-syslog: no\n\
         \x20   logfile: \"\"\n\
         \x20   verbosity: 1\n\
         \x20   val-log-level: 2\n\
         \x20   ede: yes\n\
         \x20   do-ip6: no\n\
         \x20   access-control: 127.0.0.0/8 allow\n\
         \x20   do-not-query-localhost: no\n\
         \x20   qname-minimisation: no\n\
         \x20   module-config: \"validator iterator\"\n\
         \x20   local-zone: \".\" refuse\n",
        d = dir.display()
    );
    for ds in &knot.ds {
        text.push_str(&format!("    trust-anchor: \"{ds}\"\n"));
    }
    for z in zones {
        // `test.` and its children are locally served by default (RFC
        // 6761): hand them to knot.
        text.push_str(&format!("    local-zone: \"{z}.\" transparent\n"));
    }
    for z in zones {
        text.push_str(&format!(
            "stub-zone:\n    name: \"{z}.\"\n    stub-addr: {}@53\n",
            knot.ip
        ));
    }
    std::fs::write(&conf, text).unwrap();
    conf
}

/// Unbound on 127.0.0.1:53 (the namespace's resolv.conf), validating with
/// knot's DS records as its only trust anchors, asking knot for `zones`
/// and refusing everything else (it never recurses out of the namespace).
pub fn start_unbound(ns: &Netns, dir: &Path, knot: &Knot, zones: &[&str]) -> Server {
    let conf = unbound_conf(dir, knot, zones);
    restart_unbound(ns, dir, &conf)
}

/// Start unbound again from a configuration [`unbound_conf`] wrote.
pub fn restart_unbound(ns: &Netns, dir: &Path, conf: &Path) -> Server {
    let mut unbound = Server::spawn(ns, "unbound", &["-d", "-c", conf.to_str().unwrap()], dir);
    unbound.wait_listening(ns, SocketAddr::from(([127, 0, 0, 1], 53)));
    unbound
}
