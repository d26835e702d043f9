//! The client side of the SMTP dialogue a probe needs: replies (RFC 5321
//! section 4.2), EHLO keywords, and a connection that reads replies under
//! a deadline and with bounded memory.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply line accepted, line ending included. RFC 5321 allows 512
/// octets; real servers stay well below this.
pub const MAX_LINE: usize = 2048;
/// Most lines accepted in one reply (an EHLO reply has one per extension).
pub const MAX_LINES: usize = 64;

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// The text of each line after the code and separator.
    pub lines: Vec<String>,
}

impl SmtpReply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply as one line for messages: `250 first line` (further lines
    /// elided).
    pub fn summary(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let text: String = first.chars().take(200).collect();
        if text.is_empty() {
            self.code.to_string()
        } else {
            format!("{} {}", self.code, text)
        }
    }

    /// EHLO keywords (upper case), from every line but the first.
    pub fn ehlo_keywords(&self) -> impl Iterator<Item = String> + '_ {
        self.lines.iter().skip(1).filter_map(|l| {
            l.split_ascii_whitespace()
                .next()
                .map(|w| w.to_ascii_uppercase())
        })
    }

    /// Whether an EHLO reply announces an extension.
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.ehlo_keywords()
            .any(|k| k.eq_ignore_ascii_case(keyword))
    }
}

/// A reply that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line longer than [`MAX_LINE`].
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// More than [`MAX_LINES`] lines in one reply.
    #[error("reply longer than {MAX_LINES} lines")]
    TooManyLines,
    /// A line that is not `DDD`, `DDD text` or `DDD-text`, or a
    /// continuation line with another code.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// The server closed the connection (possibly mid-reply).
    #[error("connection closed by the server")]
    Closed,
    /// No complete reply within the deadline.
    #[error("no reply within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A socket error.
    #[error("read error: {0}")]
    Io(String),
}

/// Incremental reply parser: feed it bytes as they arrive, in any split.
#[derive(Debug, Default)]
pub struct ReplyParser {
    line: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Consume bytes from `input` up to the end of the first complete
    /// reply. Returns how many bytes were consumed and the reply, if one
    /// completed; bytes after it are left for the caller.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<SmtpReply>), ReplyError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match rest.iter().position(|&b| b == b'\n') {
                None => {
                    if self.line.len() + rest.len() > MAX_LINE {
                        return Err(ReplyError::LineTooLong);
                    }
                    self.line.extend_from_slice(rest);
                    used = input.len();
                }
                Some(i) => {
                    if self.line.len() + i + 1 > MAX_LINE {
                        return Err(ReplyError::LineTooLong);
                    }
                    self.line.extend_from_slice(&rest[..i]);
                    used += i + 1;
                    if let Some(reply) = self.finish_line()? {
                        return Ok((used, Some(reply)));
                    }
                }
            }
        }
        Ok((used, None))
    }

    fn finish_line(&mut self) -> Result<Option<SmtpReply>, ReplyError> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let bad =
            || ReplyError::Malformed(String::from_utf8_lossy(&line).chars().take(100).collect());
        if line.len() < 3
            || !line[..3].iter().all(u8::is_ascii_digit)
            || !(b'2'..=b'5').contains(&line[0])
        {
            return Err(bad());
        }
        let code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(bad()),
        };
        if let Some(c) = self.code
            && c != code
        {
            return Err(bad());
        }
        if self.lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(code);
        let text = if line.len() > 4 { &line[4..] } else { &[][..] };
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if last {
            self.code = None;
            return Ok(Some(SmtpReply {
                code,
                lines: std::mem::take(&mut self.lines),
            }));
        }
        Ok(None)
    }
}

/// An SMTP connection from the client side.
pub struct SmtpConn<S> {
    stream: S,
    pending: Vec<u8>,
    parser: ReplyParser,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpConn<S> {
    pub fn new(stream: S) -> SmtpConn<S> {
        SmtpConn {
            stream,
            pending: Vec::new(),
            parser: ReplyParser::new(),
        }
    }

    /// Read one reply, all of it within `deadline`.
    pub async fn read_reply(&mut self, deadline: Duration) -> Result<SmtpReply, ReplyError> {
        match tokio::time::timeout(deadline, self.read_reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ReplyError::Timeout(deadline)),
        }
    }

    async fn read_reply_inner(&mut self) -> Result<SmtpReply, ReplyError> {
        loop {
            if !self.pending.is_empty() {
                let (used, reply) = self.parser.feed(&self.pending)?;
                self.pending.drain(..used);
                if let Some(r) = reply {
                    return Ok(r);
                }
            }
            let mut buf = [0u8; 1024];
            let n = self
                .stream
                .read(&mut buf)
                .await
                .map_err(|e| ReplyError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ReplyError::Closed);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Send one command line (CRLF is added) within `deadline`.
    pub async fn send(&mut self, command: &str, deadline: Duration) -> Result<(), ReplyError> {
        let mut line = Vec::with_capacity(command.len() + 2);
        line.extend_from_slice(command.as_bytes());
        line.extend_from_slice(b"\r\n");
        let write = async {
            self.stream.write_all(&line).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(deadline, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ReplyError::Io(e.to_string())),
            Err(_) => Err(ReplyError::Timeout(deadline)),
        }
    }

    /// Send a command and read its reply.
    pub async fn command(
        &mut self,
        command: &str,
        deadline: Duration,
    ) -> Result<SmtpReply, ReplyError> {
        self.send(command, deadline).await?;
        self.read_reply(deadline).await
    }

    /// Bytes received but not yet part of a reply. After a 220 to STARTTLS
    /// there must be none: anything here was sent before the handshake and
    /// must not be trusted (RFC 3207 section 4.2 / CVE-2011-0411).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SmtpReply>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let (used, reply) = p.feed(rest)?;
                rest = &rest[used..];
                out.extend(reply);
            }
        }
        Ok(out)
    }

    #[test]
    fn single_and_multi_line() {
        let r = parse_all(&[b"220 mx.example ESMTP ready\r\n"]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 220);
        assert_eq!(r[0].lines, ["mx.example ESMTP ready"]);
        assert_eq!(r[0].summary(), "220 mx.example ESMTP ready");

        let ehlo = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-starttls\r\n250 8BITMIME\r\n";
        let r = parse_all(&[ehlo]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lines.len(), 5);
        assert!(r[0].has_extension("STARTTLS"));
        assert!(r[0].has_extension("size"));
        assert!(!r[0].has_extension("AUTH"));
        let kw: Vec<_> = r[0].ehlo_keywords().collect();
        assert_eq!(kw, ["PIPELINING", "SIZE", "STARTTLS", "8BITMIME"]);
    }

    #[test]
    fn first_line_is_not_a_keyword() {
        let r = parse_all(&[b"250-STARTTLS is my host name\r\n250 SIZE\r\n"]).unwrap();
        assert!(!r[0].has_extension("STARTTLS"));
    }

    #[test]
    fn bare_code_bare_lf_and_empty_text() {
        let r = parse_all(&[b"250\n", b"220 \r\n", b"354-\r\n354 go\r\n"]).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].code, r[0].lines.clone()), (250, vec![String::new()]));
        assert_eq!(r[1].lines, [""]);
        assert_eq!(r[2].lines, ["", "go"]);
        assert_eq!(r[0].summary(), "250");
    }

    #[test]
    fn split_reads_byte_by_byte() {
        let text: &[u8] = b"250-a\r\n250-STARTTLS\r\n250 b\r\n221 bye\r\n";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let r = parse_all(&chunks).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].has_extension("starttls"));
        assert_eq!(r[1].code, 221);
        // Split in the middle of CRLF and of the code.
        let r = parse_all(&[b"25", b"0-x\r", b"\n25", b"0 y\r\n"]).unwrap();
        assert_eq!(r[0].lines, ["x", "y"]);
    }

    #[test]
    fn leftover_bytes_are_not_consumed() {
        let mut p = ReplyParser::new();
        let input = b"220 go ahead\r\n\x16\x03\x01";
        let (used, reply) = p.feed(input).unwrap();
        assert_eq!(reply.unwrap().code, 220);
        assert_eq!(&input[used..], b"\x16\x03\x01");
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"2x0 ok\r\n",
            b"250_ok\r\n",
            b"600 what\r\n",
            b"150 what\r\n",
            b"\r\n",
            b"250-a\r\n251 b\r\n",
            b"\x00\x01\x02\n",
        ] {
            assert!(
                matches!(parse_all(&[bad]), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Non-UTF-8 text is tolerated.
        let r = parse_all(&[b"220 caf\xe9\r\n"]).unwrap();
        assert_eq!(r[0].code, 220);
    }

    #[test]
    fn over_long_line_is_rejected_even_without_newline() {
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parse_all(&[&long]), Err(ReplyError::LineTooLong));
        let mut line = b"250 ".to_vec();
        line.extend(vec![b'x'; MAX_LINE]);
        line.extend_from_slice(b"\r\n");
        // Fed in pieces: the limit holds across reads.
        let pieces: Vec<&[u8]> = line.chunks(100).collect();
        assert_eq!(parse_all(&pieces), Err(ReplyError::LineTooLong));
        // A line of exactly the limit is fine.
        let mut ok = b"250 ".to_vec();
        ok.extend(vec![b'x'; MAX_LINE - 6]);
        ok.extend_from_slice(b"\r\n");
        assert_eq!(ok.len(), MAX_LINE);
        assert_eq!(parse_all(&[&ok]).unwrap().len(), 1);
    }

    #[test]
    fn too_many_lines() {
        let mut text = Vec::new();
        for _ in 0..MAX_LINES {
            text.extend_from_slice(b"250-X\r\n");
        }
        text.extend_from_slice(b"250 end\r\n");
        assert_eq!(parse_all(&[&text]), Err(ReplyError::TooManyLines));
    }

    #[tokio::test]
    async fn conn_reads_across_writes_and_times_out() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut conn = SmtpConn::new(client);
        let writer = tokio::spawn(async move {
            for part in [&b"220-mx"[..], b".example\r\n220", b" ready\r\n"] {
                server.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut buf = [0u8; 64];
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"EHLO x\r\n");
            server.write_all(b"250 ok\r\n").await.unwrap();
            // Then silence, and finally a close.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(server);
        });
        let r = conn.read_reply(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.lines, ["mx.example", "ready"]);
        let r = conn
            .command("EHLO x", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            conn.read_reply(Duration::from_millis(50)).await,
            Err(ReplyError::Timeout(Duration::from_millis(50)))
        );
        assert_eq!(
            conn.read_reply(Duration::from_secs(5)).await,
            Err(ReplyError::Closed)
        );
        writer.await.unwrap();
    }
}
