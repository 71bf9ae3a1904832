//! One text frame from a hub client, for the hub's command parser. See
//! `duplex_proto_fuzz::hub_command` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| duplex_proto_fuzz::hub_command(data));
