//! A small language for hand-made wire bytes, including ones no correct endpoint would send:
//!
//! ```text
//! frames::text("hi").masked().fin(false)      a first fragment from a client
//! frames::ping(b"x").rsv1()                   a ping with a reserved bit set
//! frames::binary(b"").opcode(3)               a reserved opcode
//! frames::binary(b"").len_override(1 << 63)   a length the payload does not match
//! frames::close(1000, "bye")                  a Close with a status code and reason
//! ```
//!
//! Frames are unmasked unless `.masked()` is called, which is what a server sends; a client's
//! frames need `.masked()`.

/// The masking key of the example in RFC 6455 §5.7.
pub(crate) const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: Len,
    payload: Vec<u8>,
}

/// How the payload length is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    /// The shortest encoding of the real payload length.
    Minimal,
    /// This length, in the shortest form that holds it, whatever the payload.
    Declared(u64),
    /// This length, always in the 8-byte form.
    Declared64(u64),
}

fn frame(opcode: u8, payload: &[u8]) -> Frame {
    Frame {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        len: Len::Minimal,
        payload: payload.to_vec(),
    }
}

pub(crate) fn text(s: impl AsRef<[u8]>) -> Frame {
    frame(0x1, s.as_ref())
}

pub(crate) fn binary(b: impl AsRef<[u8]>) -> Frame {
    frame(0x2, b.as_ref())
}

pub(crate) fn continuation(b: impl AsRef<[u8]>) -> Frame {
    frame(0x0, b.as_ref())
}

pub(crate) fn ping(b: impl AsRef<[u8]>) -> Frame {
    frame(0x9, b.as_ref())
}

pub(crate) fn pong(b: impl AsRef<[u8]>) -> Frame {
    frame(0xA, b.as_ref())
}

/// A Close frame with a status code and a reason (which may be invalid UTF-8).
pub(crate) fn close(code: u16, reason: impl AsRef<[u8]>) -> Frame {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_ref());
    frame(0x8, &payload)
}

/// A Close frame with exactly this payload (empty, one byte, ...).
pub(crate) fn close_raw(payload: impl AsRef<[u8]>) -> Frame {
    frame(0x8, payload.as_ref())
}

impl Frame {
    /// Set or clear FIN.
    pub(crate) fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub(crate) fn rsv1(mut self) -> Self {
        self.rsv |= 0x40;
        self
    }

    pub(crate) fn rsv2(mut self) -> Self {
        self.rsv |= 0x20;
        self
    }

    pub(crate) fn rsv3(mut self) -> Self {
        self.rsv |= 0x10;
        self
    }

    /// Any four-bit opcode, reserved ones included.
    pub(crate) fn opcode(mut self, opcode: u8) -> Self {
        assert!(opcode < 16);
        self.opcode = opcode;
        self
    }

    /// Mask with [`KEY`], as a client must.
    pub(crate) fn masked(self) -> Self {
        self.mask(KEY)
    }

    /// Mask with `key`.
    pub(crate) fn mask(mut self, key: [u8; 4]) -> Self {
        self.mask = Some(key);
        self
    }

    /// Declare a payload length other than the real one (shortest form that holds it).
    pub(crate) fn len_override(mut self, len: u64) -> Self {
        self.len = Len::Declared(len);
        self
    }

    /// Declare `len` in the 8-byte form, even when a shorter one would do.
    pub(crate) fn len64(mut self, len: u64) -> Self {
        self.len = Len::Declared64(len);
        self
    }

    /// Mask with `key` when `masked` is true: for tests that run in both roles.
    pub(crate) fn masked_if(self, masked: bool) -> Self {
        if masked {
            self.masked()
        } else {
            self
        }
    }

    /// The header bytes alone (length and masking key included).
    pub(crate) fn header(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.fin) << 7 | self.rsv | self.opcode];
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let (len, long) = match self.len {
            Len::Minimal => (self.payload.len() as u64, false),
            Len::Declared(len) => (len, false),
            Len::Declared64(len) => (len, true),
        };
        match len {
            0..=125 if !long => out.push(mask_bit | len as u8),
            126..=0xFFFF if !long => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        out
    }

    /// The payload as it goes on the wire (masked if a key is set).
    pub(crate) fn wire_payload(&self) -> Vec<u8> {
        let mut payload = self.payload.clone();
        if let Some(key) = self.mask {
            crate::mask::apply_mask_scalar(&mut payload, key, 0);
        }
        payload
    }

    /// The complete frame.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.wire_payload());
        out
    }
}

/// The bytes of several frames, back to back.
pub(crate) fn wire<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<u8> {
    frames.into_iter().flat_map(Frame::bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_examples() {
        // RFC 6455 §5.7.
        assert_eq!(text("Hello").bytes(), b"\x81\x05Hello");
        assert_eq!(
            text("Hello").masked().bytes(),
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        );
        assert_eq!(text("Hel").fin(false).bytes(), b"\x01\x03Hel");
        assert_eq!(continuation("lo").bytes(), b"\x80\x02lo");
        assert_eq!(ping("Hello").bytes(), b"\x89\x05Hello");
        assert_eq!(pong("Hello").masked().bytes()[..2], *b"\x8a\x85");
        let mut long = vec![0x82, 0x7E, 0x01, 0x00];
        long.extend_from_slice(&[0; 256]);
        assert_eq!(binary([0; 256]).bytes(), long);
        assert_eq!(
            binary([0; 65536]).bytes()[..10],
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn overrides() {
        assert_eq!(binary("").opcode(3).rsv1().rsv3().bytes(), [0xD3, 0]);
        assert_eq!(ping("").rsv2().fin(false).bytes(), [0x29, 0]);
        assert_eq!(
            binary("").len_override(1 << 63).bytes(),
            [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            text("a").len64(1).bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 0, 0, 1, b'a']
        );
        assert_eq!(close(1000, "").bytes(), [0x88, 2, 0x03, 0xE8]);
        assert_eq!(close_raw([7]).bytes(), [0x88, 1, 7]);
        assert_eq!(
            wire(&[text("a"), binary("b")]),
            [0x81, 1, b'a', 0x82, 1, b'b']
        );
    }
}
