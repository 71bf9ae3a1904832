//! The node's memory of publish `idempotency_key`s: a retried publish with a key seen on the
//! same channel within `api.idempotency_window` returns the first publish's position and
//! publishes nothing.
//!
//! Concurrent publishes with one key share one cell, so only one of them reaches the broker;
//! if it fails the cell stays empty and the next one tries again. The store holds at most
//! `api.max_idempotency_keys` keys; past that a new key is refused (`over_capacity`) rather
//! than an older one forgotten early, which would break the promise silently.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::broker::StreamPosition;

/// Longest `idempotency_key`, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 256;

type Key = (Arc<str>, Arc<str>);

/// One remembered publish: filled once the broker has answered.
pub(crate) type Cell = Arc<OnceCell<StreamPosition>>;

#[derive(Debug, Default)]
struct Inner {
    cells: HashMap<Key, Cell>,
    /// Keys in insertion order with their expiry; the window is the same for all, so the
    /// front is always the next to expire.
    order: VecDeque<(Instant, Key)>,
}

/// A bounded map (channel, key) → position, each entry kept for one window.
#[derive(Debug)]
pub(crate) struct IdempotencyStore {
    inner: Mutex<Inner>,
    window: Duration,
    max: usize,
}

/// The store is full of live keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl IdempotencyStore {
    pub(crate) fn new(window: Duration, max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            window,
            max,
        }
    }

    /// The cell of `(channel, key)`: the existing one within the window, or a new empty one.
    pub(crate) fn cell(&self, channel: &str, key: &str, now: Instant) -> Result<Cell, Full> {
        let mut inner = self.inner.lock();
        while inner.order.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, k)) = inner.order.pop_front() {
                inner.cells.remove(&k);
            }
        }
        let k: Key = (channel.into(), key.into());
        if let Some(cell) = inner.cells.get(&k) {
            return Ok(cell.clone());
        }
        if inner.cells.len() >= self.max {
            return Err(Full);
        }
        let cell = Cell::default();
        inner.cells.insert(k.clone(), cell.clone());
        let expires = now.checked_add(self.window).unwrap_or(now);
        inner.order.push_back((expires, k));
        Ok(cell)
    }

    /// Keys remembered now (expired ones included until the next insert prunes them).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: "e".into(),
            offset,
        }
    }

    #[test]
    fn a_key_is_one_cell_per_channel_within_the_window() {
        let store = IdempotencyStore::new(Duration::from_secs(10), 10);
        let now = Instant::now();
        let a = store.cell("c", "k", now).unwrap();
        a.set(pos(1)).unwrap();
        let again = store.cell("c", "k", now + Duration::from_secs(9)).unwrap();
        assert_eq!(again.get(), Some(&pos(1)));
        let other_channel = store.cell("d", "k", now).unwrap();
        assert_eq!(other_channel.get(), None);
        let later = store.cell("c", "k", now + Duration::from_secs(10)).unwrap();
        assert_eq!(later.get(), None, "the window has passed");
    }

    #[test]
    fn the_cap_refuses_new_keys_until_old_ones_expire() {
        let store = IdempotencyStore::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        store.cell("c", "1", now).unwrap();
        store.cell("c", "2", now).unwrap();
        assert_eq!(store.cell("c", "3", now), Err(Full));
        // A known key is still answered when full.
        assert!(store.cell("c", "1", now).is_ok());
        assert!(store.cell("c", "3", now + Duration::from_secs(10)).is_ok());
        assert_eq!(store.len(), 1);
    }
}
