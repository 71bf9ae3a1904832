//! Brokers: where publications get their offsets, where history and presence live, and how
//! publications reach every node.
//!
//! A broker knows nothing of connections. The node-local fan-out (module `node`)
//! tells the broker which channels this node is interested in, and the broker hands every
//! [`Delivery`] for those channels to the node's [`DeliverySink`], in offset order per
//! channel. [`MemoryBroker`] does this in-process; a networked broker (Redis) does it through
//! its pub/sub connection, so several nodes can share channels.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;

mod continuity;
mod memory;
mod redis;
mod sentinel;

pub use self::redis::{RedisBroker, RedisOptions};
pub use self::sentinel::SentinelOptions;
pub use memory::{MemoryBroker, MemoryLimits};

/// A channel's stream position: the epoch and the offset of its latest publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Opaque; changes whenever the channel's history is lost.
    pub epoch: Arc<str>,
    /// Offset of the latest publication (0 before the first one in this epoch).
    pub offset: u64,
}

/// One publication as stored in history and delivered to nodes.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Its offset in the channel's stream.
    pub offset: u64,
    /// The published JSON value, verbatim.
    pub data: Arc<RawValue>,
    /// The publisher's user or client id; `None` for server-side publications.
    pub from: Option<Arc<str>>,
    /// The publication's key, if it has one: what it is the latest value of (a ticker
    /// symbol, a sensor id). Under the `conflate` slow-consumer policy a subscriber's queue
    /// keeps only the newest publication per key (see `docs/protocol.md`).
    pub key: Option<Arc<str>>,
}

/// One subscribed connection as shown by `presence`, `join` and `leave`.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceEntry {
    /// Connection id.
    pub client: Arc<str>,
    /// Authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// Public profile (a JSON object) or `null`.
    pub info: Option<Arc<RawValue>>,
}

/// Something a broker hands to a node for one of the channels it is interested in.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Delivery {
    /// A new publication.
    Publication {
        /// The channel.
        channel: Arc<str>,
        /// The publication.
        publication: Publication,
    },
    /// A connection subscribed to a presence-enabled channel with join/leave events.
    Join {
        /// The channel.
        channel: Arc<str>,
        /// Who joined.
        entry: PresenceEntry,
    },
    /// A connection left such a channel.
    Leave {
        /// The channel.
        channel: Arc<str>,
        /// Who left.
        entry: PresenceEntry,
    },
    /// The broker cannot continue the channel's stream gap-free for this node: its epoch
    /// changed (the broker lost its data) or publications were missed and are no longer in
    /// history. The node's subscribers must resubscribe (with `since`) to learn the new
    /// position.
    Reset {
        /// The channel.
        channel: Arc<str>,
    },
}

/// Receives deliveries from a broker. Called from the broker's context: it must not block.
pub trait DeliverySink: Send + Sync + 'static {
    /// Handles one delivery. Deliveries of one channel arrive in offset order.
    fn deliver(&self, delivery: Delivery);
}

/// Per-namespace retention passed along with each call, so the broker needs no namespace
/// configuration of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
}

/// A `history` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// Only publications after this offset; `None` for the latest ones.
    pub since: Option<u64>,
    /// At most this many, the most recent ones (with `since`: the oldest ones after it).
    pub limit: Option<usize>,
}

/// A `history` answer, taken atomically with the position.
#[derive(Debug, Clone)]
pub struct History {
    /// The channel's position when the history was read.
    pub position: StreamPosition,
    /// Publications, oldest first.
    pub publications: Vec<Publication>,
    /// With `since`: whether every publication after `since` up to `position` is included.
    pub complete: bool,
}

/// What [`Broker::claim_idempotency`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// This call is the first with the key: publish, then [`Broker::settle_idempotency`].
    First,
    /// An earlier publish with the key is still running (on some node).
    Pending,
    /// An earlier publish with the key got this position.
    Done(StreamPosition),
}

/// A broker failure. Callers turn it into an `unavailable` error or HTTP 503.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot be reached or refused the operation.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The node's memory budget (channels or retained history bytes) is used up and nothing
    /// can be evicted. Callers answer `over_capacity` or HTTP 507.
    #[error("over capacity: {0}")]
    OverCapacity(String),
}

/// The operations a hub needs from its broker. All methods are cancel-safe only in the
/// sense that a dropped call either happened or did not; callers do not drop them.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Appends a publication to `channel`: assigns the next offset, stores it in history
    /// (trimmed to `retention`) and delivers it to every interested node, this one included.
    /// `key` is stored and delivered with it (see [`Publication::key`]).
    async fn publish(
        &self,
        channel: &str,
        data: Arc<RawValue>,
        from: Option<Arc<str>>,
        key: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError>;

    /// This node has its first local subscriber on `channel`: start delivering it here.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// This node's last local subscriber on `channel` left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Reads history and the current position in one atomic step.
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        retention: Retention,
    ) -> Result<History, BrokerError>;

    /// Adds (or refreshes) a presence entry; with `announce`, delivers a [`Delivery::Join`].
    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError>;

    /// Removes a presence entry; with `announce`, delivers a [`Delivery::Leave`] if it existed.
    async fn presence_remove(
        &self,
        channel: &str,
        client: &str,
        announce: bool,
    ) -> Result<(), BrokerError>;

    /// The channel's presence entries.
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError>;

    /// Whether this node holds state for `channel` (a publish or subscribe on it creates
    /// nothing); `None` when the broker cannot tell without a round trip (the hub then asks
    /// whether the channel has local subscribers).
    fn holds(&self, _channel: &str) -> Option<bool> {
        None
    }

    /// The channels with subscribers on any node, when the broker knows them (a shared
    /// broker); `Ok(None)` when only the node itself knows (the memory broker: then the
    /// node's own channels are the answer). Names are as given to [`Broker::subscribe`].
    async fn channels(&self) -> Result<Option<Vec<String>>, BrokerError> {
        Ok(None)
    }

    /// Claims the publish idempotency key `key` of `channel` for `window`, for every node;
    /// `Ok(None)` when the broker keeps no such keys (the memory broker: the node's own store
    /// answers).
    async fn claim_idempotency(
        &self,
        _channel: &str,
        _key: &str,
        _window: Duration,
    ) -> Result<Option<Claim>, BrokerError> {
        Ok(None)
    }

    /// Records the position of the publish that claimed `key` (`None`: it failed, and the
    /// key is released for a retry).
    async fn settle_idempotency(
        &self,
        _channel: &str,
        _key: &str,
        _position: Option<&StreamPosition>,
        _window: Duration,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Counts one more WebSocket of `user` under this node incarnation's `field` and
    /// returns every incarnation's count of the user (field, count), for the cluster-wide
    /// `limits.max_connections_per_user`; `Ok(None)` when the broker is not shared (the
    /// memory broker: the node-local count is the whole count).
    async fn user_connection_opened(
        &self,
        _user: &str,
        _field: &str,
    ) -> Result<Option<Vec<(String, i64)>>, BrokerError> {
        Ok(None)
    }

    /// Takes back one WebSocket of `user` counted by [`Broker::user_connection_opened`].
    async fn user_connection_closed(&self, _user: &str, _field: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Whether the broker can serve requests now; `Err` says why not (shown by `/healthz`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
