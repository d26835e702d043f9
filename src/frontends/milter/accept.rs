//! The milter's listener as indymilter wants it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use indymilter::EitherStream;
use tokio::net::TcpStream;

use super::watch::Watched;
use crate::listen::{ACCEPT_BACKOFF, Admission, Listener, ReadWoken};

/// The listener as indymilter wants it. A failed accept (out of file
/// descriptors, ...) is logged and retried after a pause instead of
/// ending the milter, as in [`crate::listen::serve`] (indymilter runs the
/// loop itself and holds the connection limit).
pub(super) struct Accept {
    pub(super) listener: Listener,
    pub(super) admission: Admission,
    pub(super) backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl indymilter::Listener for Accept {
    type Io = Watched<EitherStream<TcpStream, ReadWoken>>;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(pause) = &mut self.backoff {
                ready!(pause.as_mut().poll(cx));
                self.backoff = None;
            }
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.poll_accept(cx).map_ok(|(s, peer)| {
                    // Small request/reply exchanges: never wait for Nagle.
                    let _ = s.set_nodelay(true);
                    (EitherStream::Tcp(s), peer.to_string())
                }),
                // Woken for reading only (see `ReadWoken`).
                Listener::Unix(l, _) => l.poll_accept(cx).map(|r| {
                    let (s, _) = r?;
                    Ok((EitherStream::Unix(ReadWoken::new(s)?), "unix".to_string()))
                }),
            };
            match ready!(accepted) {
                Ok((s, peer)) => {
                    let metrics = self.admission.metrics.as_ref().map(|(m, _)| m.clone());
                    return Poll::Ready(Ok(Watched::new(s, peer, metrics)));
                }
                Err(e) => {
                    self.admission.accept_failed(&e);
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}
