//! Arbitrary bytes as a server's answer to our upgrade request, parsed by the client side of
//! the opening handshake. See `duplex_proto_fuzz::handshake_client` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::handshake_client(data));
