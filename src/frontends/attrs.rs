//! The Postfix policy delegation protocol (`SMTPD_POLICY_README`): a request
//! is `name=value` lines ended by an empty line; the reply is
//! `action=…` followed by an empty line.
//!
//! [`Decoder`] is pure and incremental: it takes whatever bytes have
//! arrived, in pieces of any size (down to single bytes), keeps at most one
//! partial line and the attributes of the request in hand, and hands out
//! each request as soon as its empty line is seen. Its limits are checked
//! as early as a violation is certain, so a client cannot make it buffer
//! more than [`MAX_REQUEST_LEN`] bytes.
//!
//! Choices where the protocol leaves room:
//!
//! - Lines end with `\n`; a `\r` right before it is dropped, so requests
//!   typed through `telnet` or `nc -C` work. Postfix sends plain `\n`.
//! - A line without `=` or with nothing before the `=` is malformed. An
//!   empty value (`sender=`) is normal: Postfix sends every attribute, empty
//!   or not.
//! - The same name twice in one request is malformed. Postfix never sends
//!   that and its own attribute scanner refuses it; two `recipient=` lines
//!   would make the answer ambiguous.
//! - Names and values are not checked beyond that; unknown names are
//!   kept (callers ignore what they do not know). Bytes that are not
//!   UTF-8 become U+FFFD instead of failing the request: an odd HELO name
//!   must not cost a connection.

use std::ops::Range;

/// Longest line accepted, in bytes, counting the `\n` (and a `\r` before
/// it). Postfix's attribute values are addresses, host names and
/// certificate names, far below this.
pub const MAX_LINE_LEN: usize = 8192;
/// Longest request accepted, in bytes: every line including the empty one
/// that ends it.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// Most attribute lines accepted in one request. Postfix 3.7 sends about
/// 30.
pub const MAX_ATTRIBUTES: usize = 256;

/// Room reserved for a request's text and attributes: Postfix 3.7's
/// requests hold about 30 attributes in well under 1 KB.
const TYPICAL_REQUEST_LEN: usize = 1024;
const TYPICAL_ATTRIBUTES: usize = 40;

/// Why a byte stream is not a policy request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    /// A line longer than [`MAX_LINE_LEN`] (counting its newline).
    #[error("attribute line longer than {max} bytes")]
    LineTooLong { max: usize },
    /// A request longer than [`MAX_REQUEST_LEN`].
    #[error("policy request longer than {max} bytes")]
    RequestTooLong { max: usize },
    /// More than [`MAX_ATTRIBUTES`] attribute lines.
    #[error("policy request has more than {max} attributes")]
    TooManyAttributes { max: usize },
    /// A line (1-based within its request) without `=`.
    #[error("line {line} of the request is not name=value")]
    MissingEquals { line: usize },
    /// A line (1-based within its request) that starts with `=`.
    #[error("line {line} of the request has an empty attribute name")]
    EmptyName { line: usize },
    /// The same attribute name twice in one request.
    #[error("attribute {name:?} appears twice in one request")]
    Duplicate { name: String },
}

/// One policy request: its attributes in the order received.
///
/// Names and values live in one string, each attribute as two ranges in
/// it: a request of ~30 attributes is two allocations, and looking a name
/// up by comparing a few short strings costs less than hashing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    text: String,
    attrs: Vec<(Range<usize>, Range<usize>)>,
}

impl Request {
    fn with_capacity(bytes: usize, attrs: usize) -> Request {
        Request {
            text: String::with_capacity(bytes),
            attrs: Vec::with_capacity(attrs),
        }
    }

    /// The value of an attribute, if the request has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| &self.text[n.clone()] == name)
            .map(|(_, v)| &self.text[v.clone()])
    }

    /// Add an attribute; `false` (and nothing added) when the request
    /// already has one of that name.
    fn add(&mut self, name: &[u8], value: &[u8]) -> bool {
        let start = self.text.len();
        self.text.push_str(&String::from_utf8_lossy(name));
        let n = start..self.text.len();
        if self.get(&self.text[n.clone()]).is_some() {
            self.text.truncate(start);
            return false;
        }
        let v_start = self.text.len();
        self.text.push_str(&String::from_utf8_lossy(value));
        self.attrs.push((n, v_start..self.text.len()));
        true
    }

    /// The value of an attribute, or `""` when absent (Postfix sends empty
    /// attributes rather than leaving them out).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs
            .iter()
            .map(|(k, v)| (&self.text[k.clone()], &self.text[v.clone()]))
    }
}

/// Incremental request decoder. One per connection.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The line in hand, without its newline.
    line: Vec<u8>,
    /// Bytes of the request in hand taken by complete lines.
    request_len: usize,
    /// Attribute lines of the request in hand.
    lines: usize,
    current: Request,
    failed: Option<AttrError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether part of a request has been received (a client that closes
    /// now closes mid-request).
    pub fn in_request(&self) -> bool {
        !self.line.is_empty() || self.request_len > 0
    }

    /// Take bytes. Returns how many were used and, when they completed a
    /// request, that request; decoding stops right after its empty line, so
    /// call again with the rest. Bytes that complete no request are all
    /// used (kept inside). After an error the decoder stays failed.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), AttrError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.push_inner(input) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.failed = Some(e.clone());
                self.line = Vec::new();
                self.current = Request::default();
                Err(e)
            }
        }
    }

    fn push_inner(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), AttrError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // A partial line: refuse as soon as even its newline, or
                // the shortest end of the request, cannot fit any more.
                let partial = self.line.len() + rest.len();
                if partial + 1 > MAX_LINE_LEN {
                    return Err(AttrError::LineTooLong { max: MAX_LINE_LEN });
                }
                if self.request_len + partial + 1 > MAX_REQUEST_LEN {
                    return Err(AttrError::RequestTooLong {
                        max: MAX_REQUEST_LEN,
                    });
                }
                self.line.extend_from_slice(rest);
                return Ok((input.len(), None));
            };
            let line_len = self.line.len() + nl + 1;
            if line_len > MAX_LINE_LEN {
                return Err(AttrError::LineTooLong { max: MAX_LINE_LEN });
            }
            if self.request_len + line_len > MAX_REQUEST_LEN {
                return Err(AttrError::RequestTooLong {
                    max: MAX_REQUEST_LEN,
                });
            }
            self.request_len += line_len;
            used += nl + 1;
            let done = if self.line.is_empty() {
                self.take_line(&rest[..nl])?
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..nl]);
                let done = self.take_line(&line)?;
                line.clear();
                // Keep the allocation for the next partial line.
                self.line = line;
                done
            };
            if done {
                self.request_len = 0;
                self.lines = 0;
                return Ok((used, Some(std::mem::take(&mut self.current))));
            }
        }
        Ok((used, None))
    }

    /// One complete line (without `\n`); true when it ends the request.
    fn take_line(&mut self, line: &[u8]) -> Result<bool, AttrError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(true);
        }
        self.lines += 1;
        if self.lines > MAX_ATTRIBUTES {
            return Err(AttrError::TooManyAttributes {
                max: MAX_ATTRIBUTES,
            });
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Err(AttrError::MissingEquals { line: self.lines });
        };
        if eq == 0 {
            return Err(AttrError::EmptyName { line: self.lines });
        }
        if self.current.attrs.is_empty() && self.current.text.capacity() == 0 {
            // Room for a typical Postfix request at once.
            self.current = Request::with_capacity(TYPICAL_REQUEST_LEN, TYPICAL_ATTRIBUTES);
        }
        if !self.current.add(&line[..eq], &line[eq + 1..]) {
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            return Err(AttrError::Duplicate { name });
        }
        Ok(false)
    }
}

/// Append a reply: `action=<action>\n\n`. Line breaks and other control
/// characters in `action` become spaces, so a reply can never end early
/// or smuggle a second one.
pub fn encode_reply(action: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"action=");
    for c in action.chars() {
        if c.is_control() {
            out.push(b' ');
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"request=smtpd_access_policy\nprotocol_state=RCPT\n\
sender=a@b.example\nrecipient=c@d.example\nsize=\ninstance=1.2.3\n\n";

    /// Feed `input` in pieces of `step` bytes; every request and the
    /// first error.
    fn feed(input: &[u8], step: usize) -> (Vec<Request>, Option<AttrError>) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            let mut at = 0;
            while at < chunk.len() {
                match d.push(&chunk[at..]) {
                    Ok((n, req)) => {
                        at += n;
                        out.extend(req);
                        if n == 0 {
                            break;
                        }
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn one_request_in_pieces_of_every_size() {
        for step in 1..=SAMPLE.len() {
            let (reqs, err) = feed(SAMPLE, step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(reqs.len(), 1, "step {step}");
            let r = &reqs[0];
            assert_eq!(r.get("request"), Some("smtpd_access_policy"));
            assert_eq!(r.get("recipient"), Some("c@d.example"));
            assert_eq!(r.get("size"), Some(""), "empty values are kept");
            assert_eq!(r.get("nope"), None);
            assert_eq!(r.value("nope"), "");
            assert_eq!(r.len(), 6);
        }
    }

    #[test]
    fn several_requests_stop_after_each() {
        let mut input = SAMPLE.to_vec();
        input.extend_from_slice(b"a=1\n\nb=2\n\n");
        let mut d = Decoder::new();
        let (n, r) = d.push(&input).unwrap();
        assert_eq!(n, SAMPLE.len());
        assert!(r.is_some());
        let (n2, r2) = d.push(&input[n..]).unwrap();
        assert_eq!(n2, 5);
        assert_eq!(r2.unwrap().get("a"), Some("1"));
        let (n3, r3) = d.push(&input[n + n2..]).unwrap();
        assert_eq!(n3, 5);
        assert_eq!(r3.unwrap().get("b"), Some("2"));
        assert!(!d.in_request());
        for step in [1, 2, 3, 7, 100] {
            let (reqs, err) = feed(&input, step);
            assert_eq!((reqs.len(), err), (3, None), "step {step}");
        }
    }

    #[test]
    fn crlf_is_tolerated() {
        let (reqs, err) = feed(b"request=x\r\nname=v\r\n\r\n", 1);
        assert_eq!(err, None);
        assert_eq!(reqs[0].get("request"), Some("x"));
        assert_eq!(reqs[0].get("name"), Some("v"));
    }

    #[test]
    fn value_may_contain_equals_and_unknown_names_are_kept() {
        let (reqs, _) = feed(b"ccert_subject=CN=x=y\nfuture_thing=1\n\n", 3);
        assert_eq!(reqs[0].get("ccert_subject"), Some("CN=x=y"));
        assert_eq!(reqs[0].get("future_thing"), Some("1"));
    }

    #[test]
    fn an_empty_request_is_a_request() {
        let (reqs, err) = feed(b"\n", 1);
        assert_eq!(err, None);
        assert!(reqs[0].is_empty());
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(
            feed(b"a=1\nnoequals\n\n", 1).1,
            Some(AttrError::MissingEquals { line: 2 })
        );
        assert_eq!(
            feed(b"=value\n\n", 4).1,
            Some(AttrError::EmptyName { line: 1 })
        );
        assert_eq!(
            feed(b"recipient=a\nrecipient=b\n\n", 5).1,
            Some(AttrError::Duplicate {
                name: "recipient".into()
            })
        );
        // Duplicates are per request.
        let (reqs, err) = feed(b"a=1\n\na=2\n\n", 1);
        assert_eq!((reqs.len(), err), (2, None));
    }

    #[test]
    fn requests_before_a_bad_line_are_delivered_and_the_decoder_stays_failed() {
        let mut d = Decoder::new();
        let input = b"a=1\n\nbad\n";
        let (n, r) = d.push(input).unwrap();
        assert!(r.is_some());
        assert!(d.push(&input[n..]).is_err());
        assert!(matches!(
            d.push(b"a=1\n\n"),
            Err(AttrError::MissingEquals { .. })
        ));
    }

    #[test]
    fn non_utf8_is_replaced_not_refused() {
        let (reqs, err) = feed(b"helo_name=\xff\xfe\n\n", 1);
        assert_eq!(err, None);
        assert_eq!(reqs[0].get("helo_name"), Some("\u{fffd}\u{fffd}"));
    }

    /// A line of exactly `len` bytes including its `\n`.
    fn line_of(len: usize) -> Vec<u8> {
        let mut l = b"x=".to_vec();
        l.resize(len - 1, b'v');
        l.push(b'\n');
        l
    }

    #[test]
    fn line_length_boundary() {
        for step in [1, 1000, MAX_LINE_LEN + 10] {
            let mut ok = line_of(MAX_LINE_LEN);
            ok.push(b'\n');
            let (reqs, err) = feed(&ok, step);
            assert_eq!((reqs.len(), err), (1, None), "step {step}");
            assert_eq!(reqs[0].value("x").len(), MAX_LINE_LEN - 3);

            let mut bad = line_of(MAX_LINE_LEN + 1);
            bad.push(b'\n');
            let (reqs, err) = feed(&bad, step);
            assert!(reqs.is_empty());
            assert_eq!(err, Some(AttrError::LineTooLong { max: MAX_LINE_LEN }));
        }
        // Refused before the newline arrives: MAX_LINE_LEN bytes without
        // one can never become a line that fits.
        let mut d = Decoder::new();
        assert!(d.push(&vec![b'a'; MAX_LINE_LEN - 1]).is_ok());
        assert_eq!(
            d.push(b"a"),
            Err(AttrError::LineTooLong { max: MAX_LINE_LEN })
        );
        // The \r of a CRLF counts.
        let mut crlf = line_of(MAX_LINE_LEN);
        let n = crlf.len();
        crlf[n - 2] = b'\r';
        crlf.extend_from_slice(b"\n");
        assert_eq!(feed(&crlf, 1).0.len(), 1);
    }

    /// A request of exactly `len` bytes: full-size lines with distinct
    /// names, one shorter line, then the empty line.
    fn request_of(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let left = len - 1 - out.len();
            if left == 0 {
                break;
            }
            let take = left.min(MAX_LINE_LEN);
            let mut l = format!("n{i}=").into_bytes();
            assert!(take > l.len(), "cannot build a request of {len} bytes");
            l.resize(take - 1, b'v');
            l.push(b'\n');
            out.extend_from_slice(&l);
            i += 1;
        }
        out.push(b'\n');
        assert_eq!(out.len(), len);
        out
    }

    #[test]
    fn request_length_boundary() {
        for step in [1, 4096, MAX_REQUEST_LEN + 1] {
            let (reqs, err) = feed(&request_of(MAX_REQUEST_LEN), step);
            assert_eq!((reqs.len(), err), (1, None), "step {step}");
            let (reqs, err) = feed(&request_of(MAX_REQUEST_LEN + 1), step);
            assert!(reqs.is_empty(), "step {step}");
            assert_eq!(
                err,
                Some(AttrError::RequestTooLong {
                    max: MAX_REQUEST_LEN
                }),
                "step {step}"
            );
        }
        // The limit is per request: two requests of the maximum size on one
        // connection are both fine.
        let mut two = request_of(MAX_REQUEST_LEN);
        two.extend_from_slice(&request_of(MAX_REQUEST_LEN));
        assert_eq!(feed(&two, 5000).0.len(), 2);
    }

    #[test]
    fn attribute_count_boundary() {
        let build = |n: usize| {
            let mut v = Vec::new();
            for i in 0..n {
                v.extend_from_slice(format!("a{i}=\n").as_bytes());
            }
            v.push(b'\n');
            v
        };
        let (reqs, err) = feed(&build(MAX_ATTRIBUTES), 1);
        assert_eq!((reqs.len(), err), (1, None));
        assert_eq!(reqs[0].len(), MAX_ATTRIBUTES);
        let (reqs, err) = feed(&build(MAX_ATTRIBUTES + 1), 1);
        assert!(reqs.is_empty());
        assert_eq!(
            err,
            Some(AttrError::TooManyAttributes {
                max: MAX_ATTRIBUTES
            })
        );
    }

    #[test]
    fn in_request_tracks_partial_input() {
        let mut d = Decoder::new();
        assert!(!d.in_request());
        d.push(b"a=1").unwrap();
        assert!(d.in_request());
        d.push(b"\n").unwrap();
        assert!(d.in_request());
        d.push(b"\n").unwrap();
        assert!(!d.in_request());
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        encode_reply("DUNNO", &mut out);
        assert_eq!(out, b"action=DUNNO\n\n");
        out.clear();
        encode_reply("PREPEND X-A: b\n\naction=OK", &mut out);
        assert_eq!(out, b"action=PREPEND X-A: b  action=OK\n\n");
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            AttrError::LineTooLong { max: 8192 }.to_string(),
            "attribute line longer than 8192 bytes"
        );
        assert_eq!(
            AttrError::MissingEquals { line: 3 }.to_string(),
            "line 3 of the request is not name=value"
        );
    }
}
