//! Compressing and decompressing messages (RFC 7692 §7.2).

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::DeflateParams;
use crate::{error::ProtocolError, role::Role};

/// RFC 7692 §7.2.1: the empty stored block a sync flush ends with, removed from each message
/// by the sender and appended again by the receiver.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by at most this much per step, so a bomb is caught early.
const STEP: usize = 16 * 1024;

/// The compression state of one connection.
///
/// Both halves are created on first use: a zlib compressor costs 245-371 KiB and a
/// decompressor 46 KiB (see the module docs), and a server that sends only shared
/// [`Prepared`](crate::Prepared) frames never needs its own compressor, nor does a side whose
/// peer sends nothing compressed need a decompressor.
pub(crate) struct Deflate {
    compress: Option<Compress>,
    decompress: Option<Decompress>,
    level: u32,
    /// Window bits of our compressor and of the peer's (what our decompressor must hold).
    ours: u8,
    theirs: u8,
    reset_compress: bool,
    reset_decompress: bool,
    threshold: usize,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("level", &self.level)
            .field("ours", &self.ours)
            .field("theirs", &self.theirs)
            .field("reset_compress", &self.reset_compress)
            .field("reset_decompress", &self.reset_decompress)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl Deflate {
    pub(crate) fn new(role: Role, params: &DeflateParams, level: u32, threshold: usize) -> Self {
        let (ours, theirs, reset_ours, reset_theirs) = match role {
            Role::Server => (
                params.server_max_window_bits,
                params.client_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.server_max_window_bits,
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        Self {
            compress: None,
            decompress: None,
            level,
            ours: ours.clamp(9, 15),
            // A window at least as large as the peer's always decodes its stream.
            theirs: theirs.clamp(9, 15),
            reset_compress: reset_ours,
            reset_decompress: reset_theirs,
            threshold,
        }
    }

    /// Whether a payload of `len` bytes is worth compressing.
    pub(crate) const fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// The compression level of this connection.
    pub(crate) const fn level(&self) -> u32 {
        self.level
    }

    /// Whether the peer can inflate a message of `len` bytes that was compressed on its own
    /// with a window of `bits`: its distances reach at most `min(len, 2^bits)` bytes back,
    /// and the peer holds a window of our negotiated size (RFC 7692 §7.1.2.1).
    pub(crate) fn accepts_window(&self, bits: u8, len: usize) -> bool {
        bits <= self.ours || len <= 1usize << self.ours
    }

    /// A message compressed elsewhere, on its own, was sent between two of ours: the peer's
    /// window now holds its text, which our compressor never saw, so our next message must
    /// not refer back past it. Dropping our history is always allowed (RFC 7692 §7.2.1: the
    /// sender may use fewer earlier bytes than the window allows).
    pub(crate) fn forget_history(&mut self) {
        if let Some(c) = &mut self.compress {
            c.reset();
        }
    }

    /// Compress one whole message into `out` (without the trailing empty block).
    pub(crate) fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        let (level, bits) = (self.level, self.ours);
        let compress = self.compress.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        });
        deflate_message(compress, payload, out);
        if self.reset_compress {
            compress.reset();
        }
    }

    /// Decompress the payload of one frame of a compressed message, appending to `out`.
    /// `last` marks the final frame, after which the trailing block is fed.
    ///
    /// # Errors
    /// Invalid deflate data (1002), or output past `max` bytes in total (1009) — checked while
    /// inflating, so a small frame cannot expand without bound.
    pub(crate) fn decompress(
        &mut self,
        payload: &[u8],
        last: bool,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), ProtocolError> {
        self.inflate(payload, out, max)?;
        if last {
            self.inflate(&TAIL, out, max)?;
            if self.reset_decompress {
                if let Some(d) = &mut self.decompress {
                    d.reset(false);
                }
            }
        }
        Ok(())
    }

    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let bits = self.theirs;
        let decompress = self
            .decompress
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        loop {
            let filled = out.len();
            // One byte past the limit is enough to know it was crossed.
            let room = STEP.min(max.saturating_add(1).saturating_sub(filled));
            grow(out, filled + room, max);
            out.resize(filled + room, 0);
            let (before_in, before_out) = (decompress.total_in(), decompress.total_out());
            let status = decompress.decompress(input, &mut out[filled..], FlushDecompress::Sync);
            let written = (decompress.total_out() - before_out) as usize;
            out.truncate(filled + written);
            let used = (decompress.total_in() - before_in) as usize;
            input = &input[used..];
            if out.len() > max {
                return Err(ProtocolError::MessageTooLarge {
                    size: out.len() as u64,
                    max,
                });
            }
            match status {
                Err(e) => return Err(ProtocolError::InvalidCompressedData(e.to_string())),
                // RFC 7692 §7.2.2: a message is a series of non-final blocks; BFINAL ends the
                // stream, after which nothing more could be decoded.
                Ok(Status::StreamEnd) if !input.is_empty() => {
                    return Err(ProtocolError::InvalidCompressedData(
                        "data after the final block".into(),
                    ))
                }
                Ok(_) if input.is_empty() && written < room => return Ok(()),
                Ok(_) if used == 0 && written == 0 => {
                    return Err(ProtocolError::InvalidCompressedData("no progress".into()))
                }
                Ok(_) => {}
            }
        }
    }
}

/// Compress `payload` as one message of a permessage-deflate stream into `out`, ending with
/// a sync flush whose empty-block tail is removed (RFC 7692 §7.2.1).
fn deflate_message(compress: &mut Compress, payload: &[u8], out: &mut BytesMut) {
    let start = out.len();
    let mut input = payload;
    loop {
        let filled = out.len();
        let room = (input.len() / 2).max(64);
        out.resize(filled + room, 0);
        let (before_in, before_out) = (compress.total_in(), compress.total_out());
        let result = compress.compress(input, &mut out[filled..], FlushCompress::Sync);
        let written = (compress.total_out() - before_out) as usize;
        out.truncate(filled + written);
        input = &input[(compress.total_in() - before_in) as usize..];
        // The flush is complete once all input is taken and zlib did not fill the room.
        if result.is_err() || (input.is_empty() && written < room) {
            break;
        }
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    } else if out.len() == start {
        // zlib skips a flush that repeats the last one with no input in between, so an
        // empty message after another one comes out as nothing at all, and the receiver's
        // appended tail would then start a stored block that swallows the next message.
        // RFC 7692 §7.2.3.6: send the empty stored block instead, whose first byte is
        // all that is left once its tail is removed.
        out.extend_from_slice(&[0x00]);
    }
}

/// Compress `payload` as a message on its own, with a fresh compressor of `window_bits`:
/// it refers to no earlier message, so any peer whose window is large enough inflates it,
/// whatever it received before (the shared frames of [`Prepared`](crate::Prepared)).
pub(crate) fn compress_alone(payload: &[u8], level: u32, window_bits: u8) -> BytesMut {
    let mut compress =
        Compress::new_with_window_bits(Compression::new(level), false, window_bits.clamp(9, 15));
    let mut out = BytesMut::with_capacity(payload.len() / 2 + 64);
    deflate_message(&mut compress, payload, &mut out);
    out
}

/// Past this many inflated bytes, [`grow`] reserves the rest of the limit in one step.
const RESERVE_AT: usize = 1 << 20;

/// Limits up to which [`grow`] may reserve the whole limit at once (address space only:
/// pages are touched as they are filled).
const RESERVE_MAX: usize = 1 << 30;

/// Make room for `want` bytes in `out`, never past `max + 1` bytes, the most
/// [`Deflate::inflate`] ever needs.
///
/// Growing by doubling (as `Vec` and `BytesMut` do) copies into a new buffer while the old
/// one is held, and the allocator keeps the freed ones resident: at a 64 MiB limit a 100 KB
/// bomb cost over 200 MB before its 1009. Small messages double as usual; once a message
/// passes [`RESERVE_AT`], the buffer is reserved up to the limit in one step. The reservation
/// is address space, and [`Deflate::inflate`] touches it only [`STEP`] bytes at a time as it
/// fills, so a bomb costs about the limit in resident memory and a large message about its
/// own size, with one copy of at most [`RESERVE_AT`] bytes.
fn grow(out: &mut BytesMut, want: usize, max: usize) {
    if out.capacity() >= want {
        return;
    }
    let limit = max.saturating_add(1);
    let cap = if want > RESERVE_AT && limit <= RESERVE_MAX {
        limit
    } else {
        out.capacity().saturating_mul(2).min(limit)
    }
    .max(want);
    let mut bigger = BytesMut::with_capacity(cap);
    bigger.extend_from_slice(out);
    *out = bigger;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(params: &DeflateParams) -> (Deflate, Deflate) {
        (
            Deflate::new(Role::Client, params, 6, 0),
            Deflate::new(Role::Server, params, 6, 0),
        )
    }

    #[test]
    fn round_trip_with_and_without_context_takeover() {
        for reset in [false, true] {
            let params = DeflateParams {
                client_no_context_takeover: reset,
                server_no_context_takeover: reset,
                ..DeflateParams::default()
            };
            let (mut client, mut server) = pair(&params);
            let mut sizes = Vec::new();
            for _ in 0..3 {
                let msg = b"Hello, hello, hello! The same text again and again.".repeat(20);
                let mut wire = BytesMut::new();
                client.compress(&msg, &mut wire);
                assert!(!wire.ends_with(&TAIL));
                sizes.push(wire.len());
                let mut out = BytesMut::new();
                server.decompress(&wire, true, &mut out, 1 << 20).unwrap();
                assert_eq!(&out[..], &msg[..]);
            }
            // With context takeover, repeats compress to almost nothing.
            if reset {
                assert_eq!(sizes[0], sizes[2]);
            } else {
                assert!(sizes[2] < sizes[0] / 2, "{sizes:?}");
            }
        }
    }

    /// Empty messages between others, with the context kept: each must decode, and the
    /// stream must stay in step (found by the `inflate` fuzz target).
    #[test]
    fn empty_messages_keep_the_stream_in_step() {
        let (mut client, mut server) = pair(&DeflateParams::default());
        let messages: [&[u8]; 10] = [
            b"Hello", b"Hello", b"plain", b"Hello", b"Hello", b"", b"plain", b"Hello", b"", b"",
        ];
        for (i, msg) in messages.iter().enumerate() {
            let mut wire = BytesMut::new();
            client.compress(msg, &mut wire);
            let mut out = BytesMut::new();
            server
                .decompress(&wire, true, &mut out, 1 << 20)
                .unwrap_or_else(|e| panic!("message {i} ({wire:02x?}): {e}"));
            assert_eq!(&out[..], *msg, "message {i}");
        }
    }

    #[test]
    fn rfc_7692_hello_example() {
        // RFC 7692 §7.2.3.1: "Hello" compressed.
        let (_, mut server) = pair(&DeflateParams::default());
        let mut out = BytesMut::new();
        server
            .decompress(
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
                true,
                &mut out,
                100,
            )
            .unwrap();
        assert_eq!(&out[..], b"Hello");
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let (mut client, mut server) = pair(&DeflateParams::default());
        let mut wire = BytesMut::new();
        client.compress(&vec![0u8; 10 << 20], &mut wire);
        assert!(wire.len() < 20_000, "{}", wire.len());
        let mut out = BytesMut::new();
        let err = server
            .decompress(&wire, true, &mut out, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooLarge { .. }));
        assert!(out.len() <= (1 << 20) + 1 + STEP);
        // The buffer never grew past the limit: a bomb costs about the limit, not twice it.
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
    }

    #[test]
    fn a_message_of_exactly_the_limit_fits_in_a_buffer_of_the_limit() {
        let (mut client, mut server) = pair(&DeflateParams::default());
        for max in [1, 1000, 100_000, 1 << 20] {
            let msg: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
            let mut wire = BytesMut::new();
            client.compress(&msg, &mut wire);
            let mut out = BytesMut::new();
            server.decompress(&wire, true, &mut out, max).unwrap();
            assert_eq!(&out[..], &msg[..]);
            assert!(out.capacity() <= max + 1, "{max}: {}", out.capacity());
        }
    }

    #[test]
    fn growth_doubles_up_to_the_limit() {
        let mut out = BytesMut::new();
        out.extend_from_slice(b"abc");
        grow(&mut out, 100, 1000);
        assert!(out.capacity() >= 100 && &out[..] == b"abc");
        let before = out.capacity();
        grow(&mut out, before + 1, 1000);
        assert!(out.capacity() >= (2 * before).min(1001));
        grow(&mut out, 1001, 1000);
        assert!(out.capacity() >= 1001);
        grow(&mut out, 1001, usize::MAX);
        assert_eq!(&out[..], b"abc");
        // Past RESERVE_AT the rest of the limit is reserved at once.
        let mut big = BytesMut::new();
        grow(&mut big, RESERVE_AT + 1, 8 << 20);
        assert_eq!(big.capacity(), (8 << 20) + 1);
        // An unbounded limit keeps doubling.
        let mut open = BytesMut::with_capacity(RESERVE_AT);
        grow(&mut open, RESERVE_AT + 1, usize::MAX);
        assert!(open.capacity() >= 2 * RESERVE_AT && open.capacity() < 4 * RESERVE_AT);
    }

    #[test]
    fn garbage_is_invalid() {
        let (_, mut server) = pair(&DeflateParams::default());
        let mut out = BytesMut::new();
        let err = server
            .decompress(&[0xff; 16], true, &mut out, 1 << 20)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidCompressedData(_)));
    }
}
