//! Data messages (text and binary) and the UTF-8-checked byte string behind text.

use std::{fmt, ops::Deref};

use bytes::Bytes;

use crate::{error::ProtocolError, utf8};

/// Bytes known to be valid UTF-8: the payload of a text message, shared without copying.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    #[must_use]
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// A string from a static `str`, without allocating.
    #[must_use]
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wrap bytes already validated as UTF-8 by this crate.
    pub(crate) const fn from_bytes_unchecked(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The text, in constant time: it was validated once, when it was made.
    #[must_use]
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // Checked again in debug builds (the tests, the fuzz targets): a constructor that let
        // invalid bytes in would fail there first.
        debug_assert!(std::str::from_utf8(&self.0).is_ok());
        // SAFETY: the bytes are valid UTF-8. Every way to make a `Utf8Bytes` guarantees it:
        // `from_static` and `From<String>` start from a `str`, `TryFrom<Bytes>` validates,
        // and `from_bytes_unchecked` is private to this crate and called only on bytes it
        // validated (a text message's payload after `Utf8Validator::finish`, a Close reason
        // after `utf8::validate`, a `Prepared` text made from a `Utf8Bytes`). The bytes are
        // never changed afterwards: `Bytes` is immutable. Re-validating here cost 1.2 µs per
        // call for 1 KiB of mixed text and 1 ms for 1 MiB (docs/benchmarks.md).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying shared bytes.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = ProtocolError;
    fn try_from(bytes: Bytes) -> Result<Self, ProtocolError> {
        utf8::validate(&bytes)?;
        Ok(Self(bytes))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A complete data message.
///
/// Strings become text messages and byte buffers binary ones; owned and shared buffers
/// (`String`, `Vec<u8>`, [`Bytes`], [`Utf8Bytes`]) are taken without copying, borrowed ones
/// (`&str`, `&[u8]`) are copied. A message converts back into its payload as [`Bytes`].
///
/// ```
/// use bytes::Bytes;
/// use duplex_proto::{Message, Utf8Bytes};
///
/// let owned = String::from("hello");
/// assert_eq!(Message::from(owned.as_str()), Message::text("hello"));
/// assert_eq!(Message::from(owned), Message::text("hello"));
/// assert_eq!(Message::from(Utf8Bytes::from_static("hi")), Message::text("hi"));
/// assert!(Message::from("hi").is_text());
///
/// let data = vec![1u8, 2, 3];
/// assert_eq!(Message::from(&data[..]), Message::binary(vec![1, 2, 3]));
/// assert_eq!(Message::from(data), Message::binary(vec![1, 2, 3]));
/// assert_eq!(Message::from(Bytes::from_static(b"\x01")), Message::binary(vec![1]));
///
/// let payload: Bytes = Message::text("abc").into();
/// assert_eq!(payload, Bytes::from_static(b"abc"));
/// assert_eq!(Bytes::from(Message::binary(vec![9])), Bytes::from_static(b"\x09"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message: always valid UTF-8 (RFC 6455 §5.6).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::Binary(data.into())
    }

    /// Whether this is a text message.
    #[must_use]
    pub const fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// The payload.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// The text, for a text message.
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t.as_str()),
            Self::Binary(_) => None,
        }
    }

    /// Payload length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The payload as shared bytes.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Text(t) => t.into_bytes(),
            Self::Binary(b) => b,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self {
            Self::Text(t) if t.len() <= SHOWN => write!(f, "Text({:?})", t.as_str()),
            Self::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Self::Binary(b) if b.len() <= SHOWN => write!(f, "Binary({b:?})"),
            Self::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl From<String> for Message {
    /// A text message, taking the string's buffer without copying.
    fn from(s: String) -> Self {
        Self::text(s)
    }
}

impl From<&str> for Message {
    /// A text message with a copy of the string. For a `&'static str`,
    /// [`Message::text`] shares it without copying.
    fn from(s: &str) -> Self {
        Self::Text(Utf8Bytes::from(s.to_owned()))
    }
}

impl From<Utf8Bytes> for Message {
    /// A text message, sharing the bytes.
    fn from(text: Utf8Bytes) -> Self {
        Self::Text(text)
    }
}

impl From<&[u8]> for Message {
    /// A binary message with a copy of the bytes.
    fn from(data: &[u8]) -> Self {
        Self::Binary(Bytes::copy_from_slice(data))
    }
}

impl From<Vec<u8>> for Message {
    /// A binary message, taking the vector's buffer without copying.
    fn from(v: Vec<u8>) -> Self {
        Self::binary(v)
    }
}

impl From<Bytes> for Message {
    /// A binary message, sharing the bytes.
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Message> for Bytes {
    /// The payload, text or binary, without copying (see [`Message::into_bytes`]).
    fn from(message: Message) -> Self {
        message.into_bytes()
    }
}
