//! The writer thread: queues records from the front doors, serialises
//! them as JSON lines, writes them in batches and flushes; reopens the
//! file for logrotate.
//!
//! Socketmap lookups, the most frequent records by far, take a shorter
//! way when nothing taps the records ([`DecisionLog::log_lookup`]): the
//! front door writes the JSON line itself into a shared buffer the writer
//! takes each round, so no record is built, queued and freed on another
//! thread. The buffer is bounded like the queue; lines that do not fit
//! are dropped and counted.
//!
//! A batch that cannot be written (disk full, file unwritable) is taken
//! back out of the file whole (the file is cut back to its length before
//! the batch), so every line in it is a whole record; its records are
//! counted as dropped, and the next batch tries again. The front doors
//! never wait for the disk: lookups are answered at full speed meanwhile.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::{DecisionRecord, LookupLine};

/// Records that may wait for the writer before new ones are dropped.
pub const LOG_QUEUE_CAPACITY: usize = 1 << 16;
/// The writer pauses this long after each batch so records arrive in
/// batches instead of waking it once per lookup (a front door queueing a
/// record while the writer sleeps wakes nobody). A record reaches the file
/// at most this late; stopping the daemon writes what is queued.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Serialised records are written out once this many bytes are pending.
const BATCH_BYTES: usize = 256 * 1024;
/// Bytes of lookup lines that may wait for the writer before new ones are
/// dropped (about as many lines as [`LOG_QUEUE_CAPACITY`] records).
const PENDING_LINES_BYTES: usize = 16 << 20;
/// At most one line this often about dropped records (with their count).
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(60);

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

    fn open(&self) -> io::Result<Out> {
        Ok(match self {
            Target::Stdout => Out::Stdout(io::stdout()),
            Target::File(p) => Out::File(open_append(p)?),
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

/// Where the writer's lines go.
enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl Out {
    /// Append whole lines. On failure nothing of `bytes` stays in a file:
    /// what part of it went in is cut off again.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Out::Stdout(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Out::File(f) => {
                let before = f.metadata()?.len();
                f.write_all(bytes).inspect_err(|_| {
                    if let Err(e) = f.set_len(before) {
                        tracing::error!(error = %e,
                            "cannot cut a partly written batch off the decision log");
                    }
                })
            }
        }
    }
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
    /// Lookup lines are waiting in the shared buffer.
    Lines,
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
    /// Lookup lines written by the front doors, for the writer to take.
    lines: Arc<Mutex<Lines>>,
    /// A tap is set: lookups go through the queue as records.
    tapped: AtomicBool,
}

/// JSON lines waiting for the writer, and how many.
#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    records: u64,
    /// The writer has stopped: nothing more is taken.
    closed: bool,
}

impl DecisionLog {
    /// Open the target (so a bad path fails at start-up) and start the
    /// writer thread.
    pub fn start(target: Target) -> io::Result<DecisionLog> {
        let out = target.open()?;
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let lines = Arc::new(Mutex::new(Lines::default()));
        let shared = Shared {
            dropped: dropped.clone(),
            lines: lines.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer(rx, target, out, shared))?;
        Ok(DecisionLog {
            tx,
            dropped,
            thread: Mutex::new(Some(thread)),
            lines,
            tapped: AtomicBool::new(false),
        })
    }

    /// Log a socketmap lookup made now. Never blocks. Without a tap the
    /// line is written here, into the buffer the writer takes; with one,
    /// the record goes through the queue like any other.
    pub fn log_lookup(&self, lookup: &LookupLine<'_>) {
        let ts = SystemTime::now();
        if self.tapped.load(Ordering::Relaxed) {
            self.log(lookup.record(ts));
            return;
        }
        let mut lines = lock(&self.lines);
        if lines.closed || lines.bytes.len() >= PENDING_LINES_BYTES {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = lines.records == 0;
        match lookup.write_json(ts, &mut lines.bytes) {
            Ok(()) => {
                lines.bytes.push(b'\n');
                lines.records += 1;
            }
            Err(e) => {
                drop(lines);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot serialise a decision record; dropped");
                return;
            }
        }
        drop(lines);
        // The writer may be waiting for the queue: tell it once per
        // batch. A full queue means it is busy and takes the lines anyway.
        if first {
            let _ = self.tx.try_send(Msg::Lines);
        }
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
        self.tapped.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Tap(tap));
    }

    /// Records dropped so far: the writer fell behind, or could not write
    /// them.
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the writer thread shares with the handle.
struct Shared {
    dropped: Arc<AtomicU64>,
    lines: Arc<Mutex<Lines>>,
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The serialised records waiting to be written.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: u64,
}

/// The writer thread's state.
struct Writer {
    out: Out,
    target: Target,
    batch: Batch,
    dropped: Arc<AtomicU64>,
    /// Lookup lines the front doors wrote, and the buffer swapped in for
    /// them.
    lines: Arc<Mutex<Lines>>,
    spare: Vec<u8>,
    /// Whether the last write failed (the error was logged).
    failing: bool,
    /// Dropped records already reported, and when last.
    reported: u64,
    reported_at: Option<Instant>,
}

impl Writer {
    fn push(&mut self, r: &DecisionRecord) {
        let at = self.batch.bytes.len();
        match r.write_json(&mut self.batch.bytes) {
            Ok(()) => {
                self.batch.bytes.push(b'\n');
                self.batch.records += 1;
            }
            Err(e) => {
                self.batch.bytes.truncate(at);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot serialise a decision record; dropped");
            }
        }
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.write_out();
        }
    }

    /// Add the lookup lines waiting in the shared buffer to the batch;
    /// with `close`, no more are taken after these.
    fn take_lines(&mut self, close: bool) {
        let records = {
            let mut lines = lock(&self.lines);
            lines.closed |= close;
            if lines.records == 0 {
                return;
            }
            std::mem::swap(&mut lines.bytes, &mut self.spare);
            std::mem::take(&mut lines.records)
        };
        self.batch.bytes.extend_from_slice(&self.spare);
        self.batch.records += records;
        self.spare.clear();
        // A backlog once (a stalled disk) does not keep its memory.
        if self.spare.capacity() > BATCH_BYTES * 4 {
            self.spare = Vec::new();
        }
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.write_out();
        }
    }

    /// Write the batch; a batch that fails is dropped whole and counted.
    fn write_out(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if batch.records == 0 {
            self.batch = batch;
            return;
        }
        match self.out.append(&batch.bytes) {
            Ok(()) if self.failing => {
                self.failing = false;
                let dropped = self.lost();
                tracing::info!(log = %self.target, dropped,
                    "decision log writable again");
            }
            Ok(()) => {}
            Err(e) => {
                self.dropped.fetch_add(batch.records, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    // Reported here: the next report is a minute away.
                    self.reported = self.dropped.load(Ordering::Relaxed);
                    self.reported_at = Some(Instant::now());
                    tracing::error!(log = %self.target, error = %e,
                        "cannot write decision log; records are dropped (and counted) \
                         until it is writable again");
                }
            }
        }
        let mut bytes = batch.bytes;
        bytes.clear();
        self.batch.bytes = bytes;
    }

    /// Records dropped so far, reported now.
    fn lost(&mut self) -> u64 {
        let d = self.dropped.load(Ordering::Relaxed);
        self.reported = d;
        self.reported_at = Some(Instant::now());
        d
    }

    /// A line about records dropped since the last one, at most one a
    /// [`DROP_REPORT_INTERVAL`] unless `now` (when stopping).
    fn report_drops(&mut self, now: bool) {
        let d = self.dropped.load(Ordering::Relaxed);
        if d == self.reported
            || !now
                && self
                    .reported_at
                    .is_some_and(|t| t.elapsed() < DROP_REPORT_INTERVAL)
        {
            return;
        }
        let since = d - self.reported;
        self.lost();
        if self.failing {
            tracing::warn!(log = %self.target, dropped = since, total = d,
                "decision log still unwritable; records dropped");
        } else {
            tracing::warn!(
                dropped = since,
                total = d,
                "decision log could not keep up; records dropped"
            );
        }
    }
}

fn writer(rx: Receiver<Msg>, target: Target, out: Out, shared: Shared) {
    let mut w = Writer {
        out,
        target,
        batch: Batch {
            bytes: Vec::with_capacity(BATCH_BYTES + 4096),
            records: 0,
        },
        dropped: shared.dropped,
        lines: shared.lines,
        spare: Vec::new(),
        failing: false,
        reported: 0,
        reported_at: None,
    };
    let mut acks = Vec::new();
    let mut stop = false;
    let mut tap: Option<Arc<dyn RecordTap>> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    w.push(&r);
                    if let Some(t) = &tap {
                        t.note(&r);
                    }
                }
                Msg::Tap(t) => tap = Some(t),
                Msg::Lines => {}
                Msg::Reopen(new) => {
                    // The lookup lines waiting now go to the new file:
                    // some may have been written after the reopen was
                    // asked for (logrotate then sees none of them).
                    w.write_out();
                    match new.open() {
                        Ok(o) => {
                            w.out = o;
                            if new != w.target {
                                tracing::info!(log = %new, "decision log moved");
                            }
                            w.target = new;
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
        // After the queue: lines written before a flush was asked for
        // are in the buffer by now. At the stop, lines that come later
        // are counted as dropped.
        w.take_lines(stop);
        w.write_out();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        w.report_drops(stop);
        if stop {
            break;
        }
        std::thread::sleep(BATCH_INTERVAL);
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

    /// The record a lookup stands for, as a borrowed line.
    fn line_of(r: &DecisionRecord) -> LookupLine<'_> {
        match &r.detail {
            super::super::Detail::Lookup(l) => l.line(),
            _ => unreachable!(),
        }
    }

    struct Seen(Mutex<Vec<String>>);

    impl RecordTap for Seen {
        fn note(&self, record: &DecisionRecord) {
            if let super::super::Detail::Lookup(l) = &record.detail {
                lock(&self.0).push(l.key.clone());
            }
        }
    }

    #[test]
    fn lookup_lines_are_flushed_with_the_records_and_counted_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::start(Target::File(path.clone())).unwrap();
        // Lines and records side by side; a flush waits for both.
        for i in 0..1000 {
            let r = lookup(&format!("line{i}.example"), decision());
            log.log_lookup(&line_of(&r));
            log.log(lookup(&format!("rec{i}.example"), decision()));
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2000);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["frontend"], "socketmap");
            assert_eq!(v["level"], "secure match=mx.bank.example");
        }
        for i in [0, 999] {
            assert_eq!(
                text.matches(&format!("\"line{i}.example\"")).count(),
                1,
                "line{i}"
            );
        }
        // Lines written while the writer sleeps reach the file without
        // any record to wake it.
        let r = lookup("alone.example", decision());
        log.log_lookup(&line_of(&r));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("alone.example")
        {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(BATCH_INTERVAL);
        }
        log.close();
        assert_eq!(log.dropped(), 0);
        // After the stop, nothing is taken: each line is a dropped record.
        log.log_lookup(&line_of(&r));
        log.log_lookup(&line_of(&r));
        assert_eq!(log.dropped(), 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            2001
        );
    }

    #[test]
    fn with_a_tap_lookups_are_records_the_tap_sees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::start(Target::File(path.clone())).unwrap();
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        log.set_tap(seen.clone());
        for i in 0..10 {
            let r = lookup(&format!("t{i}.example"), decision());
            log.log_lookup(&line_of(&r));
        }
        log.flush();
        assert_eq!(lock(&seen.0).len(), 10);
        assert_eq!(lock(&seen.0)[9], "t9.example");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10);
        log.close();
    }

    #[test]
    fn unopenable_target_fails_at_start() {
        let e = DecisionLog::start(Target::File("/nonexistent-dir/x.jsonl".into()));
        assert!(e.is_err());
    }
}
