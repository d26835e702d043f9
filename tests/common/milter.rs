//! The milter front door in process: a real listener (TCP on 127.0.0.1
//! port 0, or a unix socket), a real decision log in a temporary
//! directory, the policy engine on a policy text, and a TLS knowledge
//! source the test fills in. It runs on a thread of its own with its own
//! tokio runtime, optionally inside a test's network namespace (so a
//! private Postfix there can reach it).

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use tls_policyd::engine::decision::SourceKind;
use tls_policyd::engine::key::Destination;
use tls_policyd::engine::policy_file::PolicyFile;
use tls_policyd::engine::{Consulted, Engine, Source};
use tls_policyd::frontends::milter::{self, MilterConfig, MilterDeps, MilterSettings};
use tls_policyd::frontends::{Backend, Live};
use tls_policyd::listen::{ListenAddr, Listener};
use tls_policyd::log::record::{DecisionLog, Target};

use super::WAIT;
use super::knowledge::MapKnowledge;
use super::netns::Netns;

/// A step's status as "accepted": the milter answers `Continue`, or
/// nothing at all where it told the MTA not to wait for a reply
/// (connect, HELO, MAIL, headers, and RCPT when it never refuses).
pub fn accepted(s: indymilter_test::Status) -> indymilter_test::Status {
    match s {
        indymilter_test::Status::Noreply => indymilter_test::Status::Continue,
        s => s,
    }
}

/// The domain whose policy lookup never finishes (a DNS source that
/// hangs).
pub const SLOW_DOMAIN: &str = "slow.example";

/// A policy source that never answers for [`SLOW_DOMAIN`].
struct Hanging;

impl Source for Hanging {
    fn kind(&self) -> SourceKind {
        SourceKind::Dane
    }
    fn consult<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> Pin<Box<dyn Future<Output = Consulted> + Send + 'a>> {
        Box::pin(async move {
            if dest.name == SLOW_DOMAIN {
                std::future::pending::<()>().await;
            }
            Consulted::NoPolicy("no TLSA".into())
        })
    }
}

struct Parts {
    live: arc_swap::ArcSwap<Live>,
    log: DecisionLog,
}

impl Backend for Parts {
    fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }
    fn decision_log(&self) -> &DecisionLog {
        &self.log
    }
}

/// A running milter. Stops when dropped.
pub struct MilterServer {
    pub addr: ListenAddr,
    pub knowledge: Arc<MapKnowledge>,
    parts: Arc<Parts>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl MilterServer {
    /// `settings` are `[milter]` lines; `DIR` in `listen` is the server's
    /// temporary directory.
    pub fn start(listen: &str, settings: &str, policy: &str) -> MilterServer {
        Self::start_in(None, listen, settings, policy)
    }

    /// [`MilterServer::start`] inside a network namespace.
    pub fn start_in(
        ns: Option<&Netns>,
        listen: &str,
        settings: &str,
        policy: &str,
    ) -> MilterServer {
        let dir = tempfile::tempdir().unwrap();
        let listen = listen.replace("DIR", &dir.path().display().to_string());
        let config: MilterConfig =
            toml::from_str(&format!("listen = \"{listen}\"\n{settings}")).unwrap();
        config.validate().unwrap();
        let policy = PolicyFile::parse(policy, Path::new("policy.toml")).unwrap();
        let log_path = dir.path().join("decisions.jsonl");
        let parts = Arc::new(Parts {
            live: arc_swap::ArcSwap::from_pointee(Live {
                milter: MilterSettings::from(&config),
                ..Live::new(Engine::with_sources(policy, vec![Arc::new(Hanging)]))
            }),
            log: DecisionLog::start(Target::File(log_path.clone())).unwrap(),
        });
        let knowledge = Arc::new(MapKnowledge::default());
        let deps = MilterDeps::new(parts.clone(), &config, knowledge.clone());
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = shutdown.clone();
        let run = move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&config.listen, &config.socket_options()).unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                milter::serve(listener, deps, stop).await;
            });
        };
        let thread = match ns {
            Some(ns) => ns.spawn_in(run),
            None => std::thread::spawn(run),
        };
        let addr = rx.recv_timeout(WAIT).expect("milter listening");
        MilterServer {
            addr,
            knowledge,
            parts,
            shutdown,
            thread: Some(thread),
            log_path,
            dir,
        }
    }

    /// `127.0.0.1:PORT` of an inet listener.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        match &self.addr {
            ListenAddr::Inet(a) => *a,
            other => panic!("not an inet listener: {other}"),
        }
    }

    /// Swap the reloadable settings, as a reload does.
    pub fn reconfigure(&self, settings: &str) {
        let config: MilterConfig =
            toml::from_str(&format!("listen = \"inet:127.0.0.1:0\"\n{settings}")).unwrap();
        config.validate().unwrap();
        let live = self.parts.live.load_full();
        self.parts.live.store(Arc::new(Live {
            milter: MilterSettings::from(&config),
            ..(*live).clone()
        }));
    }

    /// Every decision record written so far.
    pub fn records(&self) -> Vec<Value> {
        self.parts.log.flush();
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every decision record written so far, as the exact lines.
    pub fn lines(&self) -> Vec<String> {
        self.parts.log.flush();
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait until `n` records are written (the end-of-message record of a
    /// message may be written after the MTA got its reply).
    pub fn wait_for_records(&self, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = self.records();
            if r.len() >= n || std::time::Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MilterServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
