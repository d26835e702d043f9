//! Where the records come from: the live log and its rotated siblings
//! ([`rotated_files`]), opened with transparent gzip decompression and read
//! line by line with a cap on the line length.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{BUF_SIZE, ReadError};

/// Lines longer than this are counted as bad and skipped without being
/// buffered, so a corrupt or binary file cannot blow up memory. Real
/// decision records are a few hundred bytes.
const MAX_LINE: usize = 1 << 20;

/// Returns the live log `path` preceded by its rotated siblings, oldest
/// first: dateext names (`NAME-YYYYMMDD[.gz]`, by date), then numbered ones
/// (`NAME.N[.gz]`, highest N first). The live file is left out only when it
/// does not exist while rotated files do (e.g. the daemon has been stopped
/// after a rotation); with nothing rotated it is always returned so that
/// opening it reports a clear error.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let live = path.to_path_buf();
    let Some(base) = path.file_name() else {
        return vec![live];
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![live];
    };
    let base = base.as_encoded_bytes();

    // (date stamp, compressed, path) and (number, compressed, path); the
    // flag makes `NAME.2` sort before `NAME.2.gz` when both exist (a
    // compression in progress) so the order is deterministic.
    let mut dated: Vec<(Vec<u8>, bool, PathBuf)> = Vec::new();
    let mut numbered: Vec<(u64, bool, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_encoded_bytes().strip_prefix(base) else {
            continue;
        };
        let (rest, gz) = match rest.strip_suffix(b".gz") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let sibling = path.with_file_name(&name);
        // Directories and other oddities with a matching name are not logs.
        let is_file = || fs::metadata(&sibling).is_ok_and(|m| m.is_file());
        if let Some(num) = rest.strip_prefix(b".") {
            if let Some(n) = parse_rotation_number(num) {
                if is_file() {
                    numbered.push((n, gz, sibling));
                }
            }
        } else if let Some(stamp) = rest.strip_prefix(b"-") {
            // dateformat is configurable (-%Y%m%d, -%Y%m%d-%H, -%s, ...);
            // all of them are digits and separators that sort as text.
            let date_like = stamp.first().is_some_and(u8::is_ascii_digit)
                && stamp
                    .iter()
                    .all(|&c| c.is_ascii_digit() || c == b'-' || c == b'_');
            if date_like && is_file() {
                dated.push((stamp.to_vec(), gz, sibling));
            }
        }
    }
    dated.sort();
    numbered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut files: Vec<PathBuf> = dated
        .into_iter()
        .map(|(_, _, p)| p)
        .chain(numbered.into_iter().map(|(_, _, p)| p))
        .collect();
    if files.is_empty() || path.exists() {
        files.push(live);
    }
    files
}

fn parse_rotation_number(num: &[u8]) -> Option<u64> {
    if num.is_empty() || num.len() > 19 || !num.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(num.iter().fold(0, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

/// Opens a log file, transparently decompressing gzip. Compression is
/// detected from the magic bytes, not the name, so `NAME.1` compressed by
/// hand or `NAME.2.gz` left uncompressed both work.
pub(super) fn open_log(path: &Path) -> Result<Box<dyn BufRead>, ReadError> {
    let mut file = File::open(path).map_err(|err| ReadError::Open {
        path: path.to_owned(),
        err,
    })?;
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|err| ReadError::Read {
        path: path.to_owned(),
        err,
    })?;
    // Put the sniffed bytes back in front instead of seeking, so that
    // non-seekable paths (a FIFO, /dev/stdin) work too.
    let src = io::Cursor::new(magic).take(n as u64).chain(file);
    if magic[..n] == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            BUF_SIZE,
            MultiGzDecoder::new(src),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(BUF_SIZE, src)))
    }
}

/// Like `read_exact` but stops early at end of file; returns bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the next line into `buf` (cleared first, newline stripped).
/// Returns `None` at end of input, otherwise whether the line exceeded
/// [`MAX_LINE`]; the excess of an overlong line is consumed but not kept.
/// A last line without a newline is returned as is.
pub(super) fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut overlong = false;
    let mut got_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(got_any.then_some(overlong));
        }
        got_any = true;
        let (data, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !overlong {
            if buf.len() + data.len() > MAX_LINE {
                overlong = true;
                buf.clear();
            } else {
                buf.extend_from_slice(data);
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(overlong));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::fixture::{
        L1, L2, L3, L4, L6, fixture, gzip, read_one, run_to_string, stats_of, write_file,
    };
    use crate::log::reader::{LogQuery, OutputFormat, RunStats, run};
    use tempfile::TempDir;

    #[test]
    fn truncated_last_line_is_bad() {
        let data = format!("{L1}\n{L2}\n{}", &L3[..60]);
        let (stats, out) = read_one("live.jsonl", data.as_bytes());
        assert_eq!(stats, stats_of(3, 2, 1));
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn complete_last_line_without_newline_and_crlf() {
        let data = format!("{L1}\r\n{L2}");
        let (stats, out) = read_one("live.jsonl", data.as_bytes());
        assert_eq!(stats.matched, 2);
        assert_eq!(stats.bad_lines, 0);
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn overlong_line_is_bad_and_reading_continues() {
        let dir = TempDir::new().unwrap();
        let huge = format!(
            r#"{{"ts":"2026-11-24T10:00:00Z","reason":"{}"}}"#,
            "x".repeat(MAX_LINE + 10)
        );
        let data = format!("{L1}\n{huge}\n{L2}\n");
        let p = write_file(&dir, "big.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats, stats_of(3, 2, 1));
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn gzip_detected_by_magic_not_name() {
        let dir = TempDir::new().unwrap();
        // Compressed but without .gz, and plain text named .gz.
        let gz = write_file(&dir, "decisions.jsonl.1", &gzip(fixture().as_bytes()));
        let plain = write_file(&dir, "decisions.jsonl.2.gz", fixture().as_bytes());
        for p in [gz, plain] {
            let q = LogQuery {
                files: vec![p.clone()],
                ..LogQuery::default()
            };
            let (stats, _) = run_to_string(&q, OutputFormat::Json);
            assert_eq!(
                stats,
                RunStats {
                    lines: 9,
                    matched: 6,
                    bad_lines: 2
                },
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn gzip_multi_member() {
        // `cat a.gz b.gz` is a valid gzip file with two members.
        let dir = TempDir::new().unwrap();
        let mut data = gzip(format!("{L1}\n{L2}\n").as_bytes());
        data.extend(gzip(format!("{L3}\n").as_bytes()));
        let p = write_file(&dir, "multi.gz", &data);
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats.matched, 3);
        assert_eq!(out, format!("{L1}\n{L2}\n{L3}\n"));
    }

    #[test]
    fn corrupt_gzip_is_an_error_naming_the_file() {
        let dir = TempDir::new().unwrap();
        let mut data = gzip(fixture().as_bytes());
        data.truncate(data.len() / 2);
        let p = write_file(&dir, "broken.gz", &data);
        let q = LogQuery {
            files: vec![p.clone()],
            ..LogQuery::default()
        };
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", p.display())),
            "{err}"
        );
    }

    #[test]
    fn tiny_and_empty_files() {
        let dir = TempDir::new().unwrap();
        let empty = write_file(&dir, "empty", b"");
        let one = write_file(&dir, "one", b"\x1f");
        let q = LogQuery {
            files: vec![empty, one],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats, stats_of(1, 0, 1));
        assert_eq!(out, "");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let dir = TempDir::new().unwrap();
        let ok = write_file(&dir, "ok", format!("{L1}\n").as_bytes());
        let missing = dir.path().join("nope.jsonl");
        let q = LogQuery {
            files: vec![ok, missing.clone()],
            ..LogQuery::default()
        };
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        match &err {
            ReadError::Open { path, err } => {
                assert_eq!(path, &missing);
                assert_eq!(err.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot open {}: ", missing.display())),
            "{msg}"
        );
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn rotated_files_ordering() {
        let dir = TempDir::new().unwrap();
        for name in [
            "decisions.jsonl",
            "decisions.jsonl.1",
            "decisions.jsonl.2.gz",
            "decisions.jsonl.10.gz",
            "decisions.jsonl.3",
            "decisions.jsonl-20261122",
            "decisions.jsonl-20261120.gz",
            "decisions.jsonl-20261121.gz",
            // Not rotations of decisions.jsonl:
            "decisions.jsonl.bak",
            "decisions.jsonl.gz",
            "decisions.jsonl.1.xz",
            "decisions.jsonl-old",
            "decisions.jsonl2.1",
            "other.jsonl.1",
        ] {
            write_file(&dir, name, b"");
        }
        // A directory with a matching name is not a log.
        fs::create_dir(dir.path().join("decisions.jsonl.4")).unwrap();
        let live = dir.path().join("decisions.jsonl");
        let names: Vec<String> = rotated_files(&live)
            .iter()
            .map(|p| {
                assert_eq!(p.parent(), Some(dir.path()));
                p.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "decisions.jsonl-20261120.gz",
                "decisions.jsonl-20261121.gz",
                "decisions.jsonl-20261122",
                "decisions.jsonl.10.gz",
                "decisions.jsonl.3",
                "decisions.jsonl.2.gz",
                "decisions.jsonl.1",
                "decisions.jsonl",
            ]
        );
    }

    #[test]
    fn rotated_files_same_number_plain_and_gz() {
        let dir = TempDir::new().unwrap();
        for name in ["x.log", "x.log.2", "x.log.2.gz", "x.log.1"] {
            write_file(&dir, name, b"");
        }
        let got = rotated_files(&dir.path().join("x.log"));
        let want: Vec<PathBuf> = ["x.log.2", "x.log.2.gz", "x.log.1", "x.log"]
            .iter()
            .map(|n| dir.path().join(n))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rotated_files_only_live_or_missing() {
        let dir = TempDir::new().unwrap();
        let live = dir.path().join("decisions.jsonl");
        // Nothing at all: still the live path, so opening it reports the error.
        assert_eq!(rotated_files(&live), vec![live.clone()]);
        write_file(&dir, "decisions.jsonl", b"");
        assert_eq!(rotated_files(&live), vec![live.clone()]);
        // Live file gone after a rotation: only the rotated one.
        fs::remove_file(&live).unwrap();
        let r1 = write_file(&dir, "decisions.jsonl.1", b"");
        assert_eq!(rotated_files(&live), vec![r1]);
        // Missing directory.
        let nodir = dir.path().join("missing/decisions.jsonl");
        assert_eq!(rotated_files(&nodir), vec![nodir.clone()]);
    }

    #[test]
    fn rotated_files_end_to_end() {
        let dir = TempDir::new().unwrap();
        write_file(
            &dir,
            "decisions.jsonl.2.gz",
            &gzip(format!("{L1}\n{L2}\n").as_bytes()),
        );
        write_file(
            &dir,
            "decisions.jsonl.1",
            format!("{L3}\n{L4}\n").as_bytes(),
        );
        let live = write_file(&dir, "decisions.jsonl", format!("{L6}\n").as_bytes());
        let q = LogQuery {
            files: rotated_files(&live),
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats, stats_of(5, 4, 1));
        assert_eq!(out, format!("{L1}\n{L2}\n{L3}\n{L6}\n"));
    }
}
