//! Client-side integration tests: TLS, subprotocols, proxies, redirects and the errors a
//! client reports. Every server here is started by the test on 127.0.0.1, port 0.

#![cfg(feature = "tls")]

// Servers, certificates and a CONNECT proxy the tests start.
#[path = "client/support.rs"]
mod support;

// wss:// against a test CA: success, unknown issuer, name mismatch, expiry.
#[path = "client/tls.rs"]
mod tls;

// Subprotocol negotiation as the client sees it.
#[path = "client/subprotocols.rs"]
mod subprotocols;

// Tunnels through an HTTP CONNECT proxy.
#[path = "client/proxy.rs"]
mod proxy;

// Following (or not) 3xx answers to the upgrade request.
#[path = "client/redirects.rs"]
mod redirects;

// What each failure says.
#[path = "client/errors.rs"]
mod errors;
