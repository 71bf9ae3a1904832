//! Accepting WebSocket connections on a server.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use duplex_proto::{
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
}

/// Accept a WebSocket connection on `io` with the default settings.
///
/// # Errors
/// [`Error::Handshake`] for an invalid request (the client was answered with its status),
/// [`Error::Timeout`] if the request did not arrive in time, [`Error::Io`] (of kind `Other`,
/// before anything is read, when the runtime was built without Tokio's time driver).
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
/// [`Error::InvalidHeader`] when its answer had a header that cannot be sent or a subprotocol
/// the client did not offer (answered `500`).
///
/// To await something before answering (a database, another service), use [`Incoming`],
/// of which this is a thin wrapper.
pub async fn accept_with<S, F>(io: S, config: ServerConfig, hook: F) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Result<Accept, Reject>,
{
    let incoming = Incoming::read(io, config).await?;
    match hook(incoming.request()) {
        Ok(accept) => incoming.accept(accept).await,
        Err(reject) => {
            let status = reject.status;
            match incoming.reject(reject).await {
                Err(Error::InvalidHeader(e)) => Err(Error::InvalidHeader(e)),
                // Written or not (the client may be gone), the request was refused.
                _ => Err(Error::Rejected(status)),
            }
        }
    }
}

/// An upgrade request read from a stream and not answered yet: the two-step accept.
///
/// [`read`](Self::read) reads and validates the request; the application inspects it with
/// [`request`](Self::request), may await anything it needs meanwhile (a session lookup in a
/// database, a call to an authorization service), and then answers with
/// [`accept`](Self::accept), which gives the [`WebSocket`], or [`reject`](Self::reject).
/// [`accept_with`] is this with a synchronous hook.
///
/// Dropping an `Incoming` without answering drops the stream, which closes the connection
/// without a response.
///
/// ```no_run
/// use duplex::{Accept, Incoming, Reject, ServerConfig};
///
/// # async fn lookup(_: &str) -> Option<String> { None }
/// # async fn run(tcp: tokio::net::TcpStream) -> duplex::Result<()> {
/// let incoming = Incoming::read(tcp, ServerConfig::default().subprotocols(["chat"])).await?;
/// let token = incoming.request().query().unwrap_or_default().to_owned();
/// match lookup(&token).await {
///     Some(user) => {
///         let ws = incoming.accept(Accept::default().header("X-User", user)).await?;
///         // ...
///     }
///     None => incoming.reject(Reject::new(401, "unknown session")).await?,
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Incoming<S> {
    io: S,
    request: Request,
    /// Bytes read past the request head: the client's first frames.
    leftover: BytesMut,
    config: ServerConfig,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Incoming<S> {
    /// Read the request head from `io` and validate it (RFC 6455 §4.2.1).
    ///
    /// The whole head must arrive within [`ServerConfig::handshake_timeout`] and fit in
    /// [`ServerConfig::max_head_size`]. An invalid request is answered with its status
    /// (400, 426 with `Sec-WebSocket-Version: 13`, 431) and the connection closed.
    ///
    /// # Errors
    /// [`Error::Handshake`] for an invalid request (already answered), [`Error::Timeout`]
    /// when the head did not arrive in time (the connection is dropped unanswered),
    /// [`Error::Io`] (of kind `Other`, before anything is read, when the runtime was built
    /// without Tokio's time driver).
    pub async fn read(mut io: S, config: ServerConfig) -> Result<Self> {
        crate::timer::check()?;
        let read = tokio::time::timeout(
            config.handshake_timeout,
            read_request(&mut io, config.max_head_size),
        );
        let (request, leftover) = match read.await {
            Err(_) => return Err(Error::Timeout("opening handshake")),
            Ok(Err(Error::Handshake(e))) => {
                refuse(&mut io, &Reject::from(&e)).await;
                return Err(Error::Handshake(e));
            }
            Ok(other) => other?,
        };
        Ok(Self {
            io,
            request,
            leftover,
            config,
        })
    }

    /// An upgrade request that was read some other way: by a server that reads request heads
    /// itself and serves some of them as WebSockets (for instance one route, the rest going to
    /// an HTTP stack). `request` is what
    /// [`parse_request`](duplex_proto::handshake::server::parse_request) (or
    /// [`validate`](duplex_proto::handshake::server::validate)) returned, and `leftover` the
    /// bytes read past its head, which are the client's first frames.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use duplex::proto::handshake::server::parse_request;
    /// use duplex::{Incoming, ServerConfig};
    ///
    /// let head = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    ///     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    /// let mut buf = BytesMut::from(&head[..]);
    /// let (request, used) = parse_request(&buf, 8192).unwrap().unwrap();
    /// let leftover = buf.split_off(used);
    /// let (io, _peer) = tokio::io::duplex(1024);
    /// let incoming = Incoming::from_parts(io, request, leftover, ServerConfig::default());
    /// assert_eq!(incoming.request().path(), "/ws");
    /// ```
    #[must_use]
    pub const fn from_parts(
        io: S,
        request: Request,
        leftover: BytesMut,
        config: ServerConfig,
    ) -> Self {
        Self {
            io,
            request,
            leftover,
            config,
        }
    }

    /// The validated request: target, headers, offered subprotocols and extensions.
    #[must_use]
    pub const fn request(&self) -> &Request {
        &self.request
    }

    /// The settings this request is answered with.
    #[must_use]
    pub const fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Answer `101 Switching Protocols` and open the connection.
    ///
    /// A subprotocol set on `accept` wins over the one [`ServerConfig::subprotocols`]
    /// selects and must be one the client offered; with neither and
    /// [`ServerConfig::require_subprotocol`], the client gets `400`. Permessage-deflate is
    /// negotiated from the connection's [`Config::deflate`] (RFC 7692 §5), as
    /// [`Accept::negotiate`] does for every server path.
    ///
    /// # Errors
    /// [`Error::InvalidHeader`] when a part of `accept` cannot be sent (a header with CR or
    /// LF, a subprotocol that was not offered; the client got `500` and the part is logged),
    /// [`Error::Rejected`] with `400` for a missing required subprotocol, [`Error::Io`].
    pub async fn accept(self, mut accept: Accept) -> Result<WebSocket<S>> {
        let Self {
            mut io,
            request,
            leftover,
            config,
        } = self;
        if accept.subprotocol.is_none() {
            accept.subprotocol = request.select_subprotocol(&config.subprotocols).cloned();
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
        let accepted = match accept.negotiate(&request, &config.connection) {
            Ok(accepted) => accepted,
            Err(e) => {
                // Never written as given: its CR/LF would add headers (a hook echoing a
                // request value would let the client choose them). The client gets a 500.
                tracing::warn!(error = %e, "accept not sent: answered 500");
                refuse(&mut io, &Reject::internal_error()).await;
                return Err(Error::InvalidHeader(e));
            }
        };
        io.write_all(&accepted.response()).await?;
        io.flush().await?;
        let (subprotocol, deflate) = accepted.into_parts();
        Ok(
            WebSocket::from_raw(io, Role::Server, config.connection, leftover)
                .with_deflate(deflate)
                .with_subprotocol(subprotocol),
        )
    }

    /// Answer with `reject` (its status, headers and a `text/plain` body) and close.
    ///
    /// # Errors
    /// [`Error::InvalidHeader`] when a header of `reject` cannot be sent: the client got
    /// `500` without its headers instead. [`Error::Io`] when the response could not be
    /// written (the client is gone).
    pub async fn reject(mut self, reject: Reject) -> Result<()> {
        let (response, invalid) = reject.or_internal_error();
        if let Some(e) = &invalid {
            tracing::warn!(status = reject.status, error = %e, "refusal not sent: answered 500");
        }
        let written = self.io.write_all(&response).await;
        let _ = self.io.shutdown().await;
        match invalid {
            Some(e) => Err(Error::InvalidHeader(e)),
            None => written.map_err(Error::Io),
        }
    }

    /// The stream, the request and the bytes read past its head, to answer it some other
    /// way.
    #[must_use]
    pub fn into_parts(self) -> (S, Request, BytesMut) {
        (self.io, self.request, self.leftover)
    }
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

/// Send `reject` and close; failures to write only mean the client is gone. A refusal with a header that cannot be sent is answered `500`
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
    /// A connected client and the server half, over TCP, for the two-step accept.
    async fn pair(
        builder: impl FnOnce(String) -> crate::ClientBuilder + Send + 'static,
    ) -> (
        tokio::net::TcpStream,
        tokio::task::JoinHandle<
            Result<(
                WebSocket<crate::MaybeTlsStream>,
                duplex_proto::handshake::client::Response,
            )>,
        >,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/room?token=t1", listener.local_addr().unwrap());
        let client = tokio::spawn(async move { builder(url).connect().await });
        let (tcp, _) = listener.accept().await.unwrap();
        (tcp, client)
    }

    #[tokio::test]
    async fn the_application_awaits_a_lookup_then_accepts_with_a_header_and_subprotocol() {
        use crate::Message;

        let (tcp, client) = pair(|url| {
            crate::ClientBuilder::new(url)
                .subprotocol("chat.v1")
                .subprotocol("chat.v2")
                .deflate(Some(duplex_proto::deflate::DeflateConfig::default()))
        })
        .await;
        let config = ServerConfig::default()
            .subprotocols(["chat.v1"])
            .connection(
                Config::default().deflate(Some(duplex_proto::deflate::DeflateConfig::default())),
            );
        let incoming = Incoming::read(tcp, config).await.unwrap();
        assert_eq!(incoming.request().path(), "/room");
        // The "database": answers on another task, after a while.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = incoming.request().query().unwrap_or_default().to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(format!("user-of-{token}"));
        });
        let user = rx.await.unwrap();
        // The application's own choice wins over the configured preference.
        let mut ws = incoming
            .accept(
                Accept::default()
                    .subprotocol("chat.v2")
                    .header("X-User", user),
            )
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), Some("chat.v2"));
        assert!(ws.deflate_params().is_some());
        let (mut client, response) = client.await.unwrap().unwrap();
        assert_eq!(response.subprotocol.as_deref(), Some("chat.v2"));
        assert_eq!(response.headers["x-user"], "user-of-token=t1");
        assert!(client.deflate_params().is_some());
        let big = Message::text("again ".repeat(5000));
        client.send(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), big);
    }

    #[tokio::test]
    async fn the_application_rejects_with_401_and_a_body() {
        let (tcp, client) = pair(crate::ClientBuilder::new).await;
        let incoming = Incoming::read(tcp, ServerConfig::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        incoming
            .reject(Reject::new(401, "unknown session").header("WWW-Authenticate", "Bearer"))
            .await
            .unwrap();
        match client.await.unwrap() {
            Err(Error::Refused { status, body }) => {
                assert_eq!(status, 401);
                assert_eq!(body.trim_end(), "unknown session");
            }
            other => panic!("{:?}", other.map(drop)),
        }
        // A refusal with a header that cannot be sent becomes a 500.
        let (tcp, client) = pair(crate::ClientBuilder::new).await;
        let incoming = Incoming::read(tcp, ServerConfig::default()).await.unwrap();
        let err = incoming
            .reject(Reject::new(401, "no").header("WWW-Authenticate", "a\r\nb"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
        assert!(matches!(
            client.await.unwrap(),
            Err(Error::Refused { status: 500, .. })
        ));
    }

    #[tokio::test]
    async fn the_read_is_bounded_by_the_handshake_timeout() {
        let (mut client, server) = duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n")
            .await
            .unwrap();
        let config = ServerConfig::default().handshake_timeout(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = Incoming::read(server, config).await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Dropped unanswered: the client reads the end of the stream.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_incoming_dropped_unanswered_closes_the_connection() {
        let (tcp, client) = pair(crate::ClientBuilder::new).await;
        let incoming = Incoming::read(tcp, ServerConfig::default()).await.unwrap();
        drop(incoming);
        let result = tokio::time::timeout(Duration::from_secs(5), client)
            .await
            .expect("the client sees the close at once")
            .unwrap();
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn a_required_subprotocol_or_an_unoffered_one_is_refused() {
        let (tcp, client) = pair(|url| crate::ClientBuilder::new(url).subprotocol("x")).await;
        let config = ServerConfig::default()
            .subprotocols(["chat"])
            .require_subprotocol(true);
        let incoming = Incoming::read(tcp, config).await.unwrap();
        let err = incoming.accept(Accept::default()).await.unwrap_err();
        assert!(matches!(err, Error::Rejected(400)), "{err:?}");
        assert!(matches!(
            client.await.unwrap(),
            Err(Error::Refused { status: 400, .. })
        ));
        let (tcp, client) = pair(|url| crate::ClientBuilder::new(url).subprotocol("x")).await;
        let incoming = Incoming::read(tcp, ServerConfig::default()).await.unwrap();
        let err = incoming
            .accept(Accept::default().subprotocol("y"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidHeader(e) if e.name == "Sec-WebSocket-Protocol"),
            "{err:?}"
        );
        assert!(matches!(
            client.await.unwrap(),
            Err(Error::Refused { status: 500, .. })
        ));
    }
}
