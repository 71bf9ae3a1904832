//! A JWKS document from an identity provider's URL, for the hub's key-set reader. See
//! `duplex_proto_fuzz::jwks` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::jwks(data));
