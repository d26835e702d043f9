//! The writer thread: queues records from the front doors, serialises
//! them as JSON lines, writes them in batches and flushes; reopens the
//! file for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::DecisionRecord;

/// Records that may wait for the writer before new ones are dropped.
pub const LOG_QUEUE_CAPACITY: usize = 1 << 16;
/// The writer pauses this long after each batch so records arrive in
/// batches instead of waking it once per lookup (a front door queueing a
/// record while the writer sleeps wakes nobody). A record reaches the file
/// at most this late; stopping the daemon writes what is queued.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Where decision records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output; anything else a file path.
    pub fn from_setting(s: &std::path::Path) -> Target {
        if s.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(s.to_path_buf())
        }
    }

    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(p) => Box::new(open_append(p)?),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("standard output"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

fn open_append(p: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// Sees every record the writer writes, after it is written, on the
/// writer's thread (off the front doors' path): the outcome follower's
/// index of decisions.
pub trait RecordTap: Send + Sync {
    fn note(&self, record: &DecisionRecord);
}

enum Msg {
    /// Boxed: the queue pre-allocates every slot, so slots stay small.
    Record(Box<DecisionRecord>),
    /// Show every record written from now on to this tap.
    Tap(Arc<dyn RecordTap>),
    /// Reopen (logrotate) or switch to another target.
    Reopen(Target),
    /// Write out everything queued, then answer.
    Flush(mpsc::Sender<()>),
    /// Write out everything queued and end the thread.
    Stop,
}

/// Handle to the decision log. Cheap to share behind an `Arc`.
pub struct DecisionLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Open the target (so a bad path fails at start-up) and start the
    /// writer thread.
    pub fn start(target: Target) -> io::Result<DecisionLog> {
        let out = target.open()?;
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer(rx, target, out, d))?;
        Ok(DecisionLog {
            tx,
            dropped,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a record. Never blocks.
    pub fn log(&self, record: DecisionRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queue a record, waiting for room when the queue is full: for
    /// records that must not be lost (delivery outcomes; the follower
    /// reads on when they are queued). `false` when the writer has
    /// stopped (the record is counted as dropped).
    pub fn log_waiting(&self, record: DecisionRecord) -> bool {
        if self.tx.send(Msg::Record(Box::new(record))).is_ok() {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Show every record written from now on to `tap`.
    pub fn set_tap(&self, tap: Arc<dyn RecordTap>) {
        let _ = self.tx.send(Msg::Tap(tap));
    }

    /// Records dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reopen the file (after logrotate moved it) or switch target.
    pub fn reopen(&self, target: Target) {
        let _ = self.tx.send(Msg::Reopen(target));
    }

    /// Wait until every record queued before this call is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Write out what is queued and stop the writer thread. Records logged
    /// after this are counted as dropped.
    pub fn close(&self) {
        let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let _ = self.tx.send(Msg::Stop);
        let _ = t.join();
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(
    rx: Receiver<Msg>,
    mut target: Target,
    out: Box<dyn Write + Send>,
    dropped: Arc<AtomicU64>,
) {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut failing = false;
    let mut reported_drops = 0u64;
    let mut acks = Vec::new();
    let mut stop = false;
    let mut tap: Option<Arc<dyn RecordTap>> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    let res = serde_json::to_writer(&mut out, &r)
                        .map_err(io::Error::from)
                        .and_then(|()| out.write_all(b"\n"));
                    note_write(&mut failing, &target, res);
                    if let Some(t) = &tap {
                        t.note(&r);
                    }
                }
                Msg::Tap(t) => tap = Some(t),
                Msg::Reopen(new) => {
                    note_write(&mut failing, &target, out.flush());
                    match new.open() {
                        Ok(w) => {
                            out = BufWriter::with_capacity(256 * 1024, w);
                            if new != target {
                                tracing::info!(log = %new, "decision log moved");
                            }
                            target = new;
                        }
                        Err(e) => tracing::warn!(log = %new, error = %e,
                            "cannot reopen decision log; still writing to the old file"),
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
                Msg::Stop => stop = true,
            }
            next = if stop { None } else { rx.try_recv().ok() };
        }
        note_write(&mut failing, &target, out.flush());
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        let d = dropped.load(Ordering::Relaxed);
        if d != reported_drops {
            tracing::warn!(
                dropped = d - reported_drops,
                total = d,
                "decision log could not keep up; records dropped"
            );
            reported_drops = d;
        }
        if stop {
            break;
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// Log a write failure once when it starts and once when it ends.
fn note_write(failing: &mut bool, target: &Target, res: io::Result<()>) {
    match res {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!(log = %target, error = %e, "cannot write decision log");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(log = %target, "decision log writable again");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::tests::{decision, lookup};

    #[test]
    fn writer_appends_flushes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::start(Target::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.log(lookup(&format!("d{i}.example"), decision()));
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        // logrotate: move the file away, reopen, keep writing.
        let rotated = dir.path().join("decisions.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen(Target::File(path.clone()));
        log.log(lookup("after.example", decision()));
        log.close();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains("after.example"));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1000
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn unopenable_target_fails_at_start() {
        let e = DecisionLog::start(Target::File("/nonexistent-dir/x.jsonl".into()));
        assert!(e.is_err());
    }
}
