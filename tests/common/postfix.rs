//! A private Postfix instance inside a test's network namespace: its own
//! config directory, queue and log file in a temporary directory, an
//! `smtpd` on `127.0.0.1:PORT` in the namespace, no chroot, no syslog.
//!
//! ```ignore
//! let Some(ns) = Netns::for_test("pf", &["postfix", "swaks"]) else { return };
//! let pf = Postfix::start(&ns, PostfixOptions::default().defer("smtp"));
//! let s = pf.send(&Mail::to(&["user@dest.example"]));
//! assert!(s.data_reply().starts_with("250 "), "{}", s.transcript);
//! ```
//!
//! Layout of the temporary directory: `etc/` (config directory: main.cf,
//! master.cf, extra files), `queue/`, `data/` (owned by postfix) and
//! `maillog`. Every program runs through `ip netns exec`, so Postfix sees
//! the namespace's `resolv.conf` (`nameserver 127.0.0.1`) and `hosts`.
//!
//! Postfix re-reads a configuration file, sleeping a second at a time,
//! while its modification time is within the last second or two. The
//! harness therefore back-dates every file it writes; that is what makes a
//! first start take ~0.2 s instead of ~2 s.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::WAIT;
use super::netns::{Netns, kill_and_wait, process_alive, wait_gone};

/// The host name the instance uses for itself.
pub const MYHOSTNAME: &str = "mx.test.example";
/// The name swaks gives in EHLO.
pub const CLIENT_HELO: &str = "client.test.example";
/// Default envelope sender for [`Mail`].
pub const SENDER: &str = "sender@src.example";

/// Temporary directories are named `<TEMP_PREFIX><pid>-XXXXXX`.
const TEMP_PREFIX: &str = "tls-policyd-postfix-";

const POLL: Duration = Duration::from_millis(10);

/// The services of a stock master.cf, all with chroot `n`. The smtpd
/// listener is added separately.
const MASTER_CF: &str = "\
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
";

/// How to set up an instance. Build with the methods:
/// `PostfixOptions::default().defer("smtp").set("smtpd_milters", "inet:127.0.0.1:8891")`.
#[derive(Debug, Clone)]
pub struct PostfixOptions {
    /// The smtpd port on 127.0.0.1 inside the namespace.
    pub port: u16,
    pub myhostname: String,
    /// Empty by default: no domain is delivered locally.
    pub mydestination: String,
    /// Transports whose mail stays in the queue until [`Postfix::flush`].
    pub defer_transports: Vec<String>,
    /// main.cf settings; a name the harness sets by default is replaced.
    pub main: Vec<(String, String)>,
    /// Raw text appended to main.cf.
    pub main_text: String,
    /// Extra master.cf entries (continuation lines allowed); chroot must
    /// be `n`.
    pub master: Vec<String>,
    /// Extra master.cf entries with chroot `y` (see
    /// [`PostfixOptions::chrooted_master_line`]).
    pub chrooted: Vec<String>,
    /// `-o name=value` options for the smtpd listener.
    pub smtpd_args: Vec<(String, String)>,
    /// Files written into the config directory before the start (tables,
    /// header checks); refer to them as `$config_directory/NAME`.
    pub files: Vec<(String, String)>,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        PostfixOptions {
            port: 25,
            myhostname: MYHOSTNAME.into(),
            mydestination: String::new(),
            defer_transports: Vec::new(),
            main: Vec::new(),
            main_text: String::new(),
            master: Vec::new(),
            chrooted: Vec::new(),
            smtpd_args: Vec::new(),
            files: Vec::new(),
        }
    }
}

impl PostfixOptions {
    /// A main.cf setting (`smtpd_recipient_restrictions`,
    /// `smtp_tls_policy_maps`, `transport_maps`, ...).
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.main.retain(|(n, _)| n != name);
        self.main.push((name.into(), value.into()));
        self
    }

    /// Raw main.cf text, appended after everything else.
    pub fn main_text(mut self, text: &str) -> Self {
        self.main_text.push_str(text);
        if !text.ends_with('\n') {
            self.main_text.push('\n');
        }
        self
    }

    /// An extra master.cf entry, e.g.
    /// `"smtp-tls-forced unix - - n - - smtp -o smtp_tls_security_level=encrypt"`.
    pub fn master_line(mut self, line: &str) -> Self {
        self.master.push(line.into());
        self
    }

    /// An extra master.cf entry whose service runs chrooted in the queue
    /// directory, as Debian's master.cf has it. The chroot has no `etc/`
    /// (no resolv.conf, no services file): route to such a transport with
    /// IP literals and numeric ports.
    pub fn chrooted_master_line(mut self, line: &str) -> Self {
        let first = line.lines().next().unwrap_or_default();
        let fields: Vec<&str> = first.split_whitespace().collect();
        assert!(
            fields.len() >= 8 && fields[4] == "y",
            "a chrooted master.cf entry needs 8 fields with chroot `y`: {line:?}"
        );
        self.chrooted.push(line.into());
        self
    }

    /// Keep mail for `transport` in the queue.
    pub fn defer(mut self, transport: &str) -> Self {
        self.defer_transports.push(transport.into());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn mydestination(mut self, domains: &str) -> Self {
        self.mydestination = domains.into();
        self
    }

    /// `-o name=value` on the smtpd listener.
    pub fn smtpd_arg(mut self, name: &str, value: &str) -> Self {
        self.smtpd_args.push((name.into(), value.into()));
        self
    }

    /// A file in the config directory.
    pub fn file(mut self, name: &str, text: &str) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }
}

/// A running private Postfix instance. Stopped on drop, which also prints
/// its configuration and log when the test is failing.
pub struct Postfix {
    netns: Netns,
    dir: tempfile::TempDir,
    port: u16,
    master_pid: Option<i32>,
}

impl Postfix {
    /// Write the configuration and start the instance in `netns`; returns
    /// once its smtpd port accepts connections. Panics (with the log and
    /// `postconf -n`) when Postfix does not come up.
    pub fn start(netns: &Netns, opts: PostfixOptions) -> Postfix {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("create temp dir");
        let mut pf = Postfix {
            netns: netns.clone(),
            dir,
            port: opts.port,
            master_pid: None,
        };
        pf.write_config(&opts);
        pf.start_again();
        pf
    }

    fn write_config(&self, opts: &PostfixOptions) {
        let root = self.dir.path();
        let postfix = nix::unistd::User::from_name("postfix")
            .expect("look up user postfix")
            .expect("there is no user `postfix`: is Postfix installed?");
        // Postfix daemons run as `postfix` and must reach the queue.
        set_mode(root, 0o755);
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir(root.join(d)).expect("create instance directory");
        }
        set_mode(&root.join("data"), 0o700);
        nix::unistd::chown(&root.join("data"), Some(postfix.uid), None)
            .expect("chown data_directory");

        let mut main: Vec<(String, String)> = vec![
            ("compatibility_level".into(), "3.6".into()),
            ("queue_directory".into(), path_str(&self.queue_dir())),
            ("data_directory".into(), path_str(&root.join("data"))),
            ("maillog_file".into(), path_str(&self.log_path())),
            ("maillog_file_prefixes".into(), path_str(root)),
            ("myhostname".into(), opts.myhostname.clone()),
            ("mydomain".into(), "test.example".into()),
            ("myorigin".into(), "$myhostname".into()),
            ("mydestination".into(), opts.mydestination.clone()),
            ("inet_interfaces".into(), "127.0.0.1".into()),
            ("inet_protocols".into(), "ipv4".into()),
            ("mynetworks".into(), "127.0.0.0/8".into()),
            ("alias_maps".into(), String::new()),
            ("alias_database".into(), String::new()),
            ("biff".into(), "no".into()),
            ("smtpd_banner".into(), "$myhostname ESMTP".into()),
            ("smtpd_tls_security_level".into(), "none".into()),
            ("smtpd_error_sleep_time".into(), "0s".into()),
            ("defer_transports".into(), opts.defer_transports.join(", ")),
            // Nothing should wait long or stay long in a test.
            ("maximal_queue_lifetime".into(), "1h".into()),
            ("bounce_queue_lifetime".into(), "1h".into()),
            ("smtp_connect_timeout".into(), "5s".into()),
            ("smtp_helo_timeout".into(), "10s".into()),
        ];
        for (name, value) in &opts.main {
            match main.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => main.push((name.clone(), value.clone())),
            }
        }
        let mut main_cf = String::from("# Written by the test harness.\n");
        for (name, value) in &main {
            main_cf.push_str(&format!("{name} = {value}\n"));
        }
        main_cf.push_str(&opts.main_text);

        let mut smtpd = format!("127.0.0.1:{} inet n - n - - smtpd", opts.port);
        for (name, value) in &opts.smtpd_args {
            smtpd.push_str(&format!("\n  -o {name}={value}"));
        }
        let mut master_cf = format!("{smtpd}\n{MASTER_CF}");
        for line in &opts.master {
            check_no_chroot(line);
            master_cf.push_str(line);
            master_cf.push('\n');
        }
        for line in &opts.chrooted {
            master_cf.push_str(line);
            master_cf.push('\n');
        }

        self.write_file("main.cf", &main_cf);
        self.write_file("master.cf", &master_cf);
        for (name, text) in &opts.files {
            self.write_file(name, text);
        }
    }

    /// The temporary directory that holds everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config directory (what `-c` gets).
    pub fn config_dir(&self) -> PathBuf {
        self.dir().join("etc")
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir().join("queue")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("maillog")
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The smtpd port (on 127.0.0.1 inside the namespace).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The master process while the instance runs.
    pub fn master_pid(&self) -> Option<i32> {
        self.master_pid
    }

    /// Write a file into the config directory, back-dated so that Postfix
    /// reads it at once; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.config_dir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        backdate(&path);
        path
    }

    /// A Postfix command (`postfix`, `postconf`, `postqueue`, `postsuper`,
    /// `postmap`, ...) with `-c CONFIG_DIR`, inside the namespace. Add
    /// arguments and run it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = self.netns.cmd(program);
        c.arg("-c").arg(self.config_dir());
        c
    }

    /// Run a Postfix command and capture its output.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        super::run_with_timeout(self.command(program).args(args))
    }

    /// Run a Postfix command that must succeed; its stdout.
    pub fn run_ok<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> String {
        let out = self.run(program, args);
        if !out.status.success() {
            let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            panic!(
                "{program} -c {} {} failed ({}):\nstdout: {}\nstderr: {}\n{}",
                self.config_dir().display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postconf -n`: the settings in main.cf.
    pub fn postconf_n(&self) -> String {
        let out = self.run("postconf", &["-n"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Change main.cf settings (`postconf -e`) and reload.
    pub fn configure(&self, settings: &[(&str, &str)]) {
        let args: Vec<String> = settings.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut all = vec!["-e".to_string()];
        all.extend(args);
        self.run_ok("postconf", &all);
        backdate(&self.config_dir().join("main.cf"));
        self.reload();
    }

    /// `postfix reload`: the master re-reads its configuration; daemons
    /// pick up changes as they restart.
    pub fn reload(&self) {
        self.run_ok("postfix", &["reload"]);
    }

    /// Start a stopped instance again (the queue is kept).
    pub fn start_again(&mut self) {
        assert!(self.master_pid.is_none(), "Postfix is already running");
        let t = Instant::now();
        let out = self.run("postfix", &["start"]);
        if !out.status.success() {
            panic!(
                "postfix start failed ({}):\nstdout: {}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        let pid_file = self.queue_dir().join("pid/master.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no pid in {} after postfix start\n{}",
                    pid_file.display(),
                    self.diagnostics()
                )
            });
        self.master_pid = Some(pid);
        self.wait_listening(pid);
        eprintln!(
            "postfix: started {} in {} on {} in {:.2?}",
            self.config_dir().display(),
            self.netns.name(),
            self.server(),
            t.elapsed()
        );
    }

    /// Wait until the master listens on the smtpd port. Reads the
    /// master's view of TCP sockets (`/proc/PID/net/tcp` is per network
    /// namespace) rather than connecting, which would leave a
    /// "lost connection" line in the log.
    fn wait_listening(&self, master: i32) {
        let want = format!("0100007F:{:04X}", self.port);
        let want_be = format!("7F000001:{:04X}", self.port);
        let deadline = Instant::now() + WAIT;
        loop {
            let tcp =
                std::fs::read_to_string(format!("/proc/{master}/net/tcp")).unwrap_or_default();
            let listening = tcp.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && (f[1] == want || f[1] == want_be) && f[3] == "0A"
            });
            if listening {
                return;
            }
            if !process_alive(master) || Instant::now() >= deadline {
                panic!(
                    "Postfix (master {master}) does not listen on {}\n{}",
                    self.server(),
                    self.diagnostics()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stop the instance: SIGTERM to the master (as `postfix stop` does,
    /// without its one-second polling), then SIGKILL whatever of its
    /// process group is left after a few seconds. Quick: ~10 ms.
    pub fn stop(&mut self) {
        let Some(master) = self.master_pid.take() else {
            return;
        };
        let t = Instant::now();
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(master, libc::SIGTERM) };
        // The master passes SIGTERM on to its process group.
        let mut left = wait_gone(&[master], Duration::from_secs(3));
        left.extend(process_group(master));
        left = wait_gone(&left, Duration::from_secs(2));
        if !left.is_empty() {
            eprintln!("postfix: SIGKILL to {left:?} after SIGTERM");
            // SAFETY: as above; a negative pid names the process group.
            unsafe { libc::kill(-master, libc::SIGKILL) };
            let left = kill_and_wait(&left, Duration::from_secs(2));
            if !left.is_empty() {
                eprintln!("postfix: processes {left:?} survive SIGKILL");
            }
        }
        eprintln!(
            "postfix: stopped {} in {:.2?}",
            self.config_dir().display(),
            t.elapsed()
        );
    }

    /// Everything logged so far: the rotated logs beside the log file
    /// (`maillog.1`, `maillog.20261205-101500.gz`), oldest first, then the
    /// log file.
    pub fn log_text(&self) -> String {
        self.rotated_logs()
            .into_iter()
            .chain([self.log_path()])
            .map(|p| read_log(&p))
            .collect()
    }

    /// Rotated logs beside the log file, oldest (by modification time,
    /// then name) first; `X.gz` is left out while `X` still exists (gzip
    /// is compressing it).
    pub fn rotated_logs(&self) -> Vec<PathBuf> {
        let prefix = "maillog.";
        let mut found: Vec<(SystemTime, String)> = std::fs::read_dir(self.dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        name.starts_with(prefix).then_some(())?;
                        Some((e.metadata().ok()?.modified().ok()?, name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let names: BTreeSet<String> = found.iter().map(|(_, n)| n.clone()).collect();
        found.retain(|(_, n)| {
            n.strip_suffix(".gz")
                .is_none_or(|plain| !names.contains(plain))
        });
        found.sort();
        found.into_iter().map(|(_, n)| self.dir().join(n)).collect()
    }

    /// Complete log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        let text = self.log_text();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete.lines().map(str::to_string).collect()
    }

    /// The number of log lines so far, for [`Postfix::wait_for_log_since`].
    pub fn log_mark(&self) -> usize {
        self.log_lines().len()
    }

    /// Wait up to `timeout` for a log line matching `pred`; panics with the
    /// log and configuration when none comes.
    pub fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_log_since(0, pred, timeout)
    }

    /// [`Postfix::wait_for_log`], looking only at lines from `mark` on.
    pub fn wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        match self.try_wait_for_log_since(mark, pred, timeout) {
            Some(l) => l,
            None => panic!(
                "expected log line did not appear within {timeout:?} (after line {mark})\n{}",
                self.diagnostics()
            ),
        }
    }

    pub fn try_wait_for_log_since(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().skip(mark).find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Queue ids in the order they first appear in the log, from smtpd's
    /// `ID: client=` lines and cleanup's `ID: message-id=` lines.
    pub fn queue_ids_from_log(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        for line in self.log_lines() {
            let Some(l) = LogLine::parse(&line) else {
                continue;
            };
            let Some((id, rest)) = l.text.split_once(": ") else {
                continue;
            };
            let from_smtpd = l.daemon() == "smtpd" && rest.starts_with("client=");
            let from_cleanup = l.daemon() == "cleanup" && rest.starts_with("message-id=");
            if (from_smtpd || from_cleanup) && is_queue_id(id) && seen.insert(id.to_string()) {
                ids.push(id.to_string());
            }
        }
        ids
    }

    /// Log lines about one queue id (`ID: ...`).
    pub fn log_for(&self, queue_id: &str) -> Vec<String> {
        let tag = format!(": {queue_id}: ");
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains(&tag))
            .collect()
    }

    /// What is in the queue (`postqueue -j`).
    pub fn queue(&self) -> Vec<QueuedMessage> {
        let out = self.run_ok("postqueue", &["-j"]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("postqueue -j line is not JSON ({e}): {l}"));
                QueuedMessage::from_json(&v)
            })
            .collect()
    }

    /// Wait until the queue satisfies `pred`; returns it.
    pub fn wait_for_queue(
        &self,
        pred: impl Fn(&[QueuedMessage]) -> bool,
        timeout: Duration,
    ) -> Vec<QueuedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let q = self.queue();
            if pred(&q) {
                return q;
            }
            if Instant::now() >= deadline {
                panic!(
                    "queue not as expected within {timeout:?}: {q:#?}\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// `postqueue -f`: attempt delivery of everything queued, deferred
    /// transports included.
    pub fn flush(&self) {
        self.run_ok("postqueue", &["-f"]);
    }

    /// `postsuper -d ALL`: empty the queue.
    pub fn delete_queue(&self) {
        self.run_ok("postsuper", &["-d", "ALL"]);
    }

    /// swaks against this instance, from inside the namespace:
    /// `--server 127.0.0.1:PORT --helo client.test.example` and `args`.
    pub fn swaks<S: AsRef<OsStr>>(&self, args: &[S]) -> SmtpSession {
        let mut all: Vec<&OsStr> =
            vec!["--server".as_ref(), "--helo".as_ref(), CLIENT_HELO.as_ref()];
        let server = self.server();
        all.insert(1, server.as_ref());
        all.extend(args.iter().map(|a| a.as_ref()));
        self.swaks_raw(&all)
    }

    /// swaks from inside the namespace with `args` only (and a timeout):
    /// for another port or client address.
    pub fn swaks_raw<S: AsRef<OsStr>>(&self, args: &[S]) -> SmtpSession {
        let mut cmd = self.netns.cmd("swaks");
        cmd.args(["--timeout", "10s"]).args(args);
        let (status, transcript) = run_merged(&mut cmd, WAIT);
        SmtpSession { status, transcript }
    }

    /// Send `mail` with swaks.
    pub fn send(&self, mail: &Mail) -> SmtpSession {
        self.swaks(&mail.args())
    }

    /// `postconf -n`, master.cf and the end of the log, for failure
    /// messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log_lines();
        let tail = &log[log.len().saturating_sub(80)..];
        format!(
            "--- postconf -c {} -n ---\n{}--- master.cf ---\n{}--- {} (last {} lines) ---\n{}\n---",
            self.config_dir().display(),
            self.postconf_n(),
            std::fs::read_to_string(self.config_dir().join("master.cf")).unwrap_or_default(),
            self.log_path().display(),
            tail.len(),
            tail.join("\n")
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.stop();
    }
}

/// One message in the queue, from `postqueue -j`.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// `incoming`, `active`, `deferred`, `hold`, ...
    pub queue_name: String,
    pub queue_id: String,
    pub sender: String,
    pub recipients: Vec<QueuedRecipient>,
    pub message_size: u64,
}

#[derive(Debug, Clone)]
pub struct QueuedRecipient {
    pub address: String,
    /// Empty until a delivery attempt failed.
    pub delay_reason: String,
}

impl QueuedMessage {
    fn from_json(v: &Value) -> QueuedMessage {
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        QueuedMessage {
            queue_name: s(v, "queue_name"),
            queue_id: s(v, "queue_id"),
            sender: s(v, "sender"),
            message_size: v["message_size"].as_u64().unwrap_or(0),
            recipients: v["recipients"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| QueuedRecipient {
                            address: s(r, "address"),
                            delay_reason: s(r, "delay_reason"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn recipient_addresses(&self) -> Vec<&str> {
        self.recipients.iter().map(|r| r.address.as_str()).collect()
    }
}

/// A message for swaks to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Added headers (`Name: value`).
    pub headers: Vec<String>,
    pub body: Option<String>,
    /// `--quit-after` (`RCPT`, `DATA`, ...).
    pub quit_after: Option<String>,
    /// More swaks arguments.
    pub extra: Vec<String>,
}

impl Mail {
    pub fn to(recipients: &[&str]) -> Mail {
        Mail {
            from: SENDER.into(),
            to: recipients.iter().map(|r| r.to_string()).collect(),
            headers: Vec::new(),
            body: None,
            quit_after: None,
            extra: Vec::new(),
        }
    }

    pub fn from(mut self, sender: &str) -> Self {
        self.from = sender.into();
        self
    }

    pub fn header(mut self, header: &str) -> Self {
        self.headers.push(header.into());
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn quit_after(mut self, stage: &str) -> Self {
        self.quit_after = Some(stage.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.into());
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--from".to_string(),
            self.from.clone(),
            "--to".to_string(),
            self.to.join(","),
        ];
        for h in &self.headers {
            a.push("--add-header".into());
            a.push(h.clone());
        }
        if let Some(b) = &self.body {
            a.push("--body".into());
            a.push(b.clone());
        }
        if let Some(q) = &self.quit_after {
            a.push("--quit-after".into());
            a.push(q.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// What swaks did: its exit status and its transcript (stdout and stderr
/// interleaved as written).
#[derive(Debug, Clone)]
pub struct SmtpSession {
    pub status: ExitStatus,
    pub transcript: String,
}

/// One client command and the server's reply lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// As sent (`RCPT TO:<a@b>`); `<banner>` for the greeting and `.` for
    /// the end of the message data.
    pub command: String,
    pub reply: Vec<String>,
}

impl Exchange {
    /// The reply as one string (lines joined with `\n`).
    pub fn reply_text(&self) -> String {
        self.reply.join("\n")
    }

    /// The three-digit reply code.
    pub fn code(&self) -> Option<u16> {
        self.reply
            .first()
            .and_then(|l| l.get(..3))
            .and_then(|c| c.parse().ok())
    }
}

impl SmtpSession {
    /// The SMTP dialogue, command by command.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut out: Vec<Exchange> = Vec::new();
        let mut in_data = false;
        for line in self.transcript.lines() {
            // `->`/`<-` in plaintext, `~>`/`<~` after STARTTLS; `*` marks
            // an error reply.
            if let Some(cmd) = line
                .strip_prefix(" -> ")
                .or_else(|| line.strip_prefix(" ~> "))
            {
                if in_data {
                    // Message content, up to the lone dot.
                    if cmd == "." {
                        in_data = false;
                        out.push(Exchange {
                            command: ".".into(),
                            reply: Vec::new(),
                        });
                    }
                    continue;
                }
                out.push(Exchange {
                    command: cmd.to_string(),
                    reply: Vec::new(),
                });
            } else if let Some(reply) = line
                .strip_prefix("<-  ")
                .or_else(|| line.strip_prefix("<** "))
                .or_else(|| line.strip_prefix("<~  "))
                .or_else(|| line.strip_prefix("<~* "))
            {
                if out.is_empty() {
                    out.push(Exchange {
                        command: "<banner>".into(),
                        reply: Vec::new(),
                    });
                }
                let last = out.last_mut().unwrap();
                last.reply.push(reply.to_string());
                if last.command.eq_ignore_ascii_case("DATA") && reply.starts_with("354") {
                    in_data = true;
                }
            }
        }
        out
    }

    /// The reply to the first command that matches `pred` (case-insensitive
    /// prefix is usual: `|c| c.starts_with("RCPT")`).
    pub fn reply_to(&self, pred: impl Fn(&str) -> bool) -> Option<Exchange> {
        self.exchanges().into_iter().find(|e| pred(&e.command))
    }

    /// The reply to `RCPT TO:<address>` (empty when there was none).
    pub fn rcpt_reply(&self, address: &str) -> String {
        let want = format!("RCPT TO:<{address}>");
        self.reply_to(|c| c.eq_ignore_ascii_case(&want))
            .map(|e| e.reply_text())
            .unwrap_or_default()
    }

    /// The reply to the `DATA` command (`354 ...`).
    pub fn data_reply(&self) -> String {
        self.reply_to(|c| c.eq_ignore_ascii_case("DATA"))
            .map(|e| e.reply_text())
            .unwrap_or_default()
    }

    /// The reply after the message data (`250 2.0.0 Ok: queued as ID`).
    pub fn end_of_data_reply(&self) -> String {
        self.reply_to(|c| c == ".")
            .map(|e| e.reply_text())
            .unwrap_or_default()
    }

    /// The queue id from `queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        let r = self.end_of_data_reply();
        let (_, rest) = r.split_once("queued as ")?;
        Some(rest.split_whitespace().next()?.to_string())
    }
}

/// One line of Postfix's log: `Mon DD HH:MM:SS host program[pid]: text`.
#[derive(Debug, Clone)]
pub struct LogLine<'a> {
    /// `postfix/smtpd`, `postfix/submission/smtpd`, ...
    pub program: &'a str,
    pub pid: u32,
    pub text: &'a str,
}

impl<'a> LogLine<'a> {
    pub fn parse(line: &'a str) -> Option<LogLine<'a>> {
        let (head, text) = line.split_once("]: ")?;
        let (before, pid) = head.rsplit_once('[')?;
        let program = before.rsplit(' ').next()?;
        Some(LogLine {
            program,
            pid: pid.parse().ok()?,
            text,
        })
    }

    /// The daemon name: the program's last component (`smtpd`).
    pub fn daemon(&self) -> &'a str {
        self.program.rsplit('/').next().unwrap_or(self.program)
    }
}

/// A log file's text, gunzipped when its name ends in `.gz`; empty when
/// it cannot be read.
pub fn read_log(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let bytes = if path.extension() == Some(OsStr::new("gz")) {
        let mut out = Vec::new();
        // A file gzip is still writing ends early: its source, still
        // there, is read instead (see Postfix::rotated_logs).
        let _ = flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out);
        out
    } else {
        bytes
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

fn is_queue_id(s: &str) -> bool {
    s.len() >= 6 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
        .to_string()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Set a file's modification time an hour back.
pub fn backdate(path: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

/// Panic unless a master.cf entry runs without chroot: a chrooted daemon
/// would read the queue directory's copy of resolv.conf and hosts, not
/// the namespace's.
fn check_no_chroot(entry: &str) {
    let first = entry.lines().next().unwrap_or_default();
    if first.trim_start().starts_with('#') || first.trim().is_empty() {
        return;
    }
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert!(
        fields.len() >= 8 && fields[4] == "n",
        "master.cf entry must have 8 fields with chroot `n`: {entry:?}"
    );
}

/// Processes (not zombies) in process group `pgid`.
fn process_group(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After "(comm)": state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[2].parse() == Ok(pgid)
        })
        .collect()
}

/// Run `cmd` with stdout and stderr going to one file, so that the
/// output keeps the order it was written in; kill it after `timeout`.
fn run_merged(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String) {
    let mut file = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut out = Vec::new();
    file.rewind().expect("rewind");
    file.read_to_end(&mut out).expect("read output");
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// Remove instance directories left by test runs that were killed before
/// they could clean up, stopping their Postfix if it still runs.
fn remove_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let queue = dir.join("queue");
        let master = std::fs::read_to_string(queue.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(m) = master {
            // Only if that pid really is this instance's master.
            let cwd = std::fs::read_link(format!("/proc/{m}/cwd")).ok();
            if cwd.as_deref() == Some(queue.as_path()) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(-m, libc::SIGKILL) };
            }
        }
        eprintln!("removing {} left by an earlier run", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
