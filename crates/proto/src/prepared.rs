//! Messages framed once and written to many connections.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::{
    deflate::compress_alone,
    frame::{FrameHeader, OpCode},
    message::{Message, Utf8Bytes},
};

/// The window [`Prepared`] compresses with: the largest, which every peer that negotiated
/// the default accepts (smaller messages fit any window, see `Deflate::accepts_window`).
pub(crate) const PREPARED_WINDOW_BITS: u8 = 15;

/// A message encoded once as a complete server frame, shared cheaply (a reference count per
/// clone) between every connection that sends it — the building block of broadcast.
///
/// On a server connection that negotiated permessage-deflate, a message at or above the
/// connection's threshold goes out compressed, and that too is done once: the first such
/// connection compresses the payload on its own (a fresh compressor, at its level) and every
/// later one sends the same bytes. A message compressed on its own refers to nothing sent
/// before it, so it inflates on any connection whatever its history (RFC 7692 §7.2.1); the
/// connection then drops its own compression history, which the peer's window no longer
/// matches. A payload that does not shrink is sent uncompressed, which RFC 7692 §6 allows
/// for any message.
///
/// ```
/// use duplex_proto::{Message, Prepared};
///
/// let prepared = Prepared::new(&Message::text("tick"));
/// assert_eq!(&prepared.frame()[..], b"\x81\x04tick");
/// ```
#[derive(Debug, Clone)]
pub struct Prepared(Arc<Inner>);

/// What every clone of a [`Prepared`] shares: one reference count per clone, however many
/// parts it has.
#[derive(Debug)]
struct Inner {
    opcode: OpCode,
    frame: Bytes,
    payload: Bytes,
    /// The compressed frame, made by the first connection that wants it; `None` inside when
    /// compression does not shrink the payload.
    compressed: OnceLock<Option<Bytes>>,
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
        Self(Arc::new(Inner {
            opcode,
            frame,
            payload,
            compressed: OnceLock::new(),
        }))
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
    pub fn frame(&self) -> &Bytes {
        &self.0.frame
    }

    /// The payload alone.
    #[must_use]
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// The frame's opcode.
    #[must_use]
    pub fn opcode(&self) -> OpCode {
        self.0.opcode
    }

    /// The frame compressed at `level` with a window of [`PREPARED_WINDOW_BITS`] (RSV1 set,
    /// RFC 7692 §6), made on the first call — later calls return it whatever their level —
    /// or `None` when compression does not make it smaller.
    pub(crate) fn compressed_frame(&self, level: u32) -> Option<&Bytes> {
        let inner = &*self.0;
        inner
            .compressed
            .get_or_init(|| {
                let deflated = compress_alone(&inner.payload, level, PREPARED_WINDOW_BITS);
                (deflated.len() < inner.payload.len()).then(|| {
                    let mut header = FrameHeader::new(inner.opcode, deflated.len() as u64);
                    header.rsv1 = true;
                    let mut buf = BytesMut::with_capacity(header.encoded_len() + deflated.len());
                    header.encode(&mut buf);
                    buf.extend_from_slice(&deflated);
                    buf.freeze()
                })
            })
            .as_ref()
    }

    /// The message this frame carries.
    #[must_use]
    pub fn message(&self) -> Message {
        let payload = self.0.payload.clone();
        match self.0.opcode {
            OpCode::Text => Message::Text(Utf8Bytes::from_bytes_unchecked(payload)),
            _ => Message::Binary(payload),
        }
    }
}
