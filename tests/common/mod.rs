//! Shared helpers for the integration tests: run the real `tls-policyd`
//! binary on a throwaway config, speak socketmap to it over the wire, and
//! read what it writes to stderr and to the decision log.
//!
//! Nothing here uses the library: requests and replies are framed by hand
//! so the tests check the wire format the daemon really produces.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod batch;
pub mod deliveries;
pub mod dns;
pub mod dnssec;
pub mod examples;
pub mod fixtures;
pub mod fleet;
pub mod https;
pub mod journal;
pub mod knowledge;
pub mod maillog;
pub mod milter;
pub mod netns;
pub mod outcomes;
pub mod postfix;
pub mod redis;
pub mod smtp;
pub mod submission;
pub mod tlsrpt;

/// File names inside a daemon's directory.
pub const CONFIG_FILE: &str = "tls-policyd.toml";
pub const POLICY_FILE: &str = "policy.toml";
pub const DECISIONS_FILE: &str = "decisions.jsonl";

/// Upper bound for any single wait. Waits end as soon as their condition
/// holds; this only decides how long a broken daemon takes to fail a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll interval for conditions that cannot be waited on directly.
const POLL: Duration = Duration::from_millis(5);

/// A config listening on a free loopback port, reading `policy.toml` and
/// writing decisions to `decisions.jsonl` next to it.
pub fn config(default_reply: &str) -> String {
    config_listening("inet:127.0.0.1:0", default_reply, "")
}

/// A config with a given listen address, default reply and extra
/// `[socketmap]` lines.
pub fn config_listening(listen: &str, default_reply: &str, extra_socketmap: &str) -> String {
    format!(
        "[socketmap]\n\
         listen = \"{listen}\"\n\
         default_reply = \"{default_reply}\"\n\
         {extra_socketmap}\n\
         [policy]\n\
         file = \"{POLICY_FILE}\"\n\
         \n\
         [log]\n\
         decisions = \"{DECISIONS_FILE}\"\n\
         level = \"info\"\n"
    )
}

/// A config for one front door (`policy_server`, `milter`) on a free
/// loopback port with `extra` lines in its section, the prober off (no
/// network), reading `policy.toml` and writing decisions to
/// `decisions.jsonl` next to it.
pub fn front_door_config(section: &str, extra: &str) -> String {
    format!(
        "\n[{section}]\n\
         listen = \"inet:127.0.0.1:0\"\n\
         {extra}\n\
         \n\
         [prober]\n\
         enabled = false\n\
         \n\
         [policy]\n\
         file = \"{POLICY_FILE}\"\n\
         \n\
         [log]\n\
         decisions = \"{DECISIONS_FILE}\"\n"
    )
}

/// One policy delegation request (`smtpd_access_policy`) as Postfix
/// writes it: ESMTP from 127.0.0.1, no queue id yet, then `extra`
/// attribute lines (each ending in a newline) and the empty line that
/// ends the request.
pub fn policy_request(
    state: &str,
    sender: &str,
    recipient: &str,
    instance: &str,
    extra: &str,
) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=127.0.0.1\nsender={sender}\nrecipient={recipient}\n\
         instance={instance}\nqueue_id=\n{extra}\n"
    )
}

/// How to run the daemon.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run inside this network namespace (`ip netns exec NAME`).
    pub netns: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A command that runs the daemon (its path and arguments follow
    /// these words): `unshare -m ...` for a mount namespace of its own.
    /// It must exec the daemon, so that the pid is the daemon's.
    pub wrap: Vec<String>,
}

impl Options {
    /// Run inside the test's network namespace `ns`.
    pub fn in_netns(ns: &netns::Netns) -> Options {
        Options {
            netns: Some(ns.name().to_string()),
            ..Options::default()
        }
    }
}

#[derive(Default)]
struct StderrState {
    lines: Vec<String>,
    eof: bool,
}

/// Everything the daemon wrote to stderr so far, filled by a reader thread.
#[derive(Default)]
struct Stderr {
    state: Mutex<StderrState>,
    changed: Condvar,
}

/// A running `tls-policyd serve` with its own directory. Killed on drop.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    stderr: Arc<Stderr>,
    address: Option<String>,
    status: Option<ExitStatus>,
    opts: Options,
}

impl Daemon {
    /// Start a daemon on `config_text` and `policy_text` and wait until it
    /// is listening.
    pub fn start(config_text: &str, policy_text: &str) -> Daemon {
        Daemon::start_with(config_text, policy_text, Options::default())
    }

    /// [`Daemon::start`] with options.
    pub fn start_with(config_text: &str, policy_text: &str, opts: Options) -> Daemon {
        Daemon::start_frontend(config_text, policy_text, opts, "socketmap")
    }

    /// Start a daemon and wait until `frontend` (`socketmap`, `policy`,
    /// ...) is listening; [`Daemon::address`] is that listener's.
    pub fn start_frontend(
        config_text: &str,
        policy_text: &str,
        opts: Options,
        frontend: &str,
    ) -> Daemon {
        let mut d = Daemon::spawn(config_text, policy_text, opts);
        d.address = Some(d.listening(frontend));
        d
    }

    /// The address `frontend` reported in its "listening" line (waits for
    /// the line).
    pub fn listening(&self, frontend: &str) -> String {
        let tag = format!("frontend=\"{frontend}\"");
        let line = self.wait_for_line(|l| l.contains("listening") && l.contains(&tag));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address= in listening line: {line}"))
            .to_string()
    }

    /// Write the files and spawn the daemon without waiting for anything
    /// (for runs that are expected to fail).
    pub fn spawn(config_text: &str, policy_text: &str, opts: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tls-policyd-test.")
            .tempdir()
            .expect("create temp dir");
        std::fs::write(dir.path().join(CONFIG_FILE), config_text).expect("write config");
        std::fs::write(dir.path().join(POLICY_FILE), policy_text).expect("write policy");
        let (child, stderr) = Daemon::spawn_process(dir.path(), &opts);
        Daemon {
            child,
            dir,
            stderr,
            address: None,
            status: None,
            opts,
        }
    }

    fn spawn_process(dir: &Path, opts: &Options) -> (Child, Arc<Stderr>) {
        // Benchmarks compare builds: BENCH_DAEMON names another binary.
        let bin = std::env::var("BENCH_DAEMON")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tls-policyd").to_string());
        let bin = bin.as_str();
        let config_path = dir.join(CONFIG_FILE);
        let mut cmd = match &opts.netns {
            None if !opts.wrap.is_empty() => {
                let mut c = Command::new(&opts.wrap[0]);
                c.args(&opts.wrap[1..]).arg(bin);
                c
            }
            Some(ns) => {
                let mut c = Command::new(find_tool("ip").expect("`ip` is not installed"));
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve").arg("--config").arg(&config_path);
        // The test's own environment must not reconfigure the daemon.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TLS_POLICYD_") || k == "RUST_LOG" {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tls-policyd");
        let pipe = child.stderr.take().expect("stderr pipe");
        let stderr = Arc::new(Stderr::default());
        let s = stderr.clone();
        thread::spawn(move || read_lines(pipe, &s));
        (child, stderr)
    }

    /// Start the daemon again on the same directory and files, after it
    /// exited (or was killed), and wait until `frontend` listens. Stderr
    /// starts afresh. Give the config fixed ports first.
    pub fn restart(&mut self, frontend: &str) {
        assert!(self.status.is_some(), "restart() needs a stopped daemon");
        let (child, stderr) = Daemon::spawn_process(self.dir.path(), &self.opts);
        self.child = child;
        self.stderr = stderr;
        self.status = None;
        self.address = Some(self.listening(frontend));
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join(CONFIG_FILE)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir().join(POLICY_FILE)
    }

    pub fn decisions_path(&self) -> PathBuf {
        self.dir().join(DECISIONS_FILE)
    }

    /// The listen address the daemon reported (`inet:127.0.0.1:PORT`,
    /// `unix:/path`).
    pub fn address(&self) -> &str {
        self.address
            .as_deref()
            .expect("daemon was not started with start()")
    }

    /// The TCP port of an `inet:` listener.
    pub fn port(&self) -> u16 {
        let a = self.address();
        let rest = a
            .strip_prefix("inet:")
            .unwrap_or_else(|| panic!("not an inet listener: {a}"));
        let (_, port) = rest.rsplit_once(':').expect("inet address has a port");
        port.parse().unwrap_or_else(|_| panic!("bad port in {a}"))
    }

    /// A new TCP client for this daemon.
    pub fn client(&self) -> Client {
        Client::connect(self.port())
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in pid_t")
    }

    /// Send a signal (`libc::SIGHUP`, `libc::SIGTERM`, ...), once the
    /// daemon has a handler for it.
    ///
    /// The daemon installs its handlers only after it has logged that it
    /// is listening (and after its start-up message); a signal sent in
    /// between gets the default action and kills it. Until it says when it
    /// is ready, wait until the kernel reports the signal as caught.
    pub fn signal(&self, sig: libc::c_int) {
        self.wait_for_handler(sig);
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// SIGKILL, as a crash would end it; returns once it is reaped.
    pub fn kill(&mut self) -> ExitStatus {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("reap tls-policyd"));
        }
        self.status.unwrap()
    }

    /// Wait until `/proc/PID/status` lists `sig` among the caught signals.
    pub fn wait_for_handler(&self, sig: libc::c_int) {
        let status = format!("/proc/{}/status", self.pid());
        let bit = 1u64 << (sig - 1);
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&status).unwrap_or_default();
            let caught = text
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if caught & bit != 0 {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tls-policyd (pid {}) installed no handler for signal {sig} within {WAIT:?}; stderr:\n{}",
                    self.pid(),
                    self.stderr_text()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Replace the policy file the way an editor or deployment tool would:
    /// write a new file and rename it over the old one.
    pub fn write_policy(&self, text: &str) {
        replace_file(&self.policy_path(), text);
    }

    pub fn write_config(&self, text: &str) {
        replace_file(&self.config_path(), text);
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.state.lock().unwrap().lines.clone()
    }

    /// The number of stderr lines so far: pass it to
    /// [`Daemon::wait_for_line_since`] to only look at what comes next.
    pub fn mark(&self) -> usize {
        self.stderr.state.lock().unwrap().lines.len()
    }

    /// Stderr from line `mark` on, as one string.
    pub fn stderr_since(&self, mark: usize) -> String {
        let st = self.stderr.state.lock().unwrap();
        st.lines.get(mark..).unwrap_or_default().join("\n")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_since(0)
    }

    /// The first stderr line so far that matches.
    pub fn find_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.stderr
            .state
            .lock()
            .unwrap()
            .lines
            .iter()
            .find(|l| pred(l))
            .cloned()
    }

    /// Wait for a stderr line matching `pred`; panics with all of stderr
    /// when none comes before [`WAIT`] or stderr ends.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_line_since(0, pred)
    }

    /// [`Daemon::wait_for_line`], looking only at lines from `mark` on.
    pub fn wait_for_line_since(&self, mark: usize, pred: impl Fn(&str) -> bool) -> String {
        match self.try_wait_for_line_since(mark, WAIT, pred) {
            Some(l) => l,
            None => panic!(
                "expected stderr line did not appear (after line {mark}); stderr so far:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Wait up to `timeout` for a matching line from `mark` on; `None` on
    /// timeout or when stderr has ended without one.
    pub fn try_wait_for_line_since(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.stderr.state.lock().unwrap();
        loop {
            if let Some(l) = st.lines.iter().skip(mark).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return None;
            }
            st = self
                .stderr
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Wait for the process to exit (and its stderr to end); panics after
    /// [`WAIT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for tls-policyd") {
                break s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tls-policyd (pid {}) did not exit within {WAIT:?}; stderr:\n{}",
                    self.pid(),
                    self.stderr_text()
                );
            }
            thread::sleep(POLL);
        };
        self.status = Some(status);
        // The last lines may still be in the pipe.
        let mut st = self.stderr.state.lock().unwrap();
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .stderr
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
        status
    }

    /// Decision log records written so far (complete lines only).
    ///
    /// The daemon writes records in batches (every 20 ms at most): this
    /// reads until the file has stopped growing for longer than that, so
    /// every record of what happened before the call is in.
    pub fn decisions(&self) -> Vec<Value> {
        let path = self.decisions_path();
        let mut seen = read_json_lines(&path);
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(60));
            let now = read_json_lines(&path);
            if now.len() == seen.len() {
                return now;
            }
            seen = now;
        }
        seen
    }

    /// Wait until the decision log has at least `n` records and return
    /// them all.
    pub fn wait_for_decisions(&self, n: usize) -> Vec<Value> {
        wait_for_json_lines(&self.decisions_path(), n)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines(mut pipe: impl Read, out: &Stderr) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut st = out.state.lock().unwrap();
        if n == 0 {
            if !buf.is_empty() {
                st.lines.push(String::from_utf8_lossy(&buf).into_owned());
            }
            st.eof = true;
            out.changed.notify_all();
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            // Mirror to the test's stderr: shown when a test fails.
            eprintln!("[tls-policyd] {text}");
            st.lines.push(text);
        }
        out.changed.notify_all();
    }
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).expect("write new file");
    std::fs::rename(&tmp, path).expect("rename new file into place");
}

/// The complete JSON lines of a file (a last line without its newline is
/// still being written and is left out). A missing file has none.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => return Vec::new(),
    };
    complete
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!(
                    "{}: line is not JSON ({e}): {}",
                    path.display(),
                    String::from_utf8_lossy(l)
                )
            })
        })
        .collect()
}

/// Poll `path` until it holds at least `n` JSON lines; panics after [`WAIT`].
pub fn wait_for_json_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = read_json_lines(path);
        if lines.len() >= n {
            return lines;
        }
        if Instant::now() >= deadline {
            panic!(
                "{}: {} records after {WAIT:?}, expected {n}",
                path.display(),
                lines.len()
            );
        }
        thread::sleep(POLL);
    }
}

/// `payload` as a netstring: `<decimal length>:<payload>,`.
pub fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v.push(b',');
    v
}

/// Split one netstring off the front of `buf`: `Ok(None)` when more bytes
/// are needed, `Err` when the bytes can never be a netstring. Strict: the
/// length must be plain digits without a leading zero.
pub fn parse_netstring(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let Some(colon) = buf.iter().position(|&b| b == b':') else {
        // Postfix accepts replies up to 100,000 bytes: six digits.
        let plausible = buf.len() <= 6
            && buf.iter().all(u8::is_ascii_digit)
            && !(buf.len() > 1 && buf[0] == b'0');
        if plausible {
            return Ok(None);
        }
        return Err(format!(
            "bad netstring length: {:?}",
            String::from_utf8_lossy(buf)
        ));
    };
    let digits = &buf[..colon];
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return Err(format!(
            "bad netstring length {:?}",
            String::from_utf8_lossy(digits)
        ));
    }
    let len: usize = std::str::from_utf8(digits)
        .unwrap()
        .parse()
        .map_err(|e| format!("netstring length: {e}"))?;
    let end = colon + 1 + len;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some((buf[colon + 1..end].to_vec(), end + 1))),
        Some(&b) => Err(format!("netstring payload followed by 0x{b:02x}, not ','")),
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A blocking socketmap client, as Postfix uses one: a persistent
/// connection, one request then one reply.
pub struct Client {
    stream: Stream,
    /// Bytes received after the last reply taken.
    pending: Vec<u8>,
}

impl Client {
    /// Connect to `127.0.0.1:port`.
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        Client::new(Stream::Tcp(s))
    }

    /// A client on a connection made elsewhere (inside a network
    /// namespace: `Netns::tcp_connect`).
    pub fn from_tcp(s: TcpStream) -> Client {
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        Client::new(Stream::Tcp(s))
    }

    /// Connect to a unix socket.
    pub fn connect_unix(path: &Path) -> Client {
        let s = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
        s.set_write_timeout(Some(WAIT)).unwrap();
        Client::new(Stream::Unix(s))
    }

    fn new(stream: Stream) -> Client {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// This end's address (`127.0.0.1:PORT`): the daemon names its peer
    /// this way in log lines.
    pub fn local_addr(&self) -> String {
        match &self.stream {
            Stream::Tcp(s) => s.local_addr().unwrap().to_string(),
            Stream::Unix(_) => panic!("unix clients have no address"),
        }
    }

    /// Look `key` up in map `name`; the reply text (`OK encrypt`,
    /// `NOTFOUND `, `PERM ...`).
    pub fn query(&mut self, name: &str, key: &str) -> String {
        self.query_payload(format!("{name} {key}").as_bytes())
    }

    /// Send one request with any payload and return the reply.
    pub fn query_payload(&mut self, payload: &[u8]) -> String {
        self.send_raw(&netstring(payload))
            .unwrap_or_else(|e| panic!("send request: {e}"));
        self.read_reply()
    }

    /// Write bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Read one reply netstring; panics when none arrives within [`WAIT`],
    /// the connection closes, or the reply is not a well-formed netstring
    /// with a UTF-8 payload.
    pub fn read_reply(&mut self) -> String {
        let bytes = self
            .read_reply_bytes()
            .unwrap_or_else(|e| panic!("read reply: {e}"));
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("reply is not UTF-8: {e}"))
    }

    /// One reply's payload exactly as received.
    pub fn read_reply_bytes(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match parse_netstring(&self.pending) {
                Ok(Some((payload, used))) => {
                    self.pending.drain(..used);
                    return Ok(payload);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let mut chunk = [0u8; 4096];
            // A signal to the test process (another test's child exiting)
            // interrupts a long wait for a reply: wait on.
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed ({} bytes of a reply received)",
                        self.pending.len()
                    ),
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// The raw bytes of the next read, for checking exact framing.
    pub fn read_raw(&mut self, want: usize) -> Vec<u8> {
        let mut got = std::mem::take(&mut self.pending);
        let deadline = Instant::now() + WAIT;
        while got.len() < want && Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    }

    /// Whether the daemon closed this connection: a read returns end of
    /// file or a reset within [`WAIT`]. Data or a timeout mean it is open.
    pub fn is_closed(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 256];
        let res = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match res {
            Ok(0) => true,
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => true,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => false,
                _ => panic!("read: {e}"),
            },
        }
    }

    /// Stop sending (half close).
    pub fn shutdown_write(&self) {
        let _ = match &self.stream {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

/// `name` on PATH or in the usual sbin directories (which a non-login PATH
/// may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run a command with a deadline, capturing its output; panics if it
/// does not finish within [`WAIT`].
pub fn run_with_timeout(cmd: &mut Command) -> Output {
    run_within(cmd, WAIT)
}

/// Run a command with the deadline `limit`, capturing its output; panics
/// if it does not finish in time.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(POLL);
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}
