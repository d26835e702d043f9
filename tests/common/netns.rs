//! Network namespaces for tests that run Postfix, DNS servers or SMTP
//! sinks: a namespace has only `lo`, so nothing a test starts in it can
//! reach another machine.
//!
//! Two ways in:
//! - external programs: [`Netns::cmd`] (`ip netns exec NAME program`),
//!   which also bind-mounts the namespace's own `resolv.conf` and `hosts`
//!   over the ones in `/etc`;
//! - in-process servers: [`Netns::spawn_in`] runs a closure on a new thread
//!   that has joined the namespace; sockets that thread (or any thread it
//!   starts, such as the workers of a tokio runtime built on it) creates
//!   belong to the namespace for good. [`Netns::tcp_listener`] and
//!   [`Netns::udp_socket`] do just the binding, and the socket can then be
//!   used from any thread.
//!
//! An in-process thread only changes its network namespace, not its view
//! of the file system: code on it still reads the host's
//! `/etc/resolv.conf`. Give in-process resolvers an explicit server
//! (`127.0.0.1:PORT`). Whatever they read, their packets cannot leave the
//! namespace.
//!
//! All of this needs root, `ip` and, for the Postfix tests, Postfix and
//! swaks. [`Netns::for_test`] checks that and fails with an explanation,
//! or skips when `SKIP_POSTFIX_TESTS=1` is set.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{find_tool, run_with_timeout};

/// Set to `1` to skip (rather than fail) tests that need root, network
/// namespaces and Postfix when the machine lacks them.
pub const SKIP_VAR: &str = "SKIP_POSTFIX_TESTS";

/// Where `ip netns` keeps its namespace handles.
const RUN_DIR: &str = "/var/run/netns";
/// Where `ip netns exec` looks for per-namespace `/etc` files.
const ETC_DIR: &str = "/etc/netns";

const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions edns0 trust-ad\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Why this machine cannot run namespace tests that use `tools`, if it
/// cannot. `ip` is always needed.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("these tests need root (to create network namespaces)".into());
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        if find_tool(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Whether the skip switch is on.
pub fn skipping() -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|v| v == "1")
}

/// Fail with an explanation, or with `SKIP_POSTFIX_TESTS=1` print why the
/// test is skipped and return.
pub fn skip_or_fail(why: &str) {
    if skipping() {
        eprintln!("SKIPPED: {why} ({SKIP_VAR}=1)");
        return;
    }
    panic!(
        "{why}.\nThese tests run Postfix and test servers inside network namespaces: run them as \
         root on a machine with Postfix and swaks installed, as the README's test command \
         `./scripts/test-all` does (it installs them, then runs every test), or set \
         {SKIP_VAR}=1 to skip them."
    );
}

/// `true` when the tests can run; `false` (after saying so) when they are
/// to be skipped; panics with an explanation otherwise.
pub fn check_prerequisites(tools: &[&str]) -> bool {
    match missing_prerequisite(tools) {
        None => true,
        Some(why) => {
            skip_or_fail(&why);
            false
        }
    }
}

/// A network namespace with only `lo` (up), its own `resolv.conf`
/// (`nameserver 127.0.0.1`) and `hosts` (localhost only).
///
/// Clones share the namespace; the last one dropped kills whatever still
/// runs in it and deletes it, also when a test panics.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
}

/// `ip netns add` mounts the namespace directory on first use; keep two
/// threads from doing that at the same time.
static CREATE: Mutex<()> = Mutex::new(());

impl Netns {
    /// Check the prerequisites (root, `ip` and `tools`) and create a
    /// namespace named `<prefix>-<pid>-<n>`. `None` when the test is to be
    /// skipped; panics with an explanation when it cannot run.
    pub fn for_test(prefix: &str, tools: &[&str]) -> Option<Netns> {
        if !check_prerequisites(tools) {
            return None;
        }
        match Netns::try_new(prefix) {
            Ok(ns) => Some(ns),
            Err(e) => {
                skip_or_fail(&format!("cannot create a network namespace: {e}"));
                None
            }
        }
    }

    /// Create a namespace named `<prefix>-<pid>-<n>`; panics on failure.
    pub fn new(prefix: &str) -> Netns {
        Netns::try_new(prefix).unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
    }

    pub fn try_new(prefix: &str) -> Result<Netns, String> {
        assert!(
            !prefix.is_empty()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "namespace prefix {prefix:?}: use letters, digits, '-' and '_'"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());

        let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale(prefix);
        let etc = Path::new(ETC_DIR).join(&name);
        std::fs::create_dir_all(&etc).map_err(|e| format!("create {}: {e}", etc.display()))?;
        // From here on, dropping `ns` cleans up whatever was made.
        let ns = Netns {
            inner: Arc::new(Inner { name }),
        };
        for (file, text) in [("resolv.conf", RESOLV_CONF), ("hosts", HOSTS)] {
            let path = etc.join(file);
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        ip(&["netns", "add", ns.name()])?;
        ip(&["-n", ns.name(), "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace handle `ip netns` mounted (`/var/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_DIR).join(self.name())
    }

    /// The directory `ip netns exec` mounts files from (`/etc/netns/NAME`).
    pub fn etc_dir(&self) -> PathBuf {
        Path::new(ETC_DIR).join(self.name())
    }

    /// The kernel's id for this namespace (the inode number that
    /// `/proc/PID/ns/net` shows as `net:[ID]`).
    pub fn id(&self) -> u64 {
        std::fs::metadata(self.path())
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path().display()))
            .ino()
    }

    /// `ip netns exec NAME program`: add arguments and run it.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(find_tool("ip").expect("`ip` is not installed"));
        c.args(["netns", "exec", self.name()]).arg(program);
        c
    }

    /// Run `program args` in the namespace and capture its output; panics
    /// if it has not finished within [`super::WAIT`].
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        run_with_timeout(self.cmd(program).args(args))
    }

    /// Move the calling thread into the namespace, for good. Only for
    /// threads the test owns: use [`Netns::spawn_in`] otherwise.
    pub fn enter_thread(&self) -> io::Result<()> {
        let handle = File::open(self.path())?;
        setns(&handle)
    }

    /// Run `f` on a new thread inside the namespace.
    ///
    /// The thread does not keep this handle: dropping the last [`Netns`]
    /// deletes the namespace's name even while such a thread still runs
    /// (the kernel keeps the namespace itself until the thread and its
    /// sockets are gone).
    pub fn spawn_in<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Open the handle here so that a missing namespace fails the
        // caller, not a thread nobody joins.
        let handle = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        let name = self.name().to_string();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                setns(&handle).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
                drop(handle);
                f()
            })
            .expect("spawn thread")
    }

    /// Run `f` inside the namespace and wait for its result.
    pub fn run_in<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.spawn_in(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// A TCP listener bound inside the namespace (`"127.0.0.1:0"` for a
    /// free port); usable from any thread afterwards.
    pub fn tcp_listener(&self, addr: impl ToSocketAddrs) -> TcpListener {
        let addrs = socket_addrs(addr);
        self.run_in(move || TcpListener::bind(&addrs[..]))
            .unwrap_or_else(|e| panic!("bind TCP in {}: {e}", self.name()))
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp_socket(&self, addr: impl ToSocketAddrs) -> UdpSocket {
        let addrs = socket_addrs(addr);
        self.run_in(move || UdpSocket::bind(&addrs[..]))
            .unwrap_or_else(|e| panic!("bind UDP in {}: {e}", self.name()))
    }

    /// A TCP connection from inside the namespace.
    pub fn tcp_connect(&self, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let addrs = socket_addrs(addr);
        self.run_in(move || TcpStream::connect_timeout(&addrs[0], super::WAIT))
    }

    /// Processes running in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        pids_in(self.name())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name()).finish()
    }
}

/// The namespace id of the calling thread (compare with [`Netns::id`]).
pub fn current_thread_netns_id() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// The names `ip netns list` shows.
pub fn list() -> Vec<String> {
    let Some(tool) = find_tool("ip") else {
        return Vec::new();
    };
    let out = run_with_timeout(Command::new(tool).args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "NAME (id: 3)" once the namespace has an id.
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether a process exists and has not exited: a zombie counts as gone.
/// (Postfix's master daemonizes, and some init processes reap orphans
/// only every second or so.)
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// SIGKILL `pids` (never this process) and wait up to `timeout` until they
/// are gone; returns those still alive.
pub fn kill_and_wait(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).expect("pid fits in pid_t");
    let pids: Vec<i32> = pids.iter().copied().filter(|&p| p != me && p > 1).collect();
    for &p in &pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_gone(&pids, timeout)
}

/// Wait up to `timeout` until none of `pids` is alive; returns those still
/// alive.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn setns(handle: &File) -> io::Result<()> {
    // SAFETY: a valid descriptor of a network namespace handle; setns
    // changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socket_addrs(addr: impl ToSocketAddrs) -> Vec<SocketAddr> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().expect("socket address").collect();
    assert!(!addrs.is_empty(), "no socket address");
    addrs
}

fn ip(args: &[&str]) -> Result<(), String> {
    let tool = find_tool("ip").ok_or("`ip` is not installed")?;
    let out = run_with_timeout(Command::new(tool).args(args));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    let Some(tool) = find_tool("ip") else {
        return Vec::new();
    };
    let out = run_with_timeout(Command::new(tool).args(["netns", "pids", name]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kill everything in namespace `name`, delete it and its `/etc` files.
/// Reports problems on stderr: it runs from `Drop`.
fn destroy(name: &str) {
    // Processes may still be forking (a Postfix master): repeat a few times.
    for _ in 0..5 {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        let left = kill_and_wait(&pids, Duration::from_secs(2));
        if !left.is_empty() {
            eprintln!("network namespace {name}: processes {left:?} survive SIGKILL");
        }
    }
    if Path::new(RUN_DIR).join(name).exists() {
        if let Err(e) = ip(&["netns", "del", name]) {
            eprintln!("cannot delete network namespace {name}: {e}");
        }
    }
    let etc = Path::new(ETC_DIR).join(name);
    match std::fs::remove_dir_all(&etc) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            eprintln!("cannot remove {}: {e}", etc.display());
        }
        _ => {}
    }
}

/// Remove namespaces `<prefix>-<pid>-<n>` left behind by test runs that
/// were killed before they could clean up (their pid no longer exists).
fn remove_stale(prefix: &str) {
    let me = std::process::id();
    for name in list() {
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), true) = (pid.parse::<u32>(), n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing network namespace {name} left by an earlier run");
            destroy(&name);
        }
    }
}
