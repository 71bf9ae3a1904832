//! Close status codes and the Close frame payload (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{error::ProtocolError, message::Utf8Bytes, utf8};

/// A close status code (RFC 6455 §7.4).
///
/// A newtype rather than an enum, because the code space is open: 3000-3999 are registered by
/// libraries and frameworks and 4000-4999 are private to applications.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept (e.g. binary for a text-only endpoint).
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection closed without a Close frame. Never sent on the wire.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (e.g. invalid UTF-8 in a text message).
    pub const INVALID_DATA: Self = Self(1007);
    /// 1008: a message that violates the endpoint's policy.
    pub const POLICY: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1010: (client) the server did not negotiate a required extension.
    pub const EXTENSION: Self = Self(1010);
    /// 1011: (server) an unexpected condition prevented fulfilling the request.
    pub const INTERNAL: Self = Self(1011);
    /// 1012: the service is restarting.
    pub const RESTART: Self = Self(1012);
    /// 1013: try again later (e.g. the server is overloaded, or the client read too slowly).
    pub const TRY_AGAIN: Self = Self(1013);
    /// 1014: a gateway got an invalid response from upstream.
    pub const BAD_GATEWAY: Self = Self(1014);
    /// 1015: the TLS handshake failed. Never sent on the wire.
    pub const TLS: Self = Self(1015);

    /// Whether this code may appear in a Close frame.
    ///
    /// RFC 6455 §7.4: 1000-1003 and 1007-1011 are defined; 1012-1014 are registered with IANA;
    /// 3000-4999 are for libraries and applications. 1004-1006 and 1015 are reserved, and
    /// 0-999, 1016-2999 and 5000+ are not assigned, so a peer that sends them fails the
    /// connection (§7.1.5, §7.4.2).
    #[must_use]
    pub const fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// The payload of a Close frame: a status code and a UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Why the connection is closing.
    pub code: CloseCode,
    /// A human-readable reason; at most 123 bytes, since control payloads hold 125 (§5.5).
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// The longest reason that fits in a control frame after the two-byte code.
    pub const MAX_REASON: usize = 123;

    /// A close frame with a code and reason.
    pub fn new(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// Decode a Close payload. `Ok(None)` for an empty payload (no status code).
    ///
    /// # Errors
    /// RFC 6455 §5.5.1: a one-byte payload, a code that may not be sent (§7.4), or a reason
    /// that is not UTF-8 (1007).
    pub fn parse(payload: &Bytes) -> Result<Option<Self>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::InvalidClosePayload),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_sendable() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = payload.slice(2..);
                utf8::validate(&reason)?;
                Ok(Some(Self {
                    code,
                    reason: Utf8Bytes::from_bytes_unchecked(reason),
                }))
            }
        }
    }

    /// Append the Close payload (code, then reason) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.code.0);
        out.put_slice(self.reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_follow_the_rfc() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        let invalid = [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for c in valid {
            assert!(CloseCode(c).is_sendable(), "{c}");
        }
        for c in invalid {
            assert!(!CloseCode(c).is_sendable(), "{c}");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(CloseFrame::parse(&Bytes::new()), Ok(None));
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(b"\x03")),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(b"\x03\xed")),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(b"\x03\xe8\xff")),
            Err(ProtocolError::InvalidUtf8)
        );
        let f = CloseFrame::parse(&Bytes::from_static(b"\x03\xe8bye"))
            .unwrap()
            .unwrap();
        assert_eq!(f, CloseFrame::new(CloseCode::NORMAL, "bye"));
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(&out[..], b"\x03\xe8bye");
    }
}
