//! Timers without a panic: the handshake, close and keepalive timeouts need Tokio's time
//! driver, and Tokio panics ("timers are disabled") when a timer is made on a runtime built
//! without it. Here that becomes an [`io::Error`] of kind [`Other`](io::ErrorKind::Other).
//!
//! Tokio has no public way to ask whether the time driver is enabled. Making a `Sleep` checks
//! it before anything else (it panics before any state changes), so [`sleep_until`] makes the
//! timer under [`catch_unwind`](std::panic::catch_unwind) and turns that panic, and only
//! that one, into the error. The process's panic hook still runs, so the panic message is
//! printed once for each failed attempt; the error the caller gets says what to do. With
//! `panic = "abort"` nothing can be caught and the process aborts, as it would have before.
//! [`check`] runs the probe once, at the start of `connect` and `accept`, so that a
//! misconfigured runtime fails there, before any IO.

use std::{io, panic};

use tokio::time::{Instant, Sleep};

/// What the error says.
pub(crate) const NO_TIME_DRIVER: &str = "duplex needs a Tokio runtime with the time driver \
     enabled (for its handshake, close and keepalive timeouts): build the runtime with \
     `enable_time()` or `enable_all()`";

/// The error for a runtime without the time driver.
pub(crate) fn no_time_driver() -> io::Error {
    io::Error::other(NO_TIME_DRIVER)
}

/// A timer for `deadline`, or the error if the runtime cannot run timers.
pub(crate) fn sleep_until(deadline: Instant) -> io::Result<Sleep> {
    panic::catch_unwind(|| tokio::time::sleep_until(deadline)).map_err(|_| no_time_driver())
}

/// Fail early, before any IO, if the runtime cannot run timers.
pub(crate) fn check() -> crate::Result<()> {
    sleep_until(Instant::now())
        .map(drop)
        .map_err(crate::Error::Io)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use duplex_proto::{Config, Role};

    use super::NO_TIME_DRIVER;
    use crate::{CloseCode, Error, WebSocket};

    /// A runtime with IO and without timers.
    fn runtime_without_timers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    fn is_no_time_driver(result: &crate::Result<impl std::fmt::Debug>) -> bool {
        matches!(result, Err(Error::Io(e))
            if e.kind() == std::io::ErrorKind::Other && e.to_string() == NO_TIME_DRIVER)
    }

    #[test]
    fn connect_and_accept_without_the_time_driver_fail_with_an_error() {
        runtime_without_timers().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("ws://{}/", listener.local_addr().unwrap());
            let connected = crate::connect(&url).await;
            assert!(is_no_time_driver(&connected), "{connected:?}");
            let (mine, _theirs) = tokio::io::duplex(1024);
            let on = crate::ClientBuilder::new(&url).connect_on(mine).await;
            assert!(is_no_time_driver(&on), "{on:?}");

            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            let accepted = crate::accept(accepted.unwrap().0).await;
            assert!(is_no_time_driver(&accepted), "{accepted:?}");
            drop(client);
        });
    }

    /// A connection made without the handshake functions, on such a runtime: the close
    /// timeout cannot be armed, and closing says so instead of panicking.
    #[test]
    fn closing_without_the_time_driver_fails_with_an_error() {
        runtime_without_timers().block_on(async {
            let (a, _b) = tokio::io::duplex(1024);
            let mut ws = WebSocket::from_raw(a, Role::Client, Config::default(), BytesMut::new());
            let closed = ws.close(CloseCode::NORMAL, "").await;
            assert!(is_no_time_driver(&closed), "{closed:?}");
            assert!(ws.recv().await.is_none());
        });
    }
}
