//! A small per-thread pool of read buffers, so that an idle connection holds none.
//!
//! A connection takes a buffer before it reads and gives it back when a read finds nothing
//! to do (the socket has no data and nothing is buffered). Thousands of idle connections then
//! share the few buffers of their worker threads instead of holding 64 KiB each, and a busy
//! connection gets the same buffer back on its next read, at the cost of a thread-local access
//! (no lock, no atomic).

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread; more are freed.
const MAX_POOLED: usize = 16;

/// Buffers smaller than this are not worth keeping; larger ones (grown for a big frame) are
/// given back to the allocator rather than parked.
const MIN_CAPACITY: usize = 4 * 1024;
const MAX_CAPACITY: usize = 128 * 1024;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool, or a new empty one.
pub(crate) fn take() -> BytesMut {
    POOL.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Give an empty buffer back to this thread's pool.
pub(crate) fn put(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    // During thread teardown the pool may be gone; the buffer is then simply freed.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}
