//! RCPT decisions kept per message until END-OF-MESSAGE, shared by every
//! connection of one server.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::{MAX_OPEN_MESSAGES, MAX_RECIPIENTS_PER_MESSAGE, MESSAGE_STATE_TTL, SWEEP_INTERVAL};
use crate::engine::policy_file::SenderHit;
use crate::engine::recipient::{RecipientDecision, trace_value};
use crate::frontends::attrs::Request;

/// RCPT decisions of one message.
#[derive(Debug)]
pub(super) struct Message {
    created: Instant,
    pub(super) sender_rule: Option<u32>,
    filter_sent: bool,
    pub(super) recipients: Vec<RecipientDecision>,
    /// Recipients over [`MAX_RECIPIENTS_PER_MESSAGE`], counted only.
    pub(super) dropped: usize,
}

impl Message {
    fn new() -> Message {
        Message {
            created: Instant::now(),
            sender_rule: None,
            filter_sent: false,
            recipients: Vec::new(),
            dropped: 0,
        }
    }
}

#[derive(Debug)]
struct MessagesInner {
    map: HashMap<String, Message>,
    last_sweep: Instant,
}

/// Per-message state shared by every connection of one server.
#[derive(Debug)]
pub(super) struct Messages {
    inner: Mutex<MessagesInner>,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            inner: Mutex::new(MessagesInner {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }
}

impl Messages {
    fn lock(&self) -> MutexGuard<'_, MessagesInner> {
        // A panic while holding the lock leaves a map that is still a
        // valid map: keep using it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The message's entry, created when missing (expired entries are
    /// swept and the oldest dropped when full).
    fn entry<'a>(inner: &'a mut MessagesInner, instance: &str) -> &'a mut Message {
        let now = Instant::now();
        if now.duration_since(inner.last_sweep) >= SWEEP_INTERVAL {
            inner.last_sweep = now;
            let before = inner.map.len();
            inner
                .map
                .retain(|_, m| now.duration_since(m.created) < MESSAGE_STATE_TTL);
            let gone = before - inner.map.len();
            if gone > 0 {
                tracing::debug!(
                    messages = gone,
                    "forgot messages that never reached END-OF-MESSAGE"
                );
            }
        }
        if !inner.map.contains_key(instance) && inner.map.len() >= MAX_OPEN_MESSAGES {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, m)| m.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.map.remove(&k);
                tracing::warn!(
                    limit = MAX_OPEN_MESSAGES,
                    instance = %k,
                    "too many open messages; forgot the oldest one's RCPT decisions"
                );
            }
        }
        inner
            .map
            .entry(instance.to_string())
            .or_insert_with(Message::new)
    }

    /// Whether FILTER is still to be sent for this message; marks it sent.
    /// Messages without an instance get it every time.
    pub(super) fn take_filter(&self, instance: &str) -> bool {
        if instance.is_empty() {
            return true;
        }
        let mut inner = self.lock();
        let m = Self::entry(&mut inner, instance);
        !std::mem::replace(&mut m.filter_sent, true)
    }

    pub(super) fn add_recipient(
        &self,
        instance: &str,
        request: &Request,
        sender_hit: Option<&SenderHit>,
        entry: RecipientDecision,
    ) {
        let mut inner = self.lock();
        let m = Self::entry(&mut inner, instance);
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
        let inner = self.lock();
        let m = inner.map.get(instance)?;
        Some(trace_value(&m.recipients, m.sender_rule))
    }

    pub(super) fn take(&self, instance: &str) -> Option<Message> {
        self.lock().map.remove(instance)
    }

    pub(super) fn remove(&self, instance: &str) {
        self.lock().map.remove(instance);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }
}
