//! Upgrade axum requests to WebSockets, so an existing axum (hyper) stack can serve
//! `duplex` connections next to its other routes. Needs the `axum` feature.
//!
//! ```
//! use axum::{routing::get, Router};
//! use duplex::{axum::WebSocketUpgrade, Message};
//!
//! async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
//!     upgrade.on_upgrade(|mut ws| async move {
//!         while let Some(Ok(message)) = ws.recv().await {
//!             if ws.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new().route("/ws", get(echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let (mut ws, _) = duplex::connect(&format!("ws://{addr}/ws")).await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//! # Ok(()) }
//! ```
//!
//! # HTTP/2 (RFC 8441)
//!
//! The extractor accepts WebSockets over HTTP/2 too (see [`duplex::hyper`](crate::hyper#http2-rfc-8441)):
//! an extended CONNECT with `:protocol websocket`, answered `200`. Two things to set up:
//! serve HTTP/2 with extended CONNECT enabled (`axum::serve` does, with axum's `http2`
//! feature), and route the path for `CONNECT` as well as `GET`: `any(handler)`, or
//! `get(handler).connect(handler)`, since `get` alone answers an HTTP/2 WebSocket `405`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use duplex_proto::handshake::server::{Accept, Request};
use duplex_proto::Config;

pub use crate::hyper::{UpgradeRejection, UpgradedIo};
use crate::{hyper::Upgrade, WebSocket};

/// An extractor for a valid RFC 6455 §4.2.1 upgrade request, or an RFC 8441 extended
/// CONNECT over HTTP/2. Answer the request with [`WebSocketUpgrade::on_upgrade`]; the
/// callback runs on its own task once the `101` (HTTP/2: `200`) response has been sent.
///
/// The request is checked, and the `101` built, by the same code as the raw handshake and
/// [`duplex::hyper`](crate::hyper), on which this is built. When the request is not a valid
/// upgrade, extraction fails with an [`UpgradeRejection`]: `426 Upgrade Required` with
/// `Sec-WebSocket-Version: 13` for another protocol version, `400 Bad Request` with a
/// one-line reason otherwise, `500` when the connection cannot be upgraded. Extract
/// `Result<WebSocketUpgrade, UpgradeRejection>` to inspect the rejection first.
pub struct WebSocketUpgrade {
    upgrade: Upgrade,
    accept: Accept,
    on_failed: Option<FailedUpgrade>,
}

/// What runs when hyper cannot hand over an upgraded connection.
type FailedUpgrade = Box<dyn FnOnce(hyper::Error) + Send + 'static>;

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("upgrade", &self.upgrade)
            .field("accept", &self.accept)
            .finish_non_exhaustive()
    }
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        self.response().map(Body::new)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            upgrade: Upgrade::from_parts(parts)?,
            accept: Accept::default(),
            on_failed: None,
        })
    }
}

impl WebSocketUpgrade {
    /// The validated request: target, headers, offered subprotocols and extensions.
    pub fn request(&self) -> &Request {
        self.upgrade.request()
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.upgrade.request().subprotocols()
    }

    /// Selects the first of `supported` (the server's preference order) that the client
    /// offered; with no match, no subprotocol is confirmed (RFC 6455 §4.2.2 item 5.4).
    #[must_use]
    pub fn protocols<I, P>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.upgrade = self.upgrade.protocols(supported);
        self
    }

    /// The subprotocol that will be confirmed, if any.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.accept
            .subprotocol
            .as_deref()
            .or_else(|| self.upgrade.selected_protocol())
    }

    /// The protocol configuration of the upgraded connection (limits, keepalive, and
    /// [`Config::deflate`]: when set, a `permessage-deflate` offer of the client is accepted
    /// as [`crate::accept`] would, RFC 7692 §5).
    #[must_use]
    pub fn config(mut self, config: impl Into<Arc<Config>>) -> Self {
        self.upgrade = self.upgrade.config(config);
        self
    }

    /// Answer with `accept`: extra response headers (e.g. `Set-Cookie`), or a subprotocol,
    /// which wins over the one [`protocols`](Self::protocols) selected and must be one the
    /// client offered. Its headers are checked as on every server path: one that cannot be
    /// sent turns the answer into a `500` (see [`Accept::header`]).
    #[must_use]
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// The `Sec-WebSocket-Extensions` elements the client offered, in its order.
    pub fn offered_extensions(&self) -> impl Iterator<Item = &str> {
        self.upgrade.request().extensions()
    }

    /// Runs `callback` with hyper's error when the connection cannot be handed over after the
    /// `101` (the client went away, or the server connection does not support upgrades). By
    /// default the failure is logged at `debug` level.
    #[must_use]
    pub fn on_failed_upgrade<C>(mut self, callback: C) -> Self
    where
        C: FnOnce(hyper::Error) + Send + 'static,
    {
        self.on_failed = Some(Box::new(callback));
        self
    }

    /// Answers the request with `101 Switching Protocols` (HTTP/2: `200 OK`, RFC 8441 §5) and
    /// runs `callback` with the WebSocket on a new task once hyper hands over the connection
    /// (or the HTTP/2 stream).
    ///
    /// The answer is `500 Internal Server Error` instead, and `callback` never runs, when a
    /// part of the [`accept`](Self::accept) answer cannot be sent.
    #[must_use = "the returned response must be sent for the upgrade to happen"]
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            upgrade,
            accept,
            on_failed,
        } = self;
        let (response, upgrading) = match upgrade.accept(accept) {
            Ok(answer) => answer,
            Err(rejection) => return rejection.into_response(),
        };
        tokio::spawn(async move {
            match upgrading.await {
                Ok(ws) => callback(ws).await,
                Err(e) => match on_failed {
                    Some(on_failed) => on_failed(e),
                    None => tracing::debug!(error = %e, "HTTP upgrade failed"),
                },
            }
        });
        response.map(Body::new)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{header, StatusCode};
    use duplex_proto::deflate;

    use super::*;

    /// An upgrade request as a client would send it, offering `chat` and permessage-deflate.
    fn request() -> axum::http::Request<Body> {
        axum::http::Request::get("/ws")
            .header(header::HOST, "localhost")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::SEC_WEBSOCKET_PROTOCOL, "other, chat")
            .header(
                header::SEC_WEBSOCKET_EXTENSIONS,
                "permessage-deflate; client_max_window_bits",
            )
            .body(Body::empty())
            .unwrap()
    }

    async fn extract(mut req: axum::http::Request<Body>) -> WebSocketUpgrade {
        // Not from a connection: hyper's upgrade future resolves to an error at once.
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        parts.extensions.insert(on_upgrade);
        WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_101_confirms_the_subprotocol_and_deflate_from_config() {
        let upgrade = extract(request()).await;
        assert_eq!(
            upgrade.offered_extensions().collect::<Vec<_>>(),
            ["permessage-deflate; client_max_window_bits"]
        );
        let response = upgrade
            .protocols(["chat"])
            .config(Config::default().deflate(Some(deflate::DeflateConfig::default())))
            .on_upgrade(|_| async {});
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers();
        assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        let extension = headers[header::SEC_WEBSOCKET_EXTENSIONS].to_str().unwrap();
        assert!(extension.starts_with("permessage-deflate"), "{extension}");
        // Without deflate in the config, the offer is declined.
        let response = extract(request()).await.on_upgrade(|_| async {});
        assert!(!response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS));
        assert!(!response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }

    /// Through a real `axum::serve`: the callback's socket has the subprotocol and deflate of
    /// the 101, and a compressible message crosses both ways.
    #[tokio::test]
    async fn the_socket_in_the_callback_uses_what_was_negotiated() {
        use crate::{ClientBuilder, Message};

        async fn handler(upgrade: WebSocketUpgrade) -> Response {
            upgrade
                .protocols(["chat"])
                .config(Config::default().deflate(Some(deflate::DeflateConfig::default())))
                .on_upgrade(|mut ws| async move {
                    let seen = format!("{:?} {}", ws.subprotocol(), ws.deflate_params().is_some());
                    if let Some(Ok(message)) = ws.recv().await {
                        let _ = ws.send(message).await;
                        let _ = ws.send(Message::text(seen)).await;
                    }
                })
        }
        let app = axum::Router::new().route("/ws", axum::routing::get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/ws"))
            .subprotocol("other")
            .subprotocol("chat")
            .deflate(Some(deflate::DeflateConfig::default()))
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), Some("chat"));
        assert!(ws.deflate_params().is_some());
        let big = Message::text("compress me ".repeat(10_000));
        ws.send(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), big);
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text("Some(\"chat\") true")
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_failed_upgrade_reaches_its_callback() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _response = extract(request())
            .await
            .on_failed_upgrade(move |e| {
                let _ = tx.send(e.to_string());
            })
            .on_upgrade(|_| async { panic!("no connection to upgrade") });
        let error = tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(!error.is_empty());
    }

    /// The rejection's status, body and headers for `req`.
    async fn rejected(
        req: axum::http::Request<Body>,
    ) -> (StatusCode, String, axum::http::HeaderMap) {
        let (mut parts, _) = req.into_parts();
        let rejection = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        let response = IntoResponse::into_response(rejection);
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    #[tokio::test]
    async fn bad_requests_keep_their_statuses() {
        let mut req = request();
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_KEY, "c2hvcnQ=".parse().unwrap());
        let (status, body, _) = rejected(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "Sec-WebSocket-Key must be base64 of 16 bytes\n");
        let mut req = request();
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        let (status, _, headers) = rejected(req).await;
        assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(headers[header::SEC_WEBSOCKET_VERSION], "13");
        // Valid, but served without upgrades: nothing to hand the connection over with.
        let (status, body, _) = rejected(request()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("cannot be upgraded"), "{body}");
    }

    #[tokio::test]
    async fn an_accept_that_cannot_be_sent_is_answered_500() {
        let response = extract(request())
            .await
            .accept(Accept::default().header("X-A", "a\r\nSet-Cookie: s=1"))
            .on_upgrade(|_| async { panic!("not upgraded") });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!response.headers().contains_key(header::SET_COOKIE));
        let response = extract(request())
            .await
            .accept(Accept::default().subprotocol("chat").header("X-A", "1"))
            .on_upgrade(|_| async {});
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_PROTOCOL], "chat");
    }
}
