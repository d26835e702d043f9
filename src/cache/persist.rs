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
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

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
pub type SharedFetch<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Entry>> + Send + 'a>>;

/// A store shared between hosts (`crate::shared::SharedStore`), asked on
/// a local cache miss before a discovery and told what a discovery
/// learned. It never makes a lookup wait longer than its own timeout, and
/// answers `None` at once while it is down.
pub trait SharedEntries: Send + Sync {
    /// A valid entry of `kind` for `domain`, if the store holds one.
    fn fetch<'a>(&'a self, kind: Kind, domain: &'a str) -> SharedFetch<'a>;
    /// Publish what this host learned (queued, never waited on).
    fn publish(&self, entry: &Entry);
    /// An entry whose payload the kind's source cannot use: logged and
    /// counted, then ignored.
    fn unusable(&self, kind: Kind, domain: &str, why: &str);
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
