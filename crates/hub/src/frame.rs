//! Ready-to-write server frames.

use bytes::Bytes;

/// One server → client text frame, encoded once and shared by reference between every
/// queue that carries it (cloning copies a pointer, not the payload).
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    text: Bytes,
}

impl Frame {
    /// A text frame holding `json` (which serde_json produced, so it is UTF-8).
    pub(crate) fn text(json: Vec<u8>) -> Self {
        Self { text: Bytes::from(json) }
    }

    /// The JSON payload.
    pub(crate) fn payload(&self) -> &Bytes {
        &self.text
    }

    /// Bytes this frame takes on the wire: the payload plus the RFC 6455 §5.2 header of an
    /// unmasked server frame (2, 4 or 10 bytes). Queues account with this figure.
    pub(crate) fn wire_len(&self) -> usize {
        let n = self.text.len();
        n + match n {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
    }
}
