//! Integration tests of `duplex`, gathered in one test binary; the modules live in `it/`.

// Interop with independent peers (Python websockets, Node ws); ignored unless asked for.
#[path = "it/peers.rs"]
mod peers;

// The examples' servers and client, run as their header comments describe.
#[path = "it/examples.rs"]
mod examples;

// Test servers and a throwaway PKI, shared with the client tests; the peer tests use the PKI,
// the example tests the CONNECT proxy.
#[cfg(feature = "tls")]
#[allow(dead_code)]
#[path = "client/support.rs"]
mod support;
