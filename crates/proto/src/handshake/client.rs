//! The client side of the opening handshake (RFC 6455 §4.1).
//!
//! ```
//! use duplex_proto::handshake::client::ClientHandshake;
//!
//! let hs = ClientHandshake::new("example.com", "/chat").subprotocol("chat");
//! let request = hs.request().unwrap();
//! assert!(request.starts_with(b"GET /chat HTTP/1.1\r\nHost: example.com\r\n"));
//! ```

use std::fmt::Write as _;

use base64::{engine::general_purpose::STANDARD, Engine as _};

use crate::RandomSource;

use super::{
    accept_key, check_header, check_token, check_value, has_token, head_len, list_values,
    to_header_map, HandshakeError, InvalidHeader, MAX_HEADERS,
};

/// Headers [`ClientHandshake::header`] refuses (lowercase): the handshake writes them itself
/// (`Host`, `Upgrade`, `Connection`, the `Sec-WebSocket-*` request headers; use
/// [`ClientHandshake::subprotocol`] and [`ClientHandshake::extensions`]), or they would frame
/// a body the request does not have.
pub const RESERVED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Headers that are connection-specific, so malformed in an HTTP/2 request (RFC 9113 §8.2.2),
/// beyond those of [`RESERVED_REQUEST_HEADERS`] (lowercase).
const H2_CONNECTION_SPECIFIC: &[&str] = &["keep-alive", "proxy-connection", "te"];

/// A client's upgrade request and what it needs to check the answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    host: String,
    target: String,
    key: String,
    subprotocols: Vec<String>,
    extensions: Option<String>,
    headers: Vec<(String, String)>,
    max_head: usize,
}

/// The server's response, checked: `101` over HTTP/1.1, 2xx (200) over HTTP/2.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Response {
    /// The HTTP status: 101 over HTTP/1.1, 200 (or another 2xx) over HTTP/2.
    pub status: u16,
    /// All response headers.
    pub headers: http::HeaderMap,
    /// The subprotocol the server selected, if any.
    pub subprotocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` value the server selected, if any.
    pub extensions: Option<String>,
}

impl ClientHandshake {
    /// A request for `target` (path and query) on `host` (with `:port` when not the default),
    /// with a fresh random key (§4.1 item 7).
    #[must_use]
    pub fn new(host: impl Into<String>, target: impl Into<String>) -> Self {
        let key = STANDARD.encode(rand::random::<[u8; 16]>());
        Self {
            host: host.into(),
            target: target.into(),
            key,
            subprotocols: Vec::new(),
            extensions: None,
            headers: Vec::new(),
            max_head: super::MAX_HEAD_SIZE,
        }
    }

    /// Offer a subprotocol (in order of preference).
    #[must_use]
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Offer extensions: the `Sec-WebSocket-Extensions` request value.
    #[must_use]
    pub fn extensions(mut self, offer: impl Into<String>) -> Self {
        self.extensions = Some(offer.into());
        self
    }

    /// Add a request header (e.g. `Authorization`, `Cookie`, `Origin`).
    ///
    /// The name must be an HTTP token and not one of [`RESERVED_REQUEST_HEADERS`]; the value
    /// visible ASCII, spaces and tabs (no CR, LF or other control bytes). This is checked by
    /// [`check`](Self::check) and [`request`](Self::request), which refuse the whole request
    /// rather than write a bad header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Draw the `Sec-WebSocket-Key` nonce (16 bytes, RFC 6455 §4.1 item 7) from `source`
    /// instead of the operating system's CSPRNG, replacing the one drawn by
    /// [`new`](Self::new). For deterministic tests only: see [`RandomSource`].
    ///
    /// ```
    /// use duplex_proto::{handshake::client::ClientHandshake, RandomSource};
    ///
    /// let mut zeros = RandomSource::new(|buf: &mut [u8]| buf.fill(0));
    /// let hs = ClientHandshake::new("example.com", "/").with_random(&mut zeros);
    /// assert_eq!(hs.key(), "AAAAAAAAAAAAAAAAAAAAAA==");
    /// ```
    #[must_use]
    pub fn with_random(mut self, source: &mut RandomSource) -> Self {
        let mut nonce = [0; 16];
        source.fill(&mut nonce);
        self.key = STANDARD.encode(nonce);
        self
    }

    /// Limit the size of the response head (default 8 KiB).
    #[must_use]
    pub const fn max_head(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    /// The key sent in `Sec-WebSocket-Key`.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Check every part of the request this handshake would write: the host, the target,
    /// the subprotocols (tokens, RFC 6455 §4.1), the extension offer and the extra headers.
    ///
    /// # Errors
    /// The first part that cannot be sent, by name, with the reason.
    pub fn check(&self) -> Result<(), InvalidHeader> {
        check_value("Host", &self.host)?;
        if self.host.is_empty() || !self.host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidHeader::new("Host", "not a host name"));
        }
        // RFC 9112 §3.2: the request target has no whitespace and no control bytes.
        if self.target.is_empty() || !self.target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidHeader::new(
                "request target",
                "it must be visible ASCII without spaces",
            ));
        }
        for p in &self.subprotocols {
            check_token("Sec-WebSocket-Protocol", p)?;
        }
        if let Some(e) = &self.extensions {
            check_value("Sec-WebSocket-Extensions", e)?;
        }
        for (name, value) in &self.headers {
            check_header(name, value, RESERVED_REQUEST_HEADERS)?;
        }
        Ok(())
    }

    /// The request bytes.
    ///
    /// # Errors
    /// A part of the request that cannot be sent (see [`check`](Self::check)); nothing is
    /// produced then.
    pub fn request(&self) -> Result<Vec<u8>, InvalidHeader> {
        self.check()?;
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.target, self.host, self.key
        );
        if !self.subprotocols.is_empty() {
            let _ = write!(
                out,
                "Sec-WebSocket-Protocol: {}\r\n",
                self.subprotocols.join(", ")
            );
        }
        if let Some(e) = &self.extensions {
            let _ = write!(out, "Sec-WebSocket-Extensions: {e}\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        Ok(out.into_bytes())
    }

    /// Parse and check the response at the start of `buf`.
    ///
    /// Returns `Ok(None)` while the head is incomplete, or the response and the length of its
    /// head; bytes after it are already WebSocket frames.
    ///
    /// # Errors
    /// A non-101 status ([`HandshakeError::Status`]; the body, if any, follows the head in
    /// `buf`), missing Upgrade/Connection, a wrong accept value, or a subprotocol or extension
    /// that was not offered (§4.1: the client MUST fail the connection).
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<(Response, usize)>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let Some(used) = head_len(resp.parse(buf), buf.len(), self.max_head)? else {
            return Ok(None);
        };
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            return Err(HandshakeError::Status { status });
        }
        let headers = to_header_map(resp.headers)?;
        let has = |name: http::header::HeaderName, token: &str| {
            headers
                .get_all(name)
                .iter()
                .any(|v| has_token(v.as_bytes(), token))
        };
        if !has(http::header::UPGRADE, "websocket") {
            return Err(HandshakeError::Invalid(
                "response lacks \"Upgrade: websocket\"",
            ));
        }
        if !has(http::header::CONNECTION, "upgrade") {
            return Err(HandshakeError::Invalid(
                "response lacks \"Connection: Upgrade\"",
            ));
        }
        let expected = accept_key(self.key.as_bytes());
        match headers.get(http::header::SEC_WEBSOCKET_ACCEPT) {
            Some(v) if v.as_bytes().trim_ascii() == expected.as_bytes() => {}
            _ => return Err(HandshakeError::BadAccept),
        }
        self.negotiated(status, headers)
            .map(|response| Some((response, used)))
    }

    /// The headers of an RFC 8441 extended CONNECT for this handshake (RFC 8441 §5): the
    /// `:method CONNECT`, `:protocol websocket`, `:scheme`, `:authority` (from the host given
    /// to [`new`](Self::new)) and `:path` (the target) pseudo-headers are the HTTP/2 layer's
    /// to write; these are the regular fields that go with them: `sec-websocket-version: 13`,
    /// the subprotocols and extension offer, and the extra headers, in that order. There is
    /// no `Sec-WebSocket-Key` over HTTP/2: the `:protocol` pseudo-header replaces it.
    ///
    /// ```
    /// use duplex_proto::handshake::client::ClientHandshake;
    ///
    /// let hs = ClientHandshake::new("example.com", "/chat").subprotocol("chat");
    /// let headers = hs.h2_headers().unwrap();
    /// assert_eq!(headers["sec-websocket-version"], "13");
    /// assert_eq!(headers["sec-websocket-protocol"], "chat");
    /// assert!(headers.get("sec-websocket-key").is_none());
    /// ```
    ///
    /// # Errors
    /// A part of the request that cannot be sent (see [`check`](Self::check)), or a header
    /// that is connection-specific and so malformed in HTTP/2 (RFC 9113 §8.2.2:
    /// `Keep-Alive`, `Proxy-Connection`, `TE`).
    pub fn h2_headers(&self) -> Result<http::HeaderMap, InvalidHeader> {
        self.check()?;
        let mut map = http::HeaderMap::with_capacity(3 + self.headers.len());
        let value = |name: &str, v: &str| {
            http::HeaderValue::from_str(v)
                .map_err(|_| InvalidHeader::new(name, "the value contains a control character"))
        };
        map.insert(
            http::header::SEC_WEBSOCKET_VERSION,
            http::HeaderValue::from_static("13"),
        );
        if !self.subprotocols.is_empty() {
            let joined = self.subprotocols.join(", ");
            map.insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                value("Sec-WebSocket-Protocol", &joined)?,
            );
        }
        if let Some(e) = &self.extensions {
            map.insert(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                value("Sec-WebSocket-Extensions", e)?,
            );
        }
        for (name, v) in &self.headers {
            let parsed = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                InvalidHeader::new(name, "the name is not an HTTP token (RFC 9110 §5.6.2)")
            })?;
            if H2_CONNECTION_SPECIFIC.contains(&parsed.as_str()) {
                return Err(InvalidHeader::new(
                    name,
                    "a connection-specific header, malformed in HTTP/2 (RFC 9113 §8.2.2)",
                ));
            }
            map.append(parsed, value(name, v)?);
        }
        Ok(map)
    }

    /// The host (with `:port` when not the default): the `Host` header over HTTP/1.1, the
    /// `:authority` over HTTP/2.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The request target (path and query): `:path` over HTTP/2.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Check the response to the extended CONNECT of [`h2_headers`](Self::h2_headers)
    /// (RFC 8441 §5): a 2xx status means the stream now carries the WebSocket (RFC 9110
    /// §9.3.6; servers answer 200), with no `Sec-WebSocket-Accept` to check; the subprotocol
    /// and extensions are checked as over HTTP/1.1.
    ///
    /// # Errors
    /// [`HandshakeError::Status`] for another status, and as
    /// [`parse_response`](Self::parse_response) for an unoffered subprotocol or extension.
    pub fn validate_h2_response(
        &self,
        status: u16,
        headers: http::HeaderMap,
    ) -> Result<Response, HandshakeError> {
        if !(200..300).contains(&status) {
            return Err(HandshakeError::Status { status });
        }
        self.negotiated(status, headers)
    }

    /// The subprotocol and extensions a successful response selected, refused when they were
    /// not offered (RFC 6455 §4.1: the client MUST fail the connection).
    fn negotiated(
        &self,
        status: u16,
        headers: http::HeaderMap,
    ) -> Result<Response, HandshakeError> {
        // `list_values` skips values that are not visible ASCII. Such a value cannot name
        // anything we offered, so it fails the handshake instead of reading as "none" (§4.1).
        for (name, unoffered) in [
            (
                "sec-websocket-protocol",
                HandshakeError::UnofferedSubprotocol as fn(String) -> HandshakeError,
            ),
            (
                "sec-websocket-extensions",
                HandshakeError::UnofferedExtension,
            ),
        ] {
            if let Some(v) = headers.get_all(name).iter().find(|v| v.to_str().is_err()) {
                return Err(unoffered(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
        }
        let protocols: Vec<&str> = list_values(&headers, "sec-websocket-protocol").collect();
        let subprotocol = match protocols[..] {
            [] => None,
            [p] if self.subprotocols.iter().any(|o| o == p) => Some(p.to_owned()),
            _ => return Err(HandshakeError::UnofferedSubprotocol(protocols.join(", "))),
        };
        let extensions: Vec<String> = list_values(&headers, "sec-websocket-extensions")
            .map(str::to_owned)
            .collect();
        let extensions = if extensions.is_empty() {
            None
        } else {
            let offered = self.extensions.as_deref().unwrap_or("");
            for ext in &extensions {
                let name = ext.split(';').next().unwrap_or("").trim();
                if !list_names(offered).any(|o| o.eq_ignore_ascii_case(name)) {
                    return Err(HandshakeError::UnofferedExtension(ext.clone()));
                }
            }
            Some(extensions.join(", "))
        };
        Ok(Response {
            status,
            headers,
            subprotocol,
            extensions,
        })
    }
}

/// Extension names in an offer like `permessage-deflate; client_max_window_bits, foo`.
fn list_names(offer: &str) -> impl Iterator<Item = &str> {
    offer
        .split(',')
        .map(|e| e.split(';').next().unwrap_or("").trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_for(hs: &ClientHandshake, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(hs.key().as_bytes())
        )
    }

    #[test]
    fn valid_headers_are_written() {
        let hs = ClientHandshake::new("example.com:9001", "/chat?x=1")
            .subprotocol("chat")
            .header("Authorization", "Bearer a.b.c")
            .header("X-Empty", "")
            .header("X-Tab", "a\tb");
        let request = String::from_utf8(hs.request().unwrap()).unwrap();
        assert!(
            request.contains("\r\nAuthorization: Bearer a.b.c\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nX-Empty: \r\n"), "{request}");
        assert!(request.contains("\r\nX-Tab: a\tb\r\n"), "{request}");
    }

    #[test]
    fn invalid_headers_refuse_the_whole_request() {
        let cases: &[(&str, &str, &str, &str)] = &[
            // (name, value, the name in the error, the reason's start)
            (
                "X-Echo",
                "a\r\nSet-Cookie: s=1",
                "X-Echo",
                "the value contains CR or LF",
            ),
            ("X-Echo", "a\nb", "X-Echo", "the value contains CR or LF"),
            ("X-Echo", "a\rb", "X-Echo", "the value contains CR or LF"),
            (
                "X-Nul",
                "a\0b",
                "X-Nul",
                "the value contains a control character",
            ),
            (
                "X-Del",
                "a\x7fb",
                "X-Del",
                "the value contains a control character",
            ),
            ("X-Name", "caf\u{e9}", "X-Name", "the value is not ASCII"),
            (
                "X-A\r\nSet-Cookie",
                "1",
                "X-A\r\nSet-Cookie",
                "the name is not",
            ),
            ("X A", "1", "X A", "the name is not"),
            ("", "1", "", "the name is not"),
            ("Caf\u{e9}", "1", "Caf\u{e9}", "the name is not"),
            ("Host", "evil.example", "Host", "the handshake sets"),
            (
                "sec-websocket-key",
                "x",
                "sec-websocket-key",
                "the handshake sets",
            ),
            (
                "Content-Length",
                "5",
                "Content-Length",
                "the handshake sets",
            ),
        ];
        for &(name, value, shown, reason) in cases {
            let hs = ClientHandshake::new("h", "/")
                .header("X-Fine", "1")
                .header(name, value)
                .header("X-Later", "a\nb");
            let err = hs.request().unwrap_err();
            assert_eq!(err.name, shown, "{name:?}: {value:?}");
            assert!(err.reason.starts_with(reason), "{name:?}: {err}");
            assert_eq!(hs.check(), Err(err.clone()));
            // The message shows CR/LF escaped, so it cannot break a log line either.
            assert!(!err.to_string().contains(['\r', '\n']), "{err}");
        }
    }

    #[test]
    fn other_parts_of_the_request_are_checked_too() {
        let bad = [
            ClientHandshake::new("h\r\nX: 1", "/"),
            ClientHandshake::new("", "/"),
            ClientHandshake::new("h", "/a b"),
            ClientHandshake::new("h", "/\r\nX: 1"),
            ClientHandshake::new("h", "/").subprotocol("chat\r\nX: 1"),
            ClientHandshake::new("h", "/").subprotocol("a, b"),
            ClientHandshake::new("h", "/").extensions("permessage-deflate\r\nX: 1"),
        ];
        for hs in bad {
            assert!(hs.request().is_err(), "{hs:?}");
        }
    }

    #[test]
    fn keys_are_random_16_byte_values() {
        let a = ClientHandshake::new("h", "/");
        let b = ClientHandshake::new("h", "/");
        assert_ne!(a.key(), b.key());
        assert_eq!(STANDARD.decode(a.key()).unwrap().len(), 16);
    }

    #[test]
    fn accepts_a_valid_response_with_trailing_frames() {
        let hs = ClientHandshake::new("h", "/").subprotocol("chat");
        let mut raw = response_for(&hs, "Sec-WebSocket-Protocol: chat\r\n").into_bytes();
        let head = raw.len();
        raw.extend_from_slice(b"\x81\x00");
        let (resp, used) = hs.parse_response(&raw).unwrap().unwrap();
        assert_eq!(used, head);
        assert_eq!(resp.subprotocol.as_deref(), Some("chat"));
        for cut in 0..head {
            assert!(hs.parse_response(&raw[..cut]).unwrap().is_none());
        }
    }

    #[test]
    fn rejects_bad_responses() {
        let hs = ClientHandshake::new("h", "/");
        let ok = response_for(&hs, "");
        let bad_accept = ok.replacen("Accept: ", "Accept: x", 1);
        assert_eq!(
            hs.parse_response(bad_accept.as_bytes()).unwrap_err(),
            HandshakeError::BadAccept
        );
        let no_upgrade = ok.replacen("Upgrade: websocket\r\n", "", 1);
        assert!(matches!(
            hs.parse_response(no_upgrade.as_bytes()),
            Err(HandshakeError::Invalid(_))
        ));
        let proto = response_for(&hs, "Sec-WebSocket-Protocol: chat\r\n");
        assert!(matches!(
            hs.parse_response(proto.as_bytes()),
            Err(HandshakeError::UnofferedSubprotocol(_))
        ));
        let ext = response_for(&hs, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(matches!(
            hs.parse_response(ext.as_bytes()),
            Err(HandshakeError::UnofferedExtension(_))
        ));
        let status = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            hs.parse_response(status.as_bytes()).unwrap_err(),
            HandshakeError::Status { status: 403 }
        );
    }

    #[test]
    fn h2_headers_have_no_key_and_refuse_connection_specific_fields() {
        let hs = ClientHandshake::new("example.com:8443", "/chat?room=1")
            .subprotocol("a")
            .subprotocol("b")
            .extensions("permessage-deflate")
            .header("Authorization", "Bearer t");
        let h = hs.h2_headers().unwrap();
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["sec-websocket-protocol"], "a, b");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        assert_eq!(h["authorization"], "Bearer t");
        assert!(h.get("sec-websocket-key").is_none() && h.get("host").is_none());
        assert_eq!(
            (hs.host(), hs.target()),
            ("example.com:8443", "/chat?room=1")
        );
        for name in ["TE", "keep-alive", "Proxy-Connection"] {
            let e = hs.clone().header(name, "x").h2_headers().unwrap_err();
            assert_eq!(e.name, name);
            assert!(e.reason.contains("RFC 9113"), "{e}");
        }
        let e = hs.header("X-Bad", "a\r\nb").h2_headers().unwrap_err();
        assert_eq!(e.reason, "the value contains CR or LF");
    }

    #[test]
    fn h2_responses_succeed_on_2xx_and_check_what_was_offered() {
        let hs = ClientHandshake::new("h", "/")
            .subprotocol("chat")
            .extensions("permessage-deflate");
        let map = |pairs: &[(&'static str, &'static str)]| {
            let mut m = http::HeaderMap::new();
            for (n, v) in pairs {
                m.append(*n, http::HeaderValue::from_static(v));
            }
            m
        };
        let ok = hs
            .validate_h2_response(
                200,
                map(&[
                    ("sec-websocket-protocol", "chat"),
                    ("sec-websocket-extensions", "permessage-deflate"),
                ]),
            )
            .unwrap();
        assert_eq!(ok.subprotocol.as_deref(), Some("chat"));
        assert_eq!(ok.extensions.as_deref(), Some("permessage-deflate"));
        assert_eq!(
            hs.validate_h2_response(200, map(&[])).unwrap().subprotocol,
            None
        );
        for status in [101, 400, 404, 503] {
            assert_eq!(
                hs.validate_h2_response(status, map(&[])).unwrap_err(),
                HandshakeError::Status { status }
            );
        }
        assert!(matches!(
            hs.validate_h2_response(200, map(&[("sec-websocket-protocol", "other")])),
            Err(HandshakeError::UnofferedSubprotocol(p)) if p == "other"
        ));
        assert!(matches!(
            hs.validate_h2_response(200, map(&[("sec-websocket-extensions", "x-foo")])),
            Err(HandshakeError::UnofferedExtension(e)) if e == "x-foo"
        ));
    }
}
