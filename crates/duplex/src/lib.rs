//! Fast, correct WebSocket connections for tokio: server and client, RFC 6455.
//!
//! `duplex` drives the sans-IO [`duplex_proto`] state machine over any `AsyncRead +
//! AsyncWrite` transport. Frames are parsed in place, complete messages are handed out without
//! copying, everything produced by one read goes out in one (vectored) write, and every
//! protocol violation is answered with the right close code.
//!
//! An echo server:
//!
//! ```no_run
//! use tokio::net::TcpListener;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = TcpListener::bind("127.0.0.1:9001").await?;
//!     loop {
//!         let (tcp, _) = listener.accept().await?;
//!         tokio::spawn(async move {
//!             let mut ws = duplex::accept(tcp).await?;
//!             while let Some(message) = ws.recv().await {
//!                 ws.send(message?).await?;
//!             }
//!             Ok::<_, duplex::Error>(())
//!         });
//!     }
//! }
//! ```
//!
//! And a client talking to it, runnable as it is:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> duplex::Result<()> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! #     let (tcp, _) = listener.accept().await?;
//! #     let mut ws = duplex::accept(tcp).await?;
//! #     while let Some(m) = ws.recv().await { ws.send(m?).await?; }
//! #     Ok::<_, duplex::Error>(())
//! # });
//! use duplex::{CloseCode, Message};
//!
//! let (mut ws, _) = duplex::connect(&format!("ws://{addr}/")).await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//! ws.close(CloseCode::NORMAL, "bye").await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`WebSocket`]: a connection; [`split`](WebSocket::split) gives [`WsSink`] and [`WsStream`].
//! - [`accept`], [`accept_with`], [`ServerConfig`]: the server side of the opening handshake;
//!   [`Incoming`] to inspect a request and await anything before answering it.
//! - [`connect`], [`ClientBuilder`]: the client side: `ws://` and `wss://`, headers,
//!   subprotocols, timeouts, HTTP CONNECT proxies, redirects.
//! - [`http2`]: WebSockets over HTTP/2 (RFC 8441) for clients, several on one connection,
//!   with [`ClientBuilder::http2`].
//! - [`tls`]: trusted roots and readable [`TlsError`]s for clients, an acceptor from PEM
//!   files for servers.
//! - [`Error`]: one error type, keeping IO, handshake and protocol causes apart.
//!
//! # Feature flags
//! - `tls` (default): `wss://` through rustls with the *ring* provider, the bundled web PKI
//!   roots, and OS roots on request.
//! - `http2`: `duplex::http2`, the client side of WebSockets over HTTP/2 (RFC 8441) through
//!   the `h2` crate: [`ClientBuilder::http2`] (h2c with prior knowledge on `ws://`, ALPN `h2`
//!   on `wss://`), falling back to HTTP/1.1.
//! - `hyper`: `duplex::hyper`, the upgrade of plain hyper 1 requests (no framework).
//! - `axum`: `duplex::axum::WebSocketUpgrade`, an axum extractor built on `hyper`.
//!
//! # Re-exports
//! [`bytes`] and [`http`], whose types appear in this API, and the protocol core as
//! [`proto`].
//!
//! # Cancel safety
//! [`WebSocket::recv`] and [`WebSocket::next_event`] are cancel-safe: if the future is dropped
//! before it completes, no message is lost, and the next call returns it. `send` and its
//! relatives queue the message whole before their first await point that can be cancelled
//! (once the connection is ready for more), so a cancelled `send` either queued nothing or
//! queued the whole message, which the next flush or send writes. [`WebSocket::close`] may be
//! cancelled; the Close frame is then queued and the handshake finishes on the next receive.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
mod client;
mod error;
#[cfg(feature = "http2")]
pub mod http2;
#[cfg(feature = "hyper")]
pub mod hyper;
mod pool;
mod proxy;
mod server;
mod split;
mod stream;
mod timer;
pub mod tls;
mod websocket;

pub use client::{connect, ClientBuilder};
pub use duplex_proto::handshake::server::{Accept, Accepted, Reject, Request};
pub use duplex_proto::{
    self as proto, deflate, handshake, CloseCode, CloseFrame, Closed, Config, Event, Message,
    Prepared, Role, Side, State, Utf8Bytes,
};
// The protocol's errors, which `Error` wraps.
pub use duplex_proto::{CloseError, HandshakeError, InvalidHeader, ProtocolError, SendError};
pub use error::{Error, Result};
pub use server::{accept, accept_with, Incoming, ServerConfig};
pub use split::{WsSink, WsStream};
pub use stream::MaybeTlsStream;
pub use tls::TlsError;
pub use websocket::WebSocket;

// The crates whose types appear in this API (`Bytes` in messages, `HeaderMap` in the
// handshake response), so callers use the same versions without depending on them.
pub use bytes;
pub use http;

/// The examples of README.md, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The `duplex` examples of docs/migrating.md, compiled as doctests so that the guide stays
/// true to the API (they use the `axum` feature).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../docs/migrating.md")]
pub struct MigratingDoctests;
