//! [`SharedStore`]: the Redis client, its circuit breaker, and the
//! queue of writes.
//!
//! Reads happen on a local cache miss, each bounded by `command_timeout`.
//! After a failure or a timeout the store is down: it is not asked again
//! until a back-off has passed (250 ms, doubling to 30 s), so once it is
//! known down a lookup loses no time to it. Writes go through a bounded
//! queue to a task of their own; a full queue drops and counts.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::bad_values::RecentBad;
use super::breaker::Breaker;
use super::config::SharedConfig;
use super::connect::{SharedError, Target, error_kind};
use super::value::{self, MAX_VALUE};
use crate::cache::persist::{
    ClaimToken, Entry, Kind, Learned, SharedClaim, SharedEntries, SharedFetch, SharedSettle,
};
use crate::metrics::{Metrics, SharedOp, SharedResult};
use crate::util::rate::RateLimit;

/// Writes waiting at most; past this, new ones are dropped and counted.
pub const WRITE_QUEUE: usize = 4096;
pub use super::breaker::{MAX_BACKOFF, MIN_BACKOFF};
/// Longest time spent at shutdown writing what is still queued.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// What `/health` shows of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStatus {
    pub url: String,
    /// `connecting`, `up` or `down`.
    pub state: &'static str,
    /// The last failure while down.
    pub problem: Option<String>,
    /// With sentinels: the master (`host:port`) connected to.
    pub master: Option<String>,
    /// Whether the notices connection (other hosts' "learned" notices) is
    /// subscribed; without it a waiting host looks at the claim every
    /// poll instead of being told.
    pub notices: bool,
}

/// What a source holds now, as entries for the store.
pub type Held = Box<dyn Fn() -> Vec<Entry> + Send + Sync>;

/// The sources' entries and the signal to write them.
#[derive(Default)]
pub(super) struct Replays {
    pub(super) sources: Mutex<Vec<Held>>,
    pub(super) wanted: Notify,
}

impl Replays {
    /// Write what the sources hold once the current writes are done.
    pub(super) fn want(&self) {
        self.wanted.notify_one();
    }

    pub(super) fn entries(&self) -> Vec<Entry> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.iter().flat_map(|f| f()).collect()
    }
}

/// One queued write.
struct Write {
    key: String,
    value: Vec<u8>,
    ttl: u64,
}

/// The shared store. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct SharedStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    url: String,
    pub(super) prefix: String,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) target: Target,
    conn: ArcSwapOption<ConnectionManager>,
    breaker: Breaker,
    queue: mpsc::Sender<Write>,
    queue_rx: Mutex<Option<mpsc::Receiver<Write>>>,
    pub(super) metrics: Arc<Metrics>,
    /// Claims, waits and notices: one discovery per domain for the fleet.
    pub(super) fleet: super::waits::Fleet,
    bad_log: RateLimit,
    /// Unusable values reported lately, by kind and domain.
    recent_bad: RecentBad,
    down_log: RateLimit,
    full_log: RateLimit,
    replays: Replays,
}

/// How a command ended.
pub(super) enum Outcome<T> {
    Answer(T),
    Timeout,
    Failed,
}

impl SharedStore {
    /// Set the store up from its section: the password file is read now.
    /// Nothing connects until [`SharedStore::run`] runs.
    pub fn new(config: &SharedConfig, metrics: Arc<Metrics>) -> Result<SharedStore, SharedError> {
        let target = Target::new(config)?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        metrics.shared_configured();
        metrics.shared_up(false);
        Ok(SharedStore {
            inner: Arc::new(Inner {
                url: config.shown_url(),
                prefix: config.key_prefix.clone(),
                command_timeout: config.command_timeout,
                connect_timeout: config.connect_timeout,
                target,
                conn: ArcSwapOption::empty(),
                breaker: Breaker::new(),
                queue: tx,
                queue_rx: Mutex::new(Some(rx)),
                fleet: super::waits::Fleet::new(),
                metrics,
                bad_log: RateLimit::per_minute(5),
                recent_bad: RecentBad::default(),
                down_log: RateLimit::per_minute(2),
                full_log: RateLimit::per_minute(1),
                replays: Replays::default(),
            }),
        })
    }

    /// The key of a (kind, domain).
    pub fn key(&self, kind: Kind, domain: &str) -> String {
        format!("{}{}:{domain}", self.inner.prefix, kind.as_str())
    }

    /// Run one command (for the other parts of `shared`): see
    /// `Inner::command`.
    pub(super) async fn command<T: redis::FromRedisValue>(
        &self,
        op: SharedOp,
        cmd: redis::Cmd,
    ) -> Option<Outcome<T>> {
        self.inner.command(op, cmd).await
    }

    /// The prefix of every key.
    pub(super) fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Its state, for `/health`.
    pub fn status(&self) -> SharedStatus {
        let b = &self.inner.breaker;
        let state = if b.is_down() {
            "down"
        } else if self.inner.conn.load().is_some() {
            "up"
        } else {
            "connecting"
        };
        SharedStatus {
            url: self.inner.url.clone(),
            state,
            problem: b.problem.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            master: self.inner.target.master(),
            notices: self.notices_subscribed(),
        }
    }

    /// Connect (again and again, backing off, until it works), then write
    /// what is queued, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let rx = self
            .inner
            .queue_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let connect = self.clone().connect_loop(shutdown.clone());
        let replay = self.clone().replay_loop(shutdown.clone());
        let probe = self.clone().probe_loop(shutdown.clone());
        let notices = self.clone().listen(shutdown.clone());
        match rx {
            Some(rx) => {
                tokio::join!(
                    connect,
                    replay,
                    probe,
                    notices,
                    self.write_loop(rx, shutdown)
                );
            }
            None => {
                tokio::join!(connect, replay, probe, notices);
            }
        }
    }

    /// Down, connected, and its back-off has passed: time to ask again.
    pub(super) fn is_down_and_due(&self) -> bool {
        let b = &self.inner.breaker;
        b.is_down() && !b.is_open() && self.inner.conn.load().is_some()
    }

    pub(super) fn replays(&self) -> &Replays {
        &self.inner.replays
    }

    /// One command within `command_timeout`: its answer, or `None` when
    /// the store was not asked, failed or did not answer in time (counted).
    pub(super) async fn run_command<T: redis::FromRedisValue>(
        &self,
        op: SharedOp,
        cmd: redis::Cmd,
    ) -> Option<T> {
        match self.inner.command::<T>(op, cmd).await? {
            Outcome::Answer(v) => Some(v),
            Outcome::Timeout | Outcome::Failed => None,
        }
    }

    pub(super) fn count(&self, op: SharedOp, r: SharedResult) {
        self.inner.counted(op, r);
    }

    async fn connect_loop(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(inner.connect_timeout))
            .set_response_timeout(Some(inner.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        loop {
            let attempt = tokio::time::timeout(
                inner.target.budget(inner.connect_timeout),
                inner.target.connect(config.clone()),
            );
            let wait = tokio::select! {
                () = shutdown.cancelled() => return,
                r = attempt => match r {
                    Ok(Ok((conn, master))) => {
                        inner.conn.store(Some(Arc::new(conn)));
                        let shown = master.clone().unwrap_or_default();
                        // Back to the same master: the breaker's back-off
                        // holds, and the next command says whether it is up.
                        if inner.target.note_master(master, &inner.metrics) {
                            inner.up();
                        }
                        tracing::info!(url = %inner.url, master = %shown, "shared store connected");
                        // With sentinels, they are asked again after a failure.
                        let down = || inner.breaker.is_down();
                        if !inner.target.follows_sentinels()
                            || !inner.target.failed(down, &shutdown).await
                        {
                            return;
                        }
                        Duration::ZERO
                    }
                    Ok(Err(e)) => inner.target.next_try(inner.down("connect", &e)),
                    Err(_) => inner.target.next_try(inner.down_timeout("connect")),
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn write_loop(self, mut rx: mpsc::Receiver<Write>, shutdown: CancellationToken) {
        let inner = &self.inner;
        loop {
            let w = tokio::select! {
                () = shutdown.cancelled() => break,
                w = rx.recv() => match w { Some(w) => w, None => break },
            };
            inner.write(w).await;
        }
        // What is queued at shutdown is written while the store answers,
        // for at most SHUTDOWN_DRAIN.
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        let mut left = 0usize;
        while let Ok(w) = rx.try_recv() {
            if inner.breaker.is_open() || Instant::now() >= deadline {
                left += 1;
                continue;
            }
            inner.write(w).await;
        }
        if left > 0 {
            inner.metrics.error("shared", "unwritten_at_shutdown");
            tracing::warn!(
                writes = left,
                "shared store writes not done at shutdown (the store is down or slow)"
            );
        }
    }

    /// A valid entry of `kind` for `domain`: `None` when there is none,
    /// the store is down, does not answer within `command_timeout`, or
    /// holds something unusable (logged and counted).
    pub async fn get(&self, kind: Kind, domain: &str) -> Option<Entry> {
        let inner = &self.inner;
        if inner.recent_bad.lately(kind, domain) {
            // Refused moments ago (and logged then): not read again yet.
            return None;
        }
        let key = self.key(kind, domain);
        // GETRANGE reads at most one byte past the limit, so an oversized
        // value costs no more than that to refuse.
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(&key).arg(0).arg(MAX_VALUE);
        let value = match inner.command::<Value>(SharedOp::Get, cmd).await? {
            Outcome::Answer(v) => v,
            Outcome::Failed if !inner.breaker.is_down() => {
                // The store answered, with an error that leaves it up:
                // the key holds another type (logged and counted).
                inner.recent_bad.note(kind, domain);
                return None;
            }
            Outcome::Timeout | Outcome::Failed => return None,
        };
        let bytes = match value {
            Value::BulkString(b) => b,
            Value::SimpleString(s) => s.into_bytes(),
            Value::Nil => Vec::new(),
            other => {
                inner.bad(kind, domain, "wrong_type", &format!("{other:?}"));
                return None;
            }
        };
        if bytes.is_empty() {
            inner.counted(SharedOp::Get, SharedResult::Miss);
            return None;
        }
        match value::decode(&bytes, kind, domain, SystemTime::now()) {
            Ok(Some(e)) => {
                inner.counted(SharedOp::Get, SharedResult::Hit);
                Some(e)
            }
            Ok(None) => {
                inner.counted(SharedOp::Get, SharedResult::Miss);
                None
            }
            Err(e) => {
                inner.bad(kind, domain, e.kind(), &e.to_string());
                None
            }
        }
    }

    /// Queue `entry` to be written (never waits).
    pub fn put(&self, entry: &Entry) {
        let inner = &self.inner;
        let value = match value::encode(entry) {
            Ok(v) => v,
            Err(e) => {
                inner.metrics.error("shared", "oversized");
                if let Some(more) = inner.bad_log.admit() {
                    tracing::warn!(domain = %entry.domain, kind = %entry.kind, error = %e, more,
                        "not written to the shared store");
                }
                return;
            }
        };
        let now = SystemTime::now();
        let ttl = entry
            .expires_at
            .duration_since(now)
            .map_or(0, |d| d.as_secs());
        if ttl == 0 {
            return;
        }
        let w = Write {
            key: self.key(entry.kind, &entry.domain),
            value,
            ttl,
        };
        if inner.queue.try_send(w).is_err() {
            inner.counted(SharedOp::Set, SharedResult::Dropped);
            inner.metrics.error("shared", "queue_full");
            if let Some(more) = inner.full_log.admit() {
                tracing::warn!(
                    queue = WRITE_QUEUE,
                    more,
                    "shared store write queue full; what this host learned is not shared (`more`: others since the last warning)"
                );
            }
        }
    }
}

impl Inner {
    pub(super) fn counted(&self, op: SharedOp, r: SharedResult) {
        self.metrics.shared_request(op, r);
    }

    fn up(&self) {
        let first = !self.breaker.ever_up.load(Ordering::Relaxed);
        if self.breaker.succeed() {
            tracing::info!(url = %self.url, "shared store answers again");
            self.replays.want();
        } else if first {
            self.replays.want();
        }
        self.metrics.shared_up(true);
    }

    /// A failure: down for a back-off, logged (rate-limited) and counted.
    fn down(&self, what: &'static str, e: &redis::RedisError) -> Duration {
        let kind = error_kind(e);
        let why = if kind == "auth" {
            format!("authentication refused ({e}): check shared.username and shared.password_file")
        } else {
            e.to_string()
        };
        self.metrics.error("shared", kind);
        self.fail(what, why)
    }

    fn down_timeout(&self, what: &'static str) -> Duration {
        self.metrics.error("shared", "timeout");
        self.fail(what, format!("{what}: no answer in time"))
    }

    fn fail(&self, what: &'static str, why: String) -> Duration {
        let (backoff, was_up) = self.breaker.fail(why.clone());
        self.target.wake();
        self.metrics.shared_up(false);
        if let Some(more) = self.down_log.admit() {
            tracing::warn!(url = %self.url, during = what, error = %why, retry_in = %humantime::format_duration(backoff),
                first = was_up, more,
                "shared store unavailable; this host answers from its own memory and cache file");
        }
        backoff
    }

    /// A value refused: logged (rate-limited) and counted.
    fn bad(&self, kind: Kind, domain: &str, label: &'static str, why: &str) {
        if self.recent_bad.reported(kind, domain) {
            return;
        }
        self.counted(SharedOp::Get, SharedResult::Invalid);
        self.metrics.error("shared", label);
        if let Some(more) = self.bad_log.admit() {
            let why = crate::util::text::printable_ascii(why, 300);
            tracing::warn!(kind = %kind, domain, problem = label, error = %why, more,
                "unusable value in the shared store ignored");
        }
    }

    /// Run one command within `command_timeout`; `None` when the store is
    /// not asked (down, not connected). Every end is counted but answers
    /// (the caller counts those).
    pub(super) async fn command<T: redis::FromRedisValue>(
        &self,
        op: SharedOp,
        cmd: redis::Cmd,
    ) -> Option<Outcome<T>> {
        if self.breaker.is_open() {
            self.counted(op, SharedResult::Down);
            return None;
        }
        let Some(conn) = self.conn.load_full() else {
            self.counted(op, SharedResult::Down);
            return None;
        };
        let mut c = (*conn).clone();
        let r = tokio::time::timeout(self.command_timeout, cmd.query_async::<T>(&mut c)).await;
        Some(match r {
            Ok(Ok(v)) => {
                self.up();
                Outcome::Answer(v)
            }
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") => {
                // The store answers; the key holds something else.
                self.up();
                self.bad_op(op, "wrong_type", &e);
                Outcome::Failed
            }
            Ok(Err(e)) => {
                self.counted(op, SharedResult::Error);
                self.down(op.as_str(), &e);
                Outcome::Failed
            }
            Err(_) => {
                self.counted(op, SharedResult::Timeout);
                self.down_timeout(op.as_str());
                Outcome::Timeout
            }
        })
    }

    fn bad_op(&self, op: SharedOp, label: &'static str, e: &redis::RedisError) {
        self.counted(op, SharedResult::Invalid);
        self.metrics.error("shared", label);
        if let Some(more) = self.bad_log.admit() {
            tracing::warn!(op = op.as_str(), problem = label, error = %e, more,
                "unusable value in the shared store ignored");
        }
    }

    async fn write(&self, w: Write) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&w.key).arg(w.value).arg("EX").arg(w.ttl);
        if let Some(Outcome::Answer(())) = self.command::<()>(SharedOp::Set, cmd).await {
            self.counted(SharedOp::Set, SharedResult::Ok);
        }
    }
}

impl SharedEntries for SharedStore {
    fn fetch<'a>(&'a self, kind: Kind, domain: &'a str) -> SharedFetch<'a> {
        Box::pin(self.get(kind, domain))
    }

    fn publish(&self, entry: &Entry) {
        self.put(entry);
    }

    fn unusable(&self, kind: Kind, domain: &str, why: &str) {
        self.inner.bad(kind, domain, "payload", why);
    }

    fn claim<'a>(&'a self, kind: Kind, domain: &'a str, hold: Duration) -> SharedClaim<'a> {
        Box::pin(self.try_claim(kind, domain, hold))
    }

    fn settle<'a>(&'a self, claim: ClaimToken, learned: Option<Learned>) -> SharedSettle<'a> {
        Box::pin(self.end_claim(claim, learned))
    }
}
