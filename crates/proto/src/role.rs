//! Which side of the connection we are: the one thing that differs between the roles.

/// The side of a WebSocket connection.
///
/// RFC 6455 §5.1: a client MUST mask every frame it sends, and a server MUST NOT mask any frame
/// it sends. Each side fails the connection when the other breaks that rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that sent the opening handshake request; masks its frames.
    Client,
    /// The side that answered the opening handshake; never masks its frames.
    Server,
}

impl Role {
    /// Whether frames sent by this role carry a masking key.
    #[must_use]
    pub const fn masks_outgoing(self) -> bool {
        matches!(self, Self::Client)
    }

    /// Whether frames received by this role must carry a masking key.
    #[must_use]
    pub const fn expects_masked_incoming(self) -> bool {
        matches!(self, Self::Server)
    }
}
