//! [`WebSocket`]: a [`Connection`] driven over an async transport.

use std::{
    future::{poll_fn, Future},
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use duplex_proto::{
    deflate::DeflateParams, CloseCode, CloseError, CloseFrame, Closed, Config, Connection, Event,
    Message, Prepared, Role, State,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};

use crate::error::{Error, Result};

/// Read buffer growth step. Large reads matter: with 16 KiB, echoing pipelined 16 KiB
/// messages took twice the CPU per message of 64 KiB reads (two or more syscalls per
/// message instead of one per several). Only a connection that is reading holds one: idle
/// connections give their buffer back to the thread's pool.
const READ_CHUNK: usize = 64 * 1024;
/// Slices handed to one vectored write.
const MAX_IOV: usize = 64;
/// A connection whose transport keeps having data yields to the other tasks after reading
/// this much without a pause, so one busy peer cannot hold the thread for long.
const FAIR_SHARE: u32 = 64 * 1024;

/// A WebSocket connection over a transport `S` (a `TcpStream`, a TLS stream, an HTTP upgrade).
///
/// Receive with [`recv`](Self::recv) (or as a [`Stream`](futures_core::Stream)), send with
/// [`send`](Self::send) (or as a [`Sink`](futures_sink::Sink)), and end with
/// [`close`](Self::close). Pings are answered and the closing handshake is completed while
/// receiving, so a connection must be received from to stay healthy; use
/// [`split`](Self::split) to receive and send from two tasks.
///
/// [`send`](Self::send) means sent: when it returns `Ok`, the frame has been handed to the
/// transport (written, and flushed). To batch many messages into one write, [`feed`](Self::feed)
/// them and [`flush`](Self::flush) once, or feed replies while receiving: what was fed is
/// written before the next read. Writes are vectored.
///
/// Output is queued up to [`Config::write_buffer_limit`] (128 KiB by default): a `send`,
/// `feed` or [`Sink`](futures_sink::Sink) send that finds more queued first writes it, waiting
/// for the transport if it must, so a peer that does not read holds at most about the limit
/// plus one message here ([`buffered_amount`](Self::buffered_amount) says how much).
#[derive(Debug)]
pub struct WebSocket<S> {
    io: S,
    conn: Connection,
    subprotocol: Option<Box<str>>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The Closed event, held back until the transport is shut down, then kept as how the
    /// connection ended. Boxed: only a closing connection needs it, and every idle connection
    /// would pay for the space.
    closed: Option<Box<Closed>>,
    /// The Closed event was returned: nothing more will be.
    finished: bool,
    read_eof: bool,
    /// Bytes read since the transport last had nothing to read (see [`FAIR_SHARE`]).
    read_streak: u32,
    /// A client waits for the server to end the transport first (see [`Shutdown`]).
    await_eof: bool,
    shutdown: Shutdown,
    io_error: Option<io::Error>,
    /// `io_error` was returned by [`poll_event`](Self::poll_event).
    io_reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    NotStarted,
    /// A client waits for the server to close TCP first (RFC 6455 §7.1.1), until the close
    /// timeout (armed in `sleep` when this state is entered).
    AwaitingEof,
    Done,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wrap a transport whose opening handshake is complete.
    ///
    /// `leftover` holds bytes read past the handshake; they are the first frames, processed on
    /// the first receive.
    pub fn from_raw(io: S, role: Role, config: impl Into<Arc<Config>>, leftover: BytesMut) -> Self {
        let mut conn = Connection::new(role, config);
        conn.read_buf().extend_from_slice(&leftover);
        Self::from_connection(io, conn)
    }

    /// Wrap a transport and a [`Connection`] set up by the caller (e.g. with negotiated
    /// permessage-deflate parameters, [`Connection::with_deflate`]).
    pub fn from_connection(io: S, conn: Connection) -> Self {
        Self {
            io,
            conn,
            subprotocol: None,
            sleep: None,
            closed: None,
            finished: false,
            read_eof: false,
            read_streak: 0,
            await_eof: true,
            shutdown: Shutdown::NotStarted,
            io_error: None,
            io_reported: false,
        }
    }

    /// Use the permessage-deflate parameters agreed in the handshake (RFC 7692). Call before
    /// the first receive.
    #[must_use]
    pub fn with_deflate(mut self, params: Option<DeflateParams>) -> Self {
        let config = Arc::clone(self.conn.shared_config());
        let mut conn = Connection::with_deflate(self.conn.role(), config, params)
            .with_random(self.conn.take_random());
        conn.read_buf().extend_from_slice(self.conn.read_buf());
        self.conn = conn;
        self
    }

    /// The permessage-deflate parameters in force, if compression was negotiated.
    #[must_use]
    pub const fn deflate_params(&self) -> Option<&DeflateParams> {
        self.conn.deflate_params()
    }

    /// End the transport as soon as the closing handshake is done, without waiting for the
    /// server to end it first. RFC 6455 §7.1.1 has the server close TCP first so that it,
    /// not the client, holds the TIME_WAIT state; an HTTP/2 stream (RFC 8441 §5: END_STREAM
    /// in place of the TCP FIN) has no such state, and a server that never ends its half
    /// would otherwise cost every close the close timeout.
    #[cfg(feature = "http2")]
    pub(crate) const fn without_eof_wait(mut self) -> Self {
        self.await_eof = false;
        self
    }

    /// Record the subprotocol agreed in the handshake.
    #[must_use]
    pub fn with_subprotocol(mut self, subprotocol: Option<String>) -> Self {
        self.subprotocol = subprotocol.map(String::into_boxed_str);
        self
    }

    /// The subprotocol agreed in the opening handshake.
    #[must_use]
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The role of this endpoint.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.conn.role()
    }

    /// The lifecycle state.
    #[must_use]
    pub const fn state(&self) -> State {
        self.conn.state()
    }

    /// The Close frame the peer sent, once it has arrived.
    #[must_use]
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.conn.peer_close()
    }

    /// How the connection ended, once [`recv`](Self::recv) has returned `None` or an error.
    #[must_use]
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.as_deref().filter(|_| self.finished)
    }

    /// The transport.
    pub const fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport, mutably: for socket options and the like. Reading from it or writing to
    /// it directly breaks the framing of the connection.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The transport, giving up the connection. Bytes already read but not yet delivered,
    /// and output not yet written, are dropped with it.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// The next message. `None` once the connection is closed cleanly; an error (once) when it
    /// failed. Pings are answered and Pongs skipped; see [`next_event`](Self::next_event) to see
    /// them.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event, control frames included: a message, a Ping (already answered), a Pong,
    /// or the final [`Event::Closed`] (clean or not); then `None`. When the transport failed
    /// (a connection reset, say) rather than ended, its [`Error::Io`] comes first, once, and
    /// the `Closed` event after it.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Send a message: once this returns `Ok`, the frame (and anything fed before it) has been
    /// written to the transport and flushed, whatever else is buffered to be received.
    ///
    /// # Errors
    /// [`Error::Closed`] once the closing handshake started; [`Error::Io`] if the transport
    /// fails.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.conn.send(message)?;
        self.flush().await
    }

    /// Send a message framed once for many connections (broadcast).
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub async fn send_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.conn.send_prepared(prepared)?;
        self.flush().await
    }

    /// Send a Ping (payload at most 125 bytes); the Pong arrives as an [`Event::Pong`].
    ///
    /// # Errors
    /// As for [`send`](Self::send), or [`Error::InvalidSend`] for an oversized payload.
    pub async fn ping(&mut self, payload: Bytes) -> Result<()> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.conn.ping(&payload)?;
        self.flush().await
    }

    /// Queue a message without writing it: [`flush`](Self::flush), the next send, or a receive
    /// that has taken every message already read writes everything queued, before it reads
    /// again.
    ///
    /// When more than [`Config::write_buffer_limit`] bytes are queued already, this first
    /// writes them (and waits for the transport to take them), so a loop of `feed` calls never
    /// queues more than about the limit plus one message. Below the limit it returns at once.
    ///
    /// # Errors
    /// [`Error::Closed`] once the closing handshake started; [`Error::Io`] if the transport
    /// fails while the queue is written.
    pub async fn feed(&mut self, message: Message) -> Result<()> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        Ok(self.conn.send(message)?)
    }

    /// Bytes queued to be written and not yet handed to the transport, like the browser
    /// API's `bufferedAmount`: frames fed and not flushed, replies to Pings, a Close.
    #[must_use]
    pub const fn buffered_amount(&self) -> usize {
        self.conn.output_len()
    }

    /// Write everything queued.
    ///
    /// # Errors
    /// [`Error::Io`] if the transport fails.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Run the closing handshake: send a Close frame with `code` and `reason` (at most 123
    /// bytes), then receive until the peer's Close arrives (discarding messages) or the close
    /// timeout passes, and shut the transport down.
    ///
    /// # Errors
    /// [`Error::InvalidSend`] for a code that may not be sent or a long reason;
    /// [`Error::Failed`] if the handshake did not complete cleanly.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.conn.close(code, reason)?;
        while let Some(event) = self.next_event().await {
            if let Event::Closed(closed) = event? {
                return match closed.error {
                    Some(e) => Err(Error::Failed(e)),
                    None => Ok(()),
                };
            }
        }
        Ok(())
    }

    // ---- the poll functions everything above is built on ----

    /// Poll for the next message (see [`recv`](Self::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        loop {
            match ready!(self.poll_event(cx)) {
                Some(Ok(Event::Message(m))) => return Poll::Ready(Some(Ok(m))),
                // After the transport's own error, the Closed event has nothing to add.
                Some(Ok(Event::Closed(_))) if self.io_reported => return Poll::Ready(None),
                Some(Ok(Event::Closed(closed))) => {
                    return Poll::Ready(closed.error.map(|e| Err(self.error_for(e))));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }

    fn error_for(&mut self, e: CloseError) -> Error {
        match (e, self.io_error.take()) {
            (CloseError::UnexpectedEof, Some(io)) => Error::Io(io),
            (e, _) => Error::Failed(e),
        }
    }

    /// Poll for the next event (see [`next_event`](Self::next_event)).
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        loop {
            if let Some(event) = self.conn.poll_event() {
                match event {
                    Event::Closed(closed) => self.closed = Some(Box::new(closed)),
                    other => return Poll::Ready(Some(Ok(other))),
                }
                continue;
            }
            if self.finished {
                return Poll::Ready(None);
            }
            if self.conn.state() == State::Closed {
                ready!(self.poll_shutdown(cx));
                let closed = self
                    .closed
                    .get_or_insert_with(|| Box::new(Closed::abnormal(CloseError::UnexpectedEof)));
                // A transport that failed (a reset, say) rather than reached its end is
                // reported as itself, once, before the Closed event that follows it.
                if closed.error == Some(CloseError::UnexpectedEof) {
                    if let Some(io) = self.io_error.take() {
                        self.io_reported = true;
                        return Poll::Ready(Some(Err(Error::Io(io))));
                    }
                }
                let event = Event::Closed(Closed::clone(closed));
                self.finished = true;
                return Poll::Ready(Some(Ok(event)));
            }
            // The batch is handled: write what it produced, in one go.
            if let Poll::Ready(Err(e)) = self.poll_write_all(cx) {
                self.io_error = Some(e);
                self.conn.receive_eof();
                continue;
            }
            if self.conn.output_len() > self.conn.config().write_buffer_limit {
                // The peer is not reading: stop reading too, rather than queue without bound.
                ready!(self.poll_timer(cx));
                continue;
            }
            if self.conn.has_events() {
                // Never read while a complete frame waits to become an event: the read buffer
                // would grow with whatever the peer sends, past the frame and message limits,
                // however slowly the application takes the events.
                continue;
            }
            if self.read_streak >= FAIR_SHARE {
                // A peer that always has more to send (pipelined large messages) would keep
                // this task reading, each read filling the buffer, until the runtime's
                // cooperative budget ran out, which it allows to take 128 reads: other
                // connections on the thread would wait tens of milliseconds. Yield instead.
                self.read_streak = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.io_error = Some(e);
                    self.conn.receive_eof();
                }
                Poll::Pending => {
                    self.read_streak = 0;
                    if self.poll_timer(cx).is_pending() {
                        self.release_idle_buffers();
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// The socket has nothing to read and nothing is buffered: give the read buffer back to
    /// the thread's pool and drop the (empty) output staging, so an idle connection holds no
    /// buffer memory.
    fn release_idle_buffers(&mut self) {
        if let Some(buf) = self.conn.take_idle_read_buf() {
            crate::pool::put(buf);
        }
        if self.conn.output_len() == 0 {
            self.conn.release_buffers();
        }
    }

    /// Read once into the connection and process it; EOF is passed on.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let buf = self.conn.read_buf();
        if buf.capacity() == 0 {
            *buf = crate::pool::take();
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            buf
        ))?;
        self.read_streak = self
            .read_streak
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if n == 0 {
            self.read_eof = true;
            self.conn.receive_eof();
        } else {
            self.conn.receive();
        }
        Poll::Ready(Ok(()))
    }

    /// Poll the connection's timer; `Ready` when it fired (and was handled).
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let Some(deadline) = self.conn.poll_timeout(now.into_std()) else {
            self.sleep = None;
            return Poll::Pending;
        };
        let deadline = Instant::from_std(deadline);
        if deadline > now {
            let Some(sleep) = self.arm_sleep(deadline) else {
                // No timer: the connection has failed instead (see `arm_sleep`).
                return Poll::Ready(());
            };
            ready!(sleep.poll(cx));
        }
        self.conn.handle_timeout(Instant::now().into_std());
        Poll::Ready(())
    }

    /// The one timer of this connection, set to `deadline` (allocated on first use, then
    /// reset in place).
    ///
    /// `None` when the runtime has no time driver: a timeout that cannot be kept is not
    /// silently dropped, so the connection fails with that error (reported by
    /// [`poll_event`](Self::poll_event) before its `Closed` event) and, having no timer to
    /// bound the wait for the server's EOF either, closes the transport without it.
    fn arm_sleep(&mut self, deadline: Instant) -> Option<Pin<&mut Sleep>> {
        if self.sleep.is_none() {
            match crate::timer::sleep_until(deadline) {
                Ok(sleep) => self.sleep = Some(Box::pin(sleep)),
                Err(e) => {
                    if self.io_error.is_none() {
                        self.io_error = Some(e);
                    }
                    self.read_eof = true;
                    self.conn.receive_eof();
                    return None;
                }
            }
        }
        let sleep = self.sleep.as_mut()?;
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        Some(sleep.as_mut())
    }

    /// Write all pending output and flush the transport.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.output_len() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = self.conn.output_chunks(&mut slices);
            let io = Pin::new(&mut self.io);
            let written = if n > 1 && io.is_write_vectored() {
                ready!(io.poll_write_vectored(cx, &slices[..n]))?
            } else {
                ready!(io.poll_write(cx, &slices[0]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.conn.advance_output(written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// After the connection closed: flush, then close the transport (a client first waits for
    /// the server's EOF, RFC 6455 §7.1.1).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.shutdown {
                Shutdown::NotStarted => {
                    // Errors here only mean the peer is already gone.
                    if ready!(self.poll_write_all(cx)).is_err() {
                        self.read_eof = true;
                    }
                    self.shutdown =
                        if self.conn.role() == Role::Client && self.await_eof && !self.read_eof {
                            // The deadline is kept in the timer, not in this state.
                            let deadline = Instant::now() + self.conn.config().close_timeout;
                            if self.arm_sleep(deadline).is_some() {
                                Shutdown::AwaitingEof
                            } else {
                                let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                                Shutdown::Done
                            }
                        } else {
                            let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                            Shutdown::Done
                        };
                }
                Shutdown::AwaitingEof => {
                    let mut scratch = BytesMut::with_capacity(1024);
                    match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut scratch) {
                        Poll::Ready(Ok(n)) if n > 0 => continue,
                        Poll::Ready(_) => self.read_eof = true,
                        Poll::Pending => {
                            if let Some(sleep) = &mut self.sleep {
                                ready!(sleep.as_mut().poll(cx));
                            }
                        }
                    }
                    let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    self.shutdown = Shutdown::Done;
                }
                Shutdown::Done => return Poll::Ready(()),
            }
        }
    }

    /// Ready when another message may be queued: the connection is open and the pending output
    /// is at most [`Config::write_buffer_limit`] (more is written first).
    ///
    /// # Errors
    /// [`Error::Closed`] once the closing handshake started; [`Error::Io`] if the transport
    /// fails.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if !self.conn.state().can_send() {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.conn.output_len() > self.conn.config().write_buffer_limit {
            ready!(self.poll_write_all(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Start the closing handshake without waiting for it (the [`Sink`](futures_sink::Sink)
    /// close path): queue the Close frame and write it.
    fn poll_close_start(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn.close(CloseCode::NORMAL, "")?;
        if let Err(e) = ready!(self.poll_write_all(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn start_send_inner(&mut self, message: Message) -> Result<()> {
        Ok(self.conn.send(message)?)
    }

    pub(crate) fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(ready!(self.poll_write_all(cx)).map_err(Error::from))
    }

    pub(crate) fn poll_close_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.conn.state() == State::Open {
            ready!(self.poll_close_start(cx))?;
        }
        ready!(self.poll_write_all(cx))?;
        Poll::Ready(Ok(()))
    }

    pub(crate) fn queue_close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        Ok(self.conn.close(code, reason)?)
    }

    pub(crate) fn queue_ping(&mut self, payload: &[u8]) -> Result<()> {
        Ok(self.conn.ping(payload)?)
    }

    pub(crate) fn queue_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        Ok(self.conn.send_prepared(prepared)?)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WebSocket<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Self::poll_ready(self.get_mut(), cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<()> {
        self.get_mut().start_send_inner(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_inner(cx)
    }

    /// Sends a Close (1000) and writes it; keep receiving to see the peer's answer.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_close_inner(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A peer that pipelines two messages, and a handler that replies to the first and then
    /// works for a while before it receives again: the reply leaves at once, although the
    /// second message was already buffered (it used to wait for the next receive).
    #[tokio::test]
    async fn a_reply_leaves_at_once_while_the_next_message_waits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = WebSocket::from_raw(tcp, Role::Server, Config::default(), BytesMut::new());
            let first = ws.recv().await.unwrap().unwrap();
            ws.send(first).await.unwrap();
            // The slow part of the handler.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let second = ws.recv().await.unwrap().unwrap();
            ws.send(second).await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut client = WebSocket::from_raw(tcp, Role::Client, Config::default(), BytesMut::new());
        // Both in one write, so the server reads them in one go.
        client.feed(Message::text("one")).await.unwrap();
        client.feed(Message::text("two")).await.unwrap();
        client.flush().await.unwrap();
        let sent = std::time::Instant::now();
        assert_eq!(client.recv().await.unwrap().unwrap(), Message::text("one"));
        let waited = sent.elapsed();
        assert!(
            waited < std::time::Duration::from_millis(1000),
            "the reply waited {waited:?} for the handler's next receive"
        );
        assert_eq!(client.recv().await.unwrap().unwrap(), Message::text("two"));
        server.await.unwrap();
    }

    /// A peer that resets the connection: the error is the transport's, not "unexpected EOF".
    #[tokio::test]
    async fn a_reset_is_reported_as_the_io_error_it_is() {
        async fn reset_pair() -> WebSocket<tokio::net::TcpStream> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            let (server, _) = accepted.unwrap();
            // SO_LINGER 0: closing sends RST instead of FIN.
            server.set_zero_linger().unwrap();
            drop(server);
            WebSocket::from_raw(
                client.unwrap(),
                Role::Client,
                Config::default(),
                BytesMut::new(),
            )
        }
        let is_reset =
            |e: &Error| matches!(e, Error::Io(io) if io.kind() == io::ErrorKind::ConnectionReset);
        let mut ws = reset_pair().await;
        match ws.next_event().await {
            Some(Err(e)) => assert!(is_reset(&e), "{e:?}"),
            other => panic!("{other:?}"),
        }
        match ws.next_event().await {
            Some(Ok(Event::Closed(closed))) => {
                assert_eq!(closed.error, Some(CloseError::UnexpectedEof));
            }
            other => panic!("{other:?}"),
        }
        assert!(ws.next_event().await.is_none());
        // recv: the same error, then the end.
        let mut ws = reset_pair().await;
        match ws.recv().await {
            Some(Err(e)) => assert!(is_reset(&e), "{e:?}"),
            other => panic!("{other:?}"),
        }
        assert!(ws.recv().await.is_none());
    }

    /// A peer that does not read: feeding in a loop (through `feed`, the `Sink`, or the split
    /// sending half) never queues more than the write limit plus one frame; it waits instead.
    #[tokio::test]
    async fn feeding_a_peer_that_does_not_read_stays_within_the_write_limit() {
        use futures_util::SinkExt;

        const LIMIT: usize = 16 * 1024;
        // A 1000-byte payload takes a 4-byte header from a server (RFC 6455 §5.2).
        const FRAME: usize = 1004;
        let message = Message::binary(vec![7; 1000]);
        let patience = std::time::Duration::from_millis(200);
        for way in ["feed", "Sink::feed", "WsSink::feed"] {
            // The peer's end buffers 4 KiB and is never read.
            let (ours, _theirs) = tokio::io::duplex(4096);
            let config = Config::default().write_buffer_limit(LIMIT);
            let mut ws = Some(WebSocket::from_raw(
                ours,
                Role::Server,
                config,
                BytesMut::new(),
            ));
            let (mut sink, _stream) = match way {
                "WsSink::feed" => ws.take().map(WebSocket::split).unzip(),
                _ => (None, None),
            };
            let mut fed = 0;
            let mut most = 0;
            loop {
                let m = message.clone();
                let queued = match (way, &mut ws, &mut sink) {
                    ("feed", Some(ws), _) => tokio::time::timeout(patience, ws.feed(m)).await,
                    ("Sink::feed", Some(ws), _) => {
                        tokio::time::timeout(patience, SinkExt::feed(ws, m)).await
                    }
                    (_, _, Some(sink)) => tokio::time::timeout(patience, sink.feed(m)).await,
                    _ => unreachable!(),
                };
                let Ok(queued) = queued else { break };
                queued.unwrap();
                fed += 1;
                let buffered = match (&ws, &sink) {
                    (Some(ws), _) => ws.buffered_amount(),
                    (_, Some(sink)) => sink.buffered_amount(),
                    _ => unreachable!(),
                };
                most = most.max(buffered);
                assert!(
                    buffered <= LIMIT + FRAME,
                    "{way}: {buffered} bytes queued after {fed} messages"
                );
                assert!(fed < 1000, "{way}: never waited for the transport");
            }
            // It waited once the transport was full and the queue past the limit.
            assert!(most > LIMIT, "{way}: queued at most {most}");
            assert!(
                fed * FRAME <= LIMIT + FRAME + 4096,
                "{way}: {fed} messages fed"
            );
        }
    }

    #[tokio::test]
    async fn the_transport_can_be_reached_and_taken_back() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ws = WebSocket::from_raw(ours, Role::Server, Config::default(), BytesMut::new());
        // Bytes written through get_mut reach the peer as they are.
        ws.get_mut().write_all(b"raw").await.unwrap();
        let mut buf = [0; 3];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"raw");
        // After into_inner, the transport is the caller's: the peer's bytes are read from it.
        let mut io = ws.into_inner();
        theirs.write_all(b"back").await.unwrap();
        let mut buf = [0; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }
}
