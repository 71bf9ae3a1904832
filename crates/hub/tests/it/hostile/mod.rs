//! Hostile inputs. Each test sends one class of bad input, asserts the answer it gets (an
//! HTTP status, a close code or an error reply) and that a well-behaved client is served
//! meanwhile (`support::assert_served`); memory checks read the process's RSS. The classes
//! and their limits are catalogued in docs/security.md.

// Before the upgrade: idle and slow requests, oversized heads, connection floods, shutdown.
mod http_edge;
// The memory budget: channel spam, retained history per node and per namespace.
mod memory;
// Replies larger than the outbound queue: history, presence and recovery are paged.
mod replies;
// Presence crowds (join/leave coalescing) and deeply nested JSON.
mod presence;
// Tokens: overflowing claims, audience and issuer, missing channel claims, error bodies.
mod auth;
// Handshake headers: CR/LF injection, duplicate headers, deflate bombs.
mod headers;
// The frame layer: protocol violations, ping floods, stalled readers.
mod frames;
// HTTP/2: idle connections, rapid resets, PING and SETTINGS floods.
mod http2;
