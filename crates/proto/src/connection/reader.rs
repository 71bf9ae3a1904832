//! Turning incoming bytes into frames, frames into messages, and violations into Close frames.
//!
//! Payload bytes are unmasked and (for text) UTF-8-checked as soon as they arrive, even in the
//! middle of a frame, so invalid text fails fast (RFC 6455 §8.1) and a frame's bytes are touched
//! once. A complete unfragmented message is handed out as a slice of the read buffer.

use bytes::{Bytes, BytesMut};

use super::{Closed, Connection, Event, Input, Side};
use crate::{
    close::{CloseCode, CloseFrame},
    config::Config,
    deflate::Deflate,
    error::{CloseError, ProtocolError},
    frame::{FrameHeader, OpCode},
    mask::apply_mask,
    message::{Message, Utf8Bytes},
    utf8::Utf8Validator,
};

/// Reading state that outlives one frame.
#[derive(Debug)]
pub(crate) struct Reader {
    /// The frame whose payload is arriving.
    frame: Option<FrameInProgress>,
    /// The data message in progress: `Text` or `Binary`.
    message: Option<OpCode>,
    /// The message in progress is compressed (RSV1 on its first frame, RFC 7692 §6).
    compressed: bool,
    /// permessage-deflate was negotiated, so RSV1 has a meaning.
    deflate: bool,
    /// Bytes of earlier fragments of the message in progress.
    fragments: BytesMut,
    /// Payload bytes received so far for the message in progress.
    message_len: u64,
    utf8: Utf8Validator,
    max_frame: usize,
    max_message: usize,
}

#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    header: FrameHeader,
    header_len: usize,
    /// Payload bytes already unmasked and validated.
    done: usize,
}

impl Reader {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            frame: None,
            message: None,
            compressed: false,
            deflate: false,
            fragments: BytesMut::new(),
            message_len: 0,
            utf8: Utf8Validator::new(),
            max_frame: config.max_frame_size,
            max_message: config.max_message_size,
        }
    }

    /// Whether `buf` holds the rest of a complete frame.
    pub(crate) fn frame_ready(&self, buf: &[u8]) -> bool {
        match &self.frame {
            Some(f) => buf.len() >= f.header_len + f.header.payload_len as usize,
            None => match FrameHeader::parse(buf) {
                Ok(Some((h, len))) => (buf.len() - len) as u64 >= h.payload_len,
                Ok(None) => false,
                // An invalid header is ready too: it will fail the connection.
                Err(_) => true,
            },
        }
    }

    pub(crate) const fn in_frame(&self) -> bool {
        self.frame.is_some() || self.message.is_some()
    }

    pub(crate) fn enable_deflate(&mut self) {
        self.deflate = true;
    }

    /// Drop the memory of the fragment buffer between messages.
    pub(crate) fn release(&mut self) {
        if self.message.is_none() {
            self.fragments = BytesMut::new();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.frame = None;
        self.message = None;
        self.fragments = BytesMut::new();
        self.message_len = 0;
        self.utf8 = Utf8Validator::new();
    }

    /// Check a header against the role, the extensions and the message in progress.
    fn accept_header(&mut self, h: &FrameHeader, expect_mask: bool) -> Result<(), ProtocolError> {
        // RFC 6455 §5.2: RSV bits MUST be 0 unless an extension defines them. RFC 7692 §6:
        // with permessage-deflate, RSV1 marks the first frame of a compressed message, and is
        // never set on control frames or continuation frames.
        let rsv1_allowed = self.deflate && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv2 || h.rsv3 || (h.rsv1 && !rsv1_allowed) {
            return Err(ProtocolError::ReservedBits);
        }
        // §5.1: the server MUST fail on an unmasked frame, the client on a masked one.
        match (expect_mask, h.mask.is_some()) {
            (true, false) => return Err(ProtocolError::UnmaskedFrame),
            (false, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            // §5.5: control frames MUST have a payload of 125 bytes or less and MUST NOT be
            // fragmented.
            if h.payload_len > 125 {
                return Err(ProtocolError::ControlFrameTooLong(h.payload_len));
            }
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            return Ok(());
        }
        if h.payload_len > self.max_frame as u64 {
            return Err(ProtocolError::FrameTooLarge {
                size: h.payload_len,
                max: self.max_frame,
            });
        }
        // §5.4: fragments of one message are not interleaved with another message.
        match (h.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Text | OpCode::Binary, None) => {
                self.message = Some(h.opcode);
                self.compressed = h.rsv1;
                self.message_len = 0;
                self.utf8 = Utf8Validator::new();
            }
            _ => {}
        }
        self.message_len += h.payload_len;
        if self.message_len > self.max_message as u64 {
            return Err(ProtocolError::MessageTooLarge {
                size: self.message_len,
                max: self.max_message,
            });
        }
        Ok(())
    }

    /// Whether the payload of `h` is text to validate as it arrives.
    fn is_text(&self, h: &FrameHeader) -> bool {
        !h.opcode.is_control() && self.message == Some(OpCode::Text) && !self.compressed
    }

    /// A complete data frame: returns the message when it was the last fragment.
    fn data_frame(
        &mut self,
        h: &FrameHeader,
        payload: Bytes,
        deflate: Option<&mut Deflate>,
    ) -> Result<Option<Message>, ProtocolError> {
        if self.compressed {
            let deflate = deflate.ok_or(ProtocolError::ReservedBits)?;
            let start = self.fragments.len();
            deflate.decompress(&payload, h.fin, &mut self.fragments, self.max_message)?;
            if self.message == Some(OpCode::Text) {
                self.utf8.feed(&self.fragments[start..])?;
            }
            if !h.fin {
                return Ok(None);
            }
            let data = self.fragments.split().freeze();
            return self.finish_message(data).map(Some);
        }
        if !h.fin {
            self.fragments.extend_from_slice(&payload);
            return Ok(None);
        }
        let data = if self.fragments.is_empty() {
            payload
        } else {
            self.fragments.extend_from_slice(&payload);
            self.fragments.split().freeze()
        };
        self.finish_message(data).map(Some)
    }

    fn finish_message(&mut self, data: Bytes) -> Result<Message, ProtocolError> {
        self.compressed = false;
        Ok(match self.message.take() {
            Some(OpCode::Text) => {
                self.utf8.finish()?;
                Message::Text(Utf8Bytes::from_bytes_unchecked(data))
            }
            _ => Message::Binary(data),
        })
    }
}

impl Connection {
    /// Process every complete frame in the read buffer.
    pub(super) fn process(&mut self) {
        while self.state.can_receive() && self.events.is_empty() {
            match self.next_frame() {
                Ok(true) => {}
                Ok(false) if self.eof => {
                    self.finish_failed(CloseError::UnexpectedEof, Side::Peer);
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            }
        }
        if !self.state.can_receive() {
            self.read_buf.clear();
        }
    }

    /// Advance by at most one frame. `Ok(false)`: more bytes are needed.
    fn next_frame(&mut self) -> Result<bool, ProtocolError> {
        let mut frame = match self.reader.frame {
            Some(f) => f,
            None => {
                let Some((header, header_len)) = FrameHeader::parse(&self.read_buf)? else {
                    return Ok(false);
                };
                self.reader
                    .accept_header(&header, self.role.expects_masked_incoming())?;
                FrameInProgress {
                    header,
                    header_len,
                    done: 0,
                }
            }
        };
        let h = frame.header;
        let payload_len = h.payload_len as usize;
        let available = (self.read_buf.len() - frame.header_len).min(payload_len);
        if available > frame.done {
            let fresh =
                &mut self.read_buf[frame.header_len + frame.done..frame.header_len + available];
            if let Some(key) = h.mask {
                apply_mask(fresh, key, frame.done);
            }
            if self.reader.is_text(&h) {
                self.reader.utf8.feed(fresh)?;
            }
            frame.done = available;
        }
        if available < payload_len {
            self.reader.frame = Some(frame);
            return Ok(false);
        }
        self.reader.frame = None;
        self.timers.activity = true;
        let mut bytes = self.read_buf.split_to(frame.header_len + payload_len);
        let payload = bytes.split_off(frame.header_len).freeze();
        match h.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if let Some(message) = self.reader.data_frame(
                    &h,
                    payload,
                    self.deflate.as_deref_mut().map(|d| &mut d.codec),
                )? {
                    self.events.push_back(Event::Message(message));
                }
            }
            OpCode::Ping => {
                // §5.5.2: answer with a Pong carrying the same payload, unless we already sent
                // our Close (§5.5.1: nothing may follow it).
                if self.state.can_send() {
                    let mask = self.mask_key();
                    self.output.frame(
                        OpCode::Pong,
                        true,
                        false,
                        mask,
                        super::Payload::Borrowed(&payload),
                    );
                }
                self.events.push_back(Event::Ping(payload));
            }
            // §5.5.3: an unsolicited Pong needs no response.
            OpCode::Pong => self.events.push_back(Event::Pong(payload)),
            OpCode::Close => self.receive_close(&payload)?,
        }
        Ok(true)
    }

    fn receive_close(&mut self, payload: &Bytes) -> Result<(), ProtocolError> {
        let frame = CloseFrame::parse(payload)?;
        let initiated_by = if self.state.can_send() {
            // §5.5.1: answer with a Close, echoing the status code.
            match &frame {
                Some(f) => self.queue_close(f.code, ""),
                None => {
                    let mask = self.mask_key();
                    self.output.frame(
                        OpCode::Close,
                        true,
                        false,
                        mask,
                        super::Payload::Borrowed(&[]),
                    );
                }
            }
            Side::Peer
        } else {
            Side::Local
        };
        let (code, reason) = match &frame {
            Some(f) => (f.code, f.reason.clone()),
            None => (CloseCode::NO_STATUS, Utf8Bytes::new()),
        };
        self.peer_close = frame.map(Box::new);
        self.state = self.state.on(Input::ReceiveClose);
        self.finish(Closed {
            code,
            reason,
            initiated_by,
            error: None,
        });
        Ok(())
    }

    /// Fail the connection (RFC 6455 §7.1.7): send the Close frame for the error if we have not
    /// sent one yet, and stop reading.
    fn fail(&mut self, error: ProtocolError) {
        if self.state.can_send() {
            self.queue_close(error.close_code(), &error.to_string());
        }
        self.finish_failed(CloseError::Protocol(error), Side::Local);
    }
}
