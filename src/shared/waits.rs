//! What a host keeps to coordinate discoveries with the fleet (see
//! `fleet`): its waits for other hosts' discoveries by `kind:domain`, the
//! notices' format, and the tokens of its claims.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::cache::persist::Kind;
use crate::util::rate::RateLimit;

/// Domains this host waits for at most; past this, a wait only polls.
pub const MAX_WAITERS: usize = 65_536;
/// Longest notice read (`dane:` and a domain of 253 bytes fit).
pub const MAX_NOTICE: usize = 300;

/// The waits of this host, by `kind:domain`.
#[derive(Default)]
pub(super) struct Waiters {
    map: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver told when a notice for `key` comes; `None` when too
    /// many domains are awaited.
    pub(super) fn register(&self, key: &str) -> Option<watch::Receiver<bool>> {
        let mut map = self.lock();
        if let Some(tx) = map.get(key) {
            return Some(tx.subscribe());
        }
        if map.len() >= MAX_WAITERS {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        map.insert(key.to_string(), tx);
        Some(rx)
    }

    /// A notice for `key`: tell its waits. Whether there were any.
    pub(super) fn notify(&self, key: &str) -> bool {
        let Some(tx) = self.lock().remove(key) else {
            return false;
        };
        tx.send(true).is_ok()
    }

    /// A wait ended: forget `key` when it was the last one.
    pub(super) fn forget(&self, key: &str, rx: &watch::Receiver<bool>) {
        let mut map = self.lock();
        let last = map.get(key).is_some_and(|tx| {
            // Counted before a receiver is made to compare with.
            let alone = tx.receiver_count() <= 1;
            alone && rx.same_channel(&tx.subscribe())
        });
        if last {
            map.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// What the store keeps for claims and notices.
pub(super) struct Fleet {
    pub(super) waiters: Waiters,
    pub(super) subscribed: AtomicBool,
    serial: AtomicU64,
    /// Random, this process's own: the first half of every token.
    host: String,
    pub(super) claim_log: RateLimit,
    pub(super) notice_log: RateLimit,
}

impl Fleet {
    pub(super) fn new() -> Fleet {
        Fleet {
            waiters: Waiters::default(),
            subscribed: AtomicBool::new(false),
            serial: AtomicU64::new(0),
            host: random_hex(),
            claim_log: RateLimit::per_minute(2),
            notice_log: RateLimit::per_minute(2),
        }
    }

    /// A token no other claim has.
    pub(super) fn token(&self) -> String {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.host)
    }
}

/// 16 random bytes in hex (the time and the process id when the system's
/// random source fails, which still tells hosts and processes apart).
fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 96)).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The notice that a discovery of `domain` ended.
pub(super) fn notice_text(kind: Kind, domain: &str) -> String {
    format!("{kind}:{domain}")
}

/// A notice's `kind:domain`, checked: `None` when it is not one.
pub(super) fn parse_notice(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > MAX_NOTICE {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let (kind, domain) = text.split_once(':')?;
    kind.parse::<Kind>().ok()?;
    let ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_kind_and_domain_bounded() {
        assert_eq!(notice_text(Kind::MtaSts, "a.example"), "mta-sts:a.example");
        assert_eq!(
            parse_notice(b"mta-sts:a.example"),
            Some("mta-sts:a.example")
        );
        assert_eq!(
            parse_notice(b"dane:_x.a-b.example"),
            Some("dane:_x.a-b.example")
        );
        for bad in [
            &b"mta-sts:"[..],
            b"nope:a.example",
            b"a.example",
            b"dane:a example",
            b"dane:a\xff",
            b"mta-sts:a:b",
        ] {
            assert_eq!(parse_notice(bad), None, "{bad:?}");
        }
        let at = format!("dane:{}", "a".repeat(MAX_NOTICE - 5));
        assert_eq!(at.len(), MAX_NOTICE);
        assert!(parse_notice(at.as_bytes()).is_some());
        let over = format!("dane:{}", "a".repeat(MAX_NOTICE - 4));
        assert_eq!(parse_notice(over.as_bytes()), None);
    }

    #[tokio::test]
    async fn a_notice_reaches_every_wait_for_its_domain_and_nothing_is_left() {
        let w = Waiters::default();
        let mut a = w.register("mta-sts:a.example").unwrap();
        let mut b = w.register("mta-sts:a.example").unwrap();
        let other = w.register("dane:a.example").unwrap();
        assert_eq!(w.len(), 2);
        assert!(!w.notify("mta-sts:b.example"));
        assert!(w.notify("mta-sts:a.example"));
        a.changed().await.unwrap();
        b.changed().await.unwrap();
        assert!(*a.borrow() && *b.borrow());
        assert!(!*other.borrow());
        assert_eq!(w.len(), 1);
        // A second notice finds no wait.
        assert!(!w.notify("mta-sts:a.example"));
        // Waits given up: the last one takes the entry with it.
        let c = w.register("mta-sts:c.example").unwrap();
        let d = w.register("mta-sts:c.example").unwrap();
        w.forget("mta-sts:c.example", &c);
        assert_eq!(w.len(), 2);
        drop(c);
        w.forget("mta-sts:c.example", &d);
        assert_eq!(w.len(), 1);
        // A stale receiver does not take a newer entry.
        w.forget("dane:a.example", &a);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn waits_are_bounded_in_number() {
        let w = Waiters::default();
        let held: Vec<_> = (0..MAX_WAITERS)
            .map(|i| w.register(&format!("dane:d{i}.example")).unwrap())
            .collect();
        assert_eq!(w.len(), MAX_WAITERS);
        assert!(w.register("dane:one-more.example").is_none());
        // One already awaited still gets a receiver.
        assert!(w.register("dane:d7.example").is_some());
        drop(held);
    }

    #[test]
    fn tokens_differ() {
        let f = Fleet::new();
        let g = Fleet::new();
        assert_eq!(f.host.len(), 32);
        assert_ne!(f.host, g.host);
        assert_ne!(f.token(), f.token());
    }
}
