//! The bounded, byte-accounted outbound queue of one connection.
//!
//! Everything the server sends to a client goes through its queue: replies, events and
//! publications. The writer task drains it into the socket. The queue never holds more than
//! `max_bytes` of frames; what happens past that is the slow-consumer policy: frames marked
//! droppable (publications of `drop_oldest` namespaces) are evicted oldest first, and when
//! that is not enough the queue is emptied and closed with 1013, so a stalled reader costs the
//! server at most `max_bytes` plus the socket buffers.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::frame::Frame;

/// Close code for a slow consumer (RFC 6455 §7.4.1 registry: 1013 Try Again Later).
pub(crate) const TRY_AGAIN: u16 = 1013;

/// What the writer should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Write this frame.
    Frame(Frame),
    /// Send a Close frame with this code and reason, then stop.
    Close(u16, &'static str),
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
    close: Option<(u16, &'static str)>,
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
            closed: watch::channel(false).0,
            max_bytes,
        }
    }

    /// Appends a frame. `droppable` frames may be evicted, or discarded, when space is short.
    pub(crate) fn push(&self, frame: Frame, droppable: bool) -> Pushed {
        let len = frame.wire_len();
        let mut inner = self.inner.lock();
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
                inner.items.clear();
                inner.bytes = 0;
                inner.droppable_bytes = 0;
                inner.close = Some((TRY_AGAIN, "slow consumer"));
                drop(inner);
                self.notify.notify_one();
                self.closed.send_replace(true);
                return Pushed::Overflow;
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

    /// Closes the queue: no more frames are accepted; the writer sends what is queued (unless
    /// `discard`), then the Close frame. The first close wins.
    pub(crate) fn close(&self, code: u16, reason: &'static str, discard: bool) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return;
        }
        if discard {
            inner.items.clear();
            inner.bytes = 0;
            inner.droppable_bytes = 0;
        }
        inner.close = Some((code, reason));
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
                    return Some(Next::Frame(item.frame));
                }
                if let Some((code, reason)) = inner.close {
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
}
