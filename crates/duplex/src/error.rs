//! The one error type of the async layer, keeping IO, handshake and protocol causes apart.

use std::io;

use duplex_proto::{CloseError, HandshakeError, ProtocolError, SendError};

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

fn fmt_body(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
