//! Integration tests of `duplex`, gathered in one test binary; the modules live in `it/`.

// Interop with independent peers (Python websockets, Node ws); ignored unless asked for.
#[path = "it/peers.rs"]
mod peers;
