//! The one error type of the async layer, keeping IO, handshake and protocol causes apart.

use std::{io, net::SocketAddr};

use duplex_proto::{CloseError, HandshakeError, InvalidHeader, ProtocolError, SendError};

use crate::tls::TlsError;

/// An error from a WebSocket operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The opening handshake failed; on the server the client was answered with
    /// [`HandshakeError::status`].
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server refused the upgrade with this HTTP status; `body` holds the start of the
    /// response body, which usually says why.
    #[error("server refused the upgrade with HTTP {status}{}", fmt_body(body))]
    Refused {
        /// The HTTP status code.
        status: u16,
        /// Up to 512 bytes of the response body.
        body: String,
    },
    /// A header this side was asked to send cannot be sent as given (CR or LF, another
    /// control or a non-ASCII byte, a name that is not an HTTP token, or a header the
    /// handshake sets itself). Client: from [`ClientBuilder::header`](crate::ClientBuilder::header),
    /// before anything is sent. Server: from the accept hook's answer; the client was answered
    /// `500` without it.
    #[error("invalid header: {0}")]
    InvalidHeader(#[from] InvalidHeader),
    /// The accept hook refused the request with this status.
    #[error("request rejected with HTTP {0}")]
    Rejected(u16),
    /// The connection ended without a clean closing handshake: the peer broke the protocol
    /// (we sent the matching Close frame), vanished, or did not answer in time.
    #[error("connection failed: {0}")]
    Failed(#[from] CloseError),
    /// The connection is closed (or closing): nothing more can be sent.
    #[error("connection is closed")]
    Closed,
    /// A message or control payload that cannot be sent as given.
    #[error("invalid send: {0}")]
    InvalidSend(SendError),
    /// The URL is not a usable `ws://` or `wss://` URL.
    #[error("invalid URL: {0}")]
    Url(String),
    /// Connecting, the handshake or the closing handshake took too long.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The host name of the URL (or of the proxy) could not be resolved.
    #[error("cannot resolve {host:?}: {source}")]
    Dns {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// TCP could not connect to the server (the last address tried, when the name had
    /// several).
    #[error("{} ({addr})", io_reason(source))]
    Connect {
        /// The address that failed.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The HTTP proxy could not be reached or refused to open the tunnel.
    #[error("proxy {proxy}: {message}")]
    Proxy {
        /// The proxy's `host:port`.
        proxy: String,
        /// The proxy's HTTP status, when it answered with one.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// TLS could not be set up: the certificate was refused (and why), the handshake failed,
    /// or a certificate file is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The server redirected and following redirects is off
    /// ([`ClientBuilder::follow_redirects`](crate::ClientBuilder::follow_redirects)).
    #[error("server redirected with HTTP {status} to {location}")]
    Redirected {
        /// The HTTP status (301, 302, 303, 307 or 308).
        status: u16,
        /// The `Location` it pointed to.
        location: String,
    },
    /// More redirects than allowed.
    #[error("more than {limit} redirects (the last one to {location})")]
    TooManyRedirects {
        /// The limit that was reached.
        limit: u32,
        /// The `Location` that was not followed.
        location: String,
    },
}

impl Error {
    /// The protocol violation behind this error, if that is what it is.
    #[must_use]
    pub const fn protocol(&self) -> Option<&ProtocolError> {
        match self {
            Self::Failed(CloseError::Protocol(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed => Self::Closed,
            other => Self::InvalidSend(other),
        }
    }
}

/// The gist of a connect error, without the OS error number.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        io::ErrorKind::TimedOut if e.get_ref().is_none() => "connection timed out".into(),
        _ => e.to_string(),
    }
}

fn fmt_body(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
