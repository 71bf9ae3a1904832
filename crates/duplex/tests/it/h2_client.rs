//! A small RFC 8441 client for tests, made with the `h2` crate directly: it waits for the
//! server's `SETTINGS_ENABLE_CONNECT_PROTOCOL`, sends an extended CONNECT with
//! `:protocol websocket`, and speaks WebSocket over the stream's DATA frames through
//! `duplex`'s own [`WebSocket::from_raw`] in the client role (the HTTP/2 part is independent
//! of the server under test). Shared by the `duplex` and the hub tests.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use duplex::{
    bytes::{Bytes, BytesMut},
    deflate::{self, DeflateConfig},
    http, Config, Role, WebSocket,
};
use h2::{client::SendRequest, RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::timeout,
};

/// How long any step may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// An HTTP/2 stream as a byte stream: DATA frames in, DATA frames out, END_STREAM on
/// shutdown.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    buf: Bytes,
    ended: bool,
}

impl H2Stream {
    /// Reset the stream (RST_STREAM with `reason`).
    pub(crate) fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

fn io_error(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.buf = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.send.reserve_capacity(buf.len());
        loop {
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// An HTTP/2 connection (prior knowledge, over TCP) to `addr`, once the server has enabled
/// extended CONNECT (RFC 8441 §3).
pub(crate) async fn connection(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (client, conn) = timeout(WAIT, h2::client::handshake(tcp))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let client = timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    timeout(WAIT, async {
        // The flag follows the server's SETTINGS, which the connection task reads.
        while !client.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("SETTINGS_ENABLE_CONNECT_PROTOCOL from the server");
    client
}

/// An extended CONNECT to `path` with `:protocol websocket`, `Sec-WebSocket-Version: 13`,
/// and `headers`.
pub(crate) fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).expect("a valid request")
}

/// Send `req` on the connection: the response head and the stream.
pub(crate) async fn open(
    client: &SendRequest<Bytes>,
    req: http::Request<()>,
) -> (http::response::Parts, H2Stream) {
    let mut client = timeout(WAIT, client.clone().ready())
        .await
        .expect("ready in time")
        .expect("ready");
    let (response, send) = client.send_request(req, false).expect("send the request");
    let response = timeout(WAIT, response)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, recv) = response.into_parts();
    let stream = H2Stream {
        send,
        recv,
        buf: Bytes::new(),
        ended: false,
    };
    (parts, stream)
}

/// A WebSocket over `path`, answered `200`: offering `protocols` and, when `deflate` is set,
/// permessage-deflate, set up with what the response confirmed.
pub(crate) async fn websocket(
    client: &SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
    deflate: Option<DeflateConfig>,
) -> (http::response::Parts, WebSocket<H2Stream>) {
    let offer = deflate.as_ref().map(deflate::client_offer);
    let mut headers = Vec::new();
    if let Some(p) = protocols {
        headers.push(("sec-websocket-protocol", p));
    }
    if let Some(offer) = &offer {
        headers.push(("sec-websocket-extensions", offer.as_str()));
    }
    let (parts, stream) = open(client, request(addr, path, &headers)).await;
    assert_eq!(parts.status, http::StatusCode::OK, "{parts:?}");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let params = match (header("sec-websocket-extensions"), &deflate) {
        (Some(response), Some(config)) => {
            Some(deflate::client_accept(&response, config).expect("a valid deflate response"))
        }
        _ => None,
    };
    let ws = WebSocket::from_raw(stream, Role::Client, Config::default(), BytesMut::new())
        .with_deflate(params)
        .with_subprotocol(header("sec-websocket-protocol"));
    (parts, ws)
}
