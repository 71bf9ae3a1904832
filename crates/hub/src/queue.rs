//! The bounded, byte-accounted outbound queue of one connection.
//!
//! Everything the server sends to a client goes through its queue: replies, events and
//! publications. The writer task drains it into the socket. The queue never holds more than
//! `max_bytes` of frames; what happens past that is the slow-consumer policy: frames marked
//! droppable (publications of `drop_oldest` namespaces) are evicted oldest first, and when
//! that is not enough the queue is emptied and closed with 1013, so a stalled reader costs the
//! server at most `max_bytes` plus the socket buffers.
//!
//! Replies to the connection's own commands are not subject to that rule as such: they are
//! pushed with [`Outbound::push_wait`], which waits (up to a deadline) until the writer has
//! drained enough for the frame to fit. A reply, a history page or a replayed publication
//! therefore never overflows the queue by itself; only a client that reads nothing for the
//! whole wait is closed with 1013.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::frame::Frame;

/// Close code for a slow consumer (RFC 6455 §7.4.1 registry: 1013 Try Again Later).
pub(crate) const TRY_AGAIN: u16 = 1013;

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
    /// Queued; `dropped` older droppable frames were evicted to make room.
    Queued {
        /// Evicted frames.
        dropped: usize,
    },
    /// The frame itself was droppable and did not fit; it was discarded.
    Discarded,
    /// The queue overflowed: it is now closed with 1013.
    Overflow,
    /// The queue was already closed; nothing happened.
    Closed,
}

#[derive(Debug)]
struct Item {
    frame: Frame,
    droppable: bool,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// The part of `bytes` held by droppable frames.
    droppable_bytes: usize,
    /// Set once; no frame is accepted after it. Reported by `pop` after the remaining items.
    close: Option<(u16, Arc<str>)>,
    close_reported: bool,
}

impl Inner {
    fn pop_front(&mut self) -> Option<Item> {
        let item = self.items.pop_front()?;
        let n = item.frame.wire_len();
        self.bytes -= n;
        if item.droppable {
            self.droppable_bytes -= n;
        }
        Some(item)
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
    closed: watch::Sender<bool>,
    max_bytes: usize,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` of frames (by [`Frame::wire_len`]).
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            room: Notify::new(),
            closed: watch::channel(false).0,
            max_bytes,
        }
    }

    /// Appends a frame. `droppable` frames may be evicted, or discarded, when space is short.
    pub(crate) fn push(&self, frame: Frame, droppable: bool) -> Pushed {
        let inner = self.inner.lock();
        self.push_locked(inner, frame, droppable)
    }

    fn push_locked(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        frame: Frame,
        droppable: bool,
    ) -> Pushed {
        let len = frame.wire_len();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        let mut dropped = 0;
        if inner.bytes + len > self.max_bytes {
            if inner.bytes - inner.droppable_bytes + len > self.max_bytes {
                // Evicting every droppable frame would not make room.
                if droppable {
                    return Pushed::Discarded;
                }
                drop(inner);
                return self.overflow();
            }
            let mut i = 0;
            while inner.bytes + len > self.max_bytes && i < inner.items.len() {
                if inner.items[i].droppable {
                    if let Some(item) = inner.items.remove(i) {
                        let n = item.frame.wire_len();
                        inner.bytes -= n;
                        inner.droppable_bytes -= n;
                        dropped += 1;
                    }
                } else {
                    i += 1;
                }
            }
        }
        if droppable {
            inner.droppable_bytes += len;
        }
        inner.bytes += len;
        inner.items.push_back(Item { frame, droppable });
        drop(inner);
        self.notify.notify_one();
        Pushed::Queued { dropped }
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
        Ok(self.push_locked(inner, frame, false))
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
        inner.items.clear();
        inner.bytes = 0;
        inner.droppable_bytes = 0;
        inner.close = Some((TRY_AGAIN, "slow consumer".into()));
        drop(inner);
        self.notify.notify_one();
        self.closed.send_replace(true);
        Pushed::Overflow
    }

    /// Closes the queue: no more frames are accepted; the writer sends what is queued (unless
    /// `discard`), then the Close frame. The first close wins.
    pub(crate) fn close(&self, code: u16, reason: impl Into<Arc<str>>, discard: bool) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return;
        }
        if discard {
            inner.items.clear();
            inner.bytes = 0;
            inner.droppable_bytes = 0;
        }
        inner.close = Some((code, reason.into()));
        drop(inner);
        self.notify.notify_one();
        self.closed.send_replace(true);
    }

    /// Resolves once the queue is closed (at once if it already is).
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|closed| *closed).await;
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
                if let Some(item) = inner.pop_front() {
                    drop(inner);
                    self.room.notify_waiters();
                    return Some(Next::Frame(item.frame));
                }
                if let Some((code, reason)) = inner.close.clone() {
                    if inner.close_reported {
                        return None;
                    }
                    inner.close_reported = true;
                    return Some(Next::Close(code, reason));
                }
            }
            self.notify.notified().await;
        }
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
            assert_eq!(q.push(frame(98), false), Pushed::Queued { dropped: 0 });
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
        assert_eq!(q.push(frame(98), true), Pushed::Queued { dropped: 1 });
        assert_eq!(q.push(frame(196), false), Pushed::Queued { dropped: 2 });
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
        assert_eq!(waiter.await.unwrap(), Pushed::Queued { dropped: 0 });
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
            Pushed::Queued { dropped: 2 },
            "droppable publications make room at once, as for any reply"
        );
        assert_eq!(q.push_wait(frame(600), soon(5000)).await, Pushed::Overflow);
        assert!(q.is_closed());
    }
}
