//! Connection limits and timers.

use std::time::Duration;

use crate::deflate::DeflateConfig;

/// Settings of a [`Connection`](crate::Connection).
///
/// Every field has a default suited to a public-facing server; change one with the setter of
/// the same name:
///
/// ```
/// use std::time::Duration;
/// use duplex_proto::Config;
///
/// let config = Config::default()
///     .max_message_size(1 << 20)
///     .ping_interval(Some(Duration::from_secs(20)));
/// assert_eq!(config.max_message_size, 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest payload of one incoming frame. Default 16 MiB.
    ///
    /// Frames are buffered whole before delivery, so this bounds the read buffer. Raise it
    /// only for peers that send very large unfragmented messages.
    pub max_frame_size: usize,
    /// Largest incoming message, after reassembly and decompression. Default 64 MiB.
    ///
    /// This also bounds inflation of compressed messages, so a small compressed frame cannot
    /// expand past it. Lower it for servers that expect small messages from untrusted peers.
    pub max_message_size: usize,
    /// How long to wait for the peer's Close after sending ours. Default 5 s.
    pub close_timeout: Duration,
    /// Send a Ping after this long without receiving anything. Default `None` (off).
    ///
    /// Turn it on to detect dead peers behind NATs and proxies that drop idle connections.
    pub ping_interval: Option<Duration>,
    /// Fail the connection when nothing arrives this long after a keepalive Ping.
    /// Default 10 s. Only used with [`ping_interval`](Self::ping_interval).
    pub pong_timeout: Duration,
    /// permessage-deflate (RFC 7692) settings: offered by a client, accepted by a server.
    /// Default `None`: compression is neither offered nor accepted.
    pub deflate: Option<DeflateConfig>,
    /// Most output bytes an IO layer queues before it waits for the transport: past it, a
    /// send first writes what is queued. Default 128 KiB.
    ///
    /// This connection keeps no limit of its own (it queues whatever it is given, and
    /// [`Connection::output_len`](crate::Connection::output_len) says how much that is): the
    /// limit is for the layer that writes its output. In the `duplex` crate, `send`, `feed`
    /// and the `Sink` wait until the queue is at or below the limit before they queue one
    /// more message, so the queue never holds more than about the limit plus one message; and
    /// a connection whose queue is over the limit stops reading (a peer that does not read
    /// our answers cannot make us buffer without bound). A small limit writes more often in
    /// smaller pieces; 0 writes everything queued before each new message.
    pub write_buffer_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            close_timeout: Duration::from_secs(5),
            ping_interval: None,
            pong_timeout: Duration::from_secs(10),
            deflate: None,
            write_buffer_limit: 128 * 1024,
        }
    }
}

impl Config {
    /// Set [`max_frame_size`](Self::max_frame_size).
    #[must_use]
    pub const fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Set [`max_message_size`](Self::max_message_size).
    #[must_use]
    pub const fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Set [`close_timeout`](Self::close_timeout).
    #[must_use]
    pub const fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Set [`ping_interval`](Self::ping_interval).
    #[must_use]
    pub const fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Set [`deflate`](Self::deflate).
    #[must_use]
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.deflate = deflate;
        self
    }

    /// Set [`write_buffer_limit`](Self::write_buffer_limit).
    #[must_use]
    pub const fn write_buffer_limit(mut self, bytes: usize) -> Self {
        self.write_buffer_limit = bytes;
        self
    }

    /// Set [`pong_timeout`](Self::pong_timeout).
    #[must_use]
    pub const fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }
}
