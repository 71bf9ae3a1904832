//! A sans-IO implementation of the WebSocket protocol (RFC 6455) for both roles: bytes in,
//! events and bytes out, with no sockets, no async runtime and no clock of its own.
//!
//! The [`Connection`] state machine parses frames, reassembles fragmented messages, validates
//! UTF-8 as it arrives, answers pings, runs the closing handshake and fails the connection with
//! the right close code on any violation. The [`handshake`] module parses and builds the HTTP
//! upgrade. An IO layer (such as the `duplex` crate for tokio) moves bytes between a transport
//! and these types.
//!
//! ```
//! use bytes::BytesMut;
//! use duplex_proto::{CloseCode, Config, Connection, Event, Message, Role};
//!
//! let mut client = Connection::new(Role::Client, Config::default());
//! let mut server = Connection::new(Role::Server, Config::default());
//!
//! // The client sends a message; its bytes go over some transport to the server.
//! client.send(Message::text("hello")).unwrap();
//! let mut wire = BytesMut::new();
//! client.poll_output(&mut wire);
//! server.receive_bytes(&wire);
//! assert_eq!(server.poll_event(), Some(Event::Message(Message::text("hello"))));
//!
//! // The server starts the closing handshake; the client answers it.
//! server.close(CloseCode::NORMAL, "bye").unwrap();
//! wire.clear();
//! server.poll_output(&mut wire);
//! client.receive_bytes(&wire);
//! assert!(matches!(client.poll_event(), Some(Event::Closed(c)) if c.code == CloseCode::NORMAL));
//! ```
//!
//! # Layout
//! - [`Connection`], [`Event`], [`State`]: the state machine (`connection/`), with every state
//!   transition in one place.
//! - [`frame`]: the frame header codec and opcodes; [`mask`]: payload masking.
//! - [`utf8`]: incremental UTF-8 validation that fails fast.
//! - [`CloseCode`], [`CloseFrame`]: the closing handshake's payload.
//! - [`Message`], [`Utf8Bytes`], [`Prepared`]: what applications send and receive.
//! - [`handshake`]: the opening handshake, client and server.
//! - [`deflate`]: permessage-deflate (RFC 7692) negotiation and compression.
//! - [`Config`]: limits and timers, each with a documented default.
//! - [`RandomSource`]: where a client's masking keys and handshake nonce come from (a CSPRNG
//!   unless a test says otherwise).
//! - [`ProtocolError`], [`CloseError`], [`SendError`], [`HandshakeError`]: errors by layer.

// One audited `unsafe` (`Utf8Bytes::as_str`); every other use is refused.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod close;
mod config;
mod connection;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
mod message;
mod prepared;
mod random;
mod role;
pub mod utf8;

#[cfg(test)]
mod tests;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Closed, Connection, Event, Side, State};
pub use error::{CloseError, ProtocolError, SendError};
pub use handshake::{HandshakeError, InvalidHeader};
pub use message::{Message, Utf8Bytes};
pub use prepared::Prepared;
pub use random::RandomSource;
pub use role::Role;

// The crates whose types appear in this API, for callers that do not depend on them.
pub use bytes;
pub use http;

/// The examples of README.md, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
