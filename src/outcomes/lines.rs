//! Incremental line splitting for the file follower: bytes in, complete
//! lines out. Pure and bounded: a partial line is kept until its newline
//! arrives, and a line longer than the limit is reported once (with its
//! length) and skipped up to the next newline, never buffered whole.

/// Longest log line accepted, in bytes, without its newline. Postfix's own
/// records stay far below this (a status line with a long remote reply is
/// about 1 KiB); syslog daemons commonly truncate at 8 KiB too.
pub const MAX_LINE_LEN: usize = 8 * 1024;

/// What [`LineSplitter::push`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// One complete line, without its `\n` (a `\r` before it is removed too).
    Complete(&'a [u8]),
    /// A line over the limit was skipped; `len` is its full length in bytes
    /// without the newline. Reported when its newline arrives.
    TooLong { len: usize },
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max: usize,
    /// The start of the current line (never more than `max` bytes).
    partial: Vec<u8>,
    /// `Some(n)`: skipping an over-long line of which `n` bytes were seen.
    skipping: Option<usize>,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE_LEN)
    }
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            partial: Vec::new(),
            skipping: None,
        }
    }

    /// The limit this splitter was made with.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes since the last newline: of an unfinished line held, or of an
    /// over-long one being skipped. After feeding the bytes up to file
    /// offset `end`, every line ending at or before `end - pending()` has
    /// been handed out: the position a follower saves.
    pub fn pending(&self) -> usize {
        self.skipping.unwrap_or(self.partial.len())
    }

    /// Feed `input`; `out` is called with every line it completes, in order.
    pub fn push(&mut self, mut input: &[u8], mut out: impl FnMut(Line<'_>)) {
        while !input.is_empty() {
            let newline = input.iter().position(|&b| b == b'\n');
            let (chunk, rest) = match newline {
                Some(i) => (&input[..i], &input[i + 1..]),
                None => (input, &input[input.len()..]),
            };
            if let Some(seen) = self.skipping {
                let seen = seen.saturating_add(chunk.len());
                if newline.is_some() {
                    self.skipping = None;
                    out(Line::TooLong { len: seen });
                } else {
                    self.skipping = Some(seen);
                }
            } else {
                let total = self.partial.len() + chunk.len();
                if total > self.max {
                    self.partial.clear();
                    if newline.is_some() {
                        out(Line::TooLong { len: total });
                    } else {
                        self.skipping = Some(total);
                    }
                } else if newline.is_none() {
                    self.partial.extend_from_slice(chunk);
                } else if self.partial.is_empty() {
                    out(Line::Complete(trim_cr(chunk)));
                } else {
                    self.partial.extend_from_slice(chunk);
                    out(Line::Complete(trim_cr(&self.partial)));
                    self.partial.clear();
                }
            }
            input = rest;
        }
    }

    /// End of input (a file that will not grow, e.g. a rotated one): the
    /// unfinished line, if any, is handed out as if a newline followed.
    pub fn finish(&mut self, out: impl FnOnce(Line<'_>)) {
        if let Some(seen) = self.skipping.take() {
            out(Line::TooLong { len: seen });
        } else if !self.partial.is_empty() {
            out(Line::Complete(trim_cr(&self.partial)));
            self.partial.clear();
        }
    }

    /// Forget any unfinished line (the followed file was truncated or
    /// replaced).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.skipping = None;
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        L(Vec<u8>),
        Long(usize),
    }

    fn collect(s: &mut LineSplitter, input: &[u8], got: &mut Vec<Got>) {
        s.push(input, |l| {
            got.push(match l {
                Line::Complete(b) => Got::L(b.to_vec()),
                Line::TooLong { len } => Got::Long(len),
            })
        });
    }

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<Got> {
        let mut s = LineSplitter::new(max);
        let mut got = Vec::new();
        for c in chunks {
            collect(&mut s, c, &mut got);
        }
        got
    }

    #[test]
    fn whole_lines() {
        let got = split_all(100, &[b"one\ntwo\r\n\nthree"]);
        assert_eq!(
            got,
            vec![
                Got::L(b"one".to_vec()),
                Got::L(b"two".to_vec()),
                Got::L(vec![])
            ]
        );
    }

    #[test]
    fn single_bytes_give_the_same_lines() {
        let input = b"alpha\nbeta gamma\n\ndelta\n";
        let whole = split_all(100, &[input]);
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split_all(100, &chunks), whole);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(split_all(100, &[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn exact_limit_is_accepted_one_more_is_not() {
        let got = split_all(5, &[b"12345\n123456\nok\n"]);
        assert_eq!(
            got,
            vec![
                Got::L(b"12345".to_vec()),
                Got::Long(6),
                Got::L(b"ok".to_vec())
            ]
        );
        // The same, byte by byte: the over-long line is skipped, not kept.
        let input = b"12345\n123456789\nok\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let mut s = LineSplitter::new(5);
        let mut got = Vec::new();
        for c in chunks {
            collect(&mut s, c, &mut got);
            assert!(s.partial.len() <= 5);
        }
        assert_eq!(
            got,
            vec![
                Got::L(b"12345".to_vec()),
                Got::Long(9),
                Got::L(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn finish_hands_out_the_tail() {
        let mut s = LineSplitter::new(4);
        let mut got = Vec::new();
        collect(&mut s, b"ab\ncd", &mut got);
        assert_eq!(s.pending(), 2);
        s.finish(|l| assert_eq!(l, Line::Complete(b"cd")));
        assert_eq!(s.pending(), 0);
        collect(&mut s, b"abcdefg", &mut got);
        assert_eq!(s.pending(), 7);
        s.finish(|l| assert_eq!(l, Line::TooLong { len: 7 }));
        let mut called = false;
        s.finish(|_| called = true);
        assert!(!called);
    }

    #[test]
    fn pending_marks_the_end_of_the_last_line_handed_out() {
        let input = b"one\ntoo long a line\ntwo\nthr";
        let mut s = LineSplitter::new(8);
        let mut fed = 0;
        let mut last_end = 0;
        for chunk in input.chunks(3) {
            s.push(chunk, |_| {});
            fed += chunk.len();
            let end = fed - s.pending();
            assert!(end >= last_end);
            assert!(end == 0 || input[end - 1] == b'\n', "{end}");
            last_end = end;
        }
        assert_eq!(last_end, input.len() - 3);
    }

    #[test]
    fn reset_forgets_the_partial_line() {
        let mut s = LineSplitter::new(10);
        let mut got = Vec::new();
        collect(&mut s, b"half", &mut got);
        s.reset();
        collect(&mut s, b"new\n", &mut got);
        assert_eq!(got, vec![Got::L(b"new".to_vec())]);
    }
}
