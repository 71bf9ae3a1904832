//! Accepting WebSocket connections on a server.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use duplex_proto::{
    deflate,
    handshake::server::{parse_request, Accept, Reject, Request},
    Config, HandshakeError, Role,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    error::{Error, Result},
    WebSocket,
};

/// Settings for accepting connections.
///
/// ```
/// use std::time::Duration;
/// use duplex::ServerConfig;
///
/// let config = ServerConfig::default()
///     .subprotocols(["chat.v2", "chat.v1"])
///     .handshake_timeout(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Settings of the connection once it is open.
    pub connection: Arc<Config>,
    /// Largest request head accepted; larger ones get `431`. Default 8 KiB.
    pub max_head_size: usize,
    /// Time allowed for the whole request to arrive; slower clients are dropped. Default 10 s.
    pub handshake_timeout: Duration,
    /// Subprotocols this server speaks, most preferred first. The first one the client also
    /// offers is selected. Default: none.
    pub subprotocols: Vec<String>,
    /// Refuse (400) clients that offer none of [`subprotocols`](Self::subprotocols).
    /// Default `false`: they are accepted without a subprotocol.
    pub require_subprotocol: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connection: Arc::new(Config::default()),
            max_head_size: duplex_proto::handshake::MAX_HEAD_SIZE,
            handshake_timeout: Duration::from_secs(10),
            subprotocols: Vec::new(),
            require_subprotocol: false,
        }
    }
}

impl ServerConfig {
    /// Set [`connection`](Self::connection).
    #[must_use]
    pub fn connection(mut self, config: impl Into<Arc<Config>>) -> Self {
        self.connection = config.into();
        self
    }

    /// Set [`max_head_size`](Self::max_head_size).
    #[must_use]
    pub const fn max_head_size(mut self, bytes: usize) -> Self {
        self.max_head_size = bytes;
        self
    }

    /// Set [`handshake_timeout`](Self::handshake_timeout).
    #[must_use]
    pub const fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Set [`subprotocols`](Self::subprotocols).
    #[must_use]
    pub fn subprotocols<I: IntoIterator<Item = T>, T: Into<String>>(
        mut self,
        protocols: I,
    ) -> Self {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Set [`require_subprotocol`](Self::require_subprotocol).
    #[must_use]
    pub const fn require_subprotocol(mut self, required: bool) -> Self {
        self.require_subprotocol = required;
        self
    }

    /// The subprotocol to select for `request`, by this server's preference.
    fn select_subprotocol(&self, request: &Request) -> Option<String> {
        self.subprotocols
            .iter()
            .find(|ours| request.subprotocols().any(|theirs| theirs == ours.as_str()))
            .cloned()
    }
}

/// Accept a WebSocket connection on `io` with the default settings.
///
/// # Errors
/// [`Error::Handshake`] for an invalid request (the client was answered with its status),
/// [`Error::Timeout`] if the request did not arrive in time, [`Error::Io`].
pub async fn accept<S>(io: S) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with(io, ServerConfig::default(), |_| Ok(Accept::default())).await
}

/// Accept a WebSocket connection, letting `hook` inspect the request (path, query, `Origin`,
/// `Authorization`, ...) and accept it — optionally with response headers — or refuse it with
/// an HTTP status.
///
/// A subprotocol chosen by `hook` wins over the one [`ServerConfig::subprotocols`] selects; it
/// must be one the client offered.
///
/// ```no_run
/// use duplex::{accept_with, Accept, Reject, ServerConfig};
///
/// # async fn run(tcp: tokio::net::TcpStream) -> duplex::Result<()> {
/// let ws = accept_with(tcp, ServerConfig::default(), |req| {
///     match req.origin() {
///         Some("https://example.com") => Ok(Accept::default()),
///         _ => Err(Reject::new(403, "origin not allowed")),
///     }
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// As for [`accept`], plus [`Error::Rejected`] when `hook` refused the request.
pub async fn accept_with<S, F>(mut io: S, config: ServerConfig, hook: F) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Result<Accept, Reject>,
{
    let read = tokio::time::timeout(
        config.handshake_timeout,
        read_request(&mut io, config.max_head_size),
    );
    let (request, mut buf) = match read.await {
        Err(_) => return Err(Error::Timeout("opening handshake")),
        Ok(Err(Error::Handshake(e))) => {
            refuse(&mut io, &Reject::from(&e)).await;
            return Err(Error::Handshake(e));
        }
        Ok(other) => other?,
    };
    let mut accept = match hook(&request) {
        Ok(accept) => accept,
        Err(reject) => {
            refuse(&mut io, &reject).await;
            return Err(Error::Rejected(reject.status));
        }
    };
    match &accept.subprotocol {
        Some(p) if !request.subprotocols().any(|o| o == p) => {
            refuse(
                &mut io,
                &Reject::new(500, "server selected a subprotocol that was not offered"),
            )
            .await;
            return Err(Error::Rejected(500));
        }
        Some(_) => {}
        None => accept.subprotocol = config.select_subprotocol(&request),
    }
    if accept.subprotocol.is_none() && config.require_subprotocol {
        let reject = Reject::new(
            400,
            format!(
                "no supported subprotocol offered (supported: {})",
                config.subprotocols.join(", ")
            ),
        );
        refuse(&mut io, &reject).await;
        return Err(Error::Rejected(400));
    }
    // RFC 7692 §5: accept the first acceptable permessage-deflate offer, if enabled.
    let deflate = match (&config.connection.deflate, &accept.extensions) {
        (Some(settings), None) => {
            deflate::negotiate(request.extensions(), settings).map(|(params, response)| {
                accept.extensions = Some(response);
                params
            })
        }
        _ => None,
    };
    io.write_all(&accept.response(&request)).await?;
    io.flush().await?;
    let leftover = buf.split_off(0);
    Ok(
        WebSocket::from_raw(io, Role::Server, config.connection, leftover)
            .with_deflate(deflate)
            .with_subprotocol(accept.subprotocol),
    )
}

/// Read until a complete request head; returns it and the buffer past it.
async fn read_request<S: AsyncRead + Unpin>(
    io: &mut S,
    max_head: usize,
) -> Result<(Request, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some((request, used)) = parse_request(&buf, max_head)? {
            let _ = buf.split_to(used);
            return Ok((request, buf));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(if buf.is_empty() {
                Error::Io(std::io::ErrorKind::UnexpectedEof.into())
            } else {
                Error::Handshake(HandshakeError::Malformed(
                    "connection closed mid-request".into(),
                ))
            });
        }
    }
}

/// Answer with an HTTP error and close; failures only mean the client is gone.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, reject: &Reject) {
    let _ = io.write_all(&reject.response()).await;
    let _ = io.shutdown().await;
}
