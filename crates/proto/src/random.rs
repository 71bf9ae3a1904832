//! Where a client's random values come from: masking keys and the handshake's nonce.

use std::fmt;

/// A source of the random bytes a client needs: the masking key of every frame it sends
/// (RFC 6455 §5.3) and the nonce of its `Sec-WebSocket-Key` (§4.1).
///
/// By default ([`RandomSource::default`], and whenever no source is given) both come from
/// the operating system's cryptographically secure generator, as the RFC requires: §5.3
/// says the masking key "MUST be derived from a strong source of entropy", so that what an
/// application sends cannot be chosen to look like another protocol to intermediaries
/// (§10.3), and §4.1 that the nonce is "randomly selected".
///
/// [`RandomSource::new`] takes any function that fills a buffer, so that tests can produce
/// the same bytes on every run. **A predictable source is for tests only**: a client that
/// masks with predictable keys on a real network gives up the protection masking exists for.
///
/// ```
/// use duplex_proto::{Config, Connection, Message, RandomSource, Role};
///
/// // A fixed pattern, for a test.
/// let counter = |mut n: u8| RandomSource::new(move |buf: &mut [u8]| {
///     for b in buf {
///         *b = n;
///         n = n.wrapping_add(1);
///     }
/// });
/// let mut conn = Connection::new(Role::Client, Config::default()).with_random(counter(0));
/// conn.send(Message::text("hi")).unwrap();
/// let mut wire = bytes::BytesMut::new();
/// conn.poll_output(&mut wire);
/// // FIN + text, masked length 2, the key 00 01 02 03, then "hi" XOR the key.
/// assert_eq!(&wire[..], &[0x81, 0x82, 0, 1, 2, 3, b'h', b'i' ^ 1]);
/// ```
pub struct RandomSource(Option<Box<Fill>>);

/// A function that fills a buffer.
type Fill = dyn FnMut(&mut [u8]) + Send + Sync;

impl RandomSource {
    /// A source that fills each buffer with `fill`. For tests: see the type's documentation.
    pub fn new(fill: impl FnMut(&mut [u8]) + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(fill)))
    }

    /// Fill `buf` with bytes from this source.
    pub fn fill(&mut self, buf: &mut [u8]) {
        match &mut self.0 {
            Some(fill) => fill(buf),
            None => rand::fill(buf),
        }
    }

    /// Whether this is the default, cryptographically secure source.
    #[must_use]
    pub const fn is_default(&self) -> bool {
        self.0.is_none()
    }
}

impl Default for RandomSource {
    /// The operating system's cryptographically secure generator (through `rand`).
    fn default() -> Self {
        Self(None)
    }
}

impl fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_default() {
            "RandomSource(default)"
        } else {
            "RandomSource(custom)"
        })
    }
}
