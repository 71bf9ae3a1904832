//! The output queue: frames waiting to be written, in order.
//!
//! Small frames are copied into one staging buffer so that everything produced in one round
//! goes out in one write; large unmasked payloads are queued by reference (zero-copy) and
//! written with vectored IO.

use std::{collections::VecDeque, io::IoSlice};

use bytes::{Buf, Bytes, BytesMut};

use crate::{
    frame::{FrameHeader, OpCode},
    mask::apply_mask,
};

/// Payloads at least this long are queued by reference instead of copied (server role only,
/// since a client must mask, which means copying anyway).
const ZERO_COPY_MIN: usize = 4096;

/// Frames waiting to be written.
#[derive(Debug, Default)]
pub(crate) struct Output {
    chunks: VecDeque<Bytes>,
    staging: BytesMut,
    len: usize,
}

impl Output {
    /// Queue one frame. `mask` is the client's masking key, if any.
    pub(crate) fn frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        rsv1: bool,
        mask: Option<[u8; 4]>,
        payload: Payload<'_>,
    ) {
        let bytes = payload.as_slice();
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: bytes.len() as u64,
        };
        self.len += header.encoded_len() + bytes.len();
        header.encode(&mut self.staging);
        match (mask, payload) {
            (Some(key), _) => {
                let start = self.staging.len();
                self.staging.extend_from_slice(bytes);
                apply_mask(&mut self.staging[start..], key, 0);
            }
            (None, Payload::Shared(b)) if b.len() >= ZERO_COPY_MIN => {
                let staged = self.staging.split().freeze();
                self.chunks.push_back(staged);
                self.chunks.push_back(b.clone());
            }
            (None, _) => self.staging.extend_from_slice(bytes),
        }
    }

    /// Queue bytes that already form complete frames.
    pub(crate) fn raw(&mut self, frames: &Bytes) {
        self.len += frames.len();
        if frames.len() >= ZERO_COPY_MIN {
            if !self.staging.is_empty() {
                let staged = self.staging.split().freeze();
                self.chunks.push_back(staged);
            }
            self.chunks.push_back(frames.clone());
        } else {
            self.staging.extend_from_slice(frames);
        }
    }

    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn chunks<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in self
            .chunks
            .iter()
            .map(|c| &c[..])
            .chain([&self.staging[..]])
        {
            if n == dst.len() {
                break;
            }
            if !chunk.is_empty() {
                dst[n] = IoSlice::new(chunk);
                n += 1;
            }
        }
        n
    }

    pub(crate) fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                return;
            }
        }
        self.staging.advance(n.min(self.staging.len()));
    }

    /// Move everything into `buf` (one copy); used by tests and simple drivers.
    pub(crate) fn drain_into(&mut self, buf: &mut BytesMut) {
        for chunk in self.chunks.drain(..) {
            buf.extend_from_slice(&chunk);
        }
        buf.extend_from_slice(&self.staging);
        self.staging.clear();
        self.len = 0;
    }

    /// Give memory back while nothing is pending.
    pub(crate) fn release(&mut self) {
        if self.len == 0 {
            self.chunks = VecDeque::new();
            self.staging = BytesMut::new();
        }
    }
}

/// A payload to frame: borrowed (copied into the queue) or shared (may be queued by reference).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payload<'a> {
    Borrowed(&'a [u8]),
    Shared(&'a Bytes),
}

impl Payload<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Shared(b) => b,
        }
    }
}
