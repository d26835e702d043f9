//! [`JournalReader`]: journalctl run and followed, its output as
//! entries, started again when it exits, killed when dropped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    EntryError, JournalEntry, JournalSource, MAIL_FACILITY, MAX_ENTRY_LEN, is_cursor, parse_entry,
};
use crate::outcomes::follow::Start;
use crate::outcomes::lines::{Line, LineSplitter};
use crate::util::text::printable_ascii;

/// The fields journalctl is asked for (`__CURSOR`, `__REALTIME_TIMESTAMP`,
/// `__MONOTONIC_TIMESTAMP` and `_BOOT_ID` come always).
const FIELDS: &str = "MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME";

/// journalctl's arguments: follow the mail facility as JSON, every field
/// whole (`--all`: without it fields over 4096 bytes come as `null`), only
/// the fields read (`--output-fields`). After `cursor` when there is one,
/// else from the end (`--lines=0`) or the beginning (`--lines=all`).
/// `--lines=all` goes with `--after-cursor` too: with `--follow` alone
/// journalctl 252 shows only the first 10 entries after the cursor and
/// then waits for new ones, silently skipping the rest.
///
/// `--merge`: without it `--follow` implies `--boot=0`, so journalctl
/// exits ("Data from the specified boot (+0) is not available") on a
/// journal directory that holds no entry of this boot yet (a new file, or
/// files from another machine), and after a reboot it would skip what the
/// previous boot logged after the saved cursor. The system journal is
/// then narrowed to this machine (`_MACHINE_ID`, from /etc/machine-id), so
/// remote journals kept beside it are not read.
pub fn command_args(source: &JournalSource, cursor: Option<&str>, start: Start) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--follow",
        "--merge",
        "--output=json",
        "--all",
        "--no-pager",
        "--output-fields",
        FIELDS,
    ]
    .map(OsString::from)
    .into();
    if let JournalSource::Directory(dir) = source {
        args.push("--directory".into());
        args.push(dir.into());
    }
    match (cursor, start) {
        (Some(c), _) => {
            args.push(format!("--after-cursor={c}").into());
            args.push("--lines=all".into());
        }
        (None, Start::End) => args.push("--lines=0".into()),
        (None, Start::Beginning) => args.push("--lines=all".into()),
    }
    if let (JournalSource::System, Some(id)) = (source, machine_id()) {
        args.push(format!("_MACHINE_ID={id}").into());
    }
    args.push(format!("SYSLOG_FACILITY={MAIL_FACILITY}").into());
    args
}

/// This machine's id (32 lower-case hex digits in /etc/machine-id).
pub fn machine_id() -> Option<String> {
    let text = std::fs::read_to_string("/etc/machine-id").ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// How the reader runs journalctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// The journalctl to run (found on `PATH` when it has no `/`).
    pub program: PathBuf,
    /// How long [`JournalReader::read`] waits for a first entry.
    pub wait: Duration,
    /// The wait before starting journalctl again after it exited; doubled
    /// after each start that gave no line, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            program: "journalctl".into(),
            wait: Duration::from_millis(200),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters a caller exposes as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Entries handed out.
    pub entries: u64,
    /// Lines over [`MAX_ENTRY_LEN`], refused.
    pub too_long: u64,
    /// Lines that were not a journal entry (not JSON, no cursor, no valid
    /// timestamp, a field of another shape).
    pub invalid: u64,
    /// Entries without `MESSAGE` or `SYSLOG_IDENTIFIER`, skipped.
    pub skipped: u64,
    /// Times journalctl exited (or could not be started).
    pub exits: u64,
    /// Times it was started again after that.
    pub restarts: u64,
}

/// Why [`JournalReader::read`] has no entries this time. The reader stays
/// usable: journalctl is started again after the backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot start {program}: {source} (again in {:?})", retry_in)]
    Spawn {
        program: String,
        source: io::Error,
        retry_in: Duration,
    },
    #[error("{program} exited ({status}){} (again in {:?})", said.as_ref().map(|s| format!(": {s}")).unwrap_or_default(), retry_in)]
    Exited {
        program: String,
        status: ExitStatus,
        /// The last line it wrote to standard error.
        said: Option<String>,
        retry_in: Duration,
    },
}

/// What the stdout thread hands over.
enum Item {
    Entry(JournalEntry),
    Rejected(EntryError),
    /// journalctl closed its output (it exited).
    End,
}

/// Entries waiting between journalctl's output and [`JournalReader::read`]:
/// beyond them journalctl waits on its pipe.
const QUEUE: usize = 1024;
/// Lines of journalctl's standard error kept until taken, and their length.
const SAID_LINES: usize = 16;
const SAID_LEN: usize = 512;

/// Lines journalctl wrote to standard error, newest last.
#[derive(Debug, Default)]
struct Said {
    lines: VecDeque<String>,
    last: Option<String>,
}

struct Running {
    child: Child,
    items: Receiver<Item>,
    stdout: JoinHandle<()>,
    stderr: JoinHandle<()>,
    /// Something came out of it (backoff starts over).
    produced: bool,
    started: Instant,
}

/// Follows the journal through journalctl.
pub struct JournalReader {
    source: JournalSource,
    start: Start,
    options: JournalOptions,
    cursor: Option<String>,
    running: Option<Running>,
    /// When journalctl may be started again.
    retry_at: Option<Instant>,
    backoff: Duration,
    started_once: bool,
    stats: JournalStats,
    said: Arc<Mutex<Said>>,
    /// An exit found while entries were handed out, reported next.
    pending: Option<ReaderError>,
}

impl JournalReader {
    /// Follow `source` after `saved` (a cursor from [`JournalReader::cursor`]),
    /// or as `start` says when there is none (or it has not the shape of a
    /// cursor). journalctl is started by the first [`JournalReader::read`],
    /// and started again after the last cursor handed out; with no cursor
    /// yet, again as `start` says (from the end: what was written while
    /// it was down is not read).
    pub fn new(
        source: JournalSource,
        saved: Option<String>,
        start: Start,
        options: JournalOptions,
    ) -> JournalReader {
        JournalReader {
            source,
            start,
            cursor: saved.filter(|c| is_cursor(c)),
            running: None,
            retry_at: None,
            backoff: options.min_backoff,
            started_once: false,
            stats: JournalStats::default(),
            said: Arc::default(),
            pending: None,
            options,
        }
    }

    pub fn source(&self) -> &JournalSource {
        &self.source
    }

    /// The cursor of the last entry handed out (or skipped): the position
    /// to save once the caller is done with the entries it got.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Whether the journalctl started last has shown that it runs: it
    /// gave an entry, or it has run for `at_least`.
    pub fn runs(&self, at_least: Duration) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.produced || r.started.elapsed() >= at_least)
    }

    /// The lines journalctl wrote to standard error since the last call
    /// (at most the last 16, printable ASCII), for the caller to log.
    pub fn take_said(&mut self) -> Vec<String> {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.lines.drain(..).collect()
    }

    /// Entries in journal order, from at most `max` lines (at least one):
    /// what is there now, or what comes within [`JournalOptions::wait`];
    /// empty when nothing did. Starts
    /// journalctl when it is not running and the backoff is over. An error
    /// says journalctl exited or could not start; the next calls go on.
    pub fn read(&mut self, max: usize) -> Result<Vec<JournalEntry>, ReaderError> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if self.running.is_none() {
            let now = Instant::now();
            if let Some(at) = self.retry_at.filter(|at| *at > now) {
                std::thread::sleep((at - now).min(self.options.wait));
                return Ok(Vec::new());
            }
            self.spawn()?;
        }
        let Some(run) = self.running.as_mut() else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        let mut next = match run.items.recv_timeout(self.options.wait) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => return Ok(entries),
            Err(RecvTimeoutError::Disconnected) => Some(Item::End),
        };
        let mut taken = 0;
        while let Some(item) = next.take() {
            taken += 1;
            match item {
                Item::Entry(e) => {
                    run.produced = true;
                    self.stats.entries += 1;
                    self.cursor = Some(e.cursor.clone());
                    entries.push(e);
                }
                Item::Rejected(e) => {
                    run.produced = true;
                    match &e {
                        EntryError::TooLong { .. } => self.stats.too_long += 1,
                        EntryError::Missing { .. } => self.stats.skipped += 1,
                        _ => self.stats.invalid += 1,
                    }
                    if let Some(c) = e.cursor() {
                        self.cursor = Some(c.to_owned());
                    }
                }
                Item::End => {
                    let e = self.reap();
                    if entries.is_empty() {
                        return Err(e);
                    }
                    self.pending = Some(e);
                    return Ok(entries);
                }
            }
            if taken >= max {
                break;
            }
            next = match run.items.try_recv() {
                Ok(item) => Some(item),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Item::End),
            };
        }
        Ok(entries)
    }

    fn spawn(&mut self) -> Result<(), ReaderError> {
        if self.started_once {
            self.stats.restarts += 1;
        }
        self.started_once = true;
        let mut cmd = Command::new(&self.options.program);
        cmd.args(command_args(
            &self.source,
            self.cursor.as_deref(),
            self.start,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let spawned = cmd.spawn().and_then(|mut child| {
            let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("no pipes to journalctl"));
            };
            let (tx, items) = sync_channel(QUEUE);
            let said = Arc::clone(&self.said);
            let threads = std::thread::Builder::new()
                .name("journalctl-out".into())
                .spawn(move || pump(out, &tx))
                .and_then(|stdout| {
                    std::thread::Builder::new()
                        .name("journalctl-err".into())
                        .spawn(move || listen(err, &said))
                        .map(|stderr| (stdout, stderr))
                });
            match threads {
                Ok((stdout, stderr)) => Ok(Running {
                    child,
                    items,
                    stdout,
                    stderr,
                    produced: false,
                    started: Instant::now(),
                }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        });
        match spawned {
            Ok(run) => {
                self.running = Some(run);
                Ok(())
            }
            Err(source) => {
                self.stats.exits += 1;
                Err(ReaderError::Spawn {
                    program: self.options.program.display().to_string(),
                    source,
                    retry_in: self.schedule(false),
                })
            }
        }
    }

    /// The next start's time: after the minimum backoff when the last run
    /// gave something, else after the doubled one.
    fn schedule(&mut self, produced: bool) -> Duration {
        let delay = if produced {
            self.options.min_backoff
        } else {
            self.backoff
        };
        self.backoff = (delay * 2).min(self.options.max_backoff);
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    /// journalctl closed its output: wait for it, and say how it ended.
    fn reap(&mut self) -> ReaderError {
        let run = self.running.take();
        let (status, produced) = match run {
            Some(run) => {
                let produced = run.produced;
                (stop(run, EXIT_GRACE), produced)
            }
            None => (None, false),
        };
        self.stats.exits += 1;
        let said = self
            .said
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .take();
        let retry_in = self.schedule(produced);
        ReaderError::Exited {
            program: self.options.program.display().to_string(),
            status: status.unwrap_or_default(),
            said,
            retry_in,
        }
    }
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        if let Some(run) = self.running.take() {
            stop(run, Duration::ZERO);
        }
    }
}

/// How long a journalctl that closed its output is given to exit.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// End a journalctl run: kill it if it still runs after `grace`, reap it,
/// end its threads. The exit status, when it could be had.
fn stop(run: Running, grace: Duration) -> Option<ExitStatus> {
    let Running {
        mut child,
        items,
        stdout,
        stderr,
        ..
    } = run;
    let deadline = Instant::now() + grace;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    // The stdout thread may wait on a full queue: let it go.
    drop(items);
    let _ = stdout.join();
    let _ = stderr.join();
    status
}

/// The stdout thread: lines of journalctl's output to items, in order.
fn pump(mut out: ChildStdout, tx: &SyncSender<Item>) {
    let mut lines = LineSplitter::new(MAX_ENTRY_LEN);
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    let item = |line: Line<'_>| match line {
        Line::Complete(bytes) => match parse_entry(bytes) {
            Ok(e) => Item::Entry(e),
            Err(e) => Item::Rejected(e),
        },
        Line::TooLong { len } => Item::Rejected(EntryError::TooLong {
            len,
            max: MAX_ENTRY_LEN,
        }),
    };
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        lines.push(&buf[..n], |line| {
            open = open && tx.send(item(line)).is_ok();
        });
        if !open {
            return;
        }
    }
    // A line cut short by journalctl's end is not an entry: it is
    // counted (invalid, or too long), and the position stays before it.
    lines.finish(|line| open = tx.send(item(line)).is_ok());
    if open {
        let _ = tx.send(Item::End);
    }
}

/// The stderr thread: keeps what journalctl says, bounded.
fn listen(mut err: ChildStderr, said: &Mutex<Said>) {
    let mut lines = LineSplitter::new(SAID_LEN);
    let mut buf = [0u8; 4096];
    let keep = |line: Line<'_>| {
        let text = match line {
            Line::Complete([]) => return,
            Line::Complete(b) => printable_ascii(&String::from_utf8_lossy(b), SAID_LEN),
            Line::TooLong { len } => format!("(a line of {len} bytes)"),
        };
        let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
        if said.lines.len() == SAID_LINES {
            said.lines.pop_front();
        }
        said.lines.push_back(text.clone());
        said.last = Some(text);
    };
    loop {
        match err.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.push(&buf[..n], keep),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    lines.finish(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURSOR: &str = "s=1a;i=2;b=3c;m=4;t=5;x=6";

    #[test]
    fn journalctl_arguments() {
        let common = "--follow --merge --output=json --all --no-pager --output-fields MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME";
        let dir = JournalSource::Directory("/srv/j".into());
        for (source, cursor, start, want) in [
            (&JournalSource::System, None, Start::End, "--lines=0"),
            (
                &JournalSource::System,
                None,
                Start::Beginning,
                "--lines=all",
            ),
            (
                &JournalSource::System,
                Some(CURSOR),
                Start::End,
                "--after-cursor=s=1a;i=2;b=3c;m=4;t=5;x=6 --lines=all",
            ),
            (&dir, None, Start::End, "--directory /srv/j --lines=0"),
            (
                &dir,
                Some("s=1"),
                Start::Beginning,
                "--directory /srv/j --after-cursor=s=1 --lines=all",
            ),
        ] {
            let args: Vec<String> = command_args(source, cursor, start)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let machine = match (source, machine_id()) {
                (JournalSource::System, Some(id)) => format!(" _MACHINE_ID={id}"),
                _ => String::new(),
            };
            assert_eq!(
                args.join(" "),
                format!("{common} {want}{machine} SYSLOG_FACILITY=2"),
                "{source:?} {cursor:?} {start:?}"
            );
        }
    }

    /// A stand-in for journalctl: each run writes its pid to `pid`,
    /// appends its arguments to `args`, writes `outN` to standard output and `errN` to standard
    /// error (N: the run's number), then exits 3, or stays (`stayN`).
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display();
            let script = format!(
                "#!/bin/sh\necho $$ > {d}/pid\necho \"$@\" >> {d}/args\nn=$(wc -l < {d}/args)\n\
                 [ -f {d}/out$n ] && cat {d}/out$n\n[ -f {d}/err$n ] && cat {d}/err$n >&2\n\
                 [ -f {d}/stay$n ] && exec sleep 60\nexit 3\n"
            );
            let path = dir.path().join("journalctl");
            std::fs::write(&path, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            Fake { dir }
        }

        fn file(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).unwrap();
        }

        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
        }

        fn options(&self) -> JournalOptions {
            JournalOptions {
                program: self.dir.path().join("journalctl"),
                wait: Duration::from_millis(50),
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
            }
        }
    }

    fn entry(i: u32, message: Option<&str>) -> String {
        let message = message.map_or(String::new(), |m| format!(r#","MESSAGE":"{m}""#));
        format!(
            r#"{{"__CURSOR":"s=1;i={i}","__REALTIME_TIMESTAMP":"1764917454000000","SYSLOG_IDENTIFIER":"postfix/smtp","_PID":"7"{message}}}"#
        )
    }

    /// Reads until `done` holds of what was read, for at most 10 s.
    fn read_until(
        r: &mut JournalReader,
        mut done: impl FnMut(&[JournalEntry], Option<&ReaderError>) -> bool,
    ) -> (Vec<JournalEntry>, Option<ReaderError>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        loop {
            let err = match r.read(100) {
                Ok(v) => {
                    got.extend(v);
                    None
                }
                Err(e) => Some(e),
            };
            if done(&got, err.as_ref()) {
                return (got, err);
            }
            assert!(Instant::now() < deadline, "gave up; read {got:?}, {err:?}");
        }
    }

    #[test]
    fn restarts_after_the_cursor_and_kills_on_drop() {
        let fake = Fake::new();
        let too_long = "x".repeat(MAX_ENTRY_LEN + 1);
        fake.file(
            "out1",
            &[
                entry(1, Some("one")),
                entry(2, Some("two")),
                "not json".into(),
                entry(3, None),
                too_long,
            ]
            .join("\n"),
        );
        fake.file("err1", "Failed to do a thing: boom\n");
        fake.file("out2", &format!("{}\n", entry(4, Some("four"))));
        fake.file("stay2", "");
        let source = JournalSource::Directory("/srv/j".into());
        let mut r = JournalReader::new(source, None, Start::Beginning, fake.options());
        let (got, err) = read_until(&mut r, |_, e| e.is_some());
        let messages: Vec<&str> = got.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["one", "two"]);
        match err {
            Some(ReaderError::Exited {
                status,
                said,
                retry_in,
                ..
            }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(said.as_deref(), Some("Failed to do a thing: boom"));
                assert_eq!(retry_in, Duration::from_millis(20));
            }
            other => panic!("{other:?}"),
        }
        // The skipped entry moved the cursor; the cut line after it did not.
        assert_eq!(r.cursor(), Some("s=1;i=3"));
        let want = JournalStats {
            entries: 2,
            too_long: 1,
            invalid: 1,
            skipped: 1,
            exits: 1,
            restarts: 0,
        };
        assert_eq!(r.stats(), want);
        assert_eq!(r.take_said(), ["Failed to do a thing: boom"]);
        assert!(r.take_said().is_empty());

        let (got, err) = read_until(&mut r, |got, _| !got.is_empty());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got[0].message, "four");
        assert_eq!(r.cursor(), Some("s=1;i=4"));
        assert_eq!((r.stats().restarts, r.stats().entries), (1, 3));
        let args: Vec<String> = fake.read("args").lines().map(String::from).collect();
        assert_eq!(args.len(), 2);
        assert!(
            args[0].ends_with("--directory /srv/j --lines=all SYSLOG_FACILITY=2"),
            "{}",
            args[0]
        );
        assert!(
            args[1].ends_with(
                "--directory /srv/j --after-cursor=s=1;i=3 --lines=all SYSLOG_FACILITY=2"
            ),
            "{}",
            args[1]
        );
        // Still running (the second run stays); dropping the reader ends it.
        let pid = fake.read("pid").trim().to_owned();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc.exists());
        drop(r);
        assert!(!proc.exists(), "journalctl {pid} outlived its reader");
    }

    #[test]
    fn lines_up_to_the_limit_come_through() {
        let fake = Fake::new();
        let padded = |i: u32, len: usize| {
            let short = entry(i, Some(""));
            let line = entry(i, Some(&"x".repeat(len - short.len())));
            assert_eq!(line.len(), len);
            line
        };
        let lines = [
            padded(1, MAX_ENTRY_LEN - 1),
            padded(2, MAX_ENTRY_LEN),
            padded(3, MAX_ENTRY_LEN + 1),
            entry(4, Some("after")),
        ];
        fake.file("out1", &format!("{}\n", lines.join("\n")));
        fake.file("stay1", "");
        let mut r = JournalReader::new(JournalSource::System, None, Start::End, fake.options());
        let (got, _) = read_until(&mut r, |got, _| got.len() >= 3);
        let cursors: Vec<&str> = got.iter().map(|e| e.cursor.as_str()).collect();
        assert_eq!(cursors, ["s=1;i=1", "s=1;i=2", "s=1;i=4"]);
        assert_eq!(
            got[1].message.len(),
            MAX_ENTRY_LEN - entry(2, Some("")).len()
        );
        assert_eq!((r.stats().entries, r.stats().too_long), (3, 1));
    }

    #[test]
    fn a_missing_journalctl_is_retried_with_growing_backoff() {
        let options = JournalOptions {
            program: "/nonexistent/journalctl".into(),
            ..Fake::new().options()
        };
        let mut r = JournalReader::new(JournalSource::System, None, Start::End, options);
        let mut waits = Vec::new();
        while waits.len() < 4 {
            match read_until(&mut r, |_, e| e.is_some()).1 {
                Some(ReaderError::Spawn { retry_in, .. }) => waits.push(retry_in.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [20, 40, 50, 50]);
        assert_eq!((r.stats().exits, r.stats().restarts), (4, 3));
        assert_eq!(r.cursor(), None);
    }
}
