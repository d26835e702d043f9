//! RCPT decisions kept per message until END-OF-MESSAGE, shared by every
//! connection of one server: the crate's [`TtlCache`], keyed by Postfix's
//! `instance`, each message valid for [`MESSAGE_STATE_TTL`], at most
//! [`MAX_OPEN_MESSAGES`] (the oldest written goes first, with a warning).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use super::{MAX_OPEN_MESSAGES, MAX_RECIPIENTS_PER_MESSAGE, MESSAGE_STATE_TTL, SWEEP_INTERVAL};
use crate::cache::{CacheConfig, CacheObserver, CacheSize, Eviction, Expiry, NoObserver, TtlCache};
use crate::engine::policy_file::SenderHit;
use crate::engine::recipient::{RecipientDecision, trace_value};
use crate::frontends::attrs::Request;

/// RCPT decisions of one message.
#[derive(Debug, Default)]
pub(super) struct Message {
    pub(super) sender_rule: Option<u32>,
    filter_sent: bool,
    pub(super) recipients: Vec<RecipientDecision>,
    /// Recipients over [`MAX_RECIPIENTS_PER_MESSAGE`], counted only.
    pub(super) dropped: usize,
}

type Shared = Arc<Mutex<Message>>;

fn lock(m: &Shared) -> MutexGuard<'_, Message> {
    // A panic while holding the lock leaves a message that is still
    // valid: keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Warns when open messages are forgotten to stay within the cap, and
/// passes every event on (to the metrics).
struct Forgetting(Arc<dyn CacheObserver>);

impl CacheObserver for Forgetting {
    fn hit(&self) {
        self.0.hit();
    }
    fn miss(&self) {
        self.0.miss();
    }
    fn size(&self, size: CacheSize) {
        self.0.size(size);
    }
    fn evicted(&self, n: usize) {
        tracing::warn!(
            limit = MAX_OPEN_MESSAGES,
            forgotten = n,
            "too many open messages; forgot the oldest one's RCPT decisions"
        );
        self.0.evicted(n);
    }
}

/// Per-message state shared by every connection of one server.
pub(super) struct Messages {
    cache: TtlCache<String, Shared>,
    last_sweep: Mutex<Instant>,
}

impl Default for Messages {
    fn default() -> Self {
        Messages::new(Arc::new(NoObserver))
    }
}

impl Messages {
    /// Counted by `observer` (hits: a RCPT for a message already open).
    pub(super) fn new(observer: Arc<dyn CacheObserver>) -> Messages {
        let config = CacheConfig {
            evict_batch: 1,
            ..CacheConfig::new(MAX_OPEN_MESSAGES).eviction(Eviction::OldestWritten)
        };
        Messages {
            cache: TtlCache::new(config, Arc::new(Forgetting(observer))),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Forget messages that never reached END-OF-MESSAGE, at most once per
    /// [`SWEEP_INTERVAL`].
    fn sweep(&self) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < SWEEP_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let gone = self.cache.remove_expired(SystemTime::now());
        if gone > 0 {
            tracing::debug!(
                messages = gone,
                "forgot messages that never reached END-OF-MESSAGE"
            );
        }
    }

    /// The message's state, created when missing or expired.
    fn entry(&self, instance: &str) -> Shared {
        self.sweep();
        if let Some(m) = self.cache.get(instance).fresh() {
            return m;
        }
        let mut made = None;
        self.cache.upsert(instance.to_string(), |old| match old {
            Some((m, e)) if e.is_valid_at(SystemTime::now()) => {
                made = Some(m.clone());
                (m.clone(), *e)
            }
            _ => {
                let m = Shared::default();
                made = Some(m.clone());
                (
                    m,
                    Expiry::after(SystemTime::now(), MESSAGE_STATE_TTL).no_refresh(),
                )
            }
        });
        made.expect("upsert calls its closure")
    }

    /// Whether FILTER is still to be sent for this message; marks it sent.
    /// Messages without an instance get it every time.
    pub(super) fn take_filter(&self, instance: &str) -> bool {
        if instance.is_empty() {
            return true;
        }
        let m = self.entry(instance);
        !std::mem::replace(&mut lock(&m).filter_sent, true)
    }

    pub(super) fn add_recipient(
        &self,
        instance: &str,
        request: &Request,
        sender_hit: Option<&SenderHit>,
        entry: RecipientDecision,
    ) {
        let shared = self.entry(instance);
        let mut m = lock(&shared);
        if let Some(h) = sender_hit {
            m.sender_rule = Some(h.rule);
        }
        if m.recipients.len() < MAX_RECIPIENTS_PER_MESSAGE {
            m.recipients.push(entry);
        } else {
            if m.dropped == 0 {
                tracing::warn!(
                    instance,
                    queue_id = request.value("queue_id"),
                    limit = MAX_RECIPIENTS_PER_MESSAGE,
                    "message has more recipients than are remembered; the rest are only in their RCPT records"
                );
            }
            m.dropped += 1;
        }
    }

    /// The trace header value for a message, if its RCPT decisions are
    /// known.
    pub(super) fn trace(&self, instance: &str) -> Option<String> {
        if instance.is_empty() {
            return None;
        }
        let m = self.cache.peek_valid(instance, SystemTime::now())?;
        let m = lock(&m);
        Some(trace_value(&m.recipients, m.sender_rule))
    }

    /// The message's state, forgotten here.
    pub(super) fn take(&self, instance: &str) -> Option<Message> {
        let m = self.cache.remove(instance)?;
        let taken = std::mem::take(&mut *lock(&m));
        Some(taken)
    }

    pub(super) fn remove(&self, instance: &str) {
        self.cache.remove(instance);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.cache.len()
    }
}
