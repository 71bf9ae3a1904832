//! The opening handshake (RFC 6455 §4): an HTTP/1.1 Upgrade, parsed and built without IO.

pub mod client;
pub mod server;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use sha1::{Digest, Sha1};

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default limit on the size of a handshake request or response head: 8 KiB.
pub const MAX_HEAD_SIZE: usize = 8 * 1024;

/// Most header lines accepted in one handshake.
const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)) (§4.2.2).
///
/// ```
/// // The example from RFC 6455 §1.3.
/// assert_eq!(
///     duplex_proto::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
#[must_use]
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// Errors of the opening handshake. On the server each maps to an HTTP status
/// ([`status`](Self::status)); on the client each says what the server got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// The head (request line or status line plus headers) is larger than allowed.
    #[error("HTTP head exceeds {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A well-formed request that is not a valid WebSocket upgrade; the text is the reason.
    #[error("{0}")]
    Invalid(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (§4.2.2: answer 426 with the versions we speak).
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Version` is not 13 on an HTTP/2 extended CONNECT (RFC 8441): answered
    /// `400` with `Sec-WebSocket-Version: 13`, since `426` needs an `Upgrade` header field
    /// (RFC 9110 §15.5.22), which HTTP/2 does not carry (RFC 9113 §8.2.2).
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersionH2,
    /// The server did not answer `101 Switching Protocols`.
    #[error("server answered HTTP {status} instead of 101")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The server's `Sec-WebSocket-Accept` does not match our key.
    #[error("server sent a wrong Sec-WebSocket-Accept")]
    BadAccept,
    /// The server selected a subprotocol we did not offer (§4.1).
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnofferedSubprotocol(String),
    /// The extension negotiation failed (e.g. invalid permessage-deflate parameters).
    #[error("{0}")]
    Extension(String),
    /// The server selected an extension we did not offer (§4.1).
    #[error("server selected extension {0:?}, which was not offered")]
    UnofferedExtension(String),
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    #[must_use]
    pub const fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 431,
            Self::UnsupportedVersion => 426,
            _ => 400,
        }
    }
}

/// A header (or another part of a handshake head) that this side was asked to send and that
/// cannot go on the wire as given.
///
/// Header names and values are checked before any byte is written: a value with CR or LF
/// would end the header line and add headers of the caller's choosing (RFC 9110 §5.5: field
/// values never contain CR, LF or NUL), so such a head is never produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name:?} cannot be sent: {reason}")]
pub struct InvalidHeader {
    /// The header name as given (or the part of the head, e.g. `request target`).
    pub name: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl InvalidHeader {
    pub(crate) fn new(name: &str, reason: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            reason,
        }
    }
}

/// Check a header that is about to be written as `{name}: {value}\r\n`.
///
/// The name must be an HTTP token (RFC 9110 §5.6.2) and not one of `reserved` (lowercase
/// names the handshake writes itself: a second copy would contradict it); the value must be
/// visible ASCII, spaces and tabs (RFC 9110 §5.5; obs-text, bytes above 0x7f, is refused
/// rather than sent as something the peer may decode differently).
pub(crate) fn check_header(
    name: &str,
    value: &str,
    reserved: &[&str],
) -> Result<(), InvalidHeader> {
    let parsed = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| InvalidHeader::new(name, "the name is not an HTTP token (RFC 9110 §5.6.2)"))?;
    if reserved.contains(&parsed.as_str()) {
        return Err(InvalidHeader::new(
            name,
            "the handshake sets this header itself",
        ));
    }
    check_value(name, value)
}

/// Check a header value (see [`check_header`]).
pub(crate) fn check_value(name: &str, value: &str) -> Result<(), InvalidHeader> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(InvalidHeader::new(name, "the value contains CR or LF"));
    }
    if !value.is_ascii() {
        return Err(InvalidHeader::new(name, "the value is not ASCII"));
    }
    http::HeaderValue::from_str(value)
        .map(drop)
        .map_err(|_| InvalidHeader::new(name, "the value contains a control character"))
}

/// Check a value that must be a single token (a subprotocol, RFC 6455 §4.1).
pub(crate) fn check_token(name: &str, value: &str) -> Result<(), InvalidHeader> {
    // A header name is exactly a token (RFC 9110 §5.1, §5.6.2).
    match http::HeaderName::from_bytes(value.as_bytes()) {
        Ok(_) => Ok(()),
        Err(_) => {
            check_value(name, value)?;
            Err(InvalidHeader::new(name, "the value is not an HTTP token"))
        }
    }
}

/// Whether a comma-separated header value contains `token`, ignoring ASCII case (§4.2.1:
/// `Connection: keep-alive, Upgrade` is valid).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The comma-separated values of every occurrence of a header, trimmed, empty ones skipped
/// (RFC 9110 §5.6.1 lists, as `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` are).
pub fn list_values<'a>(
    headers: &'a http::HeaderMap,
    name: &str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn to_header_map(parsed: &[httparse::Header<'_>]) -> Result<http::HeaderMap, HandshakeError> {
    let mut map = http::HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HandshakeError::Malformed(format!("invalid header name {:?}", h.name)))?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(|_| {
            HandshakeError::Malformed(format!("invalid value for header {:?}", h.name))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// The length of a complete HTTP head, `None` while it is incomplete.
///
/// # Errors
/// [`HandshakeError::TooLarge`] once the head (complete or not) exceeds `max`, or
/// [`HandshakeError::Malformed`] for bytes that are not HTTP.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max: usize,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n <= max => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered <= max => Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooLarge { max }),
        Err(other) => Err(HandshakeError::Malformed(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b"UPGRADE", "upgrade"));
        assert!(!has_token(b"upgrades", "upgrade"));
        assert!(!has_token(b"", "upgrade"));
    }
}
