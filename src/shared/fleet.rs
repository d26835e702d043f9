//! One discovery per domain for the whole fleet.
//!
//! A host that misses in the store claims the domain's discovery:
//! `SET PREFIXlock:KIND:DOMAIN TOKEN NX PX HOLD`, the token random and its
//! own, the hold a little more than the discovery's own time limit. The
//! winner discovers, writes the result to the store at once (not through
//! the queue), publishes `KIND:DOMAIN` on the channel `PREFIXlearned`,
//! and releases the claim only if the token is still its own (a script:
//! a claim that lapsed and was taken by another host stays that host's).
//!
//! A host that loses waits. Each daemon keeps one pub/sub connection
//! subscribed to the channel and hands each notice to the waits of this
//! host for that domain (a map, filled before the claim is tried, so a
//! notice is never missed between the claim and the wait). A wait also
//! looks at the claim every [`POLL`] (the winner writes before it
//! releases, so a claim gone means its result is there), so a lost notice
//! or a notices connection down costs at most that; and it ends at the
//! claim's lifetime. A host that reads nothing just before another
//! releases its claim may win the next claim and discover again: a
//! window of one round trip, costing a second discovery, never a wrong
//! answer. The store down or slow ends it at
//! once (every command is bounded by `command_timeout` and the circuit
//! breaker): the host then discovers alone, as without a store.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use redis::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::breaker::{MAX_BACKOFF, MIN_BACKOFF};
use super::store::{Outcome, SharedStore};
use super::value;
use super::waits::{MAX_NOTICE, notice_text, parse_notice};
use crate::cache::persist::{Claim, ClaimToken, Kind, Learned, Waited};
use crate::metrics::{ClaimResult, NoticeDir, SharedOp, SharedResult};

/// How often a wait looks at the domain (besides the notices).
pub const POLL: Duration = Duration::from_millis(250);
/// Shortest and longest claim.
pub const MIN_HOLD: Duration = Duration::from_secs(1);
pub const MAX_HOLD: Duration = Duration::from_secs(300);
/// The channel notices go on, after the key prefix.
pub const CHANNEL: &str = "learned";

/// Delete the claim only if it still holds this host's token.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

/// A wait's place in [`Waiters`], given up on drop.
struct Registration {
    store: SharedStore,
    key: String,
    rx: Option<watch::Receiver<bool>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(rx) = &self.rx {
            self.store.inner.fleet.waiters.forget(&self.key, rx);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SharedStore {
    fn lock_key(&self, kind: Kind, domain: &str) -> String {
        format!("{}lock:{}:{domain}", self.inner.prefix, kind.as_str())
    }

    fn channel(&self) -> String {
        format!("{}{CHANNEL}", self.inner.prefix)
    }

    fn register(&self, kind: Kind, domain: &str) -> Registration {
        let key = notice_text(kind, domain);
        let rx = self.inner.fleet.waiters.register(&key);
        Registration {
            store: self.clone(),
            key,
            rx,
        }
    }

    /// [`crate::cache::persist::SharedEntries::claim`].
    pub(super) async fn try_claim(&self, kind: Kind, domain: &str, hold: Duration) -> Claim {
        let inner = &self.inner;
        let hold = hold.clamp(MIN_HOLD, MAX_HOLD);
        // Waiting for a notice starts before the claim: none is missed.
        let reg = self.register(kind, domain);
        let token = inner.fleet.token();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lock_key(kind, domain))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(hold));
        let won = match inner.command::<Value>(SharedOp::Claim, cmd).await {
            Some(Outcome::Answer(Value::Nil)) => false,
            Some(Outcome::Answer(Value::Okay | Value::SimpleString(_))) => true,
            Some(Outcome::Answer(other)) => {
                inner.counted(SharedOp::Claim, SharedResult::Invalid);
                inner.metrics.error("shared", "claim_answer");
                if let Some(more) = inner.fleet.claim_log.admit() {
                    tracing::warn!(kind = %kind, domain, answer = ?other, more,
                        "unexpected answer to a claim; this host discovers alone");
                }
                inner.metrics.shared_claim(ClaimResult::Unavailable);
                return Claim::Unavailable;
            }
            _ => {
                inner.metrics.shared_claim(ClaimResult::Unavailable);
                return Claim::Unavailable;
            }
        };
        inner.counted(SharedOp::Claim, SharedResult::Ok);
        let claim = ClaimToken {
            kind,
            domain: domain.to_string(),
            token,
        };
        if won {
            inner.metrics.shared_claim(ClaimResult::Won);
            return Claim::Won(claim);
        }
        inner.metrics.shared_claim(ClaimResult::Lost);
        let store = self.clone();
        let deadline = Instant::now() + hold + POLL;
        Claim::Busy(Box::pin(async move {
            let end = store.wait(reg, kind, &claim.domain, deadline).await;
            store.inner.metrics.shared_wait(end);
            if matches!(end, Waited::TimedOut)
                && let Some(more) = store.inner.fleet.claim_log.admit()
            {
                tracing::warn!(kind = %kind, domain = %claim.domain, more,
                    "another host's discovery did not end within its claim; this host discovers");
            }
            end
        }))
    }

    /// Whether the claim of `domain` is still held; `None` when the store
    /// does not answer.
    async fn held(&self, kind: Kind, domain: &str) -> Option<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.lock_key(kind, domain));
        match self.inner.command::<i64>(SharedOp::Poll, cmd).await? {
            Outcome::Answer(n) => {
                self.inner.counted(SharedOp::Poll, SharedResult::Ok);
                Some(n > 0)
            }
            Outcome::Timeout | Outcome::Failed => None,
        }
    }

    /// Wait for another host's discovery of `domain`, at most until
    /// `deadline`.
    async fn wait(
        &self,
        mut reg: Registration,
        kind: Kind,
        domain: &str,
        deadline: Instant,
    ) -> Waited {
        loop {
            // The winner writes before it releases: a claim gone means
            // whatever it learned is there.
            match self.held(kind, domain).await {
                None => return Waited::Down,
                Some(false) => return Waited::Released,
                Some(true) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            let tick = tokio::time::sleep((deadline - now).min(POLL));
            match reg.rx.as_mut() {
                Some(rx) => tokio::select! {
                    r = rx.changed() => match r {
                        Ok(()) => return Waited::Notified,
                        // Forgotten without a notice: look, and poll on.
                        Err(_) => reg.rx = None,
                    },
                    () = tick => {}
                },
                None => tick.await,
            }
        }
    }

    /// [`crate::cache::persist::SharedEntries::settle`].
    pub(super) async fn end_claim(&self, claim: ClaimToken, learned: Option<Learned>) {
        let inner = &self.inner;
        if let Some(l) = learned {
            self.write_now(&l).await;
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel())
            .arg(notice_text(claim.kind, &claim.domain));
        if let Some(Outcome::Answer(_)) = inner.command::<i64>(SharedOp::Notice, cmd).await {
            inner.counted(SharedOp::Notice, SharedResult::Ok);
            inner.metrics.shared_notice(NoticeDir::Sent);
        }
        self.release(&claim).await;
    }

    /// Release `claim` if it is still this host's.
    async fn release(&self, claim: &ClaimToken) {
        let inner = &self.inner;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE)
            .arg(1)
            .arg(self.lock_key(claim.kind, &claim.domain))
            .arg(&claim.token);
        match inner.command::<i64>(SharedOp::Release, cmd).await {
            Some(Outcome::Answer(1)) => inner.counted(SharedOp::Release, SharedResult::Ok),
            Some(Outcome::Answer(_)) => {
                inner.counted(SharedOp::Release, SharedResult::Miss);
                inner.metrics.error("shared", "claim_lapsed");
                if let Some(more) = inner.fleet.claim_log.admit() {
                    tracing::warn!(kind = %claim.kind, domain = %claim.domain, more,
                        "a claim lapsed before its discovery ended (another host may have discovered too)");
                }
            }
            _ => {}
        }
    }

    /// Write what a claimed discovery learned now, not through the queue:
    /// the hosts waiting for it read it as soon as they are told.
    async fn write_now(&self, l: &Learned) {
        let inner = &self.inner;
        let e = &l.entry;
        let encoded = if l.negative {
            value::encode_negative(e)
        } else {
            value::encode(e)
        };
        let bytes = match encoded {
            Ok(b) => b,
            Err(err) => {
                inner.metrics.error("shared", "oversized");
                if let Some(more) = inner.fleet.claim_log.admit() {
                    tracing::warn!(domain = %e.domain, kind = %e.kind, error = %err, more,
                        "not written to the shared store");
                }
                return;
            }
        };
        let ttl = e
            .expires_at
            .duration_since(SystemTime::now())
            .map_or(0, |d| d.as_secs());
        if ttl == 0 {
            return;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(e.kind, &e.domain))
            .arg(bytes)
            .arg("EX")
            .arg(ttl);
        if let Some(Outcome::Answer(())) = inner.command::<()>(SharedOp::Set, cmd).await {
            inner.counted(SharedOp::Set, SharedResult::Ok);
        }
    }

    /// Whether the notices connection is subscribed.
    pub fn notices_subscribed(&self) -> bool {
        self.inner.fleet.subscribed.load(Ordering::Relaxed)
    }

    /// Keep one pub/sub connection subscribed to the notices (again and
    /// again, backing off), handing each to this host's waits, until
    /// `shutdown`.
    pub(super) async fn listen(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let fleet = &inner.fleet;
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt = async {
                let mut ps = inner.target.pubsub().await?;
                ps.subscribe(self.channel()).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let limit = inner.connect_timeout.saturating_mul(2);
            let r = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(limit, attempt) => r,
            };
            let why = match r {
                Ok(Ok(ps)) => {
                    backoff = MIN_BACKOFF;
                    fleet.subscribed.store(true, Ordering::Relaxed);
                    tracing::info!(channel = %self.channel(), "shared store notices subscribed");
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            m = stream.next() => match m {
                                Some(m) => self.notice(m.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    fleet.subscribed.store(false, Ordering::Relaxed);
                    "the connection closed".to_string()
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer in time".to_string(),
            };
            inner.metrics.error("shared", "notices");
            if let Some(more) = fleet.notice_log.admit() {
                tracing::warn!(error = %why, retry_in = %humantime::format_duration(backoff), more,
                    "shared store notices not received; hosts waiting for another's discovery look every 250ms");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        }
    }

    fn notice(&self, payload: &[u8]) {
        let inner = &self.inner;
        let Some(key) = parse_notice(payload) else {
            inner.metrics.shared_notice(NoticeDir::Invalid);
            inner.metrics.error("shared", "notice");
            if let Some(more) = inner.fleet.notice_log.admit() {
                let text = crate::util::text::printable_ascii(
                    &String::from_utf8_lossy(&payload[..payload.len().min(MAX_NOTICE)]),
                    MAX_NOTICE,
                );
                tracing::warn!(notice = %text, more, "unusable notice on the shared store's channel ignored");
            }
            return;
        };
        let dir = if inner.fleet.waiters.notify(key) {
            NoticeDir::Received
        } else {
            NoticeDir::Unawaited
        };
        inner.metrics.shared_notice(dir);
    }
}
