//! The daemon's handle on the cache file ([`Store`]): opened with a damaged
//! file moved aside, reads at start, writes queued to a writer thread that
//! applies them in one transaction per batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::{Db, Entry, Kind, Op, StoreError, WRITE_QUEUE_CAPACITY, unix};
use crate::cache::persist::{PersistError, PersistedStore};

/// Move a damaged file (and its `-wal` and `-shm` files, which belong to
/// it) to `PATH.corrupt-SECONDS`; returns the new path.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", unix(SystemTime::now())));
    let aside = PathBuf::from(name);
    let fail = |e: std::io::Error| StoreError::Open {
        path: path.to_path_buf(),
        problem: format!("damaged, and cannot be moved aside: {e}"),
    };
    std::fs::rename(path, &aside).map_err(fail)?;
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
    }
    Ok(aside)
}

/// The daemon's handle on the cache file: reads at start, writes queued
/// to a writer thread. Share it behind an `Arc`.
pub struct Store {
    path: PathBuf,
    tx: SyncSender<Op>,
    dropped: AtomicU64,
    failures: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Open (or create) the file and start the writer thread. A damaged
    /// file (garbage, cut short) is moved aside to `PATH.corrupt-SECONDS`
    /// with a warning and a new one created: the daemon starts and learns
    /// the policies again rather than failing to start.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = match Db::open_checked(path) {
            Err(StoreError::Damaged { problem, .. }) => {
                let aside = move_aside(path)?;
                tracing::warn!(
                    cache = %path.display(),
                    moved_to = %aside.display(),
                    problem,
                    "cache file damaged; moved aside, starting with an empty cache \
                     (published policies are learned again)"
                );
                Db::open(path)?
            }
            other => other?,
        };
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_CAPACITY);
        let failures = Arc::new(AtomicU64::new(0));
        let f = failures.clone();
        let thread = std::thread::Builder::new()
            .name("cache-store".into())
            .spawn(move || writer(db, rx, f))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                problem: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            tx,
            dropped: AtomicU64::new(0),
            failures,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry of one kind, read from the file now (after the changes
    /// queued so far are written). Rows that cannot be used are skipped and
    /// counted in the second value.
    pub fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), StoreError> {
        self.flush();
        Db::open_read_only(&self.path)?.all(Some(kind))
    }

    /// Queue an insert-or-replace. Never blocks.
    pub fn put(&self, entry: Entry) {
        self.send(Op::Put(Box::new(entry)));
    }

    /// Queue the removal of one entry. Never blocks.
    pub fn remove(&self, kind: Kind, domain: &str) {
        self.send(Op::Remove(kind, domain.to_string()));
    }

    /// Queue the removal of every entry expired at `now`. Never blocks.
    pub fn remove_expired(&self, now: SystemTime) {
        self.send(Op::RemoveExpired(now));
    }

    fn send(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(cache = %self.path.display(), dropped = n,
                        "cache writer cannot keep up; changes dropped (they are kept in memory)");
                }
            }
        }
    }

    /// Changes dropped because the writer fell behind or stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Batches the writer could not write (disk full, file damaged).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Wait until every change queued before this call is written (or has
    /// failed). Blocks: not for a lookup's path.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Op::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Write what is queued and stop the writer thread.
    pub fn close(&self) {
        let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let _ = self.tx.send(Op::Stop);
        let _ = t.join();
    }
}

/// The cache file below the caches.
impl PersistedStore for Store {
    fn load(&self, kind: Kind) -> Result<(Vec<Entry>, usize), PersistError> {
        Store::load(self, kind).map_err(|e| PersistError(e.to_string()))
    }

    fn save(&self, entry: Entry) {
        self.put(entry);
    }

    fn remove(&self, kind: Kind, domain: &str) {
        Store::remove(self, kind, domain);
    }

    fn remove_expired(&self, now: SystemTime) {
        Store::remove_expired(self, now);
    }

    fn flush(&self) {
        Store::flush(self);
    }

    fn close(&self) {
        Store::close(self);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Ops applied per transaction at most.
const BATCH: usize = 512;

fn writer(mut db: Db, rx: Receiver<Op>, failures: Arc<AtomicU64>) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let stop = batch.iter().any(|op| matches!(op, Op::Stop));
        match db.apply(&batch) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(cache = %db.path().display(), "cache file writable again");
            }
            Ok(()) => {}
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    tracing::error!(error = %e, "cannot write the cache file; what was learned stays in memory");
                }
            }
        }
        for op in batch.drain(..) {
            if let Op::Flush(ack) = op {
                let _ = ack.send(());
            }
        }
        if stop {
            break;
        }
    }
}
