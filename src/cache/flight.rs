//! Single flight: one fetch per key at a time; whoever else asks for the
//! key meanwhile waits for that fetch's result.
//!
//! A flight is registered under its key until its [`Landing`] guard drops,
//! however the fetch ends (finished, cancelled, panicked): waiters then
//! see the result or, if there is none, `None`, never a hang.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::watch;

/// A running fetch's result, to wait for.
#[derive(Debug)]
pub struct Flight<V> {
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Flight<V> {
    /// The fetch's result; `None` when the fetch ended without one
    /// (cancelled or panicked).
    pub async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }

    /// [`Flight::wait`], at most `limit`: `Err(())` when the time is up
    /// (the fetch goes on).
    pub async fn wait_at_most(self, limit: Duration) -> Result<Option<V>, ()> {
        tokio::time::timeout(limit, self.wait())
            .await
            .map_err(|_| ())
    }

    /// The result if the fetch has finished with one.
    pub fn result(&self) -> Option<V> {
        self.rx.borrow().clone()
    }
}

/// How asking for a flight went.
#[derive(Debug)]
pub enum FlightStart<V> {
    /// A new fetch started: the caller's.
    New(Flight<V>),
    /// A fetch of the key was already running: its result.
    Running(Flight<V>),
    /// No fetch runs and the limit of flights is reached: none started.
    Full,
}

impl<V> FlightStart<V> {
    /// The flight to wait for, if there is one.
    pub fn flight(self) -> Option<Flight<V>> {
        match self {
            FlightStart::New(f) | FlightStart::Running(f) => Some(f),
            FlightStart::Full => None,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, FlightStart::New(_))
    }
}

/// The registry of running fetches.
pub(super) struct Flights<K, V> {
    map: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
    max: usize,
}

/// What [`Flights::begin`] gives.
pub(super) enum Begin<'a, K: Hash + Eq, V> {
    /// The caller leads: send the result on the sender, then drop the
    /// landing.
    Lead(watch::Sender<Option<V>>, Landing<'a, K, V>, Flight<V>),
    Follow(Flight<V>),
    Full,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub(super) fn new(max: usize) -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().contains_key(key)
    }

    /// Join the flight of `key`, or register a new one (unless `limited`
    /// and the limit is reached).
    pub(super) fn begin(&self, key: &K, limited: bool) -> Begin<'_, K, V> {
        let mut map = self.lock();
        // A flight that has its result stays listed until its task ends:
        // that one is not joined (its result may predate the caller's
        // question), a new one starts.
        if let Some(rx) = map.get(key)
            && rx.borrow().is_none()
        {
            return Begin::Follow(Flight { rx: rx.clone() });
        }
        if limited && map.len() >= self.max && !map.contains_key(key) {
            return Begin::Full;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        let landing = Landing {
            flights: self,
            flight: Some((key.clone(), rx.clone())),
        };
        Begin::Lead(tx, landing, Flight { rx })
    }

    /// Run `f` on the keys in flight (under the registry's lock).
    pub(super) fn with_keys<R>(&self, f: impl FnOnce(&dyn Fn(&K) -> bool) -> R) -> R {
        let map = self.lock();
        f(&|k| map.contains_key(k))
    }
}

/// Unregisters a flight when dropped, whatever ended it.
pub(super) struct Landing<'a, K: Hash + Eq, V> {
    flights: &'a Flights<K, V>,
    /// `None` once detached.
    flight: Option<(K, watch::Receiver<Option<V>>)>,
}

impl<K: Hash + Eq, V> Landing<'_, K, V> {
    /// Take the flight's key and channel; dropping `self` then does
    /// nothing (the owner unregisters with [`Flights::unregister`]).
    pub(super) fn detach(mut self) -> (K, watch::Receiver<Option<V>>) {
        self.flight.take().expect("not detached")
    }
}

impl<K: Hash + Eq, V> Flights<K, V> {
    /// Forget the flight of `key` if it is the one of `rx`.
    pub(super) fn unregister(&self, key: &K, rx: &watch::Receiver<Option<V>>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|r| r.same_channel(rx)) {
            map.remove(key);
        }
    }
}

impl<K: Hash + Eq, V> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        if let Some((key, rx)) = self.flight.take() {
            self.flights.unregister(&key, &rx);
        }
    }
}
