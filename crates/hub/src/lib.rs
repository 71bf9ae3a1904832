//! x
#![allow(missing_docs)]
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
mod frame;
mod hub;
mod limits;
mod metrics;
mod node;
pub mod protocol;
mod queue;
mod session;

pub use config::Config;
pub use hub::{ChannelInfo, Hub, Stats};

/// The WebSocket subprotocol of the hub's wire format.
pub const SUBPROTOCOL: &str = "duplex.v1";
