//! Arbitrary bytes as a client's upgrade request, parsed by the server side of the opening
//! handshake. See `duplex_proto_fuzz::handshake_server` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::handshake_server(data));
