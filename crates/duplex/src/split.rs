//! Splitting a [`WebSocket`] into a receiving and a sending half for two tasks.
//!
//! Both halves share the connection behind a mutex that is held only inside a poll (never
//! across an await). The transport's readiness wakes both halves, so the receiving half can
//! write Pongs and Close replies and the sending half is woken when the socket drains, whoever
//! registered interest last.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Wake, Waker},
};

use bytes::Bytes;
use duplex_proto::{CloseCode, CloseFrame, Closed, Event, Message, Prepared};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{error::Result, WebSocket};

#[derive(Debug, Default)]
struct Wakers {
    recv: AtomicWaker,
    send: AtomicWaker,
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.recv.wake();
        self.send.wake();
    }
}

#[derive(Debug)]
struct Shared<S> {
    ws: Mutex<WebSocket<S>>,
    wakers: Arc<Wakers>,
    waker: Waker,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, WebSocket<S>> {
        // A panic while holding the lock leaves the connection in a consistent state (every
        // method leaves it valid between calls), so poisoning is ignored.
        self.ws
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The receiving half of a split [`WebSocket`].
#[derive(Debug)]
pub struct WsStream<S> {
    shared: Arc<Shared<S>>,
}

/// The sending half of a split [`WebSocket`].
#[derive(Debug)]
pub struct WsSink<S> {
    shared: Arc<Shared<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Split into a sending and a receiving half that can be used from two tasks.
    ///
    /// Pings are still answered and the closing handshake still completes, as long as the
    /// receiving half is polled.
    pub fn split(self) -> (WsSink<S>, WsStream<S>) {
        let wakers = Arc::new(Wakers::default());
        let shared = Arc::new(Shared {
            ws: Mutex::new(self),
            waker: Waker::from(Arc::clone(&wakers)),
            wakers,
        });
        (
            WsSink {
                shared: Arc::clone(&shared),
            },
            WsStream { shared },
        )
    }
}

/// What both halves can tell about how the connection ended.
macro_rules! ending {
    ($half:ident) => {
        impl<S: AsyncRead + AsyncWrite + Unpin> $half<S> {
            /// How the connection ended (its close code, reason and who started it), once it
            /// has; see [`WebSocket::closed`].
            #[must_use]
            pub fn closed(&self) -> Option<Closed> {
                self.shared.lock().closed().cloned()
            }

            /// The Close frame the peer sent, once it has arrived; see
            /// [`WebSocket::close_frame`].
            #[must_use]
            pub fn close_frame(&self) -> Option<CloseFrame> {
                self.shared.lock().close_frame().cloned()
            }
        }
    };
}

ending!(WsStream);
ending!(WsSink);

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    fn with<T>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocket<S>, &mut Context<'_>) -> T,
    ) -> T {
        self.shared.wakers.recv.register(cx.waker());
        let mut inner_cx = Context::from_waker(&self.shared.waker);
        f(&mut self.shared.lock(), &mut inner_cx)
    }

    /// The next message; see [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.with(cx, WebSocket::poll_recv)).await
    }

    /// The next event; see [`WebSocket::next_event`].
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        std::future::poll_fn(|cx| self.with(cx, WebSocket::poll_event)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsSink<S> {
    fn with<T>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocket<S>, &mut Context<'_>) -> T,
    ) -> T {
        self.shared.wakers.send.register(cx.waker());
        let mut inner_cx = Context::from_waker(&self.shared.waker);
        f(&mut self.shared.lock(), &mut inner_cx)
    }

    async fn ready(&self) -> Result<()> {
        std::future::poll_fn(|cx| self.with(cx, WebSocket::poll_ready)).await
    }

    async fn flush_all(&self) -> Result<()> {
        std::future::poll_fn(|cx| self.with(cx, WebSocket::poll_flush_inner)).await
    }

    /// Send a message; see [`WebSocket::send`].
    ///
    /// # Errors
    /// As for [`WebSocket::send`].
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.ready().await?;
        self.shared.lock().start_send_inner(message)?;
        self.flush_all().await
    }

    /// Queue a message without writing it; see [`WebSocket::feed`]. Past
    /// [`Config::write_buffer_limit`](crate::Config::write_buffer_limit), what is queued is
    /// written first.
    ///
    /// # Errors
    /// As for [`WebSocket::feed`].
    pub async fn feed(&mut self, message: Message) -> Result<()> {
        self.ready().await?;
        self.shared.lock().start_send_inner(message)
    }

    /// Write everything queued; see [`WebSocket::flush`].
    ///
    /// # Errors
    /// As for [`WebSocket::flush`].
    pub async fn flush(&mut self) -> Result<()> {
        self.flush_all().await
    }

    /// Bytes queued and not yet written; see [`WebSocket::buffered_amount`].
    #[must_use]
    pub fn buffered_amount(&self) -> usize {
        self.shared.lock().buffered_amount()
    }

    /// Send a prepared (broadcast) message; see [`WebSocket::send_prepared`].
    ///
    /// # Errors
    /// As for [`WebSocket::send`].
    pub async fn send_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        self.ready().await?;
        self.shared.lock().queue_prepared(prepared)?;
        self.flush_all().await
    }

    /// Send a Ping.
    ///
    /// # Errors
    /// As for [`WebSocket::ping`].
    pub async fn ping(&mut self, payload: Bytes) -> Result<()> {
        self.ready().await?;
        self.shared.lock().queue_ping(&payload)?;
        self.flush_all().await
    }

    /// Send a Close frame and write it. The receiving half sees the peer's answer and then
    /// ends; the handshake's timeout applies there.
    ///
    /// # Errors
    /// As for [`WebSocket::close`].
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.shared.lock().queue_close(code, reason)?;
        self.flush_all().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WsStream<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.with(cx, WebSocket::poll_recv)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WsSink<S> {
    type Error = crate::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, WebSocket::poll_ready)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<()> {
        self.shared.lock().start_send_inner(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, WebSocket::poll_flush_inner)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(cx, WebSocket::poll_close_inner)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use duplex_proto::{Config, Role, Side};

    use crate::{CloseCode, WebSocket};

    /// After a split, the receiving half still learns the peer's close code and reason.
    #[tokio::test]
    async fn the_halves_see_how_the_connection_ended() {
        let (a, b) = tokio::io::duplex(4096);
        let server = WebSocket::from_raw(a, Role::Server, Config::default(), BytesMut::new());
        let mut client = WebSocket::from_raw(b, Role::Client, Config::default(), BytesMut::new());
        let (sink, mut stream) = server.split();
        assert!(stream.closed().is_none() && sink.close_frame().is_none());
        let peer = tokio::spawn(async move { client.close(CloseCode::from(4001), "bye").await });
        assert!(
            stream.recv().await.is_none(),
            "a clean close ends the stream"
        );
        peer.await.unwrap().unwrap();
        let closed = stream.closed().expect("closed after the stream ended");
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (CloseCode::from(4001), "bye")
        );
        assert_eq!(closed.initiated_by, Side::Peer);
        let frame = sink.close_frame().expect("the peer's Close frame");
        assert_eq!(frame.code, CloseCode::from(4001));
    }
}
