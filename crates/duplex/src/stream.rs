//! The transport a client connection runs over.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A client's transport: plain TCP for `ws://`, TLS over TCP for `wss://`, or a stream of an
/// HTTP/2 connection (over either) when [`ClientBuilder::http2`](crate::ClientBuilder::http2)
/// was asked for and the server accepts WebSockets over HTTP/2.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// `ws://`: plain TCP.
    Plain(TcpStream),
    /// `wss://`: TLS over TCP (boxed: the TLS state is a few kilobytes).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A stream of an HTTP/2 connection (RFC 8441), which the connection's own task drives.
    #[cfg(feature = "http2")]
    Http2(Box<crate::http2::H2Stream>),
}

/// Forward a call to whichever stream is inside.
macro_rules! each {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            MaybeTlsStream::Plain($s) => $call,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls($s) => $call,
            #[cfg(feature = "http2")]
            MaybeTlsStream::Http2($s) => $call,
        }
    };
}

impl MaybeTlsStream {
    /// The underlying TCP stream (under TLS, if any); `None` for an HTTP/2 stream, whose
    /// connection belongs to its own task.
    #[must_use]
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Some(s.get_ref().0),
            #[cfg(feature = "http2")]
            Self::Http2(_) => None,
        }
    }

    /// Whether the connection runs over TLS.
    #[must_use]
    pub const fn is_tls(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            #[cfg(feature = "tls")]
            Self::Tls(_) => true,
            #[cfg(feature = "http2")]
            Self::Http2(s) => s.is_tls(),
        }
    }

    /// The HTTP/2 stream, when the WebSocket runs over HTTP/2 (RFC 8441): its
    /// [`connection`](crate::http2::H2Stream::connection) opens more WebSockets.
    #[cfg(feature = "http2")]
    #[must_use]
    pub fn http2(&self) -> Option<&crate::http2::H2Stream> {
        match self {
            Self::Http2(s) => Some(s),
            _ => None,
        }
    }

    /// The HTTP/2 stream, mutably (to [`reset`](crate::http2::H2Stream::reset) it).
    #[cfg(feature = "http2")]
    #[must_use]
    pub fn http2_mut(&mut self) -> Option<&mut crate::http2::H2Stream> {
        match self {
            Self::Http2(s) => Some(s),
            _ => None,
        }
    }

    /// Whether TLS negotiated ALPN `h2`.
    #[cfg(feature = "http2")]
    pub(crate) fn alpn_h2(&self) -> bool {
        match self {
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
            _ => false,
        }
    }

    /// The TLS session, for its negotiated version, cipher suite and peer certificates.
    #[cfg(feature = "tls")]
    #[must_use]
    /// `None` for plain TCP, and for an HTTP/2 stream (its connection's TLS session belongs
    /// to the connection's task).
    pub fn tls_session(&self) -> Option<&tokio_rustls::rustls::ClientConnection> {
        match self {
            Self::Tls(s) => Some(s.get_ref().1),
            _ => None,
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}
