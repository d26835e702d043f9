//! The benchmark's laboratory: a network namespace with `smtp-sink`, a
//! private Postfix and the release `tls-policyd`, and one timed run of
//! `smtp-source` through them.

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::netns::{Netns, missing_prerequisite};
use crate::common::postfix::{Postfix, PostfixOptions, backdate};
use crate::common::{Daemon, Options};
use crate::deployment::{
    COMMON_SETTINGS, MILTER_SETTINGS, POLICY_SETTINGS, SOCKETMAP_SETTINGS, Sockets, daemon_files,
    deployment_setting, deployment_setting_for,
};
use crate::records::{LogTail, Records, add};

/// The sink: `dest.example`'s only host.
const SINK: &str = "127.0.0.2:25";
const SENDER: &str = "bench@src.example";
const RECIPIENT: &str = "user@dest.example";
const RECIPIENTS_PER_MESSAGE: usize = 3;
const MESSAGE_BYTES: usize = 2048;
const WARMUP_MESSAGES: usize = 20;
const POLL: Duration = Duration::from_millis(5);

/// One Postfix configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    Plain,
    Socketmap,
    Policy,
    Milter,
    All,
    /// The same lines, answered by the floor responders (`floor.rs`).
    FloorPolicy,
    FloorMilter,
    FloorAll,
}

impl Config {
    pub fn parse(s: &str) -> Option<Config> {
        Some(match s {
            "plain" | "none" => Config::Plain,
            "socketmap" => Config::Socketmap,
            "policy" => Config::Policy,
            "milter" => Config::Milter,
            "all" => Config::All,
            "floor-policy" => Config::FloorPolicy,
            "floor-milter" => Config::FloorMilter,
            "floor-all" => Config::FloorAll,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Config::Plain => "plain",
            Config::Socketmap => "socketmap",
            Config::Policy => "policy",
            Config::Milter => "milter",
            Config::All => "all",
            Config::FloorPolicy => "floor-policy",
            Config::FloorMilter => "floor-milter",
            Config::FloorAll => "floor-all",
        }
    }

    /// Answered by the floor responders, not the daemon.
    pub fn floor(self) -> bool {
        matches!(
            self,
            Config::FloorPolicy | Config::FloorMilter | Config::FloorAll
        )
    }
    fn socketmap(self) -> bool {
        matches!(self, Config::Socketmap | Config::All | Config::FloorAll)
    }
    fn policy(self) -> bool {
        matches!(
            self,
            Config::Policy | Config::All | Config::FloorPolicy | Config::FloorAll
        )
    }
    fn milter(self) -> bool {
        matches!(
            self,
            Config::Milter | Config::All | Config::FloorMilter | Config::FloorAll
        )
    }

    /// The main.cf settings, every front door's set (to empty when off).
    fn main_cf(self, sockets: &Sockets) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (on, names) in [
            (self.socketmap(), SOCKETMAP_SETTINGS),
            (self.policy(), POLICY_SETTINGS),
            (self.milter(), MILTER_SETTINGS),
        ] {
            for name in names {
                let value = if on {
                    deployment_setting_for(name, sockets, self.floor())
                } else {
                    String::new()
                };
                out.push((name.to_string(), value));
            }
        }
        out
    }
}

/// One timed run.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub messages: usize,
    pub elapsed: Duration,
    pub daemon_cpu: Duration,
    /// Context switches of the daemon's threads (voluntary and not): how
    /// often it was woken, which is most of what a message costs it.
    pub daemon_switches: u64,
    pub socketmap_records: usize,
}

impl Measurement {
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    pub fn ms_per_msg(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0 / self.messages as f64
    }
    pub fn daemon_cpu_ms_per_msg(&self) -> f64 {
        self.daemon_cpu.as_secs_f64() * 1000.0 / self.messages as f64
    }
    pub fn daemon_switches_per_msg(&self) -> f64 {
        self.daemon_switches as f64 / self.messages as f64
    }
}

pub struct Lab {
    // Dropped in this order: sink and daemon before Postfix, the
    // namespace last.
    sink: Child,
    sink_count: Arc<AtomicU64>,
    /// The floor responders (`floor.rs`).
    floor: Child,
    daemon: Daemon,
    log: LogTail,
    pf: Postfix,
    ns: Netns,
    sockets: Sockets,
    current: Option<Config>,
}

impl Lab {
    /// Everything up and listening; `None` when the machine cannot run it.
    pub fn start(unix_sockets: bool) -> Option<Lab> {
        if let Some(why) = missing_prerequisite(&["postfix", "smtp-source", "smtp-sink"]) {
            eprintln!("{why}");
            return None;
        }
        let ns = Netns::new("pfbench");
        let hosts = ns.etc_dir().join("hosts");
        let mut text = std::fs::read_to_string(&hosts).expect("read namespace hosts");
        text.push_str("127.0.0.2\tdest.example\n");
        std::fs::write(&hosts, text).expect("write namespace hosts");

        let (sink, sink_count) = start_sink(&ns);
        let mut opts = PostfixOptions::default()
            // Next hop by /etc/hosts: the TLS policy key is the recipient
            // domain, as with MX routing.
            .set("smtp_dns_support_level", "disabled")
            .set("smtp_host_lookup", "native")
            .set("smtp_tls_security_level", "may")
            .set("smtpd_recipient_restrictions", "")
            .master_line(
                "smtp-tls-forced unix - - n - - smtp\n  -o smtp_tls_security_level=encrypt",
            );
        for name in COMMON_SETTINGS {
            opts = opts.set(name, deployment_setting(name, &Sockets::Inet));
        }
        let pf = Postfix::start(&ns, opts);
        let sockets = if unix_sockets {
            let dir = pf.queue_dir().join("tls-policyd");
            std::fs::create_dir_all(&dir).expect("create the socket directory");
            Sockets::Unix(pf.queue_dir())
        } else {
            Sockets::Inet
        };
        let (config, policy) = daemon_files(&sockets);
        let daemon = Daemon::start_frontend(
            &config,
            &policy,
            Options {
                netns: Some(ns.name().to_string()),
                env: Vec::new(),
                wrap: Vec::new(),
            },
            "milter",
        );
        daemon.listening("socketmap");
        daemon.listening("policy");
        let floor = crate::floor::start(&ns, &sockets);
        let log = LogTail {
            path: daemon.decisions_path(),
            offset: 0,
            partial: Vec::new(),
        };
        Some(Lab {
            sink,
            sink_count,
            floor,
            daemon,
            log,
            pf,
            ns,
            sockets,
            current: None,
        })
    }

    pub fn describe(&self) -> String {
        let version = self.pf.run_ok("postconf", &["-h", "mail_version"]);
        format!(
            "Postfix {}, {} CPUs, smtp-source ({RECIPIENTS_PER_MESSAGE} recipients, \
             {MESSAGE_BYTES} bytes, one session per message) -> Postfix 127.0.0.1:25 -> \
             smtp-sink {SINK}; tls-policyd front doors on {}.",
            version.trim(),
            thread::available_parallelism().map_or(0, |n| n.get()),
            self.sockets.name(),
        )
    }

    /// Switch Postfix to `config` if needed, warm up, then time
    /// `messages` messages over `sessions` parallel sessions and check
    /// every message and record.
    pub fn run(&mut self, config: Config, sessions: usize, messages: usize) -> Measurement {
        if self.current != Some(config) {
            // A restart, not a reload: processes that started before a
            // reload would serve a few more sessions the old way.
            let settings: Vec<String> = config
                .main_cf(&self.sockets)
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let mut args = vec!["-e".to_string()];
            args.extend(settings);
            self.pf.run_ok("postconf", &args);
            backdate(&self.pf.config_dir().join("main.cf"));
            self.pf.stop();
            self.pf.start_again();
            self.current = Some(config);
        }
        // Warm-up: new Postfix processes and daemon connections, untimed.
        self.inject(sessions.min(4), WARMUP_MESSAGES);
        self.pf
            .wait_for_queue(|q| q.is_empty(), Duration::from_secs(30));
        let warm = self.wait_for_records(self.expected(config, WARMUP_MESSAGES));

        // The process that answers: the daemon, or the floor.
        let pid = if config.floor() {
            self.floor.id() as i32
        } else {
            self.daemon.pid()
        };
        let cpu0 = process_cpu(pid);
        let switches0 = process_switches(pid);
        let t0 = Instant::now();
        self.inject(sessions, messages);
        let elapsed = t0.elapsed();
        self.pf
            .wait_for_queue(|q| q.is_empty(), Duration::from_secs(30));
        let seen = self.wait_for_records(self.expected(config, messages));
        // After the records are written: their cost is the daemon's too.
        let daemon_cpu = process_cpu(pid).saturating_sub(cpu0);
        let daemon_switches = process_switches(pid).saturating_sub(switches0);
        if config.socketmap() && !config.floor() {
            assert!(
                warm.socketmap + seen.socketmap > 0,
                "{}: no socketmap lookup",
                config.name()
            );
        }
        Measurement {
            messages,
            elapsed,
            daemon_cpu,
            daemon_switches,
            socketmap_records: seen.socketmap,
        }
    }

    /// Submit `messages` messages one after another with `sendmail(1)`,
    /// with the milter as `non_smtpd_milters` or without it; the time until
    /// the sink has them all. Checks one milter record per message.
    pub fn sendmail_run(&mut self, milter: bool, messages: usize) -> Duration {
        let value = if milter {
            deployment_setting("smtpd_milters", &self.sockets)
        } else {
            String::new()
        };
        self.pf.run_ok(
            "postconf",
            &[
                "-e".to_string(),
                format!("non_smtpd_milters={value}"),
                "smtpd_milters=".to_string(),
            ],
        );
        backdate(&self.pf.config_dir().join("main.cf"));
        self.pf.stop();
        self.pf.start_again();
        self.current = None;
        let target = self.sink_count.load(Ordering::SeqCst) + messages as u64;
        let t0 = Instant::now();
        for i in 0..messages {
            let mut child = self
                .ns
                .cmd("sendmail")
                .arg("-C")
                .arg(self.pf.config_dir())
                .args(["-f", SENDER, RECIPIENT])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn sendmail");
            let text = format!(
                "From: {SENDER}\nTo: {RECIPIENT}\nSubject: sendmail {i}\n\n{}\n",
                "x".repeat(MESSAGE_BYTES)
            );
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("sendmail stdin")
                .write_all(text.as_bytes())
                .expect("write to sendmail");
            let status = child.wait().expect("wait for sendmail");
            assert!(status.success(), "sendmail failed: {status}");
        }
        self.wait_for_sink(target, Instant::now() + Duration::from_secs(60));
        let elapsed = t0.elapsed();
        self.pf
            .wait_for_queue(|q| q.is_empty(), Duration::from_secs(30));
        self.wait_for_records(Records {
            milter: if milter { messages } else { 0 },
            ..Records::default()
        });
        elapsed
    }

    /// The records `messages` messages must leave (socketmap: see
    /// [`Lab::wait_for_records`]).
    fn expected(&self, config: Config, messages: usize) -> Records {
        if config.floor() {
            // The floor writes nothing, and the daemon is not asked.
            return Records::default();
        }
        Records {
            socketmap: 0,
            policy_recipient: if config.policy() {
                messages * RECIPIENTS_PER_MESSAGE
            } else {
                0
            },
            // The policy server's per-message record is written at
            // END-OF-DATA, when the deployment asks it there.
            policy_message: if config.policy()
                && !deployment_setting("smtpd_end_of_data_restrictions", &Sockets::Inet).is_empty()
            {
                messages
            } else {
                0
            },
            milter: if config.milter() { messages } else { 0 },
        }
    }

    /// Wait until the log holds exactly `want` policy-server and milter
    /// records since the last call; socketmap records are counted, not
    /// predicted (Postfix reuses cached connections' policies).
    fn wait_for_records(&mut self, want: Records) -> Records {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Records::default();
        loop {
            seen = add(seen, self.log.read_new());
            let matches = seen.policy_recipient == want.policy_recipient
                && seen.policy_message == want.policy_message
                && seen.milter == want.milter;
            if matches {
                // Anything late would be an extra record.
                thread::sleep(Duration::from_millis(50));
                seen = add(seen, self.log.read_new());
                assert_eq!(
                    (seen.policy_recipient, seen.policy_message, seen.milter),
                    (want.policy_recipient, want.policy_message, want.milter),
                    "more decision records than messages and recipients"
                );
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "decision records: want {want:?}, have {seen:?}\n{}",
                self.daemon.stderr_text()
            );
            thread::sleep(POLL);
        }
    }

    /// Send `messages` messages with `smtp-source` and wait until the sink
    /// has counted them all.
    fn inject(&self, sessions: usize, messages: usize) {
        let target = self.sink_count.load(Ordering::SeqCst) + messages as u64;
        let limit = Duration::from_secs(60) + Duration::from_millis(100) * messages as u32;
        let mut source = self
            .ns
            .cmd("smtp-source")
            .args(["-s", &sessions.to_string(), "-m", &messages.to_string()])
            .args(["-r", &RECIPIENTS_PER_MESSAGE.to_string()])
            .args(["-l", &MESSAGE_BYTES.to_string()])
            .args(["-f", SENDER, "-t", RECIPIENT, "-M", "client.bench.example"])
            .arg("127.0.0.1:25")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smtp-source");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = source.try_wait().expect("wait for smtp-source") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = source.kill();
                let _ = source.wait();
                panic!("smtp-source did not finish within {limit:?}");
            }
            thread::sleep(POLL);
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = source.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("smtp-source failed ({status}): {err}");
        }
        self.wait_for_sink(target, deadline);
    }

    /// Wait until the sink has counted `target` messages in all.
    fn wait_for_sink(&self, target: u64, deadline: Instant) {
        while self.sink_count.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the sink counted {} of {target} messages in time\n{}",
                self.sink_count.load(Ordering::SeqCst),
                self.pf.diagnostics()
            );
            thread::sleep(POLL);
        }
    }

    pub fn stop(mut self, timeout: Duration) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
        let _ = self.floor.kill();
        let _ = self.floor.wait();
        self.daemon.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while crate::common::netns::process_alive(self.daemon.pid()) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
    }
}

/// `smtp-sink` on [`SINK`] and its message counter (`-c` prints
/// `sess=N quit=N mesg=N` after each message, separated by `\r`).
fn start_sink(ns: &Netns) -> (Child, Arc<AtomicU64>) {
    let mut child: Child = ns
        .cmd("smtp-sink")
        .args(["-c", "-4", "-u", "postfix", SINK, "1024"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn smtp-sink");
    let count = Arc::new(AtomicU64::new(0));
    let mut out = child.stdout.take().expect("smtp-sink stdout");
    let c = count.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(n) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("mesg="))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    c.fetch_max(n, Ordering::SeqCst);
                }
            }
        }
    });
    // Listening once a connection is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.tcp_connect(SINK).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        thread::sleep(POLL);
    }
    (child, count)
}

/// Context switches of every thread of a process (threads that ended
/// are not counted; the daemon's live for its whole run).
fn process_switches(pid: i32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// User plus system CPU time of a process, all its threads included.
fn process_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1))
}
