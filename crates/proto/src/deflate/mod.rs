//! permessage-deflate (RFC 7692): negotiation and the per-connection codec.
//!
//! # Memory per connection
//!
//! Compression state is the dominant cost of a compressed connection. With zlib's memory level
//! 8 (the one used here), a compressor holds about `2^(w+2)` bytes of window and hash chains
//! plus 128 KiB of other tables, and a decompressor about `2^w` bytes plus 7 KiB, where `w` is
//! the negotiated window size in bits:
//!
//! | window bits | compressor | decompressor | both    |
//! |-------------|------------|--------------|---------|
//! | 9           | ~130 KiB   | ~7.5 KiB     | ~138 KiB |
//! | 10          | ~132 KiB   | ~8 KiB       | ~140 KiB |
//! | 11          | ~136 KiB   | ~9 KiB       | ~145 KiB |
//! | 12          | ~144 KiB   | ~11 KiB      | ~155 KiB |
//! | 13          | ~160 KiB   | ~15 KiB      | ~175 KiB |
//! | 14          | ~192 KiB   | ~23 KiB      | ~215 KiB |
//! | 15          | ~256 KiB   | ~39 KiB      | ~295 KiB |
//!
//! The decompressor's window is our own (`client_max_window_bits` a server imposes, or
//! `server_max_window_bits` a client requests); without a limit it is 15 bits. Servers with
//! many connections should lower [`DeflateConfig::server_max_window_bits`] and, where peers
//! allow, set [`DeflateConfig::client_max_window_bits`].

mod codec;
mod params;

pub(crate) use codec::Deflate;
pub use params::{client_accept, client_offer, negotiate, DeflateConfig, DeflateParams};
