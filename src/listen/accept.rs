//! The one accept loop every listener runs (socketmap, policy server,
//! metrics listener; the milter's is indymilter's, fed by
//! [`Admission::accepted`] and [`Admission::accept_failed`]): the
//! connection limit, the open-connection gauge, accept errors logged,
//! counted and backed off from, and [`IdleTimer`] for the connections'
//! idle timeout.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::{Accepted, Listener};
use crate::metrics::{Frontend, Metrics};

/// Pause after a failed accept (out of file descriptors, ...) instead of
/// spinning on the error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What happens to open connections at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Let each finish the request it is on (the front doors: Postfix gets
    /// its answer).
    Wait,
    /// End them at once (the metrics listener).
    Abort,
}

/// How one listener admits connections.
#[derive(Clone)]
pub struct Admission {
    /// For log lines: `"socketmap"`, `"policy server"`, `"metrics listener"`.
    pub name: &'static str,
    /// Connections served at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    pub drain: Drain,
    /// The front door's connection gauge and error counter, when there is
    /// one.
    pub metrics: Option<(Arc<Metrics>, Frontend)>,
}

impl Admission {
    /// What a connection holds while open (the gauge counts it).
    pub fn accepted(&self) -> Option<Box<dyn Any + Send>> {
        self.metrics
            .as_ref()
            .map(|(m, f)| Box::new(m.connection(*f)) as Box<dyn Any + Send>)
    }

    /// Log and count a failed accept.
    pub fn accept_failed(&self, e: &io::Error) {
        if let Some((m, f)) = &self.metrics {
            m.error(f.as_str(), "accept");
        }
        tracing::warn!(error = %e, listener = self.name, "accept failed; pausing before the next");
    }
}

/// Accept connections until `shutdown`, at most `max_connections` at once,
/// each served by `handle(conn, peer)` on a task of its own; then drain the
/// open ones as [`Admission::drain`] says.
pub async fn serve<H, F>(
    listener: Listener,
    admission: Admission,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Accepted, String) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(admission.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((conn, peer)) => {
                let open = admission.accepted();
                let served = handle(conn, peer);
                conns.spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    served.await
                });
            }
            Err(e) => {
                admission.accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    if admission.drain == Drain::Abort {
        conns.abort_all();
    }
    while conns.join_next().await.is_some() {}
}

/// A connection's idle timeout: [`IdleTimer::expired`] resolves once
/// `limit` has passed since the last [`IdleTimer::touch`]. The limit is
/// asked for again whenever the timer fires, so a reloaded value applies
/// to open connections. Costs a clock read per touch; the timer itself is
/// only re-armed when it fires early.
pub struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    last: Instant,
}

impl IdleTimer {
    pub fn new(limit: Duration) -> IdleTimer {
        let last = Instant::now();
        IdleTimer {
            sleep: Box::pin(tokio::time::sleep_until(last + limit)),
            last,
        }
    }

    /// The connection did something (answered a request).
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Resolves when the connection has been idle for `limit()`.
    /// Cancel-safe: use it in `select!`.
    pub async fn expired(&mut self, limit: impl Fn() -> Duration) {
        loop {
            self.sleep.as_mut().await;
            let deadline = self.last + limit();
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{ListenAddr, SocketOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_timer_fires_a_whole_limit_after_the_last_touch() {
        let start = Instant::now();
        let mut t = IdleTimer::new(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(6)).await;
        t.touch();
        t.expired(|| Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        // A shorter limit after a reload applies at the next firing.
        let mut t = IdleTimer::new(Duration::from_secs(10));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.touch();
        t.expired(|| Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn serves_at_most_max_connections_and_counts_them() {
        let metrics = Arc::new(Metrics::new());
        let listener = Listener::bind(
            &"inet:127.0.0.1:0".parse::<ListenAddr>().unwrap(),
            &SocketOptions::default(),
        )
        .unwrap();
        let addr = match listener.local_addr().unwrap() {
            ListenAddr::Inet(a) => a,
            ListenAddr::Unix(_) => unreachable!(),
        };
        let admission = Admission {
            name: "test",
            max_connections: 2,
            drain: Drain::Wait,
            metrics: Some((metrics.clone(), Frontend::Socketmap)),
        };
        let served = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let count = served.clone();
        let task = tokio::spawn(serve(
            listener,
            admission,
            shutdown.clone(),
            move |conn, _| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let Accepted::Tcp(mut s) = conn else { return };
                    let mut b = [0u8; 1];
                    // Echo one byte, then hold the connection until the peer closes.
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.read(&mut b).await;
                    }
                }
            },
        ));
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for s in open.iter_mut().take(2) {
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
        assert_eq!(
            served.load(Ordering::SeqCst),
            2,
            "the third waits for a slot"
        );
        assert_eq!(metrics.open_connections(Frontend::Socketmap), 2);
        // Closing one admits the third.
        drop(open.remove(0));
        open[1].write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        open[1].read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
        assert_eq!(served.load(Ordering::SeqCst), 3);
        drop(open);
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(metrics.open_connections(Frontend::Socketmap), 0);
    }
}
