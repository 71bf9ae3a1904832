//! Arbitrary bytes from the peer, fed to a server and to a client connection, in one read and
//! one byte at a time. See `duplex_proto_fuzz::frame_reader` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::frame_reader(data));
