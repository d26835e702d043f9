//! The MTA's bytes as indymilter reads them, checked on the way: a packet
//! indymilter would end the connection on without a word (a zero length,
//! an absurd length, an unknown command, a command without the data it
//! needs) or ignore without a reply (a message command outside a message:
//! the MTA would wait for an answer that never comes) fails the read
//! instead, so that the connection closes, with a log line (rate-limited:
//! many bad clients at once give a few lines and a count) and an
//! `errors_total{component="milter"}` count.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;
use crate::util::rate::RateLimit;

/// The longest packet payload indymilter reads (its `MAX_BUFFER_LEN`).
pub const MAX_PAYLOAD: u32 = 1024 * 1024 - 1;

/// Protocol-error lines per minute, over every connection; the rest are
/// counted and the count given with the next line.
static LINES: RateLimit = RateLimit::new(Duration::from_secs(60), 10);

/// What is wrong with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("zero-length packet")]
    ZeroLength,
    #[error("packet of {0} bytes, over the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
    #[error("unknown command {0:#04x}")]
    UnknownCommand(u8),
    #[error("command {:?} without its data", char::from(*.0))]
    Empty(u8),
    #[error("command {:?} outside a message (no MAIL FROM before it)", char::from(*.0))]
    OutOfOrder(u8),
}

impl ProtocolError {
    /// The `kind` label of `errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            ProtocolError::ZeroLength => "zero_length_packet",
            ProtocolError::TooLong(_) => "packet_too_long",
            ProtocolError::UnknownCommand(_) => "unknown_command",
            ProtocolError::Empty(_) => "empty_command",
            ProtocolError::OutOfOrder(_) => "command_out_of_order",
        }
    }
}

/// The packet framing seen so far: a 4-byte length (command byte
/// included), the command byte, the payload.
#[derive(Debug, Default)]
pub struct Frames {
    header: [u8; 5],
    have: usize,
    /// Payload bytes still to come of the current packet.
    left: u32,
    /// Inside a message: MAIL FROM seen, not yet ended.
    in_message: bool,
}

impl Frames {
    /// Take bytes the MTA sent; the first packet that is wrong.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        while !bytes.is_empty() {
            if self.left > 0 {
                let skip = bytes.len().min(self.left as usize);
                self.left -= skip as u32;
                bytes = &bytes[skip..];
                continue;
            }
            // Byte by byte through the header: a bad length is told at
            // once, not after a command byte that may never come.
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have == 4 {
                self.length()?;
            } else if self.have == 5 {
                self.have = 0;
                self.packet()?;
            }
        }
        Ok(())
    }

    /// The payload length the header gives, once its 4 bytes are in.
    fn length(&self) -> Result<u32, ProtocolError> {
        let [a, b, c, d, _] = self.header;
        let len = u32::from_be_bytes([a, b, c, d]);
        if len == 0 {
            return Err(ProtocolError::ZeroLength);
        }
        let payload = len - 1;
        if payload > MAX_PAYLOAD {
            return Err(ProtocolError::TooLong(payload));
        }
        Ok(payload)
    }

    fn packet(&mut self) -> Result<(), ProtocolError> {
        let payload = self.length()?;
        let cmd = self.header[4];
        if !b"ABCDEHKLMNOQRTU".contains(&cmd) {
            return Err(ProtocolError::UnknownCommand(cmd));
        }
        if payload == 0 && b"BCDHLMORU".contains(&cmd) {
            return Err(ProtocolError::Empty(cmd));
        }
        match cmd {
            b'M' => self.in_message = true,
            b'R' | b'T' | b'L' | b'N' | b'B' | b'E' if !self.in_message => {
                return Err(ProtocolError::OutOfOrder(cmd));
            }
            b'E' | b'A' | b'C' | b'H' | b'Q' | b'K' => self.in_message = false,
            _ => {}
        }
        self.left = payload;
        Ok(())
    }
}

/// A connection whose reads go through [`Frames`].
pub struct Watched<S> {
    inner: S,
    frames: Frames,
    peer: String,
    metrics: Option<Arc<Metrics>>,
    failed: bool,
}

impl<S> Watched<S> {
    pub fn new(inner: S, peer: String, metrics: Option<Arc<Metrics>>) -> Watched<S> {
        Watched {
            inner,
            frames: Frames::default(),
            peer,
            metrics,
            failed: false,
        }
    }

    fn report(&self, e: ProtocolError) {
        if let Some(m) = &self.metrics {
            m.error("milter", e.kind());
        }
        if let Some(unsaid) = LINES.admit() {
            tracing::warn!(
                peer = %self.peer,
                problem = %e,
                unsaid,
                "milter protocol error; closing connection"
            );
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res
            && let Err(e) = this.frames.feed(&buf.filled()[before..])
        {
            this.failed = true;
            this.report(e);
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(cmd: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32 + 1).to_be_bytes().to_vec();
        v.push(cmd);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_whole_session_split_anywhere_passes() {
        let mut s = Vec::new();
        for (c, p) in [
            (b'O', &b"\0\0\0\x06\0\0\0\0\0\0\0\0"[..]),
            (b'C', b"h\0"),
            (b'H', b"h\0"),
            (b'M', b"<a@b>\0"),
            (b'R', b"<c@d>\0"),
            (b'T', b""),
            (b'L', b"X\0y\0"),
            (b'N', b""),
            (b'E', b""),
            (b'A', b""),
            (b'Q', b""),
        ] {
            s.extend(packet(c, p));
        }
        for split in 0..s.len() {
            let mut f = Frames::default();
            f.feed(&s[..split]).unwrap();
            f.feed(&s[split..]).unwrap();
        }
    }

    #[test]
    fn bad_packets_are_named() {
        let check = |bytes: &[u8]| Frames::default().feed(bytes).unwrap_err();
        assert_eq!(check(b"\0\0\0\0Q"), ProtocolError::ZeroLength);
        // The largest payload passes; one byte more does not.
        // A zero or absurd length is told without waiting for the
        // command byte.
        assert_eq!(check(b"\0\0\0\0"), ProtocolError::ZeroLength);
        let mut f = Frames::default();
        f.feed(&(MAX_PAYLOAD + 1).to_be_bytes()).unwrap();
        assert_eq!(f.feed(b"M"), Ok(()));
        assert_eq!(
            check(&(MAX_PAYLOAD + 2).to_be_bytes()),
            ProtocolError::TooLong(MAX_PAYLOAD + 1)
        );
        assert_eq!(
            check(&packet(b'z', b"x")),
            ProtocolError::UnknownCommand(b'z')
        );
        assert_eq!(check(&packet(b'R', b"")), ProtocolError::Empty(b'R'));
        assert_eq!(
            check(&packet(b'R', b"<c@d>\0")),
            ProtocolError::OutOfOrder(b'R')
        );
        let mut after_end = packet(b'M', b"<a@b>\0");
        after_end.extend(packet(b'E', b""));
        after_end.extend(packet(b'T', b""));
        assert_eq!(check(&after_end), ProtocolError::OutOfOrder(b'T'));
    }
}
