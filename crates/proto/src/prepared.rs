//! Messages framed once and written to many connections.

use bytes::{Bytes, BytesMut};

use crate::{
    frame::{FrameHeader, OpCode},
    message::{Message, Utf8Bytes},
};

/// A message encoded once as a complete server frame, shared cheaply (a reference count per
/// clone) between every connection that sends it — the building block of broadcast.
///
/// ```
/// use duplex_proto::{Message, Prepared};
///
/// let prepared = Prepared::new(&Message::text("tick"));
/// assert_eq!(&prepared.frame()[..], b"\x81\x04tick");
/// ```
#[derive(Debug, Clone)]
pub struct Prepared {
    opcode: OpCode,
    frame: Bytes,
    payload: Bytes,
}

impl Prepared {
    /// Frame `message` (unmasked, unfragmented, uncompressed).
    #[must_use]
    pub fn new(message: &Message) -> Self {
        let (opcode, payload) = match message {
            Message::Text(t) => (OpCode::Text, t.as_bytes()),
            Message::Binary(b) => (OpCode::Binary, &b[..]),
        };
        let header = FrameHeader::new(opcode, payload.len() as u64);
        let mut buf = BytesMut::with_capacity(header.encoded_len() + payload.len());
        header.encode(&mut buf);
        buf.extend_from_slice(payload);
        let frame = buf.freeze();
        let payload = frame.slice(header.encoded_len()..);
        Self {
            opcode,
            frame,
            payload,
        }
    }

    /// A prepared text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::new(&Message::Text(text.into()))
    }

    /// A prepared binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(&Message::Binary(data.into()))
    }

    /// The whole frame: header and payload.
    #[must_use]
    pub const fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The payload alone.
    #[must_use]
    pub const fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The frame's opcode.
    #[must_use]
    pub const fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The message this frame carries.
    #[must_use]
    pub fn message(&self) -> Message {
        match self.opcode {
            OpCode::Text => Message::Text(Utf8Bytes::from_bytes_unchecked(self.payload.clone())),
            _ => Message::Binary(self.payload.clone()),
        }
    }
}
