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

use std::collections::HashMap;

use super::postfix::{Delivery, Endpoint, Event, Relay, TlsEstablished, TlsFailure};

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
                        || delivery.conn_use.is_some_and(|n| n >= 2 && Some(n) != bound.1)
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

/// Same peer: the address and port must agree; the host names too (a TLS
/// line and a status line name the host the same way).
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    a.addr == b.addr && a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}
