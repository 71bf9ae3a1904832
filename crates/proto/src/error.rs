//! Errors, grouped by layer. Each [`ProtocolError`] maps to the close code the connection sends.

use crate::close::CloseCode;

/// The peer broke RFC 6455 / RFC 7692, or exceeded a configured limit.
///
/// The connection never panics or returns these from an input method: it sends the Close frame
/// given by [`close_code`](Self::close_code), closes, and reports the error in
/// [`Event::Closed`](crate::Event::Closed) for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An opcode reserved for future use (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// An RSV bit set that no negotiated extension defines (§5.2).
    #[error("reserved bit set without a negotiated extension")]
    ReservedBits,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    #[error("invalid payload length")]
    InvalidLength,
    /// A client frame without a masking key (§5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server frame with a masking key (§5.1).
    #[error("server frame is masked")]
    MaskedFrame,
    /// A control frame longer than 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A control frame without FIN (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame with no message in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// Text or a close reason that is not UTF-8 (§8.1).
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    /// A Close payload of one byte (§5.5.1).
    #[error("close payload of one byte")]
    InvalidClosePayload,
    /// A close code that may not appear on the wire (§7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A frame longer than [`Config::max_frame_size`](crate::Config::max_frame_size).
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The frame's payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message longer than [`Config::max_message_size`](crate::Config::max_message_size).
    #[error("message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The size reached when the limit was crossed.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A compressed message that could not be inflated (RFC 7692 §7.2.3).
    #[error("invalid compressed data: {0}")]
    InvalidCompressedData(String),
}

impl ProtocolError {
    /// The status code to send in the Close frame that fails the connection.
    #[must_use]
    pub const fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 => CloseCode::INVALID_DATA,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL,
        }
    }
}

/// Why a connection ended without a clean closing handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The peer broke the protocol; we sent the matching Close frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The transport ended without a Close frame (RFC 6455 §7.1.5: code 1006).
    #[error("connection closed without a close frame")]
    UnexpectedEof,
    /// The peer did not answer our Close frame in time.
    #[error("close handshake timed out")]
    CloseTimeout,
    /// The peer did not answer a keepalive ping in time.
    #[error("keepalive ping timed out")]
    KeepaliveTimeout,
}

/// A command the connection cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed: no more data may be sent (RFC 6455 §5.5.1).
    #[error("connection is closed")]
    Closed,
    /// A ping, pong or close payload over 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlPayloadTooLong(usize),
    /// A close code that may not be sent (§7.4).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
}
