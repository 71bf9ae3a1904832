//! Ready-to-write server frames.

use duplex_proto::{Prepared, Utf8Bytes};

/// One server → client text frame, framed once ([`Prepared`]) and shared by reference
/// between every queue that carries it: cloning copies a pointer, not the bytes.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    prepared: Prepared,
}

impl Frame {
    /// A text frame holding `json`.
    pub(crate) fn text(json: String) -> Self {
        Self {
            prepared: Prepared::text(Utf8Bytes::from(json)),
        }
    }

    /// The framed message.
    pub(crate) fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Payload bytes (what `bytes_sent` counts).
    pub(crate) fn payload_len(&self) -> usize {
        self.prepared.payload().len()
    }

    /// Bytes this frame takes on the wire, header included. Queues account with this figure.
    pub(crate) fn wire_len(&self) -> usize {
        self.prepared.frame().len()
    }
}
