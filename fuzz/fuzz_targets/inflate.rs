//! Compressed frames from the peer, fed to a server and to a client connection with
//! permessage-deflate negotiated. See `duplex_proto_fuzz::inflate` for the input's layout and
//! what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::inflate(data));
