//! An accepted unix-socket connection that wakes the daemon only when
//! there is something to read.
//!
//! tokio registers its sockets for both readable and writable events. On
//! a unix stream socket the kernel signals "writable" every time the peer
//! reads what was sent (each buffer it frees wakes the writer), so every
//! reply Postfix reads woke the daemon once more for nothing: about as
//! many wake-ups again as requests. The front doors write a few hundred
//! bytes at most per request into a buffer of hundreds of kilobytes, so
//! the connection is registered for reading only; a write that finds the
//! buffer full (a client that stopped reading) is tried again every
//! [`FULL_RETRY`] instead of waiting for a writable event.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// How often a write into a full socket buffer is tried again.
pub const FULL_RETRY: Duration = Duration::from_millis(5);

/// A unix stream registered for readable events only.
pub struct ReadWoken {
    fd: AsyncFd<std::os::unix::net::UnixStream>,
    /// While a write waits for room in a full buffer.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReadWoken {
    /// Take over an accepted connection. Must be called inside a tokio
    /// runtime.
    pub fn new(s: tokio::net::UnixStream) -> io::Result<ReadWoken> {
        let std = s.into_std()?;
        std.set_nonblocking(true)?;
        // SAFETY: an owned `std::os::unix::net::UnixStream` keeps its one
        // descriptor open and unchanged until it is dropped with the
        // `AsyncFd`.
        let fd = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(ReadWoken { fd, retry: None })
    }

    /// The pid of the process at the other end (`SO_PEERCRED`).
    pub fn peer_pid(&self) -> Option<u32> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor and a buffer of the size given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (rc == 0 && cred.pid > 0)
            .then(|| u32::try_from(cred.pid).ok())
            .flatten()
    }
}

impl AsyncRead for ReadWoken {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // Edge-triggered: a read that did not fill the buffer
                    // emptied the socket, and new bytes bring a new edge.
                    // Saves the read that would only say "would block".
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ReadWoken {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.retry {
                ready!(wait.as_mut().poll(cx));
                this.retry = None;
            }
            match this.fd.get_ref().write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    this.retry = Some(Box::pin(tokio::time::sleep(FULL_RETRY)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.fd.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ReadWoken, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (ReadWoken::new(a).unwrap(), b)
    }

    #[tokio::test]
    async fn reads_and_writes_both_ways_down_to_single_bytes() {
        let (mut ours, mut theirs) = pair().await;
        theirs.write_all(b"12:hello, world,").await.unwrap();
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        while got.len() < 16 {
            let n = ours.read(&mut one).await.unwrap();
            assert_eq!(n, 1);
            got.push(one[0]);
        }
        assert_eq!(got, b"12:hello, world,");
        ours.write_all(b"8:OK may,").await.unwrap();
        let mut reply = [0u8; 9];
        theirs.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"8:OK may,");
        // A request that comes after a short read still wakes the reader.
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 64];
            let n = ours.read(&mut b).await.unwrap();
            (ours, b[..n].to_vec())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        theirs.write_all(b"later").await.unwrap();
        let (mut ours, got) = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(got, b"later");
        // End of file, then a shutdown the peer sees.
        drop(theirs);
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_write_into_a_full_buffer_waits_for_the_reader() {
        let (mut ours, mut theirs) = pair().await;
        // More than any socket buffer: the writer must wait for the
        // reader, without a writable event to wake it.
        let big = vec![7u8; 4 << 20];
        let expected = big.len();
        let writer = tokio::spawn(async move {
            ours.write_all(&big).await.unwrap();
            ours.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), theirs.read_to_end(&mut got))
            .await
            .expect("the whole write arrived")
            .unwrap();
        assert_eq!(got.len(), expected);
        assert!(got.iter().all(|&b| b == 7));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_peer_pid_is_this_process() {
        let (ours, _theirs) = pair().await;
        assert_eq!(ours.peer_pid(), Some(std::process::id()));
    }
}
