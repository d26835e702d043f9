//! The shared store (`[shared]`) in metrics: whether it is up, and its
//! requests by what became of them. Listed only when the store is
//! configured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Metrics, Writer};
use crate::cache::persist::Waited;

/// A request to the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedOp {
    /// A read on a local cache miss.
    Get,
    /// A write of what this host learned.
    Set,
    /// A write of what this host holds, when the store lacks it (after
    /// the store was down or restarted).
    Replay,
    /// A look at a store that is down, to see it back.
    Ping,
    /// A claim of a domain's discovery (`SET NX`).
    Claim,
    /// The release of a claim this host won.
    Release,
    /// A notice to the other hosts that a discovery ended (`PUBLISH`).
    Notice,
    /// A look at a claimed domain while waiting for its discovery.
    Poll,
}

impl SharedOp {
    pub const ALL: [SharedOp; 8] = [
        SharedOp::Get,
        SharedOp::Set,
        SharedOp::Replay,
        SharedOp::Ping,
        SharedOp::Claim,
        SharedOp::Release,
        SharedOp::Notice,
        SharedOp::Poll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SharedOp::Get => "get",
            SharedOp::Set => "set",
            SharedOp::Replay => "replay",
            SharedOp::Ping => "ping",
            SharedOp::Claim => "claim",
            SharedOp::Release => "release",
            SharedOp::Notice => "notice",
            SharedOp::Poll => "poll",
        }
    }
}

/// What became of a claim of a domain's discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// This host discovers for the fleet.
    Won,
    /// Another host was at it: this one waits.
    Lost,
    /// Not coordinated (store down, slow): this host discovers alone.
    Unavailable,
}

impl ClaimResult {
    pub const ALL: [ClaimResult; 3] = [
        ClaimResult::Won,
        ClaimResult::Lost,
        ClaimResult::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimResult::Won => "won",
            ClaimResult::Lost => "lost",
            ClaimResult::Unavailable => "unavailable",
        }
    }
}

/// Notices between hosts that a discovery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeDir {
    /// Published by this host.
    Sent,
    /// Received, and a wait of this host ended by it.
    Received,
    /// Received, no wait here for it.
    Unawaited,
    /// Received and refused (too long, not `kind:domain`).
    Invalid,
}

impl NoticeDir {
    pub const ALL: [NoticeDir; 4] = [
        NoticeDir::Sent,
        NoticeDir::Received,
        NoticeDir::Unawaited,
        NoticeDir::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeDir::Sent => "sent",
            NoticeDir::Received => "received",
            NoticeDir::Unawaited => "unawaited",
            NoticeDir::Invalid => "invalid",
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedResult {
    /// A usable entry read.
    Hit,
    /// Nothing there (or expired).
    Miss,
    /// Written.
    Ok,
    /// A value there that was refused (garbage, oversized, a later format).
    Invalid,
    /// Not asked: the store is known down.
    Down,
    /// No answer within `command_timeout`.
    Timeout,
    /// The store answered with an error, or the connection failed.
    Error,
    /// A write dropped: its queue was full.
    Dropped,
    /// Not written: the store already held the key.
    Present,
}

impl SharedResult {
    pub const ALL: [SharedResult; 9] = [
        SharedResult::Hit,
        SharedResult::Miss,
        SharedResult::Ok,
        SharedResult::Invalid,
        SharedResult::Down,
        SharedResult::Timeout,
        SharedResult::Error,
        SharedResult::Dropped,
        SharedResult::Present,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SharedResult::Hit => "hit",
            SharedResult::Miss => "miss",
            SharedResult::Ok => "ok",
            SharedResult::Invalid => "invalid",
            SharedResult::Down => "down",
            SharedResult::Timeout => "timeout",
            SharedResult::Error => "error",
            SharedResult::Dropped => "dropped",
            SharedResult::Present => "present",
        }
    }
}

#[derive(Default)]
pub(super) struct SharedCounters {
    configured: AtomicBool,
    up: AtomicBool,
    master_changes: AtomicU64,
    requests: [[AtomicU64; SharedResult::ALL.len()]; SharedOp::ALL.len()],
    claims: [AtomicU64; ClaimResult::ALL.len()],
    waits: [AtomicU64; Waited::ALL.len()],
    notices: [AtomicU64; NoticeDir::ALL.len()],
}

impl SharedCounters {
    pub(super) fn render(&self, w: &mut Writer<'_>) {
        if !self.configured.load(Ordering::Relaxed) {
            return;
        }
        w.header(
            "shared_store_up",
            "gauge",
            "1 when the shared store answers, 0 while it is down (hosts answer on their own).",
        );
        w.sample(
            "shared_store_up",
            &[],
            u64::from(self.up.load(Ordering::Relaxed)),
        );
        w.header(
            "shared_master_changes_total",
            "counter",
            "Times the master the sentinels name changed (failovers seen), with sentinels.",
        );
        w.sample(
            "shared_master_changes_total",
            &[],
            self.master_changes.load(Ordering::Relaxed),
        );
        w.header(
            "shared_requests_total",
            "counter",
            "Requests to the shared store, by operation and what became of them.",
        );
        for op in SharedOp::ALL {
            for r in SharedResult::ALL {
                let n = self.requests[op as usize][r as usize].load(Ordering::Relaxed);
                w.sample(
                    "shared_requests_total",
                    &[("op", op.as_str()), ("result", r.as_str())],
                    n,
                );
            }
        }
        w.header(
            "shared_claims_total",
            "counter",
            "Claims of a domain's discovery for the fleet, by what became of them.",
        );
        for r in ClaimResult::ALL {
            let n = self.claims[r as usize].load(Ordering::Relaxed);
            w.sample("shared_claims_total", &[("result", r.as_str())], n);
        }
        w.header(
            "shared_waits_total",
            "counter",
            "Waits for another host's discovery, by what ended them.",
        );
        for e in Waited::ALL {
            let n = self.waits[e as usize].load(Ordering::Relaxed);
            w.sample("shared_waits_total", &[("end", e.as_str())], n);
        }
        w.header(
            "shared_notices_total",
            "counter",
            "Notices that a discovery ended, sent and received.",
        );
        for d in NoticeDir::ALL {
            let n = self.notices[d as usize].load(Ordering::Relaxed);
            w.sample("shared_notices_total", &[("direction", d.as_str())], n);
        }
    }
}

impl Metrics {
    /// The shared store is configured: list its families.
    pub fn shared_configured(&self) {
        self.shared.configured.store(true, Ordering::Relaxed);
    }

    /// The shared store is up (`true`) or down.
    pub fn shared_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::Relaxed);
    }

    /// The master the sentinels name changed.
    pub fn shared_master_changed(&self) {
        self.shared.master_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Master changes seen so far.
    pub fn shared_master_changes(&self) -> u64 {
        self.shared.master_changes.load(Ordering::Relaxed)
    }

    /// One request to the shared store and what became of it.
    pub fn shared_request(&self, op: SharedOp, result: SharedResult) {
        self.shared.requests[op as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A claim of a domain's discovery and what became of it.
    pub fn shared_claim(&self, result: ClaimResult) {
        self.shared.claims[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A wait for another host's discovery ended.
    pub fn shared_wait(&self, end: Waited) {
        self.shared.waits[end as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A notice sent or received.
    pub fn shared_notice(&self, dir: NoticeDir) {
        self.shared.notices[dir as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Claims so far with this result.
    pub fn shared_claims(&self, result: ClaimResult) -> u64 {
        self.shared.claims[result as usize].load(Ordering::Relaxed)
    }

    /// Requests so far with this operation and result.
    pub fn shared_requests(&self, op: SharedOp, result: SharedResult) -> u64 {
        self.shared.requests[op as usize][result as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_once_configured() {
        let m = Metrics::new();
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("shared_store_up"));
        m.shared_configured();
        m.shared_up(true);
        m.shared_request(SharedOp::Get, SharedResult::Hit);
        m.shared_request(SharedOp::Set, SharedResult::Dropped);
        m.shared_claim(ClaimResult::Won);
        m.shared_wait(Waited::Notified);
        m.shared_notice(NoticeDir::Sent);
        let mut out = String::new();
        m.render(&mut out);
        for want in [
            "tls_policyd_shared_store_up 1",
            "tls_policyd_shared_requests_total{op=\"get\",result=\"hit\"} 1",
            "tls_policyd_shared_requests_total{op=\"set\",result=\"dropped\"} 1",
            "tls_policyd_shared_requests_total{op=\"get\",result=\"down\"} 0",
            "tls_policyd_shared_claims_total{result=\"won\"} 1",
            "tls_policyd_shared_waits_total{end=\"notified\"} 1",
            "tls_policyd_shared_notices_total{direction=\"sent\"} 1",
            "tls_policyd_shared_master_changes_total 0",
        ] {
            assert!(out.lines().any(|l| l == want), "{want}\n{out}");
        }
    }
}
