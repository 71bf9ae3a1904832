//! Integration tests: a real server on 127.0.0.1:0 and real WebSocket clients.

// Shared helpers: start a server, a JSON client, raw HTTP requests.
mod support;

// The server API: every method, its OpenAPI schema, hostile inputs, Python urllib as a client.
mod api;
// Auth, Origin and connection limits at the handshake, and token claims after it.
mod auth;
// permessage-deflate: negotiated when enabled, publications compressed once for all.
mod compression;
// Every command and every error reply of the protocol.
mod commands;
// Fan-out to 1,000 subscribers.
mod fanout;
// Server pings; dead peers are dropped.
mod heartbeat;
// Backend hooks with a Node.js application: connect, subscribe, publish, rpc; broken backends.
mod hooks;
// The HTTP API, health, metrics and embedded pages.
mod http;
// Hostile inputs: each gets its answer while a well-behaved client is served.
mod hostile;
// Python `websockets` as a client of /ws, with permessage-deflate.
mod peers;
// Publication keys and the latest value on subscribe (memory and Redis brokers).
mod latest;
// Recovery with `since`: exactly the missed publications, in order.
mod recovery;
// Graceful shutdown: every client gets 1001.
mod shutdown;
// Slow consumers: 1013 and bounded memory; drop-oldest.
mod slow;
// Keys from a JWKS URL (rotation, outage, hostile documents) and subscription tokens.
mod tokens;
// TLS on the listener: wss, stalled and garbage handshakes, certificate reload.
mod tls;
// WebSockets over HTTP/2 (h2c, RFC 8441) beside HTTP/1.1 on the same port.
mod http2;
// The RFC 8441 test client of the duplex crate's tests.
#[path = "../../../duplex/tests/it/h2_client.rs"]
mod h2_client;
// The axum upgrade extractor: RFC 6455 §4.2.1 checks.
mod upgrade;
