//! The one accept loop every listener runs (socketmap, policy server,
//! metrics listener; the milter's is indymilter's, fed by
//! [`Admission::accepted`] and [`Admission::accept_failed`]): the
//! connection limit, the open-connection gauge, accept errors logged,
//! counted and backed off from, and [`IdleTimer`] for the connections'
//! idle timeout. A door at its limit closes its longest-idle connection
//! for the new one ([`Slots`]): Postfix's clients keep connections open
//! between requests, so idle ones must not starve new lookups.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::{Accepted, Listener};
use crate::metrics::{Frontend, Metrics};
use crate::util::rate::RateLimit;

/// Lines per minute saying a door is full (the rest are counted).
const LIMIT_LINES_PER_MINUTE: u32 = 6;

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

    /// Count and log (rate-limited) a new connection finding every slot
    /// taken; `closed` when the longest-idle connection was closed for it.
    fn limit_reached(&self, closed: bool, limit: &RateLimit) {
        if let Some((m, f)) = &self.metrics {
            m.error(f.as_str(), "connection_limit");
            if closed {
                m.error(f.as_str(), "idle_connection_closed");
            }
        }
        if let Some(unsaid) = limit.admit() {
            let action = if closed {
                "closing the longest-idle connection for the new one"
            } else {
                "every connection is busy; the new one waits for a slot"
            };
            tracing::warn!(
                listener = self.name,
                max_connections = self.max_connections,
                unsaid,
                "connection limit reached; {action}"
            );
        }
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
/// each served by `handle(conn, peer, opened)` on a task of its own; then
/// drain the open ones as [`Admission::drain`] says. `opened` is the
/// connection's place in the listener, for its [`IdleTimer::opened`].
pub async fn serve<H, F>(
    listener: Listener,
    admission: Admission,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Accepted, String, Opened) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(admission.max_connections.max(1)));
    let open = Slots::default();
    let limit_log = RateLimit::new(Duration::from_secs(60), LIMIT_LINES_PER_MINUTE);
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (conn, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                admission.accept_failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                admission.limit_reached(open.close_longest_idle(), &limit_log);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let gauge = admission.accepted();
        let slot = open.insert();
        let served = handle(conn, peer, Opened(slot.slot.clone()));
        conns.spawn(async move {
            let _permit = permit;
            let _open = gauge;
            let _slot = slot;
            served.await
        });
    }
    drop(listener);
    // Connections waiting for a request end now; one answering a request
    // ends once it has answered ([`IdleTimer::closing`]).
    open.close_all();
    if admission.drain == Drain::Abort {
        conns.abort_all();
    }
    while conns.join_next().await.is_some() {}
}

/// A connection's place in the listener that accepted it: how the
/// listener closes it (shutdown, or the connection limit) and sees how
/// long it has been idle. Given to [`IdleTimer::opened`].
pub struct Opened(Arc<Slot>);

/// Marks a slot busy.
const BUSY: u64 = u64::MAX;

/// One open connection as the accept loop sees it: since when it has been
/// waiting for a request, and the signal that closes it.
struct Slot {
    /// Nanoseconds after [`Slots::epoch`] since which the connection has
    /// been idle, or [`BUSY`].
    idle_since: AtomicU64,
    /// Set once to close the connection; `waker` wakes it. Polled on
    /// every wait for a request, so it is two atomics, not a
    /// [`CancellationToken`] (whose waits register under a lock).
    closed: AtomicBool,
    waker: AtomicWaker,
    epoch: Instant,
}

impl Slot {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ready once [`Slot::close`] was called; wakes `cx` then.
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closed() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The open connections of one listener.
struct Slots {
    epoch: Instant,
    next: AtomicU64,
    open: Arc<Mutex<HashMap<u64, Arc<Slot>>>>,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            open: Arc::default(),
        }
    }
}

/// Removes its slot when the connection ends.
struct SlotGuard {
    id: u64,
    slot: Arc<Slot>,
    open: Arc<Mutex<HashMap<u64, Arc<Slot>>>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slots {
    fn insert(&self) -> SlotGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            idle_since: AtomicU64::new(BUSY),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            epoch: self.epoch,
        });
        lock(&self.open).insert(id, slot.clone());
        SlotGuard {
            id,
            slot,
            open: self.open.clone(),
        }
    }

    fn close_all(&self) {
        for s in lock(&self.open).values() {
            s.close();
        }
    }

    /// Signal the connection idle the longest to close; `false` when none
    /// is idle (each is answering a request).
    fn close_longest_idle(&self) -> bool {
        let open = lock(&self.open);
        let longest = open
            .values()
            .filter(|s| !s.is_closed())
            .map(|s| (s.idle_since.load(Ordering::Relaxed), s))
            .filter(|(since, _)| *since != BUSY)
            .min_by_key(|(since, _)| *since);
        match longest {
            Some((_, s)) => {
                s.close();
                true
            }
            None => false,
        }
    }
}

/// Marks the slot idle while a connection waits for a request
/// ([`IdleTimer::expired`] is pending), busy again when dropped.
struct Waiting<'a>(&'a Slot);

impl<'a> Waiting<'a> {
    fn new(slot: &'a Slot, since: Instant) -> Waiting<'a> {
        let nanos = since.saturating_duration_since(slot.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(BUSY - 1).min(BUSY - 1);
        slot.idle_since.store(nanos, Ordering::Relaxed);
        Waiting(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.idle_since.store(BUSY, Ordering::Relaxed);
    }
}

/// Why [`IdleTimer::expired`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Idle for the whole limit.
    Idle,
    /// The listener closes the connection (shutdown, or the connection
    /// limit).
    Closed,
}

/// A connection's idle timeout: [`IdleTimer::expired`] resolves once
/// `limit` has passed since the last [`IdleTimer::touch`]. The limit is
/// asked for again whenever the timer fires, so a reloaded value applies
/// to open connections. Costs a clock read per touch; the timer itself is
/// only re-armed when it fires early.
///
/// Made with [`IdleTimer::opened`] for a connection [`serve`] accepted, it
/// also resolves when the listener closes this connection: at its
/// connection limit, for a new one, because it has been idle the longest
/// (waiting in `expired` is what counts as idle), or at shutdown. Made
/// with [`IdleTimer::new`], it is a plain timer.
pub struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    last: Instant,
    slot: Option<Arc<Slot>>,
}

impl IdleTimer {
    pub fn new(limit: Duration) -> IdleTimer {
        Self::with_slot(limit, None)
    }

    /// The timer of a connection [`serve`] accepted.
    pub fn opened(limit: Duration, opened: &Opened) -> IdleTimer {
        Self::with_slot(limit, Some(opened.0.clone()))
    }

    fn with_slot(limit: Duration, slot: Option<Arc<Slot>>) -> IdleTimer {
        let last = Instant::now();
        IdleTimer {
            sleep: Box::pin(tokio::time::sleep_until(last + limit)),
            last,
            slot,
        }
    }

    /// The connection did something (answered a request).
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// [`IdleTimer::touch`] with a time already read.
    pub fn touch_at(&mut self, at: Instant) {
        self.last = self.last.max(at);
    }

    /// Whether the listener is closing this connection (shutdown, or the
    /// connection limit): answer what was asked, then end.
    pub fn closing(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.is_closed())
    }

    /// Resolves when the connection has been idle for `limit()`, or the
    /// listener closes it. Cancel-safe: use it in `select!`.
    pub async fn expired(&mut self, limit: impl Fn() -> Duration) -> Expiry {
        let Some(slot) = &self.slot else {
            Self::timed_out(&mut self.sleep, self.last, limit).await;
            return Expiry::Idle;
        };
        let _waiting = Waiting::new(slot, self.last);
        let timed_out = Self::timed_out(&mut self.sleep, self.last, limit);
        tokio::pin!(timed_out);
        std::future::poll_fn(|cx| {
            if slot.poll_closed(cx).is_ready() {
                return Poll::Ready(Expiry::Closed);
            }
            timed_out.as_mut().poll(cx).map(|()| Expiry::Idle)
        })
        .await
    }

    async fn timed_out(sleep: &mut Pin<Box<Sleep>>, last: Instant, limit: impl Fn() -> Duration) {
        loop {
            sleep.as_mut().await;
            let deadline = last + limit();
            if Instant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline);
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

    /// A TCP listener on a free loopback port, and its address.
    fn loopback_listener() -> (Listener, std::net::SocketAddr) {
        let listener = Listener::bind(
            &"inet:127.0.0.1:0".parse::<ListenAddr>().unwrap(),
            &SocketOptions::default(),
        )
        .unwrap();
        match listener.local_addr().unwrap() {
            ListenAddr::Inet(a) => (listener, a),
            ListenAddr::Unix(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn serves_at_most_max_connections_and_counts_them() {
        let metrics = Arc::new(Metrics::new());
        let (listener, addr) = loopback_listener();
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
            move |conn, _, _| {
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

    /// Shutdown ends a connection waiting for a request at once, with
    /// [`Expiry::Closed`], not after its idle limit; one answering a
    /// request sees [`IdleTimer::closing`] once it has answered.
    #[tokio::test]
    async fn shutdown_closes_connections_waiting_for_a_request() {
        let (listener, addr) = loopback_listener();
        let admission = Admission {
            name: "test",
            max_connections: 4,
            drain: Drain::Wait,
            metrics: None,
        };
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(serve(
            listener,
            admission,
            shutdown.clone(),
            move |_, _, opened| {
                let tx = tx.clone();
                async move {
                    let mut idle = IdleTimer::opened(Duration::from_secs(3600), &opened);
                    assert!(!idle.closing());
                    let _ = tx.send(None);
                    let why = idle.expired(|| Duration::from_secs(3600)).await;
                    let _ = tx.send(Some((why, idle.closing(), Instant::now())));
                }
            },
        ));
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A byte, so the listener's deferred accept returns at once.
        open.write_all(b"x").await.unwrap();
        assert!(rx.recv().await.unwrap().is_none(), "accepted");
        let at = Instant::now();
        shutdown.cancel();
        task.await.unwrap();
        let (why, closing, when) = rx.recv().await.unwrap().unwrap();
        assert_eq!((why, closing), (Expiry::Closed, true));
        assert!(when - at < Duration::from_secs(1), "{:?}", when - at);
    }
}
