//! The server side of the opening handshake (RFC 6455 §4.2).
//!
//! ```
//! use duplex_proto::handshake::server::{parse_request, Accept};
//!
//! let raw = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
//!             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!             Sec-WebSocket-Version: 13\r\n\r\n";
//! let (request, used) = parse_request(raw, 8192).unwrap().unwrap();
//! assert_eq!(used, raw.len());
//! assert_eq!(request.path(), "/chat");
//! let response = Accept::default().response(&request).unwrap();
//! assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
//! ```

use std::fmt::Write as _;

use base64::{engine::general_purpose::STANDARD, Engine as _};

use crate::{
    deflate::{self, DeflateParams},
    Config,
};

use super::{
    accept_key, check_header, check_token, check_value, has_token, head_len, list_values,
    to_header_map, HandshakeError, InvalidHeader, MAX_HEADERS,
};

/// Headers [`Accept::header`] refuses (lowercase): the `101` response writes them itself
/// (use [`Accept::subprotocol`] and [`Accept::extensions`]: a hook's own
/// `Sec-WebSocket-Extensions` would announce compression the connection does not do), or
/// they would frame a body.
pub const RESERVED_ACCEPT_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Headers [`Reject::header`] refuses (lowercase): the refusal writes them itself, and they
/// frame its body.
pub const RESERVED_REJECT_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
];

/// A validated WebSocket upgrade request.
#[derive(Debug, Clone)]
pub struct Request {
    target: String,
    headers: http::HeaderMap,
    /// `None` over HTTP/2 (RFC 8441 §5: the key is not used).
    key: Option<String>,
    version: http::Version,
}

impl Request {
    /// The request target as sent: path and query.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path, without the query.
    #[must_use]
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string (after `?`), if any.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// All request headers.
    #[must_use]
    pub const fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    /// The first value of a header, if present and visible ASCII.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Origin` header (§4.2.1 item 7; §10.2: a server should check it).
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.header("origin")
    }

    /// The `Sec-WebSocket-Key` sent by the client; `None` for an HTTP/2 extended CONNECT
    /// (RFC 8441 §5: "the Sec-WebSocket-Key and Sec-WebSocket-Accept header fields are not
    /// used").
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The HTTP version of the request: HTTP/1.1 for an `Upgrade` ([`validate`]), HTTP/2 for
    /// an extended CONNECT ([`validate_connect`]). It decides the answer: `101` or `200`
    /// ([`Accepted::status`]).
    #[must_use]
    pub const fn version(&self) -> http::Version {
        self.version
    }

    /// The subprotocols offered, in the client's order of preference.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        list_values(&self.headers, "sec-websocket-protocol")
    }

    /// The raw `Sec-WebSocket-Extensions` offers, one per comma-separated element.
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        list_values(&self.headers, "sec-websocket-extensions")
    }

    /// The first of `supported` (the server's order of preference) that the client offered,
    /// compared exactly (subprotocol names are case-sensitive tokens, RFC 6455 §4.1); `None`
    /// when there is none in common, and then the `101` confirms no subprotocol (§4.2.2
    /// item 5.4: "the server MUST NOT send back a Sec-WebSocket-Protocol header field" that
    /// the client did not offer).
    pub fn select_subprotocol<I, P>(&self, supported: I) -> Option<P>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        supported
            .into_iter()
            .find(|ours| self.subprotocols().any(|theirs| theirs == ours.as_ref()))
    }
}

/// Parse and validate an upgrade request at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (call again with more bytes), or the request
/// and the length of its head; bytes after it are already WebSocket frames. The parsed head is
/// checked by [`validate`], as the framework integrations check theirs.
///
/// # Errors
/// A [`HandshakeError`] whose [`status`](HandshakeError::status) is the HTTP answer: 400 for a
/// malformed or non-upgrade request, 426 for another WebSocket version, 431 when the head is
/// over `max_head` bytes.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(used) = head_len(req.parse(buf), buf.len(), max_head)? else {
        return Ok(None);
    };
    // A complete head has a method and a version (httparse fills both before `Complete`).
    let method = http::Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HandshakeError::Malformed("invalid method".into()))?;
    let version = match req.version {
        Some(1) => http::Version::HTTP_11,
        _ => http::Version::HTTP_10,
    };
    let target = req.path.unwrap_or("/");
    let headers = to_header_map(req.headers)?;
    validate(&method, version, target, headers).map(|request| Some((request, used)))
}

/// Check that a parsed HTTP request is a valid WebSocket upgrade (RFC 6455 §4.2.1).
///
/// This is the one validator of every server path: [`parse_request`] calls it on what
/// httparse read, and integrations with HTTP servers (hyper, axum) call it with the parts of
/// the request they were given, so every path accepts and refuses the same requests with the
/// same reasons.
///
/// ```
/// use duplex_proto::handshake::server::validate;
/// use http::{HeaderMap, HeaderValue, Method, Version};
///
/// let mut headers = HeaderMap::new();
/// for (name, value) in [
///     ("host", "example.com"),
///     ("upgrade", "websocket"),
///     ("connection", "keep-alive, Upgrade"),
///     ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
///     ("sec-websocket-version", "13"),
///     ("sec-websocket-protocol", "chat, superchat"),
/// ] {
///     headers.insert(name, HeaderValue::from_static(value));
/// }
/// let request = validate(&Method::GET, Version::HTTP_11, "/chat?room=1", headers).unwrap();
/// assert_eq!(request.query(), Some("room=1"));
/// assert_eq!(request.select_subprotocol(["superchat", "chat"]), Some("superchat"));
/// ```
///
/// # Errors
/// [`HandshakeError::Invalid`] with the reason (answered `400`), or
/// [`HandshakeError::UnsupportedVersion`] (answered `426` with `Sec-WebSocket-Version: 13`).
pub fn validate(
    method: &http::Method,
    version: http::Version,
    target: &str,
    headers: http::HeaderMap,
) -> Result<Request, HandshakeError> {
    if version > http::Version::HTTP_11 {
        // The Upgrade mechanism is HTTP/1.1's (RFC 9110 §7.8); over HTTP/2 a WebSocket is an
        // extended CONNECT (RFC 8441), checked by `validate_connect`.
        return Err(HandshakeError::Invalid(NOT_EXTENDED_CONNECT));
    }
    // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if method != http::Method::GET {
        return Err(HandshakeError::Invalid("method must be GET"));
    }
    if version < http::Version::HTTP_11 {
        return Err(HandshakeError::Invalid("HTTP/1.1 or higher is required"));
    }
    // §4.2.1 item 2: a Host header field.
    if headers.get(http::header::HOST).is_none() {
        return Err(HandshakeError::Invalid("missing Host header"));
    }
    if let Some(reason) = duplicate(&headers) {
        return Err(HandshakeError::Invalid(reason));
    }
    let has = |name: http::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| has_token(v.as_bytes(), token))
    };
    // §4.2.1 item 3: an Upgrade header field containing "websocket", ASCII case-insensitive.
    if !has(http::header::UPGRADE, "websocket") {
        return Err(HandshakeError::Invalid(
            "missing \"Upgrade: websocket\" header",
        ));
    }
    // §4.2.1 item 4: a Connection header field that includes the token "Upgrade".
    if !has(http::header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Invalid(
            "missing \"Connection: Upgrade\" header",
        ));
    }
    // §4.2.1 item 6 and §4.4: version 13, or 426 naming the versions we speak.
    match headers.get(http::header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or(HandshakeError::Invalid("missing Sec-WebSocket-Key header"))?;
    // §4.2.1 item 5: base64 of a 16-byte value. The standard engine refuses non-canonical
    // encodings (padding bits that are not zero), so the key is exactly 22 characters, one of
    // `AQgw` last, and `==`.
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(HandshakeError::Invalid(
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ));
    }
    let key = String::from_utf8_lossy(key).into_owned();
    Ok(Request {
        target: target.to_owned(),
        headers,
        key: Some(key),
        version: http::Version::HTTP_11,
    })
}

/// The reason given to an HTTP/2 (or later) request that is not an extended CONNECT.
const NOT_EXTENDED_CONNECT: &str =
    "over HTTP/2 a WebSocket is an extended CONNECT with :protocol websocket (RFC 8441 §4)";

/// Check that an HTTP/2 request is a valid WebSocket extended CONNECT (RFC 8441 §4, §5):
/// the sibling of [`validate`] for HTTP/2, called by the same integrations with the parts of
/// the request an HTTP/2 server parsed.
///
/// - `method` must be `CONNECT` and `protocol` (the `:protocol` pseudo-header) `websocket`.
/// - `target` is the `:path` (path and query), which RFC 8441 §4 requires with `:protocol`.
/// - `authority` is the `:authority`; it becomes the request's `Host` header
///   ([`Request::header`]`("host")` reads the same on both versions). A `Host` header that
///   names another authority is refused (RFC 9113 §8.3.1).
/// - `Sec-WebSocket-Version` must be 13, as on HTTP/1.1; no `Sec-WebSocket-Key` is needed
///   (RFC 8441 §5), and one sent is ignored. Subprotocol and extension offers are read as on
///   HTTP/1.1.
///
/// ```
/// use duplex_proto::handshake::server::validate_connect;
/// use http::{HeaderMap, HeaderValue, Method, Version};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
/// let request =
///     validate_connect(&Method::CONNECT, Some("websocket"), Some("example.com"), "/chat", headers)
///         .unwrap();
/// assert_eq!(request.version(), Version::HTTP_2);
/// assert_eq!(request.header("host"), Some("example.com"));
/// assert_eq!(request.key(), None);
/// ```
///
/// # Errors
/// [`HandshakeError::Invalid`] with the reason (answered `400`), or
/// [`HandshakeError::UnsupportedVersionH2`] (answered `400` with `Sec-WebSocket-Version:
/// 13`).
pub fn validate_connect(
    method: &http::Method,
    protocol: Option<&str>,
    authority: Option<&str>,
    target: &str,
    mut headers: http::HeaderMap,
) -> Result<Request, HandshakeError> {
    // RFC 8441 §4: "Using the extended CONNECT method", with a `:protocol` naming the
    // protocol of the tunnel; §5: "websocket" for RFC 6455.
    if method != http::Method::CONNECT {
        return Err(HandshakeError::Invalid(NOT_EXTENDED_CONNECT));
    }
    match protocol {
        None => {
            return Err(HandshakeError::Invalid(
                "missing :protocol pseudo-header (RFC 8441 §4)",
            ))
        }
        // Upgrade tokens compare case-insensitively (RFC 9110 §7.8), as `Upgrade: websocket`.
        Some(p) if p.eq_ignore_ascii_case("websocket") => {}
        Some(_) => return Err(HandshakeError::Invalid(":protocol must be websocket")),
    }
    // RFC 8441 §4: "the :scheme and :path pseudo-header fields of the target URI ... MUST
    // also be included".
    if !target.starts_with('/') {
        return Err(HandshakeError::Invalid("missing :path pseudo-header"));
    }
    if let Some(reason) = duplicate(&headers) {
        return Err(HandshakeError::Invalid(reason));
    }
    // RFC 9113 §8.3.1: ":authority ... conveys the authority portion of the target URI"; a
    // server SHOULD treat a request whose Host differs from it as malformed.
    match (authority, headers.get(http::header::HOST)) {
        (Some(a), Some(host)) if host.as_bytes() != a.as_bytes() => {
            return Err(HandshakeError::Invalid(
                "Host header differs from :authority",
            ));
        }
        (Some(a), None) => {
            let host = http::HeaderValue::from_str(a)
                .map_err(|_| HandshakeError::Invalid("invalid :authority"))?;
            headers.insert(http::header::HOST, host);
        }
        (Some(_), Some(_)) => {}
        (None, _) => return Err(HandshakeError::Invalid("missing :authority pseudo-header")),
    }
    match headers.get(http::header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersionH2),
    }
    Ok(Request {
        target: target.to_owned(),
        headers,
        key: None,
        version: http::Version::HTTP_2,
    })
}

/// The reason to refuse a request that repeats a header which must appear once.
///
/// RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host header field
/// line. RFC 6455 §11.3.1 and §11.3.5: `Sec-WebSocket-Key` and `Sec-WebSocket-Version` MUST
/// NOT appear more than once in a request. Two keys leave it open which one the accept value
/// answers, and a proxy and the server could each act on a different one.
#[must_use]
pub fn duplicate(headers: &http::HeaderMap) -> Option<&'static str> {
    let once = [
        (http::header::HOST, "duplicate Host header"),
        (
            http::header::SEC_WEBSOCKET_KEY,
            "duplicate Sec-WebSocket-Key header",
        ),
        (
            http::header::SEC_WEBSOCKET_VERSION,
            "duplicate Sec-WebSocket-Version header",
        ),
    ];
    once.into_iter()
        .find(|(name, _)| headers.get_all(name).iter().nth(1).is_some())
        .map(|(_, reason)| reason)
}

/// How to accept a request: the `101` response's optional parts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Accept {
    /// The subprotocol to confirm; must be one the client offered.
    pub subprotocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` response value, if an extension was negotiated.
    pub extensions: Option<String>,
    /// Extra response headers (e.g. `Set-Cookie`).
    pub headers: Vec<(String, String)>,
}

impl Accept {
    /// Confirm `subprotocol`.
    #[must_use]
    pub fn subprotocol(mut self, subprotocol: impl Into<String>) -> Self {
        self.subprotocol = Some(subprotocol.into());
        self
    }

    /// Add a response header.
    ///
    /// The name must be an HTTP token and not one of [`RESERVED_ACCEPT_HEADERS`], the value
    /// visible ASCII, spaces and tabs: a value with CR or LF (for instance one copied from
    /// the request) would add headers of the client's choosing. [`response`](Self::response)
    /// checks them and writes nothing when one is invalid.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Check the subprotocol (a token), the extensions value and every extra header.
    ///
    /// # Errors
    /// The first one that cannot be sent, by name, with the reason.
    pub fn check(&self) -> Result<(), InvalidHeader> {
        if let Some(p) = &self.subprotocol {
            check_token("Sec-WebSocket-Protocol", p)?;
        }
        if let Some(e) = &self.extensions {
            check_value("Sec-WebSocket-Extensions", e)?;
        }
        for (name, value) in &self.headers {
            check_header(name, value, RESERVED_ACCEPT_HEADERS)?;
        }
        Ok(())
    }

    /// The `101 Switching Protocols` response to `request` (§4.2.2), as given: no extension
    /// is negotiated and the subprotocol is not compared with the offer. Servers use
    /// [`negotiate`](Self::negotiate), which does both.
    ///
    /// # Errors
    /// A part that cannot be sent (see [`check`](Self::check)): no response is produced, and
    /// the server should answer `500` instead (a fault of the server, not of the client).
    pub fn response(&self, request: &Request) -> Result<Vec<u8>, InvalidHeader> {
        self.check()?;
        Ok(Accepted::new(self.clone(), request, None).response())
    }

    /// Settle the `101` for `request`: the one function every server path (raw streams,
    /// hyper, axum) builds its response with, so they confirm the same things.
    ///
    /// - The subprotocol, if set, must be one the client offered (RFC 6455 §4.2.2 item 5.4).
    /// - RFC 7692 §5: when `config` enables permessage-deflate and
    ///   [`extensions`](Self::extensions) is not set, the first acceptable `permessage-deflate` offer of
    ///   the client is accepted and its response parameters confirmed; the returned
    ///   [`Accepted::deflate`] is what the connection must then use. Offers it cannot accept
    ///   are declined by leaving them out (§5: "the server ... MUST decline" by not including
    ///   the element). A hand-written [`extensions`](Self::extensions) value is sent as it is
    ///   and nothing is negotiated.
    /// - Every part is checked as [`check`](Self::check) does.
    ///
    /// # Errors
    /// The part that cannot be sent, by name: a subprotocol the client did not offer, or a
    /// header (see [`check`](Self::check)). The server should answer `500` (its own fault).
    pub fn negotiate(
        mut self,
        request: &Request,
        config: &Config,
    ) -> Result<Accepted, InvalidHeader> {
        if let Some(p) = &self.subprotocol {
            if !request.subprotocols().any(|offered| offered == p) {
                check_token("Sec-WebSocket-Protocol", p)?;
                return Err(InvalidHeader::new(
                    "Sec-WebSocket-Protocol",
                    "the client did not offer this subprotocol (RFC 6455 §4.2.2)",
                ));
            }
        }
        let deflate = match (&config.deflate, &self.extensions) {
            (Some(settings), None) => {
                deflate::negotiate(request.extensions(), settings).map(|(params, response)| {
                    self.extensions = Some(response);
                    params
                })
            }
            _ => None,
        };
        self.check()?;
        Ok(Accepted::new(self, request, deflate))
    }
}

/// An accepted upgrade, from [`Accept::negotiate`]: the checked header fields of the `101`
/// and what the connection then speaks.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// `101` for HTTP/1.1, `200` for an HTTP/2 extended CONNECT (RFC 8441 §5).
    status: http::StatusCode,
    subprotocol: Option<String>,
    deflate: Option<DeflateParams>,
    /// The header fields of the `101`, in order, every one checked.
    fields: Vec<(String, String)>,
}

impl Accepted {
    /// `accept` must have been checked.
    fn new(accept: Accept, request: &Request, deflate: Option<DeflateParams>) -> Self {
        let Accept {
            subprotocol,
            extensions,
            headers,
        } = accept;
        // §4.2.2 item 5: Upgrade, Connection, Sec-WebSocket-Accept, then the optional
        // Sec-WebSocket-Protocol and Sec-WebSocket-Extensions.
        let mut fields = Vec::with_capacity(5 + headers.len());
        let status = if let Some(key) = &request.key {
            fields.push(("Upgrade".to_owned(), "websocket".to_owned()));
            fields.push(("Connection".to_owned(), "Upgrade".to_owned()));
            fields.push((
                "Sec-WebSocket-Accept".to_owned(),
                accept_key(key.as_bytes()),
            ));
            http::StatusCode::SWITCHING_PROTOCOLS
        } else {
            // RFC 8441 §5: a 2xx answers an extended CONNECT; "the Sec-WebSocket-Key and
            // Sec-WebSocket-Accept header fields are not used", and Upgrade and Connection
            // are connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2).
            http::StatusCode::OK
        };
        if let Some(p) = &subprotocol {
            fields.push(("Sec-WebSocket-Protocol".to_owned(), p.clone()));
        }
        if let Some(e) = extensions {
            fields.push(("Sec-WebSocket-Extensions".to_owned(), e));
        }
        fields.extend(headers);
        Self {
            status,
            subprotocol,
            deflate,
            fields,
        }
    }

    /// The status of the answer: `101 Switching Protocols` for an HTTP/1.1 upgrade, `200 OK`
    /// for an HTTP/2 extended CONNECT (RFC 8441 §5), after which the stream carries the
    /// WebSocket frames.
    #[must_use]
    pub const fn status(&self) -> http::StatusCode {
        self.status
    }

    /// The confirmed subprotocol.
    #[must_use]
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The permessage-deflate parameters the connection must use, if it was negotiated.
    #[must_use]
    pub const fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// The header fields of the `101`, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The header fields of the `101` as a map, for an HTTP server that writes the response
    /// itself.
    #[must_use]
    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.fields.len());
        for (name, value) in &self.fields {
            // Every field was checked to be a token and a visible-ASCII value.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// The complete `101 Switching Protocols` response, as HTTP/1.1 bytes.
    ///
    /// For an HTTP/2 request there are no such bytes: the HTTP/2 server sends
    /// [`status`](Self::status) and [`header_map`](Self::header_map) in a HEADERS frame; this
    /// then gives their HTTP/1.1 rendering (`200 OK`), for logs and tests only.
    #[must_use]
    pub fn response(&self) -> Vec<u8> {
        let mut out = String::with_capacity(160);
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("")
        );
        for (name, value) in &self.fields {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// The subprotocol and the deflate parameters, to set up the connection with.
    #[must_use]
    pub fn into_parts(self) -> (Option<String>, Option<DeflateParams>) {
        (self.subprotocol, self.deflate)
    }
}

/// A refusal: an HTTP status and a one-line reason sent as a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reject {
    /// The HTTP status code.
    pub status: u16,
    /// The reason, sent as the `text/plain` body.
    pub reason: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Reject {
    /// A refusal with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Add a response header (e.g. `Location`, `WWW-Authenticate`, `Retry-After`).
    ///
    /// The name must be an HTTP token and not one of [`RESERVED_REJECT_HEADERS`], the value
    /// visible ASCII, spaces and tabs. [`response`](Self::response) checks them.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Check every extra header.
    ///
    /// # Errors
    /// The first one that cannot be sent, by name, with the reason.
    pub fn check(&self) -> Result<(), InvalidHeader> {
        for (name, value) in &self.headers {
            check_header(name, value, RESERVED_REJECT_HEADERS)?;
        }
        Ok(())
    }

    /// The complete HTTP response; the connection is closed after it. The reason's first line
    /// is the body (a body carries any byte safely: its length is in `Content-Length`).
    ///
    /// # Errors
    /// A header that cannot be sent (see [`check`](Self::check)): no response is produced.
    /// [`or_internal_error`](Self::or_internal_error) gives what to send instead.
    pub fn response(&self) -> Result<Vec<u8>, InvalidHeader> {
        self.check()?;
        Ok(self.write())
    }

    /// The response to send, and the header that made it a `500` instead of this refusal.
    ///
    /// A refusal whose headers cannot be sent becomes `500 Internal Server Error` without
    /// them: writing it as given would let its values add headers, and dropping only the bad
    /// header would send a response the hook did not mean.
    #[must_use]
    pub fn or_internal_error(&self) -> (Vec<u8>, Option<InvalidHeader>) {
        match self.check() {
            Ok(()) => (self.write(), None),
            Err(e) => (Self::internal_error().write(), Some(e)),
        }
    }

    /// `500`, for a response the server could not build (a hook's invalid header).
    #[must_use]
    pub fn internal_error() -> Self {
        Self::new(500, "invalid response header")
    }

    /// The status sent: [`status`](Self::status), or `400` when that is not a valid code.
    #[must_use]
    pub fn status_code(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_REQUEST)
    }

    /// The `text/plain` body sent: the first line of the reason and a newline.
    #[must_use]
    pub fn body(&self) -> String {
        format!("{}\n", self.reason.lines().next().unwrap_or_default())
    }

    fn write(&self) -> Vec<u8> {
        let status = self.status_code();
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

impl From<&HandshakeError> for Reject {
    fn from(e: &HandshakeError) -> Self {
        let reject = Self::new(e.status(), e.to_string());
        if matches!(
            e,
            HandshakeError::UnsupportedVersion | HandshakeError::UnsupportedVersionH2
        ) {
            // §4.2.2: tell the client which versions we speak.
            reject.header("Sec-WebSocket-Version", "13")
        } else {
            reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Result<Option<(Request, usize)>, HandshakeError> {
        parse_request(s.as_bytes(), 8192)
    }

    #[test]
    fn accepts_the_rfc_example() {
        let (req, used) = parse(GOOD).unwrap().unwrap();
        assert_eq!(used, GOOD.len());
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1"));
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(
            req.subprotocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        let resp = String::from_utf8(
            Accept::default()
                .subprotocol("chat")
                .response(&req)
                .unwrap(),
        )
        .unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
    }

    #[test]
    fn partial_heads_need_more() {
        for cut in 0..GOOD.len() {
            assert!(parse(&GOOD[..cut]).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn each_bad_request_gets_its_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /chat", "POST /chat", 400),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", 400),
            ("Host: server.example.com\r\n", "", 400),
            ("Upgrade: WebSocket", "Upgrade: h2c", 400),
            ("keep-alive, Upgrade", "keep-alive", 400),
            ("Version: 13", "Version: 8", 426),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "not base64!", 400),
        ];
        for (from, to, status) in cases {
            let bad = GOOD.replacen(from, to, 1);
            let err = parse(&bad).unwrap_err();
            assert_eq!(err.status(), *status, "{from} -> {to}: {err}");
        }
        assert_eq!(parse("GARBAGE\0\r\n\r\n").unwrap_err().status(), 400);
    }

    #[test]
    fn oversized_heads_get_431() {
        let big = GOOD.replacen(
            "\r\n\r\n",
            &format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)),
            1,
        );
        assert_eq!(parse(&big).unwrap_err().status(), 431);
        let partial = format!("GET / HTTP/1.1\r\nX-Pad: {}", "a".repeat(9000));
        assert_eq!(parse(&partial).unwrap_err().status(), 431);
    }

    #[test]
    fn reject_426_names_the_version() {
        let r = Reject::from(&HandshakeError::UnsupportedVersion)
            .response()
            .unwrap();
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn duplicate_key_version_or_host_gets_400_with_its_reason() {
        let cases = [
            (
                "Host: server.example.com\r\n",
                "Host: other.example.com\r\n",
                "duplicate Host header",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
                "duplicate Sec-WebSocket-Key header",
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "duplicate Sec-WebSocket-Key header",
            ),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "SEC-WEBSOCKET-VERSION: 13\r\n",
                "duplicate Sec-WebSocket-Version header",
            ),
        ];
        for (line, again, reason) in cases {
            let bad = GOOD.replacen(line, &format!("{line}{again}"), 1);
            let err = parse(&bad).unwrap_err();
            assert_eq!(err, HandshakeError::Invalid(reason), "{again}");
            assert_eq!(err.status(), 400);
            let answer = String::from_utf8(Reject::from(&err).response().unwrap()).unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{answer}"
            );
            assert!(answer.ends_with(&format!("\r\n\r\n{reason}\n")), "{answer}");
        }
        // Other headers may repeat (RFC 9110 §5.3).
        let two = GOOD.replacen("Origin:", "X-A: 1\r\nX-A: 2\r\nOrigin:", 1);
        assert!(parse(&two).unwrap().is_some());
    }

    #[test]
    fn validate_checks_the_parts_an_http_server_parsed() {
        let (parsed, _) = parse(GOOD).unwrap().unwrap();
        let headers = parsed.headers().clone();
        let ok = validate(
            &http::Method::GET,
            http::Version::HTTP_11,
            "/chat?room=1",
            headers.clone(),
        )
        .unwrap();
        assert_eq!(ok.target(), parsed.target());
        assert_eq!(ok.key(), parsed.key());
        assert_eq!(ok.version(), http::Version::HTTP_11);
        let cases = [
            (
                http::Method::POST,
                http::Version::HTTP_11,
                "method must be GET",
            ),
            (
                http::Method::GET,
                http::Version::HTTP_10,
                "HTTP/1.1 or higher is required",
            ),
            (
                http::Method::GET,
                http::Version::HTTP_2,
                NOT_EXTENDED_CONNECT,
            ),
        ];
        for (method, version, reason) in cases {
            let err = validate(&method, version, "/", headers.clone()).unwrap_err();
            assert_eq!(err, HandshakeError::Invalid(reason));
        }
        // §4.2.1 item 5: only the canonical base64 of 16 bytes.
        for key in [
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "",
        ] {
            let mut bad = headers.clone();
            bad.insert(
                http::header::SEC_WEBSOCKET_KEY,
                http::HeaderValue::from_str(key).unwrap(),
            );
            let err = validate(&http::Method::GET, http::Version::HTTP_11, "/", bad).unwrap_err();
            assert_eq!(
                err,
                HandshakeError::Invalid("Sec-WebSocket-Key must be base64 of 16 bytes"),
                "{key:?}"
            );
        }
    }

    /// The headers of an RFC 8441 extended CONNECT, as an HTTP/2 server hands them over
    /// (pseudo-headers apart): version, subprotocol and deflate offers.
    fn h2_headers() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("origin", "http://example.com"),
        ] {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        headers
    }

    fn connect(
        method: &http::Method,
        protocol: Option<&str>,
        authority: Option<&str>,
        headers: http::HeaderMap,
    ) -> Result<Request, HandshakeError> {
        validate_connect(method, protocol, authority, "/chat?room=1", headers)
    }

    #[test]
    fn an_extended_connect_validates_into_the_same_request() {
        let req = connect(
            &http::Method::CONNECT,
            Some("websocket"),
            Some("server.example.com"),
            h2_headers(),
        )
        .unwrap();
        assert_eq!(req.version(), http::Version::HTTP_2);
        assert_eq!(req.target(), "/chat?room=1");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1"));
        assert_eq!(req.header("host"), Some("server.example.com"));
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.key(), None);
        assert_eq!(req.select_subprotocol(["superchat"]), Some("superchat"));
        // A Host equal to :authority is fine; a key sent anyway is not used (RFC 8441 §5).
        let mut more = h2_headers();
        more.insert("host", http::HeaderValue::from_static("server.example.com"));
        more.insert(
            "sec-websocket-key",
            http::HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        let req = connect(
            &http::Method::CONNECT,
            Some("WebSocket"),
            Some("server.example.com"),
            more,
        )
        .unwrap();
        assert_eq!(req.key(), None);
    }

    #[test]
    fn other_http2_requests_are_refused_with_their_reason() {
        let authority = Some("h");
        let cases = [
            (
                http::Method::GET,
                Some("websocket"),
                authority,
                NOT_EXTENDED_CONNECT,
            ),
            (
                http::Method::CONNECT,
                None,
                authority,
                "missing :protocol pseudo-header (RFC 8441 §4)",
            ),
            (
                http::Method::CONNECT,
                Some("webtransport"),
                authority,
                ":protocol must be websocket",
            ),
            (
                http::Method::CONNECT,
                Some("websocket"),
                None,
                "missing :authority pseudo-header",
            ),
        ];
        for (method, protocol, authority, reason) in cases {
            let err = connect(&method, protocol, authority, h2_headers()).unwrap_err();
            assert_eq!(err, HandshakeError::Invalid(reason));
            assert_eq!(err.status(), 400);
        }
        let mut other_host = h2_headers();
        other_host.insert("host", http::HeaderValue::from_static("other"));
        let err = connect(
            &http::Method::CONNECT,
            Some("websocket"),
            authority,
            other_host,
        );
        assert_eq!(
            err.unwrap_err(),
            HandshakeError::Invalid("Host header differs from :authority")
        );
        let err = validate_connect(
            &http::Method::CONNECT,
            Some("websocket"),
            authority,
            "",
            h2_headers(),
        );
        assert_eq!(
            err.unwrap_err(),
            HandshakeError::Invalid("missing :path pseudo-header")
        );
        // Another version: 400 (not 426, which needs an Upgrade header HTTP/2 lacks), still
        // naming version 13.
        for version in [Some("8"), None] {
            let mut headers = h2_headers();
            match version {
                Some(v) => headers.insert("sec-websocket-version", v.parse().unwrap()),
                None => headers.remove("sec-websocket-version"),
            };
            let err = connect(
                &http::Method::CONNECT,
                Some("websocket"),
                authority,
                headers,
            )
            .unwrap_err();
            assert_eq!(err, HandshakeError::UnsupportedVersionH2);
            assert_eq!(err.status(), 400);
            let reject = Reject::from(&err);
            assert_eq!(reject.status, 400);
            assert_eq!(
                reject.headers,
                [("Sec-WebSocket-Version".to_owned(), "13".to_owned())]
            );
        }
        // And the HTTP/1.1 validator refuses HTTP/2 requests, pointing at RFC 8441.
        let err = validate(
            &http::Method::CONNECT,
            http::Version::HTTP_2,
            "/",
            h2_headers(),
        )
        .unwrap_err();
        assert_eq!(err, HandshakeError::Invalid(NOT_EXTENDED_CONNECT));
    }

    #[test]
    fn an_extended_connect_is_answered_200_negotiated_as_on_http1() {
        let req = connect(
            &http::Method::CONNECT,
            Some("websocket"),
            Some("h"),
            h2_headers(),
        )
        .unwrap();
        let with_deflate = Config::default().deflate(Some(deflate::DeflateConfig::default()));
        let accepted = Accept::default()
            .subprotocol("chat")
            .header("Set-Cookie", "a=1")
            .negotiate(&req, &with_deflate)
            .unwrap();
        assert_eq!(accepted.status(), http::StatusCode::OK);
        assert_eq!(accepted.subprotocol(), Some("chat"));
        assert!(accepted.deflate().is_some());
        let names: Vec<_> = accepted.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Sec-WebSocket-Protocol",
                "Sec-WebSocket-Extensions",
                "Set-Cookie"
            ]
        );
        assert!(String::from_utf8(accepted.response())
            .unwrap()
            .starts_with("HTTP/1.1 200 OK\r\n"));
        // The same offer over HTTP/1.1 negotiates the same extension response.
        let (h1, _) = parse(&GOOD.replacen(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Sec-WebSocket-Version",
            1,
        ))
        .unwrap()
        .unwrap();
        let h1 = Accept::default()
            .subprotocol("chat")
            .negotiate(&h1, &with_deflate)
            .unwrap();
        assert_eq!(h1.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            h1.header_map()["sec-websocket-extensions"],
            accepted.header_map()["sec-websocket-extensions"]
        );
        assert_eq!(h1.deflate(), accepted.deflate());
        // An unoffered subprotocol is refused on HTTP/2 too.
        let err = Accept::default()
            .subprotocol("graphql")
            .negotiate(&req, &Config::default())
            .unwrap_err();
        assert_eq!(err.name, "Sec-WebSocket-Protocol");
    }

    #[test]
    fn subprotocols_are_selected_by_the_servers_preference() {
        let (req, _) = parse(GOOD).unwrap().unwrap();
        assert_eq!(
            req.select_subprotocol(["superchat", "chat"]),
            Some("superchat")
        );
        assert_eq!(req.select_subprotocol(["other", "chat"]), Some("chat"));
        assert_eq!(req.select_subprotocol(["Chat"]), None);
        assert_eq!(req.select_subprotocol(Vec::<String>::new()), None);
    }

    #[test]
    fn negotiate_confirms_only_what_was_offered_and_deflate_from_the_config() {
        let offer = GOOD.replacen(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Extensions: x-unknown, permessage-deflate; client_max_window_bits\r\n\
             Sec-WebSocket-Version",
            1,
        );
        let (req, _) = parse(&offer).unwrap().unwrap();
        let with_deflate = Config::default().deflate(Some(deflate::DeflateConfig::default()));
        let accepted = Accept::default()
            .subprotocol("chat")
            .header("Set-Cookie", "a=1")
            .negotiate(&req, &with_deflate)
            .unwrap();
        assert_eq!(accepted.subprotocol(), Some("chat"));
        assert!(accepted.deflate().is_some());
        let names: Vec<_> = accepted.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Upgrade",
                "Connection",
                "Sec-WebSocket-Accept",
                "Sec-WebSocket-Protocol",
                "Sec-WebSocket-Extensions",
                "Set-Cookie"
            ]
        );
        // The bytes and the map say the same.
        let text = String::from_utf8(accepted.response()).unwrap();
        let map = accepted.header_map();
        assert_eq!(map.len(), names.len());
        for (name, value) in map.iter() {
            let line = format!("\r\n{}: {}\r\n", name, value.to_str().unwrap());
            assert!(
                text.to_ascii_lowercase()
                    .contains(&line.to_ascii_lowercase()),
                "{line}"
            );
        }
        assert!(map["sec-websocket-extensions"]
            .to_str()
            .unwrap()
            .starts_with("permessage-deflate"));
        // Deflate off in the config: the offer is declined.
        let plain = Accept::default()
            .negotiate(&req, &Config::default())
            .unwrap();
        assert!(plain.deflate().is_none());
        assert!(plain
            .headers()
            .all(|(n, _)| n != "Sec-WebSocket-Extensions"));
        // A subprotocol the client did not offer is never confirmed.
        let err = Accept::default()
            .subprotocol("graphql")
            .negotiate(&req, &Config::default())
            .unwrap_err();
        assert_eq!(err.name, "Sec-WebSocket-Protocol");
        let err = Accept::default()
            .header("X-A", "a\r\nb")
            .negotiate(&req, &with_deflate)
            .unwrap_err();
        assert_eq!(err.name, "X-A");
    }

    #[test]
    fn accept_refuses_headers_that_cannot_be_sent() {
        let (req, _) = parse(GOOD).unwrap().unwrap();
        // What a hook that echoes a request value would send.
        let echoed = "x\r\nSet-Cookie: session=attacker";
        let bad = [
            Accept::default().header("X-Echo", echoed),
            Accept::default().header("X-Echo", "x\ny"),
            Accept::default().header("X-Echo", "x\0y"),
            Accept::default().header("X-Echo", "\u{fc}ber"),
            Accept::default().header("X-Echo\r\nSet-Cookie", "1"),
            Accept::default().header("\u{fc}ber", "1"),
            Accept::default().header("Sec-WebSocket-Extensions", "permessage-deflate"),
            Accept::default().header("connection", "close"),
            Accept::default().subprotocol("chat\r\nSet-Cookie: s=1"),
            Accept {
                extensions: Some("permessage-deflate\r\nX: 1".into()),
                ..Accept::default()
            },
        ];
        for accept in bad {
            let err = accept.response(&req).unwrap_err();
            assert_eq!(accept.check(), Err(err.clone()));
            assert!(!err.to_string().contains(['\r', '\n']), "{err}");
        }
        let err = Accept::default()
            .header("X-Echo", echoed)
            .response(&req)
            .unwrap_err();
        assert_eq!(err.name, "X-Echo");
        assert_eq!(err.reason, "the value contains CR or LF");
        let good = Accept::default()
            .header("Set-Cookie", "a=1; Path=/")
            .response(&req)
            .unwrap();
        assert!(String::from_utf8(good)
            .unwrap()
            .contains("\r\nSet-Cookie: a=1; Path=/\r\n"));
    }

    #[test]
    fn reject_with_a_bad_header_becomes_a_500_without_it() {
        let reject = Reject::new(302, "moved").header("Location", "/a\r\nSet-Cookie: s=1");
        let err = reject.response().unwrap_err();
        assert_eq!(err.name, "Location");
        let (bytes, why) = reject.or_internal_error();
        assert_eq!(why, Some(err));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("Set-Cookie") && !text.contains("Location"),
            "{text}"
        );
        for (name, value) in [
            ("Content-Length", "0"),
            ("X-A", "\u{e9}"),
            ("X A", "1"),
            ("X-A", "a\rb"),
        ] {
            assert!(Reject::new(403, "no")
                .header(name, value)
                .response()
                .is_err());
        }
        let (fine, why) = Reject::new(302, "moved")
            .header("Location", "/b")
            .or_internal_error();
        assert!(why.is_none());
        assert!(String::from_utf8(fine)
            .unwrap()
            .contains("\r\nLocation: /b\r\n"));
    }
}
