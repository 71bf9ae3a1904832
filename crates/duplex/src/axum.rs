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

use std::fmt;
use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use duplex_proto::{
    deflate,
    handshake::{accept_key, list_values},
    Config, Role,
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::WebSocket;

/// The stream type of a WebSocket upgraded from an axum request.
pub type UpgradedIo = TokioIo<Upgraded>;

/// An extractor for a valid RFC 6455 §4.2.1 upgrade request. Answer the request with
/// [`WebSocketUpgrade::on_upgrade`]; the callback runs on its own task once the `101`
/// response has been sent.
///
/// When the request is not a valid upgrade, extraction fails with an
/// [`UpgradeRejection`]: `426 Upgrade Required` with `Sec-WebSocket-Version: 13` for another
/// protocol version, `400 Bad Request` with a one-line reason otherwise. Extract
/// `Result<WebSocketUpgrade, UpgradeRejection>` to inspect the rejection first.
pub struct WebSocketUpgrade {
    key: HeaderValue,
    offered: Vec<String>,
    /// The `Sec-WebSocket-Extensions` elements of the request, in order.
    extensions: Vec<String>,
    selected: Option<String>,
    config: Config,
    on_upgrade: OnUpgrade,
    on_failed: Option<FailedUpgrade>,
}

/// What runs when hyper cannot hand over an upgraded connection.
type FailedUpgrade = Box<dyn FnOnce(hyper::Error) + Send + 'static>;

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("offered", &self.offered)
            .field("extensions", &self.extensions)
            .field("selected", &self.selected)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a request is not a WebSocket upgrade; converts into the HTTP response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRejection {
    status: StatusCode,
    reason: &'static str,
}

impl UpgradeRejection {
    fn bad(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }

    /// The response status: 400, 426, or 500 when the server connection cannot upgrade.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The one-line reason sent as the body.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for UpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for UpgradeRejection {}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(format!("{}\n", self.reason)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 §4.4: tell the client which versions we speak.
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Whether any value of header `name` holds `token` in its comma-separated list
/// (case-insensitive, as RFC 7230 §3.2.6 tokens are).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The elements of the list header `name`, owned: the request's headers are not kept.
fn list(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    list_values(headers, name.as_str())
        .map(str::to_owned)
        .collect()
}

/// RFC 6455 §4.2.1 item 5: the key is the base64 encoding of 16 bytes, which is exactly
/// 22 alphabet characters, a last character whose low 4 bits are zero, and `==`.
fn valid_key(key: &[u8]) -> bool {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    key.len() == 24
        && key[..22].iter().all(|&b| is_b64(b))
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.version != Version::HTTP_11 {
            return Err(UpgradeRejection::bad(
                "WebSocket upgrades need HTTP/1.1 (RFC 6455 §4.1)",
            ));
        }
        if parts.method != Method::GET {
            return Err(UpgradeRejection::bad("method must be GET"));
        }
        let headers = &parts.headers;
        if !headers.contains_key(header::HOST) {
            return Err(UpgradeRejection::bad("missing Host header"));
        }
        // RFC 9112 §3.2 (one Host), RFC 6455 §11.3.1 and §11.3.5 (one key, one version).
        if let Some(reason) = duplex_proto::handshake::server::duplicate(headers) {
            return Err(UpgradeRejection::bad(reason));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::bad(
                "missing \"Upgrade: websocket\" header",
            ));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::bad(
                "missing \"Connection: Upgrade\" header",
            ));
        }
        match headers.get(header::SEC_WEBSOCKET_VERSION) {
            Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
            _ => {
                return Err(UpgradeRejection {
                    status: StatusCode::UPGRADE_REQUIRED,
                    reason: "Sec-WebSocket-Version must be 13",
                })
            }
        }
        let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
            Some(k) if valid_key(k.as_bytes().trim_ascii()) => k.clone(),
            Some(_) => {
                return Err(UpgradeRejection::bad(
                    "Sec-WebSocket-Key must be base64 of 16 bytes",
                ))
            }
            None => return Err(UpgradeRejection::bad("missing Sec-WebSocket-Key header")),
        };
        let offered = list(headers, header::SEC_WEBSOCKET_PROTOCOL);
        let extensions = list(headers, header::SEC_WEBSOCKET_EXTENSIONS);
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                reason: "this connection cannot be upgraded (serve with HTTP/1.1 upgrades on)",
            })?;
        Ok(Self {
            key,
            offered,
            extensions,
            selected: None,
            config: Config::default(),
            on_upgrade,
            on_failed: None,
        })
    }
}

impl WebSocketUpgrade {
    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.offered.iter().map(String::as_str)
    }

    /// Selects the first of `supported` (the server's preference order) that the client
    /// offered; with no match, no subprotocol is confirmed (RFC 6455 §4.2.2 item 5.4).
    #[must_use]
    pub fn protocols<I, P>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.selected = supported
            .into_iter()
            .find(|s| self.offered.iter().any(|o| o == s.as_ref()))
            .map(|s| s.as_ref().to_owned());
        self
    }

    /// The subprotocol that will be confirmed, if any.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// The protocol configuration of the upgraded connection (limits, keepalive, and
    /// [`Config::deflate`]: when set, a `permessage-deflate` offer of the client is accepted
    /// as [`crate::accept`] would, RFC 7692 §5).
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The `Sec-WebSocket-Extensions` elements the client offered, in its order.
    pub fn offered_extensions(&self) -> impl Iterator<Item = &str> {
        self.extensions.iter().map(String::as_str)
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

    /// Answers the request with `101 Switching Protocols` and runs `callback` with the
    /// WebSocket on a new task once hyper hands over the connection.
    #[must_use = "the returned response must be sent for the upgrade to happen"]
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            key,
            extensions,
            selected,
            config,
            on_upgrade,
            on_failed,
            ..
        } = self;
        // RFC 7692 §5: accept the first acceptable permessage-deflate offer, if enabled.
        // The parameters are used only when their response header can be sent.
        let deflate = config.deflate.as_ref().and_then(|settings| {
            let (params, response) =
                deflate::negotiate(extensions.iter().map(String::as_str), settings)?;
            Some((params, HeaderValue::from_str(&response).ok()?))
        });
        let (params, extension) = deflate.unzip();
        let protocol = selected
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok());
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let ws = WebSocket::from_raw(io, Role::Server, config, BytesMut::new())
                        .with_deflate(params)
                        .with_subprotocol(selected);
                    callback(ws).await;
                }
                Err(e) => match on_failed {
                    Some(on_failed) => on_failed(e),
                    None => tracing::debug!(error = %e, "HTTP upgrade failed"),
                },
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes().trim_ascii())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(p) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(extension) = extension {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(
            !valid_key(b"dGhlIHNhbXBsZSBub25jZR=="),
            "non-zero padding bits"
        );
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!valid_key(b""));
    }

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

    #[test]
    fn tokens() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
    }
}
