//! permessage-deflate (RFC 7692): negotiation and the per-connection codec.
//!
//! # Memory per connection
//!
//! Compression state is the dominant cost of a compressed connection. The codec runs on
//! flate2's `zlib-rs` backend with zlib's default memory level (8). Its compressor holds a
//! double window (`2 * 2^w` bytes), a chain table (`2 * 2^w`), a 64 Ki-entry hash table
//! (128 KiB) and about 112 KiB of symbol and output buffers, where `w` is the negotiated window
//! size in bits. Its decompressor always allocates a 32 KiB window whatever `w` is, plus its
//! tables. Measured (bytes allocated by `Compress::new_with_window_bits` and
//! `Decompress::new_with_window_bits`, level 6):
//!
//! | window bits | compressor | decompressor | both     |
//! |-------------|------------|--------------|----------|
//! | 9           | 245 KiB    | 46 KiB       | 291 KiB  |
//! | 10          | 247 KiB    | 46 KiB       | 293 KiB  |
//! | 11          | 251 KiB    | 46 KiB       | 297 KiB  |
//! | 12          | 259 KiB    | 46 KiB       | 305 KiB  |
//! | 13          | 275 KiB    | 46 KiB       | 321 KiB  |
//! | 14          | 307 KiB    | 46 KiB       | 353 KiB  |
//! | 15          | 371 KiB    | 46 KiB       | 417 KiB  |
//!
//! Each half is allocated when it is first used: a connection whose peer sends nothing
//! compressed never holds a decompressor, and a server that sends only [`Prepared`] frames
//! (compressed once for every connection) never holds a compressor.
//!
//! [`Prepared`]: crate::Prepared
//!
//! Lowering the window saves at most 126 KiB per connection on the compressing side and
//! nothing on the decompressing side with this backend; the fixed tables dominate.
//!
//! The compressor's window is `server_max_window_bits` on a server and
//! `client_max_window_bits` on a client, 15 bits unless negotiated lower. Servers with many
//! connections can lower [`DeflateConfig::server_max_window_bits`].

mod codec;
mod params;

pub(crate) use codec::{compress_alone, Deflate};
pub use params::{client_accept, client_offer, negotiate, DeflateConfig, DeflateParams};
