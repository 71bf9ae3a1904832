//! Integration tests of `duplex`, gathered in one test binary; the modules live in `it/`.

// Interop with independent peers (Python websockets, Node ws); ignored unless asked for.
#[path = "it/peers.rs"]
mod peers;

// Test servers and a throwaway PKI, shared with the client tests; the peer tests use the PKI.
#[cfg(feature = "tls")]
#[allow(dead_code)]
#[path = "client/support.rs"]
mod support;
