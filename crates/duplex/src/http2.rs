//! WebSockets over HTTP/2 (RFC 8441), the client side: one HTTP/2 connection carries any
//! number of WebSockets, each on its own stream, opened with an extended CONNECT.
//!
//! [`ClientBuilder::http2`](crate::ClientBuilder::http2) turns it on for
//! [`connect`](crate::ClientBuilder::connect): over `wss://` the TLS handshake offers ALPN
//! `h2` then `http/1.1`; over `ws://` the client speaks HTTP/2 with prior knowledge (h2c,
//! RFC 9113 §3.3). Before sending its request the client waits for the server's SETTINGS
//! (RFC 8441 §3: no extended CONNECT before `SETTINGS_ENABLE_CONNECT_PROTOCOL` = 1 was
//! received). It falls back to an HTTP/1.1 upgrade, on a new connection when it must, when
//! the server picks `http/1.1` in ALPN (on the same TLS connection), when it does not
//! announce the setting, or, on `ws://`, when it does not speak HTTP/2 at all.
//!
//! The request is `:method CONNECT`, `:protocol websocket`, `:scheme` (`http` or `https`),
//! `:authority` and `:path` from the URL, `sec-websocket-version: 13`, the subprotocols, the
//! permessage-deflate offer and the extra headers (RFC 8441 §4, §5). There is no
//! `Sec-WebSocket-Key` and no `Sec-WebSocket-Accept`: a 2xx answer (servers send 200) opens
//! the WebSocket, and the subprotocol and extensions are checked as over HTTP/1.1.
//!
//! The WebSocket is the same [`WebSocket`] as over TCP, its transport an [`H2Stream`]:
//! frames travel in the stream's DATA frames, and [`H2Stream::connection`] opens more
//! WebSockets on the same connection:
//!
//! ```no_run
//! # async fn run() -> duplex::Result<()> {
//! use duplex::{ClientBuilder, Message};
//!
//! let (mut chat, _) = ClientBuilder::new("wss://chat.example/chat").http2(true).connect().await?;
//! if let Some(h2) = chat.get_ref().http2() {
//!     // The same TCP and TLS connection, a second stream.
//!     let (mut feed, _) = h2.connection().connect(ClientBuilder::new("wss://chat.example/feed")).await?;
//!     feed.send(Message::text("subscribe")).await?;
//! }
//! chat.send(Message::text("hello")).await?;
//! # Ok(()) }
//! ```
//!
//! # Closing
//! RFC 8441 §5: the WebSocket close handshake runs in DATA frames as over TCP, and where
//! RFC 6455 closes the TCP connection each side half-closes the stream with END_STREAM. The
//! client ends its half as soon as the close handshake is done: over TCP it waits for the
//! server to close first (RFC 6455 §7.1.1, so that the server holds TIME_WAIT), which has no
//! purpose on a stream, and some servers never end their half. Dropping the WebSocket then
//! resets a stream the server left open. The HTTP/2 connection stays open for the other
//! streams, and ends once no handle or stream is left. A stream reset with RST_STREAM is an abrupt
//! TCP close: the WebSocket reports an [`Error::Io`] of kind `ConnectionReset`, then ends
//! with [`CloseCode::ABNORMAL`](crate::CloseCode::ABNORMAL) (1006), as when a TCP connection
//! is reset. Dropping an [`H2Stream`] before the end resets its stream (`CANCEL`).
//!
//! # Flow control and limits
//! Each stream may have [`STREAM_WINDOW`] bytes in flight towards the client and the whole
//! connection [`CONNECTION_WINDOW`]; capacity is given back to the server as the WebSocket
//! reads, so data that is not read holds the server back instead of growing here. Writes
//! take the capacity the server grants (RFC 9113 §5.2) before they are queued, at most a
//! window ahead. Response headers are limited to [`MAX_HEADER_LIST`] bytes and server push
//! is disabled.

use std::{
    fmt, io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use duplex_proto::{
    deflate::{self, DeflateParams},
    handshake::client::{ClientHandshake, Response},
    HandshakeError, Role,
};
use h2::{client::SendRequest, RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{timeout_at, Instant},
};

use crate::{
    client::{Outcome, Target},
    error::{Error, Result},
    ClientBuilder, MaybeTlsStream, WebSocket,
};

/// The receive window of each stream: how much the server may send on one WebSocket before
/// the application reads it (RFC 9113 §6.9.2; HTTP/2's default is 64 KiB, too small for
/// large messages on a path with any latency).
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// The receive window of the connection, shared by its streams (RFC 9113 §6.9.1).
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// The largest response header list accepted (`SETTINGS_MAX_HEADER_LIST_SIZE`, RFC 9113
/// §6.5.2), as the 8 KiB response head over HTTP/1.1 (h2 would take 16 MiB).
pub const MAX_HEADER_LIST: u32 = 8 * 1024;
/// At most this many bytes of a refusal's body are read, for [`Error::Refused`].
const MAX_REFUSAL_BODY: usize = 512;

/// A handle on an HTTP/2 connection whose server accepts WebSockets (RFC 8441): clone it
/// freely, each WebSocket opened on it is a new stream of the same connection.
///
/// The connection is driven by a task of its own, which ends once every handle and every
/// stream is gone (with a GOAWAY) or the connection fails.
#[derive(Clone)]
pub struct Http2Connection {
    send: SendRequest<Bytes>,
    origin: Target,
}

impl fmt::Debug for Http2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection")
            .field("tls", &self.origin.tls)
            .field("host", &self.origin.host)
            .field("port", &self.origin.port)
            .finish_non_exhaustive()
    }
}

impl Http2Connection {
    /// Open a WebSocket on a new stream of this connection, with the headers, subprotocols,
    /// [`Config`](crate::Config), permessage-deflate offer and handshake timeout of
    /// `builder` (its proxy, TLS and redirect settings do not apply: the connection exists).
    ///
    /// Waits, within the handshake timeout, for the server to allow one more stream
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`). The transport is a
    /// [`MaybeTlsStream::Http2`], so that every WebSocket has the type of those of
    /// [`ClientBuilder::connect`].
    ///
    /// # Errors
    /// [`Error::Url`] when the URL of `builder` is not on this connection's scheme, host and
    /// port; [`Error::InvalidHeader`] as for [`ClientBuilder::connect`]; [`Error::Refused`]
    /// for a status other than 2xx, [`Error::Redirected`] for a redirect (not followed
    /// here); [`Error::Handshake`] for an unoffered subprotocol or extension;
    /// [`Error::Timeout`]; [`Error::Io`] when the connection is gone.
    pub async fn connect(
        &self,
        builder: ClientBuilder,
    ) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
        crate::timer::check()?;
        let builder = builder.resolved();
        builder.check_headers()?;
        let target = Target::parse(&builder.url)?;
        if !target.same_origin(&self.origin) {
            return Err(Error::Url(format!(
                "{}: not on this HTTP/2 connection to {}",
                builder.url,
                self.origin.host_header()
            )));
        }
        let deadline = Instant::now() + builder.handshake_timeout;
        let outcome = timeout_at(
            deadline,
            self.open(&builder, &target, &builder.headers, |s| {
                MaybeTlsStream::Http2(Box::new(s))
            }),
        )
        .await
        .map_err(|_| Error::Timeout("opening handshake"))??;
        match outcome {
            Outcome::Open(ws, response) => Ok((*ws, response)),
            Outcome::Redirect { status, location } => Err(Error::Redirected { status, location }),
        }
    }

    /// Send the extended CONNECT for `target` and set up the WebSocket from the answer, its
    /// transport made from the stream by `wrap`.
    pub(crate) async fn open<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        builder: &ClientBuilder,
        target: &Target,
        headers: &[(String, String)],
        wrap: impl FnOnce(H2Stream) -> S,
    ) -> Result<Outcome<S>> {
        let config = &builder.config;
        let mut hs = ClientHandshake::new(target.host_header(), target.resource.clone());
        for p in &builder.subprotocols {
            hs = hs.subprotocol(p.clone());
        }
        for (name, value) in headers {
            hs = hs.header(name.clone(), value.clone());
        }
        if let Some(settings) = &config.deflate {
            hs = hs.extensions(deflate::client_offer(settings));
        }
        let fields = hs.h2_headers().map_err(Error::InvalidHeader)?;
        let uri = http::Uri::builder()
            .scheme(if target.tls { "https" } else { "http" })
            .authority(hs.host())
            .path_and_query(hs.target())
            .build()
            .map_err(|e| Error::Url(format!("{}: {e}", builder.url)))?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::CONNECT;
        *request.uri_mut() = uri;
        *request.headers_mut() = fields;
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));

        let mut send = self.send.clone().ready().await.map_err(h2_io)?;
        let (response, stream) = send.send_request(request, false).map_err(h2_io)?;
        let (head, mut recv) = response.await.map_err(h2_io)?.into_parts();
        let status = head.status.as_u16();
        if let Some(location) = redirect_location(status, &head.headers) {
            return Ok(Outcome::Redirect { status, location });
        }
        let response = match hs.validate_h2_response(status, head.headers) {
            Ok(response) => response,
            Err(HandshakeError::Status { status }) => {
                return Err(Error::Refused {
                    status,
                    body: refusal_body(&mut recv).await,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let params: Option<DeflateParams> = match (&response.extensions, &config.deflate) {
            (Some(selected), Some(settings)) => Some(deflate::client_accept(selected, settings)?),
            _ => None,
        };
        let io = wrap(H2Stream {
            send: stream,
            recv,
            buf: Bytes::new(),
            ended: false,
            connection: self.clone(),
        });
        let ws = WebSocket::from_raw(io, Role::Client, config.clone(), BytesMut::new())
            .with_deflate(params)
            .with_subprotocol(response.subprotocol.clone())
            .without_eof_wait();
        Ok(Outcome::Open(Box::new(ws), response))
    }
}

/// Run the HTTP/2 connection preface over `io` and wait for the server's SETTINGS: the
/// connection, when the server enables extended CONNECT (RFC 8441 §3), or `None`.
///
/// The client sends a PING right after its preface; the server's first frame is its SETTINGS
/// (RFC 9113 §3.4) and frames are handled in order, so when the PONG arrives the SETTINGS
/// have been applied.
///
/// # Errors
/// [`Error::Io`] when the peer does not speak HTTP/2 or the connection fails first.
pub(crate) async fn establish<T>(io: T, origin: Target) -> Result<Option<Http2Connection>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_io)?;
    let mut ping = connection
        .ping_pong()
        .ok_or_else(|| io::Error::other("HTTP/2 PING unavailable"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 connection ended");
        }
    });
    ping.ping(h2::Ping::opaque()).await.map_err(h2_io)?;
    if !send.is_extended_connect_protocol_enabled() {
        return Ok(None);
    }
    Ok(Some(Http2Connection { send, origin }))
}

/// An h2 error as the IO error a TCP transport would have given: a reset stream is a reset
/// connection, a GOAWAY an aborted one.
fn h2_io(e: h2::Error) -> Error {
    Error::Io(io_error(e))
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    let kind = if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

/// The `Location` of a redirect response.
fn redirect_location(status: u16, headers: &http::HeaderMap) -> Option<String> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Up to [`MAX_REFUSAL_BODY`] bytes of a refusal's body, waiting at most 2 s for them.
async fn refusal_body(recv: &mut RecvStream) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_REFUSAL_BODY {
            match recv.data().await {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    let room = MAX_REFUSAL_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&data[..data.len().min(room)]);
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// One HTTP/2 stream as a byte stream, the transport of a WebSocket over HTTP/2: reads take
/// the DATA frames the server sends, writes send DATA frames, shutdown sends END_STREAM.
///
/// Flow control is handled here: the capacity of what was read is released as it is handed
/// to the reader, and a write waits for send capacity and takes at most what was granted.
/// Flushing is a no-op: the connection's task writes queued frames as soon as it can.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The rest of the last DATA frame, its capacity not yet released.
    buf: Bytes,
    ended: bool,
    connection: Http2Connection,
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("buffered", &self.buf.len())
            .field("ended", &self.ended)
            .field("connection", &self.connection)
            .finish()
    }
}

impl H2Stream {
    /// The connection this stream belongs to, to open more WebSockets on it.
    #[must_use]
    pub const fn connection(&self) -> &Http2Connection {
        &self.connection
    }

    /// The stream's identifier (odd: opened by the client).
    #[must_use]
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Whether the connection runs over TLS (`wss://`).
    #[must_use]
    pub const fn is_tls(&self) -> bool {
        self.connection.origin.tls
    }

    /// Reset the stream with RST_STREAM (`CANCEL`, RFC 9113 §6.4, §8.7: the stream is no
    /// longer needed), ending the WebSocket abruptly, as a TCP reset would: the server sees
    /// close code 1006. The other streams of the connection go on.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// Queue `data` for sending after waiting for send capacity: the number of bytes taken
    /// (at most the capacity granted, never 0 for non-empty input).
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs
            .iter()
            .map(|b| b.len())
            .fold(0usize, usize::saturating_add);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(total);
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                let n = capacity.min(total);
                let mut data = BytesMut::with_capacity(n);
                for b in bufs {
                    let room = n - data.len();
                    if room == 0 {
                        break;
                    }
                    data.extend_from_slice(&b[..b.len().min(room)]);
                }
                self.send
                    .send_data(data.freeze(), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(self.reset_error(cx))),
            }
        }
    }

    /// Why the send half cannot take more: the server's reset, if that is it.
    fn reset_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("HTTP/2 stream reset by the server: {reason}"),
            ),
            Poll::Ready(Err(e)) => io_error(e),
            Poll::Pending => io::ErrorKind::BrokenPipe.into(),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.buf = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf.split_to(n));
        // Only what the application took is handed back to the server's window.
        this.recv
            .flow_control()
            .release_capacity(n)
            .map_err(io_error)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One DATA frame for the slices of a write (a frame header and its payload, say),
        // rather than one per slice.
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            // RFC 8441 §5: END_STREAM where RFC 6455 closes the TCP connection.
            this.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A client stream on an in-memory HTTP/2 connection whose server grants `window` bytes
    /// per stream, and the server's side of that stream.
    async fn pair(window: u32) -> (H2Stream, RecvStream) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::Builder::new()
                .initial_window_size(window)
                .enable_connect_protocol()
                .handshake::<_, Bytes>(server_io)
                .await
                .unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            tokio::spawn(async move {
                let _send = send;
                while let Some(Ok(_)) = connection.accept().await {}
            });
            request.into_body()
        });
        let origin = Target::parse("ws://test/").unwrap();
        let connection = establish(client_io, origin).await.unwrap().unwrap();
        let builder = ClientBuilder::new("ws://test/");
        let target = Target::parse("ws://test/").unwrap();
        let opened = connection
            .open(&builder, &target, &[], std::convert::identity)
            .await
            .unwrap();
        let Outcome::Open(ws, _) = opened else {
            panic!("a redirect");
        };
        (ws.into_inner(), server.await.unwrap())
    }

    #[tokio::test]
    async fn a_vectored_write_is_one_data_frame() {
        let (mut stream, mut server) = pair(65_535).await;
        let parts: [&[u8]; 3] = [b"head", b"payload", b"tail"];
        let slices = parts.map(io::IoSlice::new);
        let n = poll_fn(|cx| Pin::new(&mut stream).poll_write_vectored(cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, 15);
        let data = server.data().await.unwrap().unwrap();
        assert_eq!(&data[..], b"headpayloadtail");
    }

    #[tokio::test]
    async fn a_write_takes_no_more_than_the_window_grants() {
        let (mut stream, mut server) = pair(100).await;
        let n = poll_fn(|cx| Pin::new(&mut stream).poll_write(cx, &[7; 1000]))
            .await
            .unwrap();
        assert_eq!(n, 100, "the stream's send window is 100 bytes");
        // The rest goes once the server reads and gives the capacity back.
        let writer = tokio::spawn(async move {
            stream.write_all(&[7; 900]).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        });
        let mut total = 0;
        while let Some(data) = server.data().await {
            let data = data.unwrap();
            total += data.len();
            server.flow_control().release_capacity(data.len()).unwrap();
        }
        assert_eq!(total, 1000);
        let _stream = writer.await.unwrap();
    }

    #[test]
    fn redirects_are_read_from_the_location_field() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static(" /next "),
        );
        assert_eq!(redirect_location(308, &headers).as_deref(), Some("/next"));
        assert_eq!(redirect_location(200, &headers), None);
        assert_eq!(redirect_location(301, &http::HeaderMap::new()), None);
    }
}
