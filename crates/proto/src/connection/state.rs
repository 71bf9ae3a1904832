//! The connection's lifecycle. Every state change goes through [`State::on`], and nothing here
//! depends on the role.

/// Where a connection is in its lifecycle (RFC 6455 §4.1, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Both sides may send data.
    Open,
    /// We sent a Close frame and wait for the peer's (§7.1.2); we still accept its data.
    Closing,
    /// The closing handshake finished or the connection failed; nothing more is sent or read.
    Closed,
}

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// We queued a Close frame.
    SendClose,
    /// The peer's Close frame arrived (we answer it if we had not sent ours).
    ReceiveClose,
    /// A protocol violation, a timeout or the end of the transport.
    Fail,
}

impl State {
    /// The next state.
    pub(crate) const fn on(self, input: Input) -> Self {
        match (self, input) {
            (Self::Open, Input::SendClose) => Self::Closing,
            (Self::Closing | Self::Closed, Input::SendClose) => self,
            (_, Input::ReceiveClose | Input::Fail) => Self::Closed,
        }
    }

    /// Whether data and pings may still be sent.
    #[must_use]
    pub const fn can_send(self) -> bool {
        matches!(self, Self::Open)
    }

    /// Whether incoming frames are still processed.
    #[must_use]
    pub const fn can_receive(self) -> bool {
        !matches!(self, Self::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use Input::*;
        assert_eq!(State::Open.on(SendClose), State::Closing);
        assert_eq!(State::Closing.on(SendClose), State::Closing);
        assert_eq!(State::Closing.on(ReceiveClose), State::Closed);
        assert_eq!(State::Open.on(ReceiveClose), State::Closed);
        assert_eq!(State::Open.on(Fail), State::Closed);
        assert_eq!(State::Closed.on(SendClose), State::Closed);
    }
}
