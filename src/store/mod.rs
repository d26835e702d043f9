//! The persisted cache: what published-policy sources learned (MTA-STS
//! policies, DANE results), kept in one SQLite file so that a restart does
//! not forget them. Forgetting a policy on restart would open a downgrade
//! window: until the policy is fetched again, an attacker who blocks the
//! fetch decides that the domain has none.
//!
//! The file (default `/var/lib/tls-policyd/cache.sqlite`) holds one table:
//!
//! ```sql
//! CREATE TABLE cache (
//!     kind       TEXT    NOT NULL,  -- "mta-sts", "dane"
//!     domain     TEXT    NOT NULL,  -- lower case, A-labels, no trailing dot
//!     fetched_at INTEGER NOT NULL,  -- Unix seconds
//!     expires_at INTEGER NOT NULL,  -- Unix seconds
//!     payload    TEXT    NOT NULL,  -- JSON, owned by the kind's source
//!     PRIMARY KEY (kind, domain)
//! ) WITHOUT ROWID;
//! ```
//!
//! `PRAGMA user_version` is the schema version ([`SCHEMA_VERSION`]); the
//! journal is in WAL mode, so the command line can read (and `cache purge`
//! delete) while the daemon writes.
//!
//! Reads happen at start ([`Store::load`]); lookups are then answered from
//! memory by the sources. Writes never run on a lookup's path: [`Store::put`]
//! and [`Store::remove`] queue the change for a writer thread that applies
//! queued changes in one transaction per batch.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The schema this version reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 1;
/// Where the cache lives unless configured otherwise.
pub use crate::util::paths::DEFAULT_CACHE_FILE;
/// Changes that may wait for the writer before new ones are dropped.
pub const WRITE_QUEUE_CAPACITY: usize = 1 << 14;
/// Largest payload stored or loaded; larger rows are refused.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024;
/// How long a statement waits for another process's lock (the command
/// line purging while the daemon writes).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::cache::persist::{Entry, Kind, PayloadError};

/// Why the cache file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The file cannot be opened or created.
    #[error("cache file {}: cannot open: {problem}", path.display())]
    Open { path: PathBuf, problem: String },
    /// The file was written by a newer tls-policyd.
    #[error(
        "cache file {}: schema version {found} is newer than this tls-policyd reads \
         ({}); use the newer version or move the file away",
        path.display(),
        SCHEMA_VERSION
    )]
    Schema { path: PathBuf, found: i32 },
    /// A statement failed.
    #[error(
        "cache file {}: {problem} (if the file is damaged, move it away: \
         the cache is rebuilt, but policies learned so far are forgotten)",
        path.display()
    )]
    Sql { path: PathBuf, problem: String },
    /// The file is not an SQLite database, or a damaged one (garbage,
    /// cut short). The daemon moves it aside and starts afresh.
    #[error(
        "cache file {}: damaged: {problem} (move it away: the cache is rebuilt, \
         but policies learned so far are forgotten)",
        path.display()
    )]
    Damaged { path: PathBuf, problem: String },
    /// A payload could not be encoded or decoded.
    #[error("cache payload: {0}")]
    Payload(String),
}

/// Whether an SQLite error means the file itself is damaged.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

impl From<PayloadError> for StoreError {
    fn from(e: PayloadError) -> StoreError {
        StoreError::Payload(e.0)
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn from_unix(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// A synchronous connection to the cache file. The daemon's writer thread
/// and the command line use it; lookups never do.
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Open the file for reading and writing, creating it (and the table)
    /// if it does not exist. The directory must exist.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        Db::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            true,
        )
    }

    /// Open an existing file without changing it.
    pub fn open_read_only(path: &Path) -> Result<Db, StoreError> {
        if let Err(e) = std::fs::metadata(path) {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                problem: e.to_string(),
            });
        }
        Db::open_with(path, OpenFlags::SQLITE_OPEN_READ_ONLY, false)
    }

    fn open_with(path: &Path, flags: OpenFlags, writable: bool) -> Result<Db, StoreError> {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| match is_damage(&e) {
                true => StoreError::Damaged {
                    path: path.to_path_buf(),
                    problem: e.to_string(),
                },
                false => StoreError::Open {
                    path: path.to_path_buf(),
                    problem: e.to_string(),
                },
            })?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.setup(writable)?;
        Ok(db)
    }

    fn sql(&self, e: rusqlite::Error) -> StoreError {
        let (path, problem) = (self.path.clone(), e.to_string());
        if is_damage(&e) {
            StoreError::Damaged { path, problem }
        } else {
            StoreError::Sql { path, problem }
        }
    }

    /// Open for writing as [`Db::open`] does, and check the whole file:
    /// SQLite's `quick_check` and every row read once.
    pub fn open_checked(path: &Path) -> Result<Db, StoreError> {
        let db = Db::open(path)?;
        let verdict: String = db
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| db.sql(e))?;
        if verdict != "ok" {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                problem: printable(&verdict),
            });
        }
        db.all(None)?;
        Ok(db)
    }

    fn setup(&self, write: bool) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql(e))?;
        let version: i32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: self.path.clone(),
                found: version,
            });
        }
        if !write {
            return Ok(());
        }
        // WAL: readers (the command line) never block the writer.
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute_batch(
                "PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS cache (
                     kind       TEXT    NOT NULL,
                     domain     TEXT    NOT NULL,
                     fetched_at INTEGER NOT NULL,
                     expires_at INTEGER NOT NULL,
                     payload    TEXT    NOT NULL,
                     PRIMARY KEY (kind, domain)
                 ) WITHOUT ROWID;",
            )
            .map_err(|e| self.sql(e))?;
        if version != SCHEMA_VERSION {
            self.conn
                .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry of `kind` (every kind with `None`), by kind and domain.
    /// Rows of kinds this version does not know, and rows over
    /// [`MAX_PAYLOAD_LEN`], are skipped and counted in the second value.
    pub fn all(&self, kind: Option<Kind>) -> Result<(Vec<Entry>, usize), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, domain, fetched_at, expires_at, payload FROM cache
                 WHERE ?1 IS NULL OR kind = ?1 ORDER BY kind, domain",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![kind.map(Kind::as_str)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        let mut skipped = 0;
        for row in rows {
            let (k, domain, fetched, expires, payload) = row.map_err(|e| self.sql(e))?;
            match (k.parse::<Kind>(), payload.len() <= MAX_PAYLOAD_LEN) {
                (Ok(kind), true) => out.push(Entry {
                    kind,
                    domain,
                    fetched_at: from_unix(fetched),
                    expires_at: from_unix(expires),
                    payload,
                }),
                _ => skipped += 1,
            }
        }
        Ok((out, skipped))
    }

    /// One entry.
    pub fn get(&self, kind: Kind, domain: &str) -> Result<Option<Entry>, StoreError> {
        self.conn
            .query_row(
                "SELECT fetched_at, expires_at, payload FROM cache WHERE kind = ?1 AND domain = ?2",
                params![kind.as_str(), domain],
                |r| {
                    Ok(Entry {
                        kind,
                        domain: domain.to_string(),
                        fetched_at: from_unix(r.get(0)?),
                        expires_at: from_unix(r.get(1)?),
                        payload: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Insert or replace one entry.
    pub fn put(&self, e: &Entry) -> Result<(), StoreError> {
        if e.payload.len() > MAX_PAYLOAD_LEN {
            return Err(StoreError::Payload(format!(
                "{} bytes for {} {} is over the {MAX_PAYLOAD_LEN}-byte limit",
                e.payload.len(),
                e.kind,
                e.domain
            )));
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO cache (kind, domain, fetched_at, expires_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    e.kind.as_str(),
                    e.domain,
                    unix(e.fetched_at),
                    unix(e.expires_at),
                    e.payload
                ])
            })
            .map(|_| ())
            .map_err(|err| self.sql(err))
    }

    /// Insert or replace many entries in one transaction.
    pub fn put_all(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StoreError> {
        let ops: Vec<Op> = entries.into_iter().map(|e| Op::Put(Box::new(e))).collect();
        self.apply(&ops)
    }

    /// Remove the entries of `domain`: of one kind, or of every kind with
    /// `None`. Returns how many were removed.
    pub fn remove(&self, kind: Option<Kind>, domain: &str) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM cache WHERE domain = ?2 AND (?1 IS NULL OR kind = ?1)",
                params![kind.map(Kind::as_str), domain],
            )
            .map_err(|e| self.sql(e))
    }

    /// Remove every entry that expired before `now`.
    pub fn remove_expired(&self, now: SystemTime) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM cache WHERE expires_at <= ?1",
                params![unix(now)],
            )
            .map_err(|e| self.sql(e))
    }

    /// Apply changes in one transaction.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |e: rusqlite::Error| StoreError::Sql {
            path: path.clone(),
            problem: e.to_string(),
        };
        self.conn.execute_batch("BEGIN").map_err(sql)?;
        let mut result = Ok(());
        for op in ops {
            let r = match op {
                Op::Put(e) => self.put(e),
                Op::Remove(kind, domain) => self.remove(Some(*kind), domain).map(|_| ()),
                Op::RemoveExpired(now) => self.remove_expired(*now).map(|_| ()),
                Op::Flush(_) | Op::Stop => Ok(()),
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(sql)?;
        result
    }
}

/// `problem` as one printable line of at most 200 bytes.
fn printable(problem: &str) -> String {
    crate::util::text::printable_ascii(problem, 200)
}

enum Op {
    Put(Box<Entry>),
    Remove(Kind, String),
    RemoveExpired(SystemTime),
    Flush(mpsc::Sender<()>),
    Stop,
}

mod handle;
pub use handle::Store;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct P {
        id: String,
        n: u32,
    }

    fn entry(kind: Kind, domain: &str, expires: u64) -> Entry {
        Entry::new(
            kind,
            domain,
            at(1_000),
            at(expires),
            &P {
                id: domain.into(),
                n: 7,
            },
        )
        .unwrap()
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        assert!("tlsa".parse::<Kind>().is_err());
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let store = Store::open(&path).unwrap();
        store.put(entry(Kind::MtaSts, "a.example", 5_000));
        store.put(entry(Kind::MtaSts, "b.example", 6_000));
        store.put(entry(Kind::Dane, "a.example", 7_000));
        store.remove(Kind::MtaSts, "b.example");
        store.close();

        let store = Store::open(&path).unwrap();
        let (sts, skipped) = store.load(Kind::MtaSts).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(sts.len(), 1);
        assert_eq!(sts[0].domain, "a.example");
        assert_eq!(sts[0].fetched_at, at(1_000));
        assert_eq!(sts[0].expires_at, at(5_000));
        assert_eq!(
            sts[0].decode::<P>().unwrap(),
            P {
                id: "a.example".into(),
                n: 7
            }
        );
        let (dane, _) = store.load(Kind::Dane).unwrap();
        assert_eq!(dane.len(), 1);
        assert_eq!(dane[0].expires_at, at(7_000));
        // Replace keeps one row per (kind, domain).
        store.put(entry(Kind::MtaSts, "a.example", 9_000));
        let (sts, _) = store.load(Kind::MtaSts).unwrap();
        assert_eq!(sts.len(), 1);
        assert_eq!(sts[0].expires_at, at(9_000));
    }

    #[test]
    fn expiry_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let store = Store::open(&path).unwrap();
        store.put(entry(Kind::MtaSts, "old.example", 2_000));
        store.put(entry(Kind::MtaSts, "new.example", 4_000));
        store.put(entry(Kind::Dane, "new.example", 4_000));
        store.remove_expired(at(2_000));
        store.flush();
        let db = Db::open(&path).unwrap();
        let (all, _) = db.all(None).unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|e| format!("{} {}", e.kind, e.domain))
            .collect();
        assert_eq!(names, ["dane new.example", "mta-sts new.example"]);
        assert!(all[0].is_valid_at(at(3_999)));
        assert!(!all[0].is_valid_at(at(4_000)));
        // The command line's purge, while the daemon's store is open.
        assert_eq!(db.remove(None, "new.example").unwrap(), 2);
        assert_eq!(db.remove(None, "new.example").unwrap(), 0);
        assert!(db.get(Kind::MtaSts, "new.example").unwrap().is_none());
    }

    #[test]
    fn unknown_kinds_and_oversized_rows_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let db = Db::open(&path).unwrap();
        db.put(&entry(Kind::MtaSts, "ok.example", 5_000)).unwrap();
        db.conn
            .execute(
                "INSERT INTO cache VALUES ('future-kind', 'x.example', 1, 2, '{}')",
                [],
            )
            .unwrap();
        let mut big = entry(Kind::MtaSts, "big.example", 5_000);
        big.payload = "x".repeat(MAX_PAYLOAD_LEN + 1);
        assert!(matches!(db.put(&big), Err(StoreError::Payload(_))));
        big.payload = "x".repeat(MAX_PAYLOAD_LEN);
        db.put(&big).unwrap();
        let (all, skipped) = db.all(None).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(all.len(), 2);
        db.conn
            .execute(
                "UPDATE cache SET payload = payload || 'y' WHERE domain = 'big.example'",
                [],
            )
            .unwrap();
        let (all, skipped) = db.all(None).unwrap();
        assert_eq!((all.len(), skipped), (1, 2));
    }

    #[test]
    fn newer_schema_is_refused_and_garbage_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        {
            let db = Db::open(&path).unwrap();
            db.conn.execute_batch("PRAGMA user_version = 99").unwrap();
        }
        let e = Db::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::Schema { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("schema version 99"));

        let junk = dir.path().join("junk.sqlite");
        std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
        let e = Db::open(&junk).err().unwrap();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("junk.sqlite"), "{e}");
        assert!(e.contains("move it away"), "{e}");
        // The daemon's store moves it aside and starts afresh.
        let store = Store::open(&junk).unwrap();
        assert_eq!(store.load(Kind::MtaSts).unwrap(), (Vec::new(), 0));
        store.close();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("junk.sqlite.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap(),
            vec![b'x'; 4096]
        );
        // A newer schema is not damage: it is refused, not moved.
        assert!(matches!(
            Store::open(&path).err(),
            Some(StoreError::Schema { .. })
        ));

        let missing = dir.path().join("no-such-dir/cache.sqlite");
        let e = Store::open(&missing).err().unwrap().to_string();
        assert!(e.contains("cannot open"), "{e}");
        let e = Db::open_read_only(&dir.path().join("absent.sqlite"))
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Open { .. }));
    }

    #[test]
    fn write_failure_keeps_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let store = Store::open(&path).unwrap();
        let mut big = entry(Kind::MtaSts, "big.example", 5_000);
        big.payload = "x".repeat(MAX_PAYLOAD_LEN + 1);
        store.put(big);
        store.flush();
        assert_eq!(store.failures(), 1);
        store.put(entry(Kind::MtaSts, "ok.example", 5_000));
        store.flush();
        assert_eq!(store.failures(), 1);
        assert_eq!(store.load(Kind::MtaSts).unwrap().0.len(), 1);
    }
}
