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
//! let response = Accept::default().response(&request);
//! assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
//! ```

use std::fmt::Write as _;

use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::{
    accept_key, has_token, head_len, list_values, to_header_map, HandshakeError, MAX_HEADERS,
};

/// A validated WebSocket upgrade request.
#[derive(Debug, Clone)]
pub struct Request {
    target: String,
    headers: http::HeaderMap,
    key: String,
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

    /// The `Sec-WebSocket-Key` sent by the client.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols offered, in the client's order of preference.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        list_values(&self.headers, "sec-websocket-protocol")
    }

    /// The raw `Sec-WebSocket-Extensions` offers, one per comma-separated element.
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        list_values(&self.headers, "sec-websocket-extensions")
    }
}

/// Parse and validate an upgrade request at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (call again with more bytes), or the request
/// and the length of its head; bytes after it are already WebSocket frames.
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
    // §4.2.1: "An HTTP/1.1 or higher GET request".
    if req.method != Some("GET") {
        return Err(HandshakeError::Invalid("method must be GET"));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::Invalid("HTTP/1.1 or higher is required"));
    }
    let target = req.path.unwrap_or("/").to_owned();
    let headers = to_header_map(req.headers)?;
    if headers.get(http::header::HOST).is_none() {
        return Err(HandshakeError::Invalid("missing Host header"));
    }
    let has = |name: http::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| has_token(v.as_bytes(), token))
    };
    if !has(http::header::UPGRADE, "websocket") {
        return Err(HandshakeError::Invalid(
            "missing \"Upgrade: websocket\" header",
        ));
    }
    if !has(http::header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Invalid(
            "missing \"Connection: Upgrade\" header",
        ));
    }
    match headers.get(http::header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or(HandshakeError::Invalid("missing Sec-WebSocket-Key header"))?;
    // §4.2.1 item 5: base64 of a 16-byte value.
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(HandshakeError::Invalid(
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ));
    }
    let key = String::from_utf8_lossy(key).into_owned();
    Ok(Some((
        Request {
            target,
            headers,
            key,
        },
        used,
    )))
}

/// How to accept a request: the `101` response's optional parts.
#[derive(Debug, Clone, Default)]
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
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The `101 Switching Protocols` response to `request` (§4.2.2).
    #[must_use]
    pub fn response(&self, request: &Request) -> Vec<u8> {
        let mut out = String::with_capacity(160);
        out.push_str(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        );
        let _ = write!(
            out,
            "Sec-WebSocket-Accept: {}\r\n",
            accept_key(request.key.as_bytes())
        );
        if let Some(p) = &self.subprotocol {
            let _ = write!(out, "Sec-WebSocket-Protocol: {p}\r\n");
        }
        if let Some(e) = &self.extensions {
            let _ = write!(out, "Sec-WebSocket-Extensions: {e}\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// A refusal: an HTTP status and a one-line reason sent as a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// Add a response header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The complete HTTP response; the connection is closed after it.
    #[must_use]
    pub fn response(&self) -> Vec<u8> {
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let body = format!("{}\n", self.reason.lines().next().unwrap_or_default());
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
        if e.status() == 426 {
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
        let resp = String::from_utf8(Accept::default().subprotocol("chat").response(&req)).unwrap();
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
        let r = Reject::from(&HandshakeError::UnsupportedVersion).response();
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
    }
}
