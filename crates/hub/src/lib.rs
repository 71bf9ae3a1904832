//! The duplex hub: a real-time pub/sub server engine over WebSocket, run by `duplex serve`.
//!
//! Clients connect to `/ws`, speak the JSON protocol `duplex.v1` (see `docs/protocol.md`),
//! subscribe to channels, publish, see who is there, and recover what they missed after a
//! reconnect. Backends publish over HTTP. One node keeps everything in memory; the
//! [`broker::Broker`] trait is the seam for sharing channels between nodes.
//!
//! ```
//! use duplex::{ClientBuilder, Message};
//! use duplex_hub::{Config, Server};
//!
//! # type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
//! /// The next frame's text.
//! async fn next(ws: &mut duplex::WebSocket<duplex::MaybeTlsStream>) -> Result<String> {
//!     let message = ws.recv().await.ok_or("closed")??;
//!     Ok(message.as_text().unwrap_or_default().to_owned())
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<()> {
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse()?;
//! let server = Server::bind(config).await?;
//! let url = format!("ws://{}/ws", server.local_addr());
//! let hub = server.hub().clone();
//! tokio::spawn(server.run(std::future::pending()));
//!
//! // A client subscribes to a chat room…
//! let (mut ws, _) = ClientBuilder::new(url).subprotocol("duplex.v1").connect().await?;
//! assert!(next(&mut ws).await?.starts_with(r#"{"type":"welcome""#));
//! ws.send(Message::text(r#"{"type":"subscribe","id":1,"channel":"lobby"}"#)).await?;
//! assert!(next(&mut ws).await?.contains(r#""recovered":false"#)); // the reply
//! // Its own join, in the room's next `presence_diff` (joins are batched per 200 ms).
//! assert!(next(&mut ws).await?.starts_with(r#"{"type":"presence_diff""#));
//!
//! // …and receives what the server, another client, or `POST /api/publish` publishes.
//! let data = serde_json::value::RawValue::from_string(r#"{"text":"hello"}"#.into())?;
//! hub.publish("lobby", data).await?;
//! assert_eq!(
//!     next(&mut ws).await?,
//!     r#"{"type":"message","channel":"lobby","offset":1,"data":{"text":"hello"},"from":null}"#
//! );
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`Server`]: binds, serves HTTP and WebSocket on one port with axum, shuts down
//!   gracefully (1001 to every client).
//! - [`Hub`]: what one node shares between connections; [`Hub::router`] mounts it in any
//!   axum application.
//! - [`config`]: the TOML configuration, namespaces, limits.
//! - [`protocol`]: command parsing and frame encoding.
//! - [`broker`]: offsets, history, presence and delivery between nodes; [`broker::MemoryBroker`].
//! - `node`: node-local fan-out: one encoded frame per publication, shared by reference
//!   with every subscriber's bounded outbound queue (`queue`).
//! - `session` and `ws`: one connection: command handling, and the socket's reader and
//!   writer.
//! - `hooks`: the application's HTTP endpoints that decide who connects, subscribes and
//!   publishes, and answer `rpc` (configured by [`config::HooksConfig`]).
//! - [`auth`]: JWT and Origin checks; `limits`: connection limits; `metrics`: Prometheus.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod demo;
pub mod protocol;

mod assets;
mod frame;
mod hooks;
mod http;
mod hub;
mod limits;
mod metrics;
mod node;
mod presence_batch;
mod queue;
mod server;
mod session;
mod tls;
mod ws;

pub use config::Config;
pub use hub::{ChannelInfo, Hub, Stats};
pub use server::{Server, ServerError};

/// The WebSocket subprotocol of the hub's wire format.
pub const SUBPROTOCOL: &str = "duplex.v1";

/// The examples of README.md, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
