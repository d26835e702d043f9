//! DANE results in the persisted store: rows of kind `dane`, the payload
//! a [`DaneRecord`] as JSON.

use std::time::SystemTime;

use super::record::DaneRecord;
use crate::cache::persist::{self, Entry, Kind, PersistError, PersistedStore};

/// Every usable DANE row of `store`; rows that cannot be used are counted
/// and logged.
pub fn load(store: &dyn PersistedStore) -> Vec<(String, DaneRecord)> {
    match store.load(Kind::Dane) {
        Ok((entries, skipped)) => decode_rows(entries, skipped),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read stored DANE results; starting without them");
            Vec::new()
        }
    }
}

/// Queue a domain's result. `keep_until` is how long the row is worth
/// keeping (the result's expiry, or longer while the domain's DANE history
/// is remembered).
pub fn save(store: &dyn PersistedStore, domain: &str, record: &DaneRecord, keep_until: SystemTime) {
    match Entry::new(Kind::Dane, domain, record.checked_at, keep_until, record) {
        Ok(e) => store.save(e),
        Err(e) => tracing::warn!(domain, error = %e, "cannot store a DANE result"),
    }
}

/// Decode stored rows; rows that cannot be used are counted and logged.
fn decode_rows(entries: Vec<Entry>, skipped: usize) -> Vec<(String, DaneRecord)> {
    let mut out = Vec::with_capacity(entries.len());
    let mut bad = skipped;
    for e in entries {
        match e.decode::<DaneRecord>() {
            Ok(r) if r.assessment.domain == e.domain => out.push((e.domain, r)),
            _ => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            "stored DANE results that cannot be used were skipped"
        );
    }
    out
}

/// A persisted store in memory holding DANE results: survives the sources
/// it is given to, not the process.
#[derive(Debug, Default)]
pub struct DaneMemoryStore {
    rows: persist::MemoryStore,
}

impl DaneMemoryStore {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, domain: &str) -> Option<DaneRecord> {
        self.rows.get(Kind::Dane, domain)?.decode().ok()
    }

    /// Keep a domain's result.
    pub fn save(&self, domain: &str, record: &DaneRecord, keep_until: SystemTime) {
        save(&self.rows, domain, record, keep_until);
    }

    /// Every result held.
    pub fn load_all(&self) -> Vec<(String, DaneRecord)> {
        load(&self.rows)
    }
}

impl PersistedStore for DaneMemoryStore {
    fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), PersistError> {
        self.rows.load(kind)
    }

    fn save(&self, entry: Entry) {
        self.rows.save(entry);
    }

    fn remove(&self, kind: Kind, domain: &str) {
        self.rows.remove(kind, domain);
    }

    fn remove_expired(&self, _now: SystemTime) {}
}
