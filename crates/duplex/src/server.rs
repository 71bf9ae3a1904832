//! Accepting WebSocket connections on a server.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use duplex_proto::{
    deflate,
    handshake::server::{parse_request, Accept, Reject, Request},
    Config, HandshakeError, InvalidHeader, Role,
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
/// # Headers from the hook
///
/// Header names and values of the [`Accept`] or [`Reject`] returned by `hook` are checked
/// before anything is written (see [`Accept::header`]): a value with CR or LF, a control or
/// non-ASCII byte, a name that is not an HTTP token, or a header the handshake writes itself
/// is never sent. The client gets `500 Internal Server Error` instead, the header is logged
/// (`warn`), and this returns [`Error::InvalidHeader`] naming it. Values copied from the
/// request are therefore safe to send back: a request value that would have added a header
/// costs that client a 500, nothing more.
///
/// # Errors
/// As for [`accept`], plus [`Error::Rejected`] when `hook` refused the request, and
/// [`Error::InvalidHeader`] when its answer had a header that cannot be sent.
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
            return Err(match refuse(&mut io, &reject).await {
                Some(invalid) => Error::InvalidHeader(invalid),
                None => Error::Rejected(reject.status),
            });
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
    let response = match accept.response(&request) {
        Ok(response) => response,
        Err(e) => {
            // Never written as given: its CR/LF would add headers (a hook echoing a request
            // value would let the client choose them). The client gets a 500.
            tracing::warn!(error = %e, "accept not sent: answered 500");
            refuse(&mut io, &Reject::internal_error()).await;
            return Err(Error::InvalidHeader(e));
        }
    };
    io.write_all(&response).await?;
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
/// Send `reject` and close. A refusal with a header that cannot be sent is answered `500`
/// without its headers instead, logged, and returned.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, reject: &Reject) -> Option<InvalidHeader> {
    let (response, invalid) = reject.or_internal_error();
    if let Some(e) = &invalid {
        tracing::warn!(status = reject.status, error = %e, "refusal not sent: answered 500");
    }
    let _ = io.write_all(&response).await;
    let _ = io.shutdown().await;
    invalid
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A request whose query carries `value`, percent-encoded (as a hook would decode it).
    fn request(query: &str) -> String {
        format!(
            "GET /?name={query} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// Runs `accept_with` with `hook` against `request`; returns its result and what the
    /// client received.
    async fn run<F>(request: String, hook: F) -> (Result<()>, String)
    where
        F: FnOnce(&Request) -> Result<Accept, Reject> + Send + 'static,
    {
        let (mut client, server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            accept_with(server, ServerConfig::default(), hook)
                .await
                .map(drop)
        });
        client.write_all(request.as_bytes()).await.unwrap();
        let result = task.await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        (result, String::from_utf8_lossy(&answer).into_owned())
    }

    /// The hook of the report: it echoes a decoded query value in a response header.
    fn echoed(req: &Request) -> String {
        let raw = req
            .query()
            .and_then(|q| q.strip_prefix("name="))
            .unwrap_or("");
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    }

    #[tokio::test]
    async fn an_accept_with_crlf_in_a_header_is_answered_500_and_not_written() {
        let (result, answer) = run(request("a%0D%0ASet-Cookie:%20session=attacker"), |req| {
            Ok(Accept::default().header("X-Name", echoed(req)))
        })
        .await;
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
        assert!(
            !answer.contains("Set-Cookie") && !answer.contains("X-Name"),
            "{answer}"
        );
        match result {
            Err(Error::InvalidHeader(e)) => {
                assert_eq!(e.name, "X-Name");
                assert_eq!(e.reason, "the value contains CR or LF");
            }
            other => panic!("{other:?}"),
        }
        // A value that is fine is sent.
        let (result, answer) = run(request("ok"), |req| {
            Ok(Accept::default().header("X-Name", echoed(req)))
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(answer.starts_with("HTTP/1.1 101 ") && answer.contains("\r\nX-Name: ok\r\n"));
    }

    #[tokio::test]
    async fn a_reject_with_a_bad_header_is_answered_500_and_not_written() {
        for query in ["a%0Ab", "caf%C3%A9", "a%00b"] {
            let (result, answer) = run(request(query), |req| {
                Err(Reject::new(302, "moved").header("Location", echoed(req)))
            })
            .await;
            assert!(answer.starts_with("HTTP/1.1 500 "), "{query}: {answer}");
            assert!(!answer.contains("Location"), "{query}: {answer}");
            assert!(
                matches!(&result, Err(Error::InvalidHeader(e)) if e.name == "Location"),
                "{query}: {result:?}"
            );
        }
        // An invalid name, and a header the refusal writes itself.
        for (name, value) in [("X\r\nY", "1"), ("Content-Length", "0")] {
            let (result, answer) = run(request("x"), move |_| {
                Err(Reject::new(403, "no").header(name, value))
            })
            .await;
            assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
            assert!(matches!(result, Err(Error::InvalidHeader(_))), "{result:?}");
        }
        let (result, answer) = run(request("x"), |_| {
            Err(Reject::new(403, "no").header("WWW-Authenticate", "Bearer"))
        })
        .await;
        assert!(matches!(result, Err(Error::Rejected(403))), "{result:?}");
        assert!(
            answer.contains("\r\nWWW-Authenticate: Bearer\r\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn duplicate_keys_get_400_with_the_reason() {
        let twice = request("x").replacen(
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            1,
        );
        let (result, answer) = run(twice, |_| Ok(Accept::default())).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nduplicate Sec-WebSocket-Key header\n"),
            "{answer}"
        );
        assert!(matches!(result, Err(Error::Handshake(_))), "{result:?}");
    }
}
