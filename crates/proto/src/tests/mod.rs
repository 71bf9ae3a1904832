//! Whole-protocol tests: real connections driven in memory, grouped by RFC topic.

// The in-memory client+server pair and helpers to drive and inspect one connection.
mod pair;
// A builder for hand-made wire bytes, including invalid ones.
mod frames;

// Client frames masked, server frames not (RFC 6455 §5.1, §5.3).
mod masking;
// Fragmented messages and control frames between fragments (§5.4).
mod fragmentation;
// Reserved opcodes and bits, the length field, control frame rules, Ping/Pong (§5.2, §5.5).
mod control;
// The closing handshake, close codes and the end of the transport (§5.5.1, §7).
mod close;
// UTF-8 validation that fails fast (§8.1).
mod utf8;
// Frame and message size limits (1009).
mod limits;
// The close-handshake timeout and keepalive pings, on a synthetic clock.
mod keepalive;
// Reading one event at a time: replies go out before reactions to later frames.
mod reading;
// The opening handshake end to end (§4).
mod handshake;
// permessage-deflate: shared compressed frames beside each connection's own (RFC 7692).
mod deflate;
// Property tests: header round trip, re-chunking, fragmentation model, arbitrary input.
mod properties;
