//! Following a log file as it is written: new bytes since the last read,
//! across rotation by rename (the old file is read to its end before the
//! new one) and by copytruncate (the file is emptied, seen by its length
//! or its first bytes: what was written after the last read is read from
//! the copy beside it, then the file again from its start), and across
//! restarts: a saved [`Position`] names the file by
//! device and inode, so after a restart reading resumes where it stopped,
//! in the rotated file if the log was rotated meanwhile.
//!
//! The follower hands out bytes with where they came from; the caller
//! splits lines and saves the position of the end of the last line it
//! finished with, so nothing is read twice and nothing skipped.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where reading stopped: a file by device and inode (and a hash of its
/// first bytes, since a removed file's inode is soon given to a new one),
/// and a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// How many of the file's first bytes [`Position::head_hash`] covers
    /// (at most [`HEAD_LEN`]).
    pub head_len: u32,
    pub head_hash: u64,
}

/// The first bytes of a file that tell it from another with its inode.
pub const HEAD_LEN: u32 = 256;

/// FNV-1a, 64 bits: stable across builds (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The length and hash of the first bytes of `file` (up to `limit`).
fn head(file: &File, limit: u64) -> io::Result<(u32, u64)> {
    use std::os::unix::fs::FileExt;
    let want = limit.min(u64::from(HEAD_LEN)) as usize;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok((got as u32, fnv1a(&buf[..got])))
}

/// Whether `saved` names this file (same inode, same first bytes).
fn same_file(saved: &Position, file: &File, meta: &Metadata) -> bool {
    meta.dev() == saved.dev
        && meta.ino() == saved.ino
        && head(file, u64::from(saved.head_len))
            .is_ok_and(|h| h == (saved.head_len, saved.head_hash))
}

/// Where to start when no saved position names a file that still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the end: only what is written from now on.
    End,
    /// At the beginning of the file.
    Beginning,
}

/// Bytes read, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The file and the offset of the chunk's first byte.
    pub at: Position,
    /// This chunk starts a file (or the file was truncated): a line left
    /// unfinished before it will never be finished.
    pub fresh: bool,
    pub bytes: Vec<u8>,
}

/// What a restart found of the saved position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The saved file is the live one: reading goes on from the offset.
    InPlace,
    /// The saved file was rotated to this path: its rest is read first.
    Rotated(PathBuf),
    /// The saved file is gone (rotated and compressed, or removed): what
    /// it held after the offset cannot be read.
    Lost,
    /// Nothing was saved.
    Fresh,
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
    head: (u32, u64),
    /// The next chunk from this file is its first.
    fresh: bool,
}

impl Open {
    fn new(file: File, meta: &Metadata, offset: u64, fresh: bool) -> io::Result<Open> {
        let head = head(&file, meta.len())?;
        let mut o = Open {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            offset,
            head,
            fresh,
        };
        o.file.seek(SeekFrom::Start(offset))?;
        Ok(o)
    }

    fn is(&self, meta: &Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino()
    }

    /// Where reading stands, as a saved position names it.
    fn position(&self) -> Position {
        Position {
            dev: self.dev,
            ino: self.ino,
            offset: self.offset,
            head_len: self.head.0,
            head_hash: self.head.1,
        }
    }

    /// The file was emptied since the last read (copytruncate): shorter
    /// than what was read, or its first bytes are no longer those read
    /// (emptied and written past the offset again meanwhile).
    fn truncated(&self) -> io::Result<bool> {
        if self.file.metadata()?.len() < self.offset {
            return Ok(true);
        }
        Ok(self.head.0 > 0 && head(&self.file, u64::from(self.head.0))? != self.head)
    }

    /// Read the file again from its start.
    fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.offset = 0;
        self.fresh = true;
        self.head = (0, fnv1a(&[]));
        Ok(())
    }

    /// Up to `max` bytes from the offset on.
    fn read(&mut self, max: usize) -> io::Result<Option<Chunk>> {
        let mut bytes = Vec::new();
        (&mut self.file).take(max as u64).read_to_end(&mut bytes)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if self.head.0 < HEAD_LEN {
            self.head = head(&self.file, self.offset + bytes.len() as u64)?;
        }
        let chunk = Chunk {
            at: Position {
                dev: self.dev,
                ino: self.ino,
                offset: self.offset,
                head_len: self.head.0,
                head_hash: self.head.1,
            },
            fresh: std::mem::take(&mut self.fresh),
            bytes,
        };
        self.offset += chunk.bytes.len() as u64;
        Ok(Some(chunk))
    }
}

/// Follows one log file.
pub struct Follower {
    path: PathBuf,
    /// The file being read (`None` while the path does not exist).
    current: Option<Open>,
    /// A rotated file still to be read to its end, before `current`.
    draining: Option<Open>,
}

impl Follower {
    /// Start following `path`: at `saved` when it names the live file or a
    /// rotated file beside it, else as `start` says.
    pub fn new(path: &Path, saved: Option<Position>, start: Start) -> (Follower, Resumed) {
        let mut f = Follower {
            path: path.to_path_buf(),
            current: None,
            draining: None,
        };
        let live = File::open(path).and_then(|file| {
            let meta = file.metadata()?;
            Ok((file, meta))
        });
        let resumed = match (saved, live) {
            (Some(p), Ok((file, meta))) if same_file(&p, &file, &meta) => {
                // The same file; shorter than the offset means truncated.
                let offset = if meta.len() >= p.offset { p.offset } else { 0 };
                f.current = Open::new(file, &meta, offset, offset == 0).ok();
                Resumed::InPlace
            }
            (Some(p), live) => {
                let rotated = find_rotated(path, p);
                if let Some((rpath, rfile, rmeta)) = &rotated {
                    let offset = p.offset.min(rmeta.len());
                    f.draining = rfile
                        .try_clone()
                        .ok()
                        .and_then(|file| Open::new(file, rmeta, offset, offset == 0).ok());
                    let _ = rpath;
                }
                if let Ok((file, meta)) = live {
                    f.current = Open::new(file, &meta, 0, true).ok();
                }
                match rotated {
                    Some((rpath, _, _)) => Resumed::Rotated(rpath),
                    None => Resumed::Lost,
                }
            }
            (None, Ok((file, meta))) => {
                let offset = match start {
                    Start::End => meta.len(),
                    Start::Beginning => 0,
                };
                f.current = Open::new(file, &meta, offset, true).ok();
                Resumed::Fresh
            }
            (None, Err(_)) => Resumed::Fresh,
        };
        (f, resumed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next bytes, at most `max`: the rest of a rotated file first,
    /// then the live file. `None` when nothing new was written. Checks
    /// for truncation before reading the live file, and for rotation when
    /// it has nothing new.
    pub fn read(&mut self, max: usize) -> io::Result<Option<Chunk>> {
        if let Some(d) = &mut self.draining {
            match d.read(max)? {
                Some(c) => return Ok(Some(c)),
                None => self.draining = None,
            }
        }
        if let Some(c) = &mut self.current {
            if c.offset > 0 && c.truncated()? {
                self.reread_after_truncation()?;
                return self.read(max);
            }
            if let Some(chunk) = c.read(max)? {
                return Ok(Some(chunk));
            }
        }
        // Nothing new: has the file been replaced or truncated?
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // Renamed away and not recreated yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.current.take() {
            Some(c) if c.is(&meta) => {
                self.current = Some(c);
                Ok(None)
            }
            old => {
                // A new file at the path (rename rotation): finish the old
                // one (anything written to it since the last read), then
                // read the new one from its start.
                self.draining = old;
                let file = File::open(&self.path)?;
                let meta = file.metadata()?;
                self.current = Some(Open::new(file, &meta, 0, true)?);
                self.read(max)
            }
        }
    }
}

impl Follower {
    /// The current file was emptied (copytruncate): what was written to it
    /// after the last read and before the copy is in the copy, when it
    /// was kept beside the file uncompressed; read that first, then the
    /// file again from its start.
    fn reread_after_truncation(&mut self) -> io::Result<()> {
        let Some(c) = &mut self.current else {
            return Ok(());
        };
        let at = c.position();
        self.draining = find_rotated(&self.path, at)
            .filter(|(_, _, meta)| !c.is(meta))
            .and_then(|(_, file, meta)| Open::new(file, &meta, at.offset, false).ok());
        c.rewind()
    }
}

/// A file beside `path` whose name starts with `path`'s name (`mail.log.1`,
/// `mail.log-20261205`) and that is the file `saved` names: renamed (same
/// inode and first bytes) or copied before a truncation (same first bytes,
/// at least as long as the saved offset).
fn find_rotated(path: &Path, saved: Position) -> Option<(PathBuf, File, Metadata)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name()?.to_string_lossy().into_owned();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n == name || !n.starts_with(&name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let renamed = meta.dev() == saved.dev && meta.ino() == saved.ino;
        let copied = saved.head_len > 0 && meta.len() >= saved.offset;
        if renamed || copied {
            let p = entry.path();
            let Ok(file) = File::open(&p) else { continue };
            let head_matches = head(&file, u64::from(saved.head_len))
                .is_ok_and(|h| h == (saved.head_len, saved.head_hash));
            if head_matches {
                return Some((p, file, meta));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A log directory with `mail.log` in it.
    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }

        fn log(&self) -> PathBuf {
            self.path("mail.log")
        }

        /// Append to `name` (created if missing).
        fn write(&self, name: &str, text: &str) {
            let mut f = File::options()
                .create(true)
                .append(true)
                .open(self.path(name))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }

        fn rename(&self, to: &str) {
            std::fs::rename(self.log(), self.path(to)).unwrap();
        }

        fn truncate(&self) {
            let f = File::options().write(true).open(self.log()).unwrap();
            f.set_len(0).unwrap();
        }

        fn follow(&self, saved: Option<Position>, start: Start) -> (Follower, Resumed) {
            Follower::new(&self.log(), saved, start)
        }
    }

    /// Everything readable now.
    struct Drained {
        text: String,
        /// The position after the last byte.
        end: Option<Position>,
        /// Chunks that started a file.
        fresh: usize,
    }

    fn drain(f: &mut Follower, max: usize) -> Drained {
        let mut d = Drained {
            text: String::new(),
            end: None,
            fresh: 0,
        };
        while let Some(c) = f.read(max).unwrap() {
            d.fresh += usize::from(c.fresh);
            d.text.push_str(std::str::from_utf8(&c.bytes).unwrap());
            d.end = Some(Position {
                offset: c.at.offset + c.bytes.len() as u64,
                ..c.at
            });
        }
        d
    }

    fn text(f: &mut Follower) -> String {
        drain(f, 4096).text
    }

    #[test]
    fn starts_at_the_end_or_the_beginning() {
        let d = Dir::new();
        d.write("mail.log", "old 1\nold 2\n");
        let (mut f, r) = d.follow(None, Start::End);
        assert_eq!(r, Resumed::Fresh);
        assert_eq!(text(&mut f), "");
        d.write("mail.log", "new\n");
        assert_eq!(text(&mut f), "new\n");
        let (mut f, _) = d.follow(None, Start::Beginning);
        assert_eq!(drain(&mut f, 3).text, "old 1\nold 2\nnew\n");
    }

    #[test]
    fn a_missing_file_is_followed_once_it_appears() {
        let d = Dir::new();
        let (mut f, _) = d.follow(None, Start::End);
        assert_eq!(text(&mut f), "");
        d.write("mail.log", "first\n");
        let got = drain(&mut f, 4096);
        assert_eq!((got.text.as_str(), got.fresh), ("first\n", 1));
    }

    #[test]
    fn rotation_by_rename_reads_the_old_file_to_its_end_first() {
        let d = Dir::new();
        d.write("mail.log", "a\n");
        let (mut f, _) = d.follow(None, Start::Beginning);
        assert_eq!(text(&mut f), "a\n");
        // The writer still has the old file open and writes one more line
        // after the rename; renamed, not recreated yet: no error.
        d.rename("mail.log.1");
        d.write("mail.log.1", "b\n");
        assert_eq!(text(&mut f), "b\n");
        d.write("mail.log", "c\n");
        let got = drain(&mut f, 4096);
        assert_eq!((got.text.as_str(), got.fresh), ("c\n", 1));
        // The old file written after the new one appeared.
        d.rename("mail.log.2");
        d.write("mail.log", "e\n");
        d.write("mail.log.2", "d\n");
        assert_eq!(text(&mut f), "d\ne\n");
    }

    #[test]
    fn copytruncate_reads_again_from_the_start() {
        let d = Dir::new();
        d.write("mail.log", "one\ntwo\n");
        let (mut f, _) = d.follow(None, Start::Beginning);
        assert_eq!(text(&mut f), "one\ntwo\n");
        std::fs::copy(d.log(), d.path("mail.log.1")).unwrap();
        d.truncate();
        assert_eq!(text(&mut f), "");
        d.write("mail.log", "3\n");
        let got = drain(&mut f, 4096);
        assert_eq!((got.text.as_str(), got.fresh), ("3\n", 1));
    }

    #[test]
    fn copytruncate_after_unread_lines_reads_them_from_the_copy() {
        let d = Dir::new();
        d.write("mail.log", "one\n");
        let (mut f, _) = d.follow(None, Start::Beginning);
        assert_eq!(text(&mut f), "one\n");
        // Written after the last read, then copied and emptied before the
        // next one: the copy holds it.
        d.write("mail.log", "two\n");
        std::fs::copy(d.log(), d.path("mail.log.1")).unwrap();
        d.truncate();
        d.write("mail.log", "3\n");
        let got = drain(&mut f, 4096);
        assert_eq!(got.text, "two\n3\n");
        // Only the copy's unread part, and a chunk that starts the file.
        assert_eq!(got.fresh, 1);
        // No copy kept (or compressed at once): the new content.
        d.write("mail.log", "4\n");
        std::fs::remove_file(d.path("mail.log.1")).unwrap();
        d.truncate();
        d.write("mail.log", "5\n");
        assert_eq!(text(&mut f), "5\n");
    }

    #[test]
    fn copytruncate_then_more_than_was_read_is_still_seen() {
        let d = Dir::new();
        d.write("mail.log", "a\n");
        let (mut f, _) = d.follow(None, Start::Beginning);
        assert_eq!(text(&mut f), "a\n");
        std::fs::copy(d.log(), d.path("mail.log.1")).unwrap();
        d.truncate();
        // Longer than the offset before the follower looks again.
        d.write("mail.log", "bbbbbbbb\n");
        let got = drain(&mut f, 4096);
        assert_eq!((got.text.as_str(), got.fresh), ("bbbbbbbb\n", 1));
    }

    #[test]
    fn a_restart_resumes_in_place_or_in_the_rotated_file() {
        let d = Dir::new();
        d.write("mail.log", "1\n2\n");
        let saved = drain(&mut d.follow(None, Start::Beginning).0, 4096).end;
        d.write("mail.log", "3\n");
        let (mut f, r) = d.follow(saved, Start::End);
        assert_eq!(r, Resumed::InPlace);
        let got = drain(&mut f, 4096);
        assert_eq!(got.text, "3\n");
        // Down while the log was rotated: the rest of the old file, then
        // the new one, nothing twice and nothing skipped.
        d.write("mail.log", "4\n");
        d.rename("mail.log.1");
        d.write("mail.log", "5\n");
        let (mut f, r) = d.follow(got.end, Start::End);
        assert_eq!(r, Resumed::Rotated(d.path("mail.log.1")));
        assert_eq!(text(&mut f), "4\n5\n");
    }

    #[test]
    fn a_lost_rotated_file_is_said_and_the_new_one_read_whole() {
        let d = Dir::new();
        d.write("mail.log", "1\n");
        let saved = drain(&mut d.follow(None, Start::Beginning).0, 4096).end;
        std::fs::remove_file(d.log()).unwrap();
        d.write("mail.log", "2\n");
        let (mut f, r) = d.follow(saved, Start::End);
        assert_eq!(r, Resumed::Lost);
        assert_eq!(text(&mut f), "2\n");
    }

    #[test]
    fn copytruncate_while_down_resumes_in_the_copy() {
        let d = Dir::new();
        d.write("mail.log", "line one\n");
        let saved = drain(&mut d.follow(None, Start::Beginning).0, 4096).end;
        d.write("mail.log", "line two\n");
        std::fs::copy(d.log(), d.path("mail.log.1")).unwrap();
        d.truncate();
        d.write("mail.log", "x\n");
        let (mut f, r) = d.follow(saved, Start::End);
        assert_eq!(r, Resumed::Rotated(d.path("mail.log.1")));
        let got = drain(&mut f, 4096);
        assert_eq!(got.text, "line two\nx\n");
        // Truncated with no copy kept: the new content, whole.
        std::fs::remove_file(d.path("mail.log.1")).unwrap();
        d.truncate();
        d.write("mail.log", "y\n");
        let (mut f, r) = d.follow(got.end, Start::End);
        assert_eq!(r, Resumed::Lost);
        assert_eq!(text(&mut f), "y\n");
    }
}
