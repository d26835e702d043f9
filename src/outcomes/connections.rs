//! Per-process connection state: which TLS facts govern a delivery line.
//!
//! At `smtp_tls_loglevel = 1` an smtp/lmtp process logs one TLS summary
//! per connection (`established`, or `reused` when it takes a TLS
//! connection from the cache), then one status line per recipient. A
//! plaintext connection logs nothing before its status lines. So, per
//! process (host, program, pid):
//! - a TLS summary, a TLS failure, or a failed connect starts a new
//!   connection record for that peer;
//! - a status line whose relay is that peer is governed by it when it is
//!   the record's first message, another recipient of that same message
//!   over the same use (`conn_use`), or a later use (`conn_use=N`) of the
//!   same connection;
//! - a status line to another peer, or a new message over a new connection
//!   with no TLS line before it (plaintext), clears the record;
//! - `relay=none` (no connection made) leaves it alone.
//!
//! At most `capacity` processes are tracked; the least recently seen is
//! evicted and counted.
//!
//! The state goes with the follower's saved position
//! ([`ConnectionTracker::saved`], [`ConnectionTracker::restore`]): a
//! connection whose TLS line was read before a restart still governs the
//! status lines read after it.
//!
//! Observed with Postfix 3.7 and `smtp_tls_connection_reuse = yes`: the
//! smtp process still logs the TLS summary (`established`, or `reused` for a
//! cached TLS connection, followed by `conn_use=N` lines), but the
//! certificate-verification and handshake failure lines come from tlsproxy,
//! one process serving many connections; they are not attached here. Feed
//! only smtp/lmtp processes to a tracker.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::peer::TlsFailureKind;
use super::postfix::{Delivery, Endpoint, Event, Relay, TlsEstablished, TlsFailure, Trust};

/// Default number of processes tracked (Postfix's default process limit
/// is 100 per service).
pub const DEFAULT_CAPACITY: usize = 4096;
/// TLS failure lines kept per connection (a verify failure, a library
/// error and an `SSL_connect` error are the most seen for one attempt).
pub const MAX_FAILURES: usize = 4;

/// One Postfix process: its host, program tag (`postfix-out/smtp`) and pid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub host: String,
    pub program: String,
    pub pid: u32,
}

/// The TLS facts of the connection a delivery went over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// The TLS summary; `None` for plaintext (or TLS not completed).
    pub tls: Option<TlsEstablished>,
    /// TLS failure lines logged for this connection attempt (oldest first).
    pub failures: Vec<TlsFailure>,
}

/// A delivery line with the facts of the connection it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributedDelivery {
    pub delivery: Delivery,
    /// `None` when the line names no connection (`relay=none`) or no facts
    /// were seen for it (plaintext, or the state was evicted).
    pub connection: Option<ConnectionFacts>,
}

#[derive(Debug, Clone)]
struct Conn {
    peer: Option<Endpoint>,
    facts: ConnectionFacts,
    /// The message (queue id, conn_use) that last used this connection.
    bound: Option<(String, Option<u32>)>,
    last_seen: u64,
}

impl Conn {
    fn new(tick: u64) -> Conn {
        Conn {
            peer: None,
            facts: ConnectionFacts::default(),
            bound: None,
            last_seen: tick,
        }
    }
}

/// Counters a caller exposes as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Processes evicted because `capacity` was reached.
    pub evicted: u64,
    /// Failure lines dropped because a connection already had [`MAX_FAILURES`].
    pub failures_dropped: u64,
}

/// Bounded map of process → current connection.
#[derive(Debug, Clone)]
pub struct ConnectionTracker {
    capacity: usize,
    procs: HashMap<ProcessKey, Conn>,
    tick: u64,
    stats: TrackerStats,
}

impl Default for ConnectionTracker {
    fn default() -> Self {
        ConnectionTracker::new(DEFAULT_CAPACITY)
    }
}

impl ConnectionTracker {
    /// A tracker for at most `capacity` processes (at least 1).
    pub fn new(capacity: usize) -> ConnectionTracker {
        ConnectionTracker {
            capacity: capacity.max(1),
            procs: HashMap::new(),
            tick: 0,
            stats: TrackerStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Forget a process (e.g. when the follower learns it exited).
    pub fn forget(&mut self, key: &ProcessKey) {
        self.procs.remove(key);
    }

    /// Feed one event of process `key`. Returns the delivery, with its
    /// connection facts, when the event is a status line.
    pub fn observe(&mut self, key: &ProcessKey, event: Event) -> Option<AttributedDelivery> {
        self.tick += 1;
        match event {
            Event::TlsEstablished(tls) => {
                let peer = tls.peer.clone();
                let conn = self.fresh_or_same(key, Some(&peer));
                conn.facts.tls = Some(tls);
                None
            }
            Event::TlsFailure(f) => {
                let peer = f.peer.clone();
                let conn = self.fresh_or_same(key, peer.as_ref());
                if conn.facts.failures.len() < MAX_FAILURES {
                    conn.facts.failures.push(f);
                } else {
                    self.stats.failures_dropped += 1;
                }
                None
            }
            Event::ConnectFailed { .. } => {
                self.procs.remove(key);
                None
            }
            Event::Delivery(d) => Some(self.delivery(key, d)),
            _ => None,
        }
    }

    fn delivery(&mut self, key: &ProcessKey, delivery: Delivery) -> AttributedDelivery {
        let Relay::Peer(relay) = &delivery.relay else {
            return AttributedDelivery {
                delivery,
                connection: None,
            };
        };
        let tick = self.tick;
        let Some(conn) = self.procs.get_mut(key) else {
            return AttributedDelivery {
                delivery,
                connection: None,
            };
        };
        conn.last_seen = tick;
        let same_peer = conn.peer.as_ref().is_none_or(|p| same_endpoint(p, relay));
        let this_use = (delivery.queue_id.clone(), delivery.conn_use);
        let governs = same_peer
            && match &conn.bound {
                None => true,
                Some(bound) => {
                    *bound == this_use
                        || delivery
                            .conn_use
                            .is_some_and(|n| n >= 2 && Some(n) != bound.1)
                }
            };
        if governs {
            conn.bound = Some(this_use);
            if conn.peer.is_none() {
                conn.peer = Some(relay.clone());
            }
            let facts = conn.facts.clone();
            AttributedDelivery {
                delivery,
                connection: Some(facts),
            }
        } else {
            self.procs.remove(key);
            AttributedDelivery {
                delivery,
                connection: None,
            }
        }
    }

    /// The connection record to add a TLS line to: the current one when it
    /// is for the same peer and no message used it yet, else a new one.
    fn fresh_or_same(&mut self, key: &ProcessKey, peer: Option<&Endpoint>) -> &mut Conn {
        let tick = self.tick;
        let reusable = self.procs.get(key).is_some_and(|c| {
            c.bound.is_none()
                && c.facts.tls.is_none()
                && match (&c.peer, peer) {
                    (Some(a), Some(b)) => same_endpoint(a, b),
                    _ => true,
                }
        });
        if !reusable {
            if !self.procs.contains_key(key) && self.procs.len() >= self.capacity {
                self.evict_one();
            }
            self.procs.insert(key.clone(), Conn::new(tick));
        }
        let conn = self
            .procs
            .entry(key.clone())
            .or_insert_with(|| Conn::new(tick));
        conn.last_seen = tick;
        if conn.peer.is_none() {
            conn.peer = peer.cloned();
        }
        conn
    }

    fn evict_one(&mut self) {
        let oldest = self
            .procs
            .iter()
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.procs.remove(&k);
            self.stats.evicted += 1;
        }
    }
}

/// One process's connection as saved with the follower's position: what
/// the verdicts need of it (the TLS summary's trust, protocol and cipher,
/// the failures' kinds), peers as Postfix writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConnection {
    pub host: String,
    pub program: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SavedTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TlsFailureKind>,
    /// The message (queue id, `conn_use`) that last used the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<(String, Option<u32>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTls {
    pub trust: Trust,
    pub reused: bool,
    pub peer: String,
    pub protocol: String,
    pub cipher: String,
}

/// Connections saved with the position at most: Postfix runs 100 smtp(8)
/// processes per transport by default, and the most recently seen are the
/// ones still open.
pub const SAVED_CONNECTIONS: usize = 512;

impl ConnectionTracker {
    /// The `max` most recently seen connections, most recent last.
    pub fn saved(&self, max: usize) -> Vec<SavedConnection> {
        let mut all: Vec<(&ProcessKey, &Conn)> = self.procs.iter().collect();
        all.sort_by_key(|(_, c)| c.last_seen);
        let skip = all.len().saturating_sub(max);
        all.into_iter()
            .skip(skip)
            .map(|(k, c)| SavedConnection {
                host: k.host.clone(),
                program: k.program.clone(),
                pid: k.pid,
                peer: c.peer.as_ref().map(ToString::to_string),
                tls: c.facts.tls.as_ref().map(|t| SavedTls {
                    trust: t.trust,
                    reused: t.reused,
                    peer: t.peer.to_string(),
                    protocol: t.protocol.clone(),
                    cipher: t.cipher.clone(),
                }),
                failures: c.facts.failures.iter().map(|f| f.kind).collect(),
                bound: c.bound.clone(),
            })
            .collect()
    }

    /// Take up saved connections again (in the order [`Self::saved`]
    /// gives them); one whose peers cannot be read is left out.
    pub fn restore(&mut self, saved: &[SavedConnection]) {
        for s in saved {
            let peer = match &s.peer {
                Some(p) => match Endpoint::parse(p) {
                    Some(e) => Some(e),
                    None => continue,
                },
                None => None,
            };
            let tls = match &s.tls {
                Some(t) => match Endpoint::parse(&t.peer) {
                    Some(peer) => Some(TlsEstablished {
                        trust: t.trust,
                        reused: t.reused,
                        outbound: true,
                        peer,
                        protocol: t.protocol.clone(),
                        cipher: t.cipher.clone(),
                        bits: None,
                        extra: String::new(),
                    }),
                    None => continue,
                },
                None => None,
            };
            let key = ProcessKey {
                host: s.host.clone(),
                program: s.program.clone(),
                pid: s.pid,
            };
            if !self.procs.contains_key(&key) && self.procs.len() >= self.capacity {
                self.evict_one();
            }
            self.tick += 1;
            let failures = s
                .failures
                .iter()
                .take(MAX_FAILURES)
                .map(|&kind| TlsFailure {
                    kind,
                    peer: peer.clone(),
                    detail: String::new(),
                })
                .collect();
            self.procs.insert(
                key,
                Conn {
                    peer,
                    facts: ConnectionFacts { tls, failures },
                    bound: s.bound.clone(),
                    last_seen: self.tick,
                },
            );
        }
    }
}

/// Same peer: the address and port must agree; the host names too (a TLS
/// line and a status line name the host the same way).
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    a.addr == b.addr && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::postfix::{Trust, parse_message};

    fn key(pid: u32) -> ProcessKey {
        ProcessKey {
            host: "mx1".into(),
            program: "postfix/smtp".into(),
            pid,
        }
    }

    fn feed(t: &mut ConnectionTracker, pid: u32, msg: &str) -> Option<AttributedDelivery> {
        let ev = parse_message(msg);
        assert_ne!(ev, Event::Unknown, "{msg}");
        t.observe(&key(pid), ev)
    }

    fn trust(a: &Option<AttributedDelivery>) -> Option<Trust> {
        a.as_ref()?
            .connection
            .as_ref()?
            .tls
            .as_ref()
            .map(|t| t.trust)
    }

    const TLS_A: &str = "Verified TLS connection established to a.test[192.0.2.1]:25: TLSv1.3 with cipher C (256/256 bits)";
    const TLS_B: &str = "Untrusted TLS connection established to b.test[192.0.2.2]:25: TLSv1.3 with cipher C (256/256 bits)";

    fn dlv(q: &str, to: &str, relay: &str, conn_use: Option<u32>) -> String {
        let cu = conn_use.map_or(String::new(), |n| format!(", conn_use={n}"));
        format!(
            "{q}: to=<{to}>, relay={relay}{cu}, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 ok)"
        )
    }

    #[test]
    fn one_connection_several_recipients_then_reuse() {
        let mut t = ConnectionTracker::new(8);
        assert!(feed(&mut t, 1, TLS_A).is_none());
        let r = "a.test[192.0.2.1]:25";
        for to in ["x@a", "y@a", "z@a"] {
            let a = feed(&mut t, 1, &dlv("Q1", to, r, None));
            assert_eq!(trust(&a), Some(Trust::Verified), "{to}");
        }
        // The cached connection used again by the same process.
        assert_eq!(
            trust(&feed(&mut t, 1, &dlv("Q2", "x@a", r, Some(2)))),
            Some(Trust::Verified)
        );
        assert_eq!(
            trust(&feed(&mut t, 1, &dlv("Q2", "y@a", r, Some(2)))),
            Some(Trust::Verified)
        );
        assert_eq!(
            trust(&feed(&mut t, 1, &dlv("Q3", "x@a", r, Some(3)))),
            Some(Trust::Verified)
        );
        // A new message over a new connection with no TLS line: plaintext.
        let a = feed(&mut t, 1, &dlv("Q4", "x@a", r, None));
        assert_eq!(a.as_ref().unwrap().connection, None);
        assert!(t.is_empty());
    }

    #[test]
    fn another_peer_or_process_gets_no_facts() {
        let mut t = ConnectionTracker::new(8);
        feed(&mut t, 1, TLS_A);
        // Same process, other peer: the TLS facts do not apply.
        let a = feed(&mut t, 1, &dlv("Q1", "x@b", "b.test[192.0.2.2]:25", None));
        assert_eq!(a.unwrap().connection, None);
        // Other process: nothing known.
        feed(&mut t, 1, TLS_A);
        let a = feed(&mut t, 2, &dlv("Q1", "x@a", "a.test[192.0.2.1]:25", None));
        assert_eq!(a.unwrap().connection, None);
        // relay=none leaves the state for the next delivery.
        let a = feed(&mut t, 1, &dlv("Q9", "x@c", "none", None));
        assert_eq!(a.unwrap().connection, None);
        let a = feed(&mut t, 1, &dlv("Q1", "x@a", "a.test[192.0.2.1]:25", None));
        assert_eq!(trust(&a), Some(Trust::Verified));
        // A later TLS line replaces the facts.
        feed(&mut t, 1, TLS_B);
        let a = feed(&mut t, 1, &dlv("Q2", "x@b", "b.test[192.0.2.2]:25", None));
        assert_eq!(trust(&a), Some(Trust::Untrusted));
    }

    #[test]
    fn failures_are_kept_with_their_connection() {
        let mut t = ConnectionTracker::new(8);
        feed(
            &mut t,
            1,
            "certificate verification failed for b.test[192.0.2.2]:25: self-signed certificate",
        );
        feed(&mut t, 1, TLS_B);
        let a = feed(
            &mut t,
            1,
            "Q1: to=<x@b>, relay=b.test[192.0.2.2]:25, delay=0, delays=0/0/0/0, dsn=4.7.5, status=deferred (Server certificate not verified)",
        )
        .unwrap();
        let c = a.connection.unwrap();
        assert_eq!(c.tls.unwrap().trust, Trust::Untrusted);
        assert_eq!(c.failures.len(), 1);
        // Handshake failure: no TLS summary, two failure lines.
        feed(&mut t, 1, "SSL_connect error to b.test[192.0.2.2]:25: -1");
        feed(&mut t, 1, "warning: TLS library problem: error:0A00042E:x:");
        let a = feed(
            &mut t,
            1,
            "Q2: to=<x@b>, relay=b.test[192.0.2.2]:25, delay=0, delays=0/0/0/0, dsn=4.7.5, status=deferred (Cannot start TLS: handshake failure)",
        )
        .unwrap();
        let c = a.connection.unwrap();
        assert_eq!(c.tls, None);
        assert_eq!(c.failures.len(), 2);
        // Failure lines beyond the cap are counted, not kept.
        for _ in 0..MAX_FAILURES + 2 {
            feed(&mut t, 3, "warning: TLS library problem: x");
        }
        assert_eq!(t.stats().failures_dropped, 2);
        // A failed connect clears the process's record.
        feed(
            &mut t,
            3,
            "connect to b.test[192.0.2.2]:25: Connection refused",
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn saved_connections_govern_after_a_restore() {
        let mut t = ConnectionTracker::new(8);
        let r = "a.test[192.0.2.1]:25";
        // Process 1: TLS line read, its status lines not yet; process 2:
        // one recipient delivered, more of the message to come; process 3:
        // a failure.
        feed(&mut t, 1, TLS_A);
        feed(&mut t, 2, TLS_B);
        feed(&mut t, 2, &dlv("Q1", "x@b", "b.test[192.0.2.2]:25", None));
        feed(&mut t, 3, "SSL_connect error to b.test[192.0.2.2]:25: -1");
        let saved = t.saved(SAVED_CONNECTIONS);
        assert_eq!(saved.len(), 3);
        let text = serde_json::to_string(&saved).unwrap();
        let back: Vec<SavedConnection> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);

        let mut t = ConnectionTracker::new(8);
        t.restore(&back);
        assert_eq!(
            trust(&feed(&mut t, 1, &dlv("Q2", "x@a", r, None))),
            Some(Trust::Verified)
        );
        let a = feed(&mut t, 2, &dlv("Q1", "y@b", "b.test[192.0.2.2]:25", None)).unwrap();
        let c = a.connection.unwrap();
        assert_eq!(c.tls.as_ref().unwrap().trust, Trust::Untrusted);
        assert_eq!(c.tls.unwrap().protocol, "TLSv1.3");
        let a = feed(
            &mut t,
            3,
            "Q3: to=<x@b>, relay=b.test[192.0.2.2]:25, delay=0, delays=0/0/0/0, dsn=4.7.5, status=deferred (Cannot start TLS: handshake failure)",
        )
        .unwrap();
        assert_eq!(
            a.connection.unwrap().failures[0].kind,
            TlsFailureKind::HandshakeFailed
        );
        // Only the most recently seen are kept.
        let two = ConnectionTracker::saved(&t, 2);
        assert_eq!(two.iter().map(|c| c.pid).collect::<Vec<_>>(), [2, 3]);
        // One that cannot be read back is left out.
        let mut bad = back.clone();
        bad[0].peer = Some("not a peer".into());
        let mut t = ConnectionTracker::new(8);
        t.restore(&bad);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn capacity_evicts_least_recently_seen() {
        let mut t = ConnectionTracker::new(2);
        feed(&mut t, 1, TLS_A);
        feed(&mut t, 2, TLS_A);
        feed(&mut t, 1, TLS_B); // pid 1 seen again, pid 2 is now the oldest
        feed(&mut t, 3, TLS_A);
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats().evicted, 1);
        let a = feed(&mut t, 2, &dlv("Q1", "x@a", "a.test[192.0.2.1]:25", None));
        assert_eq!(a.unwrap().connection, None);
        let a = feed(&mut t, 3, &dlv("Q1", "x@a", "a.test[192.0.2.1]:25", None));
        assert_eq!(trust(&a), Some(Trust::Verified));
        t.forget(&key(1));
        assert_eq!(t.len(), 1);
        assert!(ConnectionTracker::new(0).capacity >= 1);
    }
}
