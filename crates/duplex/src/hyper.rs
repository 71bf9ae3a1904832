//! Upgrade hyper 1 requests to WebSockets, without a framework. Needs the `hyper` feature.
//!
//! A request is checked by the same validator as the raw handshake
//! ([`validate`]), and its `101` is settled by the
//! same [`Accept::negotiate`]: subprotocol selection and permessage-deflate from the
//! [`Config`] agree exactly with [`accept_with`](crate::accept_with) and
//! [`duplex::axum`](crate::axum) (which is built on this module).
//!
//! Serve the connection with HTTP/1.1 upgrades on (`hyper::server::conn::http1`'s
//! `serve_connection(..).with_upgrades()`, or hyper-util's `auto` builder with
//! `serve_connection_with_upgrades`), answer the request with the response of
//! [`upgrade`] (or [`Upgrade::accept`]), and await the [`Upgrading`] future on a task of its
//! own: it resolves once hyper has sent the `101` and handed over the connection.
//!
//! # HTTP/2 (RFC 8441)
//!
//! The same handler accepts WebSockets over HTTP/2: an extended CONNECT with
//! `:protocol websocket` is validated by [`validate_connect`] (the `:protocol` is read from
//! the request's [`hyper::ext::Protocol`] extension, the `Host` from `:authority`), answered
//! `200` instead of `101` (no `Sec-WebSocket-Accept`, RFC 8441 §5), with the subprotocol and
//! permessage-deflate negotiated exactly as on HTTP/1.1; [`Upgrading`] then resolves to a
//! [`WebSocket`] over the HTTP/2 stream. Serve the connection with
//! `hyper::server::conn::http2::Builder::enable_connect_protocol()` (or hyper-util's
//! `auto::Builder` and `.http2().enable_connect_protocol()`): that sends
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (§3), without which clients do not send the request.
//! A `GET` upgrade over HTTP/2, or a CONNECT without `:protocol websocket`, is refused with
//! `400` and the reason. When the stream ends (END_STREAM) the socket sees the connection
//! close; a RST_STREAM from the client is a connection reset (RFC 8441 §5), an abnormal
//! closure.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use duplex::hyper::{upgrade, Body};
//! use duplex::{Config, Message};
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//!
//! async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
//!     match upgrade(&mut req, Config::default()) {
//!         Ok((response, upgrading)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = upgrading.await else { return };
//!                 while let Some(Ok(message)) = ws.recv().await {
//!                     if ws.send(message).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!             Ok(response)
//!         }
//!         Err(rejection) => Ok(rejection.response()),
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         let connection = http1::Builder::new()
//!             .serve_connection(TokioIo::new(tcp), service_fn(handle))
//!             .with_upgrades();
//!         tokio::spawn(connection);
//!     }
//! });
//!
//! let (mut ws, _) = duplex::connect(&format!("ws://{addr}/")).await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//! # Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use duplex_proto::{
    deflate::DeflateParams,
    handshake::server::{validate, validate_connect, Accept, Reject, Request},
    Config, HandshakeError, InvalidHeader, Role,
};
use http::{header, HeaderValue, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::WebSocket;

/// The stream type of a WebSocket upgraded from a hyper request.
pub type UpgradedIo = TokioIo<Upgraded>;

/// The body of the responses built here: empty for the `101`, a one-line reason for a
/// refusal.
pub type Body = http_body_util::Full<Bytes>;

/// Validate `req` as a WebSocket upgrade and accept it with `config` (limits, and
/// permessage-deflate when [`Config::deflate`] is set): the response to send and the future
/// of the connection.
///
/// The shortcut for `Upgrade::new(req)?.config(config).accept(Accept::default())`; use
/// [`Upgrade`] to inspect the request, select a subprotocol or add headers first.
///
/// # Errors
/// An [`UpgradeRejection`] to answer with: 400 with the reason, 426 with
/// `Sec-WebSocket-Version: 13`, or 500 when the connection cannot be upgraded (served
/// without upgrades).
pub fn upgrade<B>(
    req: &mut hyper::Request<B>,
    config: impl Into<Arc<Config>>,
) -> Result<(hyper::Response<Body>, Upgrading), UpgradeRejection> {
    Upgrade::new(req)?.config(config).accept(Accept::default())
}

/// A validated upgrade request that has not been answered yet.
///
/// ```
/// use duplex::hyper::{Body, Upgrade};
/// use duplex::{Accept, Reject};
///
/// fn handle<B>(req: &mut hyper::Request<B>) -> hyper::Response<Body> {
///     let upgrade = match Upgrade::new(req) {
///         Ok(upgrade) => upgrade.protocols(["chat.v2", "chat.v1"]),
///         Err(rejection) => return rejection.response(),
///     };
///     if upgrade.request().origin() != Some("https://example.com") {
///         return upgrade.reject(&Reject::new(403, "origin not allowed"));
///     }
///     match upgrade.accept(Accept::default().header("X-Served-By", "duplex")) {
///         Ok((response, upgrading)) => {
///             tokio::spawn(async move {
///                 if let Ok(ws) = upgrading.await {
///                     // ...
///                 }
///             });
///             response
///         }
///         Err(rejection) => rejection.response(),
///     }
/// }
/// ```
pub struct Upgrade {
    request: Request,
    on_upgrade: OnUpgrade,
    config: Arc<Config>,
    selected: Option<String>,
}

impl fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("request", &self.request)
            .field("config", &self.config)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl Upgrade {
    /// Validate `req` (RFC 6455 §4.2.1) and take its upgrade handle.
    ///
    /// # Errors
    /// As for [`upgrade`]. The upgrade handle is taken only from a valid request.
    pub fn new<B>(req: &mut hyper::Request<B>) -> Result<Self, UpgradeRejection> {
        let request = check(
            req.method(),
            req.version(),
            req.uri(),
            req.headers(),
            req.extensions(),
        )?;
        let on_upgrade = take_upgrade(req.extensions_mut())?;
        Ok(Self::with(request, on_upgrade))
    }

    /// As [`new`](Self::new), from the parts of a request (what frameworks extract from).
    ///
    /// # Errors
    /// As for [`upgrade`].
    pub fn from_parts(parts: &mut http::request::Parts) -> Result<Self, UpgradeRejection> {
        let request = check(
            &parts.method,
            parts.version,
            &parts.uri,
            &parts.headers,
            &parts.extensions,
        )?;
        let on_upgrade = take_upgrade(&mut parts.extensions)?;
        Ok(Self::with(request, on_upgrade))
    }

    fn with(request: Request, on_upgrade: OnUpgrade) -> Self {
        Self {
            request,
            on_upgrade,
            config: Arc::new(Config::default()),
            selected: None,
        }
    }

    /// The validated request: target, headers, offered subprotocols and extensions.
    #[must_use]
    pub const fn request(&self) -> &Request {
        &self.request
    }

    /// The protocol configuration of the upgraded connection (limits, keepalive, and
    /// [`Config::deflate`]: when set, a `permessage-deflate` offer of the client is accepted,
    /// RFC 7692 §5).
    #[must_use]
    pub fn config(mut self, config: impl Into<Arc<Config>>) -> Self {
        self.config = config.into();
        self
    }

    /// Selects the first of `supported` (the server's preference order) that the client
    /// offered; with no match, no subprotocol is confirmed (RFC 6455 §4.2.2 item 5.4). A
    /// subprotocol set on the [`Accept`] given to [`accept`](Self::accept) wins.
    #[must_use]
    pub fn protocols<I, P>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.selected = self
            .request
            .select_subprotocol(supported)
            .map(|p| p.as_ref().to_owned());
        self
    }

    /// The subprotocol [`protocols`](Self::protocols) selected, if any.
    #[must_use]
    pub fn selected_protocol(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// Answer `101 Switching Protocols` (HTTP/1.1) or `200 OK` (an HTTP/2 extended CONNECT,
    /// RFC 8441 §5) with `accept` (extra headers, a subprotocol; the extensions come from the
    /// config): the response to send, and the future of the connection, which resolves once
    /// hyper has sent the response.
    ///
    /// # Errors
    /// A `500` rejection when a part of `accept` cannot be sent (a header with CR or LF, a
    /// subprotocol the client did not offer): see [`UpgradeRejection::invalid_header`].
    pub fn accept(
        self,
        mut accept: Accept,
    ) -> Result<(hyper::Response<Body>, Upgrading), UpgradeRejection> {
        let Self {
            request,
            on_upgrade,
            config,
            selected,
        } = self;
        if accept.subprotocol.is_none() {
            accept.subprotocol = selected;
        }
        let accepted = accept.negotiate(&request, &config).map_err(|e| {
            tracing::warn!(error = %e, "accept not sent: answered 500");
            UpgradeRejection::invalid(e)
        })?;
        // `101` on HTTP/1.1; `200` on HTTP/2 (RFC 8441 §5), with an empty body that hyper
        // does not end: the stream stays open and carries the WebSocket frames.
        let mut response = hyper::Response::new(Body::default());
        *response.status_mut() = accepted.status();
        *response.headers_mut() = accepted.header_map();
        let (subprotocol, deflate) = accepted.into_parts();
        let upgrading = Upgrading {
            on_upgrade,
            setup: Some(Setup {
                config,
                deflate,
                subprotocol,
            }),
        };
        Ok((response, upgrading))
    }

    /// Refuse the request: `reject`'s status, headers and one-line `text/plain` body (a
    /// refusal with a header that cannot be sent becomes `500` without its headers, as on the
    /// raw path).
    #[must_use]
    pub fn reject(self, reject: &Reject) -> hyper::Response<Body> {
        refusal(reject)
    }
}

/// Validate the parts of a request with the validator of its HTTP version: an HTTP/1.1
/// `Upgrade` ([`validate`]) or an HTTP/2 extended CONNECT ([`validate_connect`], with the
/// `:protocol` hyper keeps in the extensions and the `:authority` in the URI).
fn check(
    method: &http::Method,
    version: http::Version,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Request, HandshakeError> {
    if version == http::Version::HTTP_2 {
        let protocol = extensions
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        let target = uri.path_and_query().map_or("", |p| p.as_str());
        let authority = uri.authority().map(http::uri::Authority::as_str);
        validate_connect(method, protocol, authority, target, headers.clone())
    } else {
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        validate(method, version, target, headers.clone())
    }
}

/// Take the upgrade handle hyper puts in the request's extensions.
fn take_upgrade(extensions: &mut http::Extensions) -> Result<OnUpgrade, UpgradeRejection> {
    extensions
        .remove::<OnUpgrade>()
        .ok_or_else(|| UpgradeRejection {
            reject: Reject::new(
                500,
                "this connection cannot be upgraded (serve with HTTP/1.1 upgrades on)",
            ),
            invalid: None,
        })
}

/// The HTTP response for `reject`, as the raw path writes it (status, headers, the first line
/// of the reason as the body).
fn refusal(reject: &Reject) -> hyper::Response<Body> {
    let internal;
    let reject = match reject.check() {
        Ok(()) => reject,
        Err(e) => {
            tracing::warn!(status = reject.status, error = %e, "refusal not sent: answered 500");
            internal = Reject::internal_error();
            &internal
        }
    };
    let mut response = hyper::Response::new(Body::from(reject.body()));
    *response.status_mut() = reject.status_code();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in &reject.headers {
        // Checked above: tokens and visible-ASCII values.
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// What the socket is set up with once the connection is handed over.
#[derive(Debug)]
struct Setup {
    config: Arc<Config>,
    deflate: Option<DeflateParams>,
    subprotocol: Option<String>,
}

/// The connection of an accepted upgrade: resolves to the [`WebSocket`] once hyper has sent
/// the `101` and handed the connection over, with the subprotocol and the permessage-deflate
/// parameters that response confirmed.
///
/// It resolves only if the response is sent: await it on a task of its own, not in the
/// handler that returns the response.
#[must_use = "the connection is dropped unless this future is awaited"]
pub struct Upgrading {
    on_upgrade: OnUpgrade,
    setup: Option<Setup>,
}

impl fmt::Debug for Upgrading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrading")
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

impl Upgrading {
    /// The subprotocol the `101` confirmed.
    #[must_use]
    pub fn subprotocol(&self) -> Option<&str> {
        self.setup.as_ref().and_then(|s| s.subprotocol.as_deref())
    }

    /// The permessage-deflate parameters the `101` confirmed.
    #[must_use]
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.setup.as_ref().and_then(|s| s.deflate.as_ref())
    }
}

impl Future for Upgrading {
    /// hyper's error when the connection could not be handed over (the client went away,
    /// or the connection is not served with upgrades on).
    type Output = Result<WebSocket<UpgradedIo>, hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.on_upgrade).poll(cx));
        // Resolved: an empty handle from now on (one that answers hyper's "no upgrade" error),
        // so a poll after completion returns an error instead of polling a spent handle.
        self.on_upgrade = hyper::upgrade::on(http::Request::new(()));
        let upgraded = result?;
        let Setup {
            config,
            deflate,
            subprotocol,
        } = self.setup.take().unwrap_or_else(|| Setup {
            config: Arc::new(Config::default()),
            deflate: None,
            subprotocol: None,
        });
        // hyper keeps the bytes it read past the request head inside `Upgraded`.
        let ws = WebSocket::from_raw(
            TokioIo::new(upgraded),
            Role::Server,
            config,
            BytesMut::new(),
        )
        .with_deflate(deflate)
        .with_subprotocol(subprotocol);
        Poll::Ready(Ok(ws))
    }
}

/// Why a request is not (or cannot be) upgraded; converts into the HTTP response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRejection {
    reject: Reject,
    invalid: Option<InvalidHeader>,
}

impl UpgradeRejection {
    fn invalid(e: InvalidHeader) -> Self {
        Self {
            reject: Reject::internal_error(),
            invalid: Some(e),
        }
    }

    /// The response status: 400, 426, or 500 (a connection that cannot upgrade, or an
    /// answer that cannot be sent).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.reject.status_code()
    }

    /// The one-line reason sent as the body.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reject.reason
    }

    /// The part of the server's answer that could not be sent, for a `500` from
    /// [`Upgrade::accept`].
    #[must_use]
    pub const fn invalid_header(&self) -> Option<&InvalidHeader> {
        self.invalid.as_ref()
    }

    /// The HTTP response: the status, `text/plain` reason, and for 426 the
    /// `Sec-WebSocket-Version: 13` the client should retry with (RFC 6455 §4.4).
    ///
    /// (Not named `into_response`, so that axum's `IntoResponse::into_response` of the same
    /// value is not shadowed.)
    #[must_use]
    pub fn response(&self) -> hyper::Response<Body> {
        refusal(&self.reject)
    }
}

impl From<HandshakeError> for UpgradeRejection {
    fn from(e: HandshakeError) -> Self {
        Self {
            reject: Reject::from(&e),
            invalid: None,
        }
    }
}

impl fmt::Display for UpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status(), self.reason())?;
        if let Some(e) = &self.invalid {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for UpgradeRejection {}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::SocketAddr};

    use duplex_proto::deflate::DeflateConfig;
    use hyper::{body::Incoming, server::conn::http1, service::service_fn};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{ClientBuilder, Error, Message};

    /// A hyper 1 server whose handler upgrades with [`Upgrade`]: it selects `chat`, enables
    /// deflate, refuses `/private` with 401, and echoes on the socket after telling the client
    /// what the socket itself reports.
    async fn server() -> SocketAddr {
        async fn handle(
            mut req: hyper::Request<Incoming>,
        ) -> Result<hyper::Response<Body>, Infallible> {
            let upgrade = match Upgrade::new(&mut req) {
                Ok(upgrade) => upgrade
                    .protocols(["chat", "other"])
                    .config(Config::default().deflate(Some(DeflateConfig::default()))),
                Err(rejection) => return Ok(rejection.response()),
            };
            if upgrade.request().path() == "/private" {
                return Ok(upgrade.reject(
                    &Reject::new(401, "who are you?").header("WWW-Authenticate", "Bearer"),
                ));
            }
            let accept = Accept::default().header("X-Path", upgrade.request().path());
            Ok(match upgrade.accept(accept) {
                Ok((response, upgrading)) => {
                    // What the 101 confirmed, before the connection is handed over.
                    let confirmed = upgrading.subprotocol().map(str::to_owned);
                    tokio::spawn(async move {
                        let Ok(mut ws) = upgrading.await else { return };
                        assert_eq!(ws.subprotocol(), confirmed.as_deref());
                        let seen =
                            format!("{:?} {}", ws.subprotocol(), ws.deflate_params().is_some());
                        if ws.send(Message::text(seen)).await.is_err() {
                            return;
                        }
                        while let Some(Ok(message)) = ws.recv().await {
                            if ws.send(message).await.is_err() {
                                break;
                            }
                        }
                    });
                    response
                }
                Err(rejection) => rejection.response(),
            })
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .with_upgrades();
                tokio::spawn(connection);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_hyper_server_accepts_our_client_with_subprotocol_and_deflate() {
        let addr = server().await;
        let (mut ws, response) = ClientBuilder::new(format!("ws://{addr}/echo"))
            .subprotocol("other")
            .subprotocol("chat")
            .deflate(Some(DeflateConfig::default()))
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), Some("chat"));
        assert!(ws.deflate_params().is_some());
        assert_eq!(response.headers["x-path"], "/echo");
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text("Some(\"chat\") true")
        );
        let big = Message::text("compress me ".repeat(10_000));
        ws.send(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), big);
        // Without an offer: neither is confirmed.
        let (ws, _) = ClientBuilder::new(format!("ws://{addr}/echo"))
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), None);
        assert!(ws.deflate_params().is_none());
    }

    #[tokio::test]
    async fn the_application_can_refuse_after_inspecting() {
        let addr = server().await;
        let err = ClientBuilder::new(format!("ws://{addr}/private"))
            .connect()
            .await
            .map(drop)
            .unwrap_err();
        match err {
            Error::Refused { status, body } => {
                assert_eq!(status, 401);
                assert_eq!(body.trim_end(), "who are you?");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The raw answer of the server to `request`.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    #[tokio::test]
    async fn bad_requests_get_their_statuses() {
        let addr = server().await;
        let good = "GET /echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let cases = [
            (
                "Version: 13",
                "Version: 8",
                "426 ",
                "unsupported Sec-WebSocket-Version (only 13 is supported)",
            ),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                "400 ",
                "missing \"Upgrade: websocket\" header",
            ),
            ("GET /echo", "POST /echo", "400 ", "method must be GET"),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "c2hvcnQ=",
                "400 ",
                "Sec-WebSocket-Key must be base64 of 16 bytes",
            ),
            (
                "Version: 13\r\n",
                "Version: 13\r\nSec-WebSocket-Version: 13\r\n",
                "400 ",
                "duplicate Sec-WebSocket-Version header",
            ),
        ];
        for (from, to, status, reason) in cases {
            let answer = exchange(addr, &good.replacen(from, to, 1)).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{to}: {answer}"
            );
            assert!(
                answer.ends_with(&format!("\r\n\r\n{reason}\n")),
                "{to}: {answer}"
            );
            if status == "426 " {
                assert!(
                    answer
                        .to_ascii_lowercase()
                        .contains("\r\nsec-websocket-version: 13\r\n"),
                    "{answer}"
                );
            }
        }
        let answer = exchange(addr, good).await;
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{answer}");
    }

    #[tokio::test]
    async fn a_request_without_an_upgrade_handle_is_answered_500() {
        let mut req = hyper::Request::get("/")
            .header("host", "h")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let rejection = upgrade(&mut req, Config::default()).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // An answer that cannot be sent: 500, and the header is named.
        let (mut parts, ()) = req.into_parts();
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        let rejection = Upgrade::from_parts(&mut parts)
            .unwrap()
            .accept(Accept::default().header("X-A", "a\nb"))
            .unwrap_err();
        assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            rejection.invalid_header().map(|e| e.name.as_str()),
            Some("X-A")
        );
        let response = rejection.response();
        assert!(!response.headers().contains_key("x-a"));
    }
}
