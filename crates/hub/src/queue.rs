//! The bounded, byte-accounted outbound queue of one connection.
//!
//! Everything the server sends to a client goes through its queue: replies, events and
//! publications. The writer task drains it into the socket. The queue never holds more than
//! `max_bytes` of frames; what happens past that is the slow-consumer policy: frames marked
//! droppable (publications of `drop_oldest` namespaces) are evicted oldest first, and when
//! that is not enough the queue is emptied and closed with 1013, so a stalled reader costs the
//! server at most `max_bytes` plus the socket buffers.
//!
//! Publications of `conflate` namespaces carry a [`ConflateKey`] (channel and publication
//! key). Once the queue holds more than their watermark, it keeps only the newest queued
//! publication per key: older ones are taken out where they stand, the new one goes to the
//! back, so the publications of a channel stay in offset order and nothing else moves.
//! Conflation only ever removes frames; it copies no payload (a frame is a shared pointer).
//!
//! Replies to the connection's own commands are not subject to that rule as such: they are
//! pushed with [`Outbound::push_wait`], which waits (up to a deadline) until the writer has
//! drained enough for the frame to fit. A reply, a history page or a replayed publication
//! therefore never overflows the queue by itself; only a client that reads nothing for the
//! whole wait is closed with 1013.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::frame::Frame;

/// Close code for a slow consumer (RFC 6455 §7.4.1 registry: 1013 Try Again Later).
pub(crate) const TRY_AGAIN: u16 = 1013;

/// Superseded slots are compacted away once there are this many and they outnumber the
/// live ones, so a queue that conflates forever does not grow in slots either.
const COMPACT_AT: usize = 64;

/// What a publication of a `conflate` namespace is the latest value of: its channel and
/// its key (`None`: the channel's publications without a key, which conflate together).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConflateKey {
    /// The channel.
    pub(crate) channel: Arc<str>,
    /// The publication's key.
    pub(crate) key: Option<Arc<str>>,
}

/// What the writer should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Write this frame.
    Frame(Frame),
    /// Send a Close frame with this code and reason, then stop.
    Close(u16, Arc<str>),
}

/// The result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; `dropped` older droppable frames were evicted to make room, and `conflated`
    /// older publications of the same keys were superseded.
    Queued {
        /// Evicted frames.
        dropped: usize,
        /// Superseded publications (`conflate`).
        conflated: usize,
    },
    /// The frame itself was droppable and did not fit; it was discarded.
    Discarded,
    /// The queue overflowed: it is now closed with 1013.
    Overflow,
    /// The queue was already closed; nothing happened.
    Closed,
}

impl Pushed {
    /// Queued, nothing evicted or superseded.
    #[cfg(test)]
    const PLAIN: Self = Self::Queued {
        dropped: 0,
        conflated: 0,
    };
}

#[derive(Debug)]
enum Kind {
    /// Never evicted: replies, events, `disconnect` publications.
    Fixed,
    /// Evicted oldest first when space is short (`drop_oldest`).
    Droppable,
    /// Superseded by a newer publication of the same key past the watermark (`conflate`).
    Conflate(ConflateKey),
}

#[derive(Debug)]
struct Item {
    /// Strictly increasing along the queue, so a slot is found by binary search.
    seq: u64,
    /// `None` once superseded (the slot waits for `pop` or compaction).
    frame: Option<Frame>,
    kind: Kind,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// The part of `bytes` held by droppable frames.
    droppable_bytes: usize,
    next_seq: u64,
    /// The newest queued publication of each conflate key (by `seq`).
    newest: HashMap<ConflateKey, u64>,
    /// Queued conflate publications that are not the newest of their key.
    stale: usize,
    /// Superseded slots still in `items`.
    superseded: usize,
    /// Set once; no frame is accepted after it. Reported by `pop` after the remaining items.
    close: Option<(u16, Arc<str>)>,
    close_reported: bool,
}

impl Inner {
    fn pop_front(&mut self) -> Option<Frame> {
        loop {
            let item = self.items.pop_front()?;
            let Some(frame) = item.frame else {
                self.superseded -= 1;
                continue;
            };
            let n = frame.wire_len();
            self.bytes -= n;
            match &item.kind {
                Kind::Fixed => {}
                Kind::Droppable => self.droppable_bytes -= n,
                Kind::Conflate(key) => {
                    if self.newest.get(key) == Some(&item.seq) {
                        self.newest.remove(key);
                    } else {
                        self.stale -= 1;
                    }
                }
            }
            return Some(frame);
        }
    }

    /// Takes the frame out of slot `i` (a conflate publication), leaving the slot.
    fn supersede(&mut self, i: usize) -> bool {
        let Some(frame) = self.items.get_mut(i).and_then(|item| item.frame.take()) else {
            return false;
        };
        self.bytes -= frame.wire_len();
        self.superseded += 1;
        true
    }

    /// Keeps only the newest queued publication of every conflate key; returns how many
    /// were superseded. One pass, newest first.
    fn conflate_all(&mut self) -> usize {
        if self.stale == 0 {
            return 0;
        }
        let mut n = 0;
        let mut seen = HashSet::new();
        for i in (0..self.items.len()).rev() {
            let item = &self.items[i];
            if item.frame.is_none() {
                continue;
            }
            if let Kind::Conflate(key) = &item.kind {
                if !seen.insert(key.clone()) && self.supersede(i) {
                    n += 1;
                }
            }
        }
        self.stale = 0;
        n
    }

    /// Supersedes the queued publication of `key`, if any, before a newer one is queued.
    fn supersede_key(&mut self, key: &ConflateKey) -> usize {
        let Some(seq) = self.newest.remove(key) else {
            return 0;
        };
        match self.items.binary_search_by_key(&seq, |item| item.seq) {
            Ok(i) => usize::from(self.supersede(i)),
            Err(_) => 0,
        }
    }

    fn compact(&mut self) {
        if self.superseded >= COMPACT_AT && self.superseded * 2 > self.items.len() {
            self.items.retain(|item| item.frame.is_some());
            self.superseded = 0;
        }
    }

    fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.droppable_bytes = 0;
        self.newest.clear();
        self.stale = 0;
        self.superseded = 0;
    }
}

/// A connection's outbound queue (single consumer: the writer task).
#[derive(Debug)]
pub(crate) struct Outbound {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Woken whenever the writer takes a frame out, for [`Outbound::wait_room`].
    room: Notify,
    /// Flips to `true` once, when the queue closes.
    /// Woken (all waiters) when the queue closes; [`Outbound::closed`] checks the state
    /// after registering, so a close is never missed. (A `watch` channel would cost every
    /// connection a shared allocation of several hundred bytes.)
    closed: Notify,
    max_bytes: usize,
    /// The node-wide total of queued bytes (`duplex_queued_bytes`), kept as this queue's
    /// bytes change.
    gauge: Option<Gauge>,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` of frames (by [`Frame::wire_len`]).
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            room: Notify::new(),
            closed: Notify::new(),
            max_bytes,
            gauge: None,
        }
    }

    /// As [`Outbound::new`], adding this queue's bytes to `gauge` while they are queued.
    pub(crate) fn with_gauge(max_bytes: usize, gauge: Gauge) -> Self {
        let mut queue = Self::new(max_bytes);
        queue.gauge = Some(gauge);
        queue
    }

    /// Moves the gauge by the change of the queued bytes from `before` to `after`.
    fn account(&self, before: usize, after: usize) {
        let Some(gauge) = &self.gauge else { return };
        let delta = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        if after > before {
            gauge.inc_by(delta(after - before));
        } else if before > after {
            gauge.dec_by(delta(before - after));
        }
    }

    /// Appends a frame. `droppable` frames may be evicted, or discarded, when space is short.
    pub(crate) fn push(&self, frame: Frame, droppable: bool) -> Pushed {
        let inner = self.inner.lock();
        let kind = if droppable {
            Kind::Droppable
        } else {
            Kind::Fixed
        };
        self.push_locked(inner, frame, kind, usize::MAX)
    }

    /// Appends a publication of a `conflate` namespace. While the queue holds more than
    /// `watermark` bytes with it, only the newest queued publication of each key is kept:
    /// the older ones (this key's included) are superseded where they stand and this one
    /// goes to the back. If even then it does not fit `max_bytes`, the rules of a
    /// non-droppable frame apply (droppable frames are evicted, else 1013).
    pub(crate) fn push_conflated(
        &self,
        frame: Frame,
        key: ConflateKey,
        watermark: usize,
    ) -> Pushed {
        let inner = self.inner.lock();
        self.push_locked(inner, frame, Kind::Conflate(key), watermark)
    }

    fn push_locked(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        frame: Frame,
        kind: Kind,
        watermark: usize,
    ) -> Pushed {
        let len = frame.wire_len();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        let before = inner.bytes;
        let mut conflated = 0;
        let mut superseded_own = false;
        if let Kind::Conflate(key) = &kind {
            if inner.bytes.saturating_add(len) > watermark {
                conflated += inner.conflate_all();
                let own = inner.supersede_key(key);
                superseded_own = own > 0;
                conflated += own;
            }
        }
        let mut dropped = 0;
        if inner.bytes + len > self.max_bytes {
            if inner.bytes - inner.droppable_bytes + len > self.max_bytes {
                // Evicting every droppable frame would not make room.
                if matches!(kind, Kind::Droppable) {
                    let after = inner.bytes;
                    inner.compact();
                    drop(inner);
                    self.account(before, after);
                    return Pushed::Discarded;
                }
                let now = inner.bytes;
                drop(inner);
                self.account(before, now);
                return self.overflow();
            }
            let mut i = 0;
            while inner.bytes + len > self.max_bytes && i < inner.items.len() {
                let live_droppable = matches!(inner.items[i].kind, Kind::Droppable)
                    && inner.items[i].frame.is_some();
                if live_droppable {
                    if let Some(frame) = inner.items.remove(i).and_then(|item| item.frame) {
                        let n = frame.wire_len();
                        inner.bytes -= n;
                        inner.droppable_bytes -= n;
                        dropped += 1;
                    }
                } else {
                    i += 1;
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        match &kind {
            Kind::Fixed => {}
            Kind::Droppable => inner.droppable_bytes += len,
            Kind::Conflate(key) => {
                let older = inner.newest.insert(key.clone(), seq);
                if older.is_some() && !superseded_own {
                    inner.stale += 1;
                }
            }
        }
        inner.bytes += len;
        inner.items.push_back(Item {
            seq,
            frame: Some(frame),
            kind,
        });
        inner.compact();
        let after = inner.bytes;
        drop(inner);
        self.account(before, after);
        self.notify.notify_one();
        Pushed::Queued { dropped, conflated }
    }

    /// Whether a non-droppable frame of `len` bytes fits now, evicting droppable frames if
    /// need be (as [`Outbound::push`] would).
    fn fits(&self, inner: &Inner, len: usize) -> bool {
        (inner.bytes - inner.droppable_bytes).saturating_add(len) <= self.max_bytes
    }

    /// Appends a non-droppable frame if it fits now (see [`Outbound::push`] for evictions);
    /// otherwise gives it back and changes nothing. `Ok(Pushed::Closed)` when closed.
    pub(crate) fn try_push(&self, frame: Frame) -> Result<Pushed, Frame> {
        let inner = self.inner.lock();
        if inner.close.is_none() && !self.fits(&inner, frame.wire_len()) {
            return Err(frame);
        }
        Ok(self.push_locked(inner, frame, Kind::Fixed, usize::MAX))
    }

    /// Waits until a non-droppable frame of `len` bytes fits (`Ok`), the queue closes
    /// (`Err(Pushed::Closed)`) or `deadline` passes: then the queue is closed with 1013 like
    /// an overflow and `Err(Pushed::Overflow)` is returned, for the caller to count. A frame
    /// larger than the whole queue can never fit and overflows at once.
    pub(crate) async fn wait_room(&self, len: usize, deadline: Instant) -> Result<(), Pushed> {
        if len > self.max_bytes {
            return Err(self.overflow());
        }
        let closed = self.closed();
        tokio::pin!(closed);
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        loop {
            // Registered before the check, so a pop between the check and the await still
            // wakes us (`Notify::notify_waiters` only wakes futures that already exist).
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let inner = self.inner.lock();
                if inner.close.is_some() {
                    return Err(Pushed::Closed);
                }
                if self.fits(&inner, len) {
                    return Ok(());
                }
            }
            tokio::select! {
                () = &mut room => {}
                () = &mut closed => return Err(Pushed::Closed),
                () = &mut expired => return Err(self.overflow()),
            }
        }
    }

    /// Appends a non-droppable frame, first waiting for room as [`Outbound::wait_room`]
    /// does: for replies to the connection's own commands, which must not overflow the
    /// queue just because they arrive faster than the socket drains.
    pub(crate) async fn push_wait(&self, frame: Frame, deadline: Instant) -> Pushed {
        let mut frame = frame;
        loop {
            match self.try_push(frame) {
                Ok(pushed) => return pushed,
                Err(back) => frame = back,
            }
            if let Err(pushed) = self.wait_room(frame.wire_len(), deadline).await {
                return pushed;
            }
        }
    }

    /// Empties the queue and closes it with 1013, unless it is already closed.
    fn overflow(&self) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        let before = inner.bytes;
        inner.clear();
        inner.close = Some((TRY_AGAIN, "slow consumer".into()));
        drop(inner);
        self.account(before, 0);
        self.notify.notify_one();
        self.closed.notify_waiters();
        Pushed::Overflow
    }

    /// Closes the queue: no more frames are accepted; the writer sends what is queued (unless
    /// `discard`), then the Close frame. The first close wins. `reason` must fit in a Close
    /// frame (at most 123 bytes, RFC 6455 §5.5).
    pub(crate) fn close(&self, code: u16, reason: impl Into<Arc<str>>, discard: bool) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return;
        }
        let before = inner.bytes;
        if discard {
            inner.clear();
        }
        let after = inner.bytes;
        inner.close = Some((code, reason.into()));
        drop(inner);
        self.account(before, after);
        self.notify.notify_one();
        self.closed.notify_waiters();
    }

    /// Resolves once the queue is closed (at once if it already is).
    pub(crate) async fn closed(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        // Registered before the check: a close after it wakes this wait.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Whether the queue has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Bytes currently queued.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// The next thing to write; `None` after the close has been reported. Cancel-safe.
    pub(crate) async fn pop(&self) -> Option<Next> {
        loop {
            {
                let mut inner = self.inner.lock();
                if let Some(frame) = inner.pop_front() {
                    drop(inner);
                    self.account(frame.wire_len(), 0);
                    self.room.notify_waiters();
                    return Some(Next::Frame(frame));
                }
                if let Some((code, reason)) = &inner.close {
                    if inner.close_reported {
                        return None;
                    }
                    let next = Next::Close(*code, reason.clone());
                    inner.close_reported = true;
                    return Some(next);
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Outbound {
    /// What a closed connection still had queued leaves the node-wide gauge with it.
    fn drop(&mut self) {
        let bytes = self.inner.get_mut().bytes;
        self.account(bytes, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame::text("x".repeat(n))
    }

    #[tokio::test]
    async fn overflow_closes_with_1013_and_frees_memory() {
        let q = Outbound::new(1000);
        for _ in 0..9 {
            assert_eq!(q.push(frame(98), false), Pushed::PLAIN);
        }
        assert_eq!(q.bytes(), 900);
        assert_eq!(q.push(frame(200), false), Pushed::Overflow);
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.push(frame(1), false), Pushed::Closed);
        q.closed().await;
        assert!(matches!(q.pop().await, Some(Next::Close(1013, _))));
        assert!(q.pop().await.is_none());
    }

    #[tokio::test]
    async fn drop_oldest_evicts_only_droppable_frames() {
        let q = Outbound::new(500);
        q.push(frame(98), false);
        for _ in 0..4 {
            q.push(frame(98), true);
        }
        assert_eq!(
            q.push(frame(98), true),
            Pushed::Queued {
                dropped: 1,
                conflated: 0
            }
        );
        assert_eq!(
            q.push(frame(196), false),
            Pushed::Queued {
                dropped: 2,
                conflated: 0
            }
        );
        assert_eq!(q.bytes(), 500);
        assert_eq!(q.push(frame(600), true), Pushed::Discarded);
        assert_eq!(q.bytes(), 500, "a frame that cannot fit evicts nothing");
        let Some(Next::Frame(first)) = q.pop().await else {
            panic!()
        };
        assert_eq!(first.payload_len(), 98, "the non-droppable head survived");
    }

    #[tokio::test]
    async fn close_after_flush_delivers_queued_frames_first() {
        let q = Outbound::new(1000);
        q.push(frame(1), false);
        q.close(1008, "too many errors", false);
        assert!(matches!(q.pop().await, Some(Next::Frame(_))));
        assert!(matches!(q.pop().await, Some(Next::Close(1008, _))));
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(Outbound::new(1000));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await.is_some() });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        q.push(frame(3), false);
        assert!(waiter.await.unwrap());
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + std::time::Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn push_wait_waits_for_the_writer_instead_of_overflowing() {
        let q = std::sync::Arc::new(Outbound::new(1000));
        for _ in 0..9 {
            q.push(frame(98), false);
        }
        assert!(q.try_push(frame(196)).is_err(), "does not fit yet");
        assert_eq!(q.bytes(), 900, "a refused try_push changes nothing");
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push_wait(frame(196), soon(5000)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the queue is full");
        assert!(!q.is_closed());
        // The writer takes one frame: 800 + 200 (196 bytes and a 4-byte header) fits.
        assert!(matches!(q.pop().await, Some(Next::Frame(_))));
        assert_eq!(waiter.await.unwrap(), Pushed::PLAIN);
        assert_eq!(q.bytes(), 1000);
    }

    #[tokio::test]
    async fn push_wait_past_its_deadline_closes_with_1013() {
        let q = Outbound::new(1000);
        for _ in 0..9 {
            q.push(frame(98), false);
        }
        assert_eq!(q.push_wait(frame(198), soon(50)).await, Pushed::Overflow);
        assert_eq!(q.bytes(), 0, "the queue is freed");
        assert!(matches!(q.pop().await, Some(Next::Close(1013, _))));
    }

    #[tokio::test]
    async fn push_wait_gives_up_when_the_queue_closes() {
        let q = std::sync::Arc::new(Outbound::new(1000));
        for _ in 0..9 {
            q.push(frame(98), false);
        }
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push_wait(frame(198), soon(5000)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        q.close(1001, "server shutting down", true);
        assert_eq!(waiter.await.unwrap(), Pushed::Closed);
        assert!(matches!(q.pop().await, Some(Next::Close(1001, _))));
    }

    #[tokio::test]
    async fn push_wait_evicts_droppable_frames_and_refuses_what_can_never_fit() {
        let q = Outbound::new(500);
        for _ in 0..5 {
            q.push(frame(98), true);
        }
        assert_eq!(
            q.push_wait(frame(196), soon(10)).await,
            Pushed::Queued {
                dropped: 2,
                conflated: 0
            },
            "droppable publications make room at once, as for any reply"
        );
        assert_eq!(q.push_wait(frame(600), soon(5000)).await, Pushed::Overflow);
        assert!(q.is_closed());
    }
}

#[cfg(test)]
mod conflate_tests {
    use std::collections::HashMap;

    use super::*;

    /// A small deterministic generator (xorshift64*), so a failure replays with its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn key(channel: &str, key: Option<&str>) -> ConflateKey {
        ConflateKey {
            channel: channel.into(),
            key: key.map(Arc::from),
        }
    }

    /// A frame whose text names its push number, padded to `pad` bytes.
    fn numbered(n: u64, pad: usize) -> Frame {
        Frame::text(format!("{n:>pad$}"))
    }

    fn number(frame: &Frame) -> u64 {
        String::from_utf8_lossy(frame.prepared().payload())
            .trim()
            .parse()
            .unwrap()
    }

    /// The live frames with their kinds, and a check that `bytes` and the bookkeeping
    /// match them exactly.
    fn live(q: &Outbound) -> Vec<(u64, Option<ConflateKey>)> {
        let inner = q.inner.lock();
        let mut bytes = 0;
        let mut dead = 0;
        let mut out = Vec::new();
        let mut per_key: HashMap<&ConflateKey, usize> = HashMap::new();
        for item in &inner.items {
            let Some(frame) = &item.frame else {
                dead += 1;
                continue;
            };
            bytes += frame.wire_len();
            let k = match &item.kind {
                Kind::Conflate(k) => {
                    *per_key.entry(k).or_default() += 1;
                    Some(k.clone())
                }
                _ => None,
            };
            out.push((number(frame), k));
        }
        assert_eq!(inner.bytes, bytes, "bytes are accounted exactly");
        assert_eq!(inner.superseded, dead);
        let stale: usize = per_key.values().map(|n| n - 1).sum();
        assert_eq!(inner.stale, stale);
        assert_eq!(inner.newest.len(), per_key.len());
        out
    }

    /// Any sequence of pushes with keys (and replies between them, and the writer taking
    /// frames now and then): after every push that went past the watermark the queue holds
    /// exactly the newest publication of each key, every reply, all in push order (so in
    /// offset order per channel), with the bytes counted exactly.
    #[test]
    fn conflation_keeps_exactly_the_newest_per_key_in_order() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let watermark = 200 + rng.below(2000) as usize;
            let q = Outbound::new(1 << 30);
            let keys = [
                key("a", None),
                key("a", Some("x")),
                key("a", Some("y")),
                key("b", Some("x")),
                key("b", None),
            ];
            let mut newest: HashMap<ConflateKey, u64> = HashMap::new();
            let mut replies = Vec::new();
            let mut popped = Vec::new();
            for n in 0..400u64 {
                let pad = 1 + rng.below(120) as usize;
                match rng.below(10) {
                    0 => {
                        assert_eq!(q.push(numbered(n, pad), false), Pushed::PLAIN);
                        replies.push(n);
                    }
                    1 => {
                        let next = futures_util::FutureExt::now_or_never(q.pop()).flatten();
                        if let Some(Next::Frame(f)) = next {
                            popped.push(number(&f));
                        }
                        continue;
                    }
                    _ => {
                        let k = keys[rng.below(keys.len() as u64) as usize].clone();
                        let frame = numbered(n, pad);
                        let over = q.bytes() + frame.wire_len() > watermark;
                        let Pushed::Queued { dropped: 0, .. } =
                            q.push_conflated(frame, k.clone(), watermark)
                        else {
                            panic!("seed {seed}: a conflated push is queued");
                        };
                        newest.insert(k, n);
                        if over {
                            let now = live(&q);
                            let mut seen = std::collections::HashSet::new();
                            for (m, k) in &now {
                                if let Some(k) = k {
                                    assert!(seen.insert(k), "seed {seed}: two of {k:?}");
                                    assert_eq!(newest.get(k), Some(m), "seed {seed}: not newest");
                                }
                            }
                        }
                    }
                }
                let now = live(&q);
                assert!(
                    now.windows(2).all(|w| w[0].0 < w[1].0),
                    "seed {seed}: never reordered"
                );
            }
            // Every reply survives; every key's newest value is delivered or still queued.
            let rest: Vec<u64> = live(&q).into_iter().map(|(n, _)| n).collect();
            let all: Vec<u64> = popped.iter().chain(&rest).copied().collect();
            assert!(all.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
            for r in &replies {
                assert!(all.contains(r), "seed {seed}: reply {r} lost");
            }
            for n in newest.values() {
                assert!(all.contains(n), "seed {seed}: newest value {n} lost");
            }
        }
    }

    #[tokio::test]
    async fn conflation_starts_at_the_watermark_and_never_touches_replies() {
        let q = Outbound::new(10_000);
        let k = key("c", Some("k"));
        for n in 0..5 {
            assert_eq!(
                q.push_conflated(numbered(n, 98), k.clone(), 800),
                Pushed::PLAIN
            );
        }
        assert_eq!(q.bytes(), 500, "below the watermark every value is kept");
        q.push(numbered(5, 98), false);
        for n in 6..8 {
            q.push_conflated(numbered(n, 98), k.clone(), 800);
        }
        assert_eq!(
            q.push_conflated(numbered(8, 98), k, 800),
            Pushed::Queued {
                dropped: 0,
                conflated: 7,
            }
        );
        assert_eq!(q.bytes(), 200, "the reply and the newest value");
        let mut got = Vec::new();
        while let Some(Some(Next::Frame(f))) = futures_util::FutureExt::now_or_never(q.pop()) {
            got.push(number(&f));
        }
        assert_eq!(got, [5, 8]);
    }

    #[tokio::test]
    async fn a_queue_that_cannot_fit_even_conflated_closes_with_1013() {
        let q = Outbound::new(1000);
        for n in 0..9 {
            let k = key("c", Some(&n.to_string()));
            q.push_conflated(numbered(n, 98), k, 500);
        }
        assert_eq!(
            q.bytes(),
            900,
            "nine keys, one value each: nothing to conflate"
        );
        let k = key("c", Some("new"));
        assert_eq!(q.push_conflated(numbered(9, 198), k, 500), Pushed::Overflow);
        assert_eq!(q.bytes(), 0);
        assert!(matches!(q.pop().await, Some(Next::Close(1013, _))));
    }

    #[test]
    fn superseded_slots_are_compacted_and_the_gauge_follows_the_bytes() {
        let gauge = Gauge::default();
        let q = Outbound::with_gauge(1 << 20, gauge.clone());
        let k = key("c", None);
        for n in 0..10_000 {
            q.push_conflated(numbered(n, 10), k.clone(), 0);
        }
        assert!(
            q.inner.lock().items.len() <= 2 * COMPACT_AT,
            "slots stay bounded"
        );
        assert_eq!(q.bytes(), 12);
        assert_eq!(gauge.get(), 12);
        q.push(numbered(1, 10), false);
        assert_eq!(gauge.get(), 24);
        drop(q);
        assert_eq!(gauge.get(), 0, "a dropped queue leaves the gauge");
    }
}
