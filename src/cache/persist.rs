//! Below the cache: where entries are kept across restarts.
//!
//! [`PersistedStore`] is what a source that keeps what it learned talks
//! to: rows of a [`Kind`], keyed by domain, with a JSON payload the kind's
//! source defines. The SQLite cache file (`crate::store::Store`)
//! implements it today; a store shared between hosts plugs in here.
//! [`MemoryStore`] keeps rows in memory (tests, benchmarks), [`ReadOnly`]
//! serves rows read once and writes nothing (`explain`).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A payload that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// Why a store cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PersistError(pub String);

/// Where cached entries are kept across restarts. Writes never block a
/// lookup: implementations queue them.
pub trait PersistedStore: Send + Sync {
    /// Every row of `kind` (valid or not), and how many rows were skipped
    /// as unusable.
    fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), PersistError>;
    /// Keep a row, replacing the one of the same kind and domain.
    fn save(&self, entry: Entry);
    /// Forget a row.
    fn remove(&self, kind: Kind, domain: &str);
    /// Forget every row expired at `now`.
    fn remove_expired(&self, now: SystemTime);
    /// Wait until what is queued is written.
    fn flush(&self) {}
    /// Write what is queued and stop (shutting down).
    fn close(&self) {}
}

/// What [`SharedEntries::fetch`] returns.
pub type SharedFetch<'a> = Pin<Box<dyn Future<Output = Option<Entry>> + Send + 'a>>;

/// What [`SharedEntries::claim`] returns.
pub type SharedClaim<'a> = Pin<Box<dyn Future<Output = Claim> + Send + 'a>>;
/// A wait for another host's discovery (see [`Claim::Busy`]): bounded by
/// the claim's lifetime, it tells what ended it.
pub type SharedWait = Pin<Box<dyn Future<Output = Waited> + Send + 'static>>;
/// What [`SharedEntries::settle`] returns.
pub type SharedSettle<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The answer to "may this host discover `domain` for the fleet?".
pub enum Claim {
    /// Yes: no other host is at it. Discover, then hand the result to
    /// [`SharedEntries::settle`] (a claim not settled lapses by itself).
    Won(ClaimToken),
    /// Another host is discovering it: wait, then read the store again.
    Busy(SharedWait),
    /// The store cannot coordinate now (down, slow, not connected):
    /// discover alone, as without a shared store.
    Unavailable,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Won(t) => f.debug_tuple("Won").field(t).finish(),
            Claim::Busy(_) => f.write_str("Busy"),
            Claim::Unavailable => f.write_str("Unavailable"),
        }
    }
}

/// A claim held: what its release must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    pub kind: Kind,
    pub domain: String,
    /// Random, this claim's own: only its holder releases it.
    pub token: String,
}

/// What ended a wait for another host's discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The host that discovered said so.
    Notified,
    /// The claim ended (released, or lapsed) without a notice seen.
    Released,
    /// Still claimed after its lifetime (a clock or a store astray).
    TimedOut,
    /// The store went down or did not answer in time.
    Down,
}

impl Waited {
    pub const ALL: [Waited; 4] = [
        Waited::Notified,
        Waited::Released,
        Waited::TimedOut,
        Waited::Down,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Waited::Notified => "notified",
            Waited::Released => "released",
            Waited::TimedOut => "timed_out",
            Waited::Down => "down",
        }
    }
}

/// What a claimed discovery learned, for [`SharedEntries::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub entry: Entry,
    /// A negative result ("no policy"): kept in a format that versions
    /// which do not know negatives refuse.
    pub negative: bool,
}

/// A store shared between hosts (`crate::shared::SharedStore`), asked on
/// a local cache miss before a discovery and told what a discovery
/// learned. It never makes a lookup wait longer than its own timeout, and
/// answers `None` at once while it is down.
///
/// One discovery per domain for the fleet: after a miss, a source
/// [`claim`](SharedEntries::claim)s the domain; the host that wins
/// discovers and [`settle`](SharedEntries::settle)s (the result written at
/// once, the others notified, the claim released); the others wait for
/// that, then read the store again, and discover themselves only when
/// nothing came of it.
pub trait SharedEntries: Send + Sync {
    /// A valid entry of `kind` for `domain`, if the store holds one.
    fn fetch<'a>(&'a self, kind: Kind, domain: &'a str) -> SharedFetch<'a>;
    /// Publish what this host learned (queued, never waited on).
    fn publish(&self, entry: &Entry);
    /// An entry whose payload the kind's source cannot use: logged and
    /// counted, then ignored.
    fn unusable(&self, kind: Kind, domain: &str, why: &str);
    /// Claim the discovery of `domain` for at most `hold` (a little more
    /// than the discovery's own time limit). Without a store able to
    /// coordinate: [`Claim::Unavailable`].
    fn claim<'a>(&'a self, _kind: Kind, _domain: &'a str, _hold: Duration) -> SharedClaim<'a> {
        Box::pin(async { Claim::Unavailable })
    }
    /// End a claim this host won: write what it learned (when anything),
    /// tell the other hosts, release the claim.
    fn settle<'a>(&'a self, _claim: ClaimToken, learned: Option<Learned>) -> SharedSettle<'a> {
        if let Some(l) = learned.filter(|l| !l.negative) {
            self.publish(&l.entry);
        }
        Box::pin(async {})
    }
}

/// What a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An MTA-STS policy (RFC 8461).
    MtaSts,
    /// A DANE result (RFC 7672).
    Dane,
    /// That a domain had a DANE policy, and when (shared between hosts
    /// only; a host keeps its own in its DANE results).
    DaneHad,
    /// What the STARTTLS prober found (shared between hosts only).
    Prober,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::MtaSts, Kind::Dane, Kind::DaneHad, Kind::Prober];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MtaSts => "mta-sts",
            Kind::Dane => "dane",
            Kind::DaneHad => "dane-had",
            Kind::Prober => "prober",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a cache kind (mta-sts, dane, dane-had or prober)"))
    }
}

/// One cached item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Lower case, A-labels, no trailing dot.
    pub domain: String,
    /// When the source learned it.
    pub fetched_at: SystemTime,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// JSON text whose shape the kind's source defines.
    pub payload: String,
}

impl Entry {
    /// An entry whose payload is `value` as JSON.
    pub fn new<T: Serialize>(
        kind: Kind,
        domain: &str,
        fetched_at: SystemTime,
        expires_at: SystemTime,
        value: &T,
    ) -> Result<Entry, PayloadError> {
        let payload = serde_json::to_string(value).map_err(|e| PayloadError(e.to_string()))?;
        Ok(Entry {
            kind,
            domain: domain.to_string(),
            fetched_at,
            expires_at,
            payload,
        })
    }

    /// The payload, decoded.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        serde_json::from_str(&self.payload).map_err(|e| PayloadError(e.to_string()))
    }

    /// Whether the entry is still valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }
}

/// A [`PersistedStore`] in memory: survives the caches it is given to,
/// not the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<BTreeMap<(Kind, String), Entry>>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(Kind, String), Entry>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows held, of every kind.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row of `kind` for `domain`.
    pub fn get(&self, kind: Kind, domain: &str) -> Option<Entry> {
        self.lock().get(&(kind, domain.to_string())).cloned()
    }
}

impl PersistedStore for MemoryStore {
    fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), PersistError> {
        let rows = self.lock();
        Ok((
            rows.values().filter(|e| e.kind == kind).cloned().collect(),
            0,
        ))
    }

    fn save(&self, entry: Entry) {
        self.lock()
            .insert((entry.kind, entry.domain.clone()), entry);
    }

    fn remove(&self, kind: Kind, domain: &str) {
        self.lock().remove(&(kind, domain.to_string()));
    }

    fn remove_expired(&self, now: SystemTime) {
        self.lock().retain(|_, e| e.is_valid_at(now));
    }
}

/// Rows read once, for commands that must not write (`explain`): saving
/// and removing do nothing.
#[derive(Debug, Default)]
pub struct ReadOnly {
    rows: Vec<Entry>,
}

impl ReadOnly {
    pub fn new(rows: Vec<Entry>) -> ReadOnly {
        ReadOnly { rows }
    }
}

impl PersistedStore for ReadOnly {
    fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), PersistError> {
        Ok((
            self.rows
                .iter()
                .filter(|e| e.kind == kind)
                .cloned()
                .collect(),
            0,
        ))
    }

    fn save(&self, _entry: Entry) {}

    fn remove(&self, _kind: Kind, _domain: &str) {}

    fn remove_expired(&self, _now: SystemTime) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn row(kind: Kind, domain: &str, until: u64) -> Entry {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        Entry::new(kind, domain, t(1), t(until), &"x").unwrap()
    }

    #[test]
    fn memory_store_keeps_rows_by_kind_and_domain() {
        let s = MemoryStore::default();
        s.save(row(Kind::Dane, "a.example", 10));
        s.save(row(Kind::MtaSts, "a.example", 20));
        s.save(row(Kind::Dane, "a.example", 30));
        assert_eq!(s.len(), 2);
        assert_eq!(s.load(Kind::Dane).unwrap().0.len(), 1);
        assert_eq!(
            s.get(Kind::Dane, "a.example").unwrap().expires_at,
            UNIX_EPOCH + Duration::from_secs(30)
        );
        s.remove_expired(UNIX_EPOCH + Duration::from_secs(25));
        assert!(s.get(Kind::MtaSts, "a.example").is_none());
        s.remove(Kind::Dane, "a.example");
        assert!(s.is_empty());
        let ro = ReadOnly::new(vec![row(Kind::Dane, "b.example", 5)]);
        ro.save(row(Kind::Dane, "c.example", 5));
        assert_eq!(ro.load(Kind::Dane).unwrap().0.len(), 1);
        assert_eq!(ro.load(Kind::MtaSts).unwrap().0.len(), 0);
    }
}
