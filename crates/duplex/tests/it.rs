//! Integration tests of `duplex`, gathered in one test binary; the modules live in `it/`.

// Interop with independent peers (Python websockets, Node ws); ignored unless asked for.
#[path = "it/peers.rs"]
mod peers;

// The examples' servers and client, run as their header comments describe.
#[path = "it/examples.rs"]
mod examples;

// WebSockets over HTTP/2 (RFC 8441) through the hyper and axum integrations, with an `h2`
// test client.
#[cfg(feature = "axum")]
#[path = "it/h2_client.rs"]
mod h2_client;
#[cfg(feature = "axum")]
#[path = "it/h2.rs"]
mod http2;

// `ClientBuilder::http2` (RFC 8441, the client side) against a hyper server upgrading
// through `duplex::hyper`.
#[cfg(all(feature = "http2", feature = "hyper"))]
#[path = "it/h2_connect.rs"]
mod h2_connect;

// Test servers and a throwaway PKI, shared with the client tests; the peer tests use the PKI,
// the example tests the CONNECT proxy.
#[cfg(feature = "tls")]
#[allow(dead_code)]
#[path = "client/support.rs"]
mod support;
