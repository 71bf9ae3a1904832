//! The hub: configuration, broker, node-local fan-out, metrics and limits, shared by every
//! connection and HTTP handler of one server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::api::idempotency::IdempotencyStore;
use crate::api::registry::Registry;
use crate::auth::{Authenticator, Identity};
use crate::broker::{
    Broker, BrokerError, MemoryBroker, MemoryLimits, RedisBroker, RedisOptions, Retention,
    SentinelOptions, StreamPosition,
};
use crate::channel;
use crate::config::{BrokerKind, Config, ConfigError, NamespaceConfig};
use crate::hooks::Hooks;
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::node::{Node, NodeSink};
use crate::presence_batch::PresenceBatcher;
use crate::protocol::{CommandError, ErrorCode};

/// A hub: everything one `duplex serve` node shares between its connections. Cheap to clone.
///
/// Create it inside a tokio runtime (the memory broker spawns a maintenance task), serve it
/// with [`crate::Server`] or mount [`Hub::router`] in your own axum application.
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    namespaces: HashMap<String, NamespaceConfig>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) node: Arc<Node>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Authenticator,
    pub(crate) limits: Arc<ConnectionLimits>,
    /// The application's backend hooks.
    pub(crate) hooks: Hooks,
    pub(crate) node_id: String,
    /// This process among the nodes: the node id and a random nonce, so that a node
    /// restarted with the same id does not count its predecessor's connections (the field of
    /// the cluster-wide per-user connection counts, sent in heartbeats).
    pub(crate) incarnation: Arc<str>,
    /// Publish `idempotency_key`s seen within `api.idempotency_window`.
    pub(crate) idempotency: IdempotencyStore,
    /// Local connections by client id and by user.
    pub(crate) registry: Registry,
    /// The other nodes, from their heartbeats on the control channel.
    pub(crate) nodes: crate::api::cluster::Nodes,
    next_client: AtomicU64,
    /// The clock of every connection's rate limiters. Made once: building one reads the
    /// CPU's features (CPUID, which traps to the hypervisor in a VM) and was a third of
    /// the server's CPU time per handshake when each connection built its own.
    pub(crate) clock: governor::clock::DefaultClock,
    /// The settings of every WebSocket of this hub, derived from `config` once and shared.
    pub(crate) websocket: Arc<duplex::Config>,
    shutdown: watch::Sender<bool>,
    started: Instant,
}

/// One channel in `GET /api/channels`.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// Channel name.
    pub channel: String,
    /// Local subscribers.
    pub subscribers: usize,
}

/// The figures of `GET /api/stats` (see `docs/protocol.md`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Node id.
    pub node: String,
    /// Server version.
    pub version: &'static str,
    /// Seconds since the hub was created.
    pub uptime_seconds: u64,
    /// Open WebSocket connections.
    pub connections: i64,
    /// Active subscriptions.
    pub subscriptions: i64,
    /// Channels with local subscribers.
    pub channels: i64,
    /// WebSocket messages received.
    pub messages_in: u64,
    /// WebSocket messages sent.
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Publications accepted.
    pub publications: u64,
    /// Connections closed with 1013.
    pub slow_consumer_disconnects: u64,
    /// Frames dropped under `drop_oldest`.
    pub slow_consumer_drops: u64,
    /// Publications superseded under `conflate`.
    pub conflated: u64,
    /// Bytes waiting in the outbound queues of all connections.
    pub queued_bytes: i64,
    /// Refused upgrades.
    pub handshake_failures: u64,
}

impl Hub {
    /// Builds a hub from a validated configuration.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        // Validates, and reads the secrets kept in files (`auth.jwt_secret_file`, ...).
        let config = config.with_secret_files()?;
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node::new(metrics.clone()));
        let sink = Arc::new(NodeSink {
            node: node.clone(),
            max_held: config.limits.max_queue_bytes,
            presence: PresenceBatcher::new(&config, metrics.clone()),
        });
        let broker: Arc<dyn Broker> = match config.broker {
            BrokerKind::Memory => {
                MemoryBroker::with_limits(sink, memory_limits(&config), metrics.clone())
            }
            BrokerKind::Redis => {
                let mut options =
                    RedisOptions::new(config.redis_url.as_deref().unwrap_or_default())
                        .prefix(config.redis.prefix.clone())
                        .presence_ttl(config.redis.presence_ttl)
                        .timeout(config.redis.timeout);
                if let Some(master) = &config.redis.sentinel_master {
                    options = options.sentinel(SentinelOptions::new(
                        config
                            .redis
                            .sentinels
                            .iter()
                            .map(|s| s.expose().to_owned())
                            .collect(),
                        master.clone(),
                    ));
                }
                RedisBroker::new(&options, sink).map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            BrokerKind::RedisCluster => {
                let options = RedisOptions::cluster(config.redis_cluster_nodes())
                    .prefix(config.redis.prefix.clone())
                    .presence_ttl(config.redis.presence_ttl)
                    .timeout(config.redis.timeout);
                RedisBroker::new(&options, sink).map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
        };
        Self::with_broker(config, broker, node, metrics)
    }

    fn with_broker(
        config: Config,
        broker: Arc<dyn Broker>,
        node: Arc<Node>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let auth = Authenticator::with_metrics(&config.auth, metrics.clone())?;
        let node_id = config
            .node
            .clone()
            .unwrap_or_else(|| format!("{:06x}", rand::random::<u32>() & 0xff_ffff));
        let hooks = Hooks::new(&config, &node_id, metrics.clone())?;
        if let Some(events) = hooks.events() {
            node.set_events(events.clone());
        }
        let namespaces = config.namespace_configs().into_iter().collect();
        let limits = Arc::new(
            ConnectionLimits::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
                config.limits.ipv6_prefix,
            )
            .with_max_per_user(config.limits.max_connections_per_user),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                namespaces,
                broker,
                node,
                metrics,
                auth,
                limits,
                hooks,
                incarnation: format!("{node_id}/{:016x}", rand::random::<u64>()).into(),
                node_id,
                registry: Registry::default(),
                nodes: crate::api::cluster::Nodes::default(),
                idempotency: IdempotencyStore::new(
                    config.api.idempotency_window,
                    config.api.max_idempotency_keys,
                ),
                next_client: AtomicU64::new(1),
                clock: governor::clock::DefaultClock::default(),
                websocket: Arc::new(crate::ws::connection_config(&config)),
                shutdown: watch::channel(false).0,
                started: Instant::now(),
                config,
            }),
        })
    }

    /// The configuration this hub runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Publishes `data` to `channel` as the server (`"from": null`), regardless of the
    /// namespace's `client_publish`. Used by `POST /api/publish` and the demo feed.
    pub async fn publish(
        &self,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<StreamPosition, CommandError> {
        self.publish_with_key(channel, data, None).await
    }

    /// As [`Hub::publish`], with the publication's `key` (stored with it, sent in `message`
    /// frames and history, and what `conflate` namespaces keep the newest of). A key longer
    /// than `limits.max_key_size` is refused with `too_large`, an empty one with
    /// `bad_request`.
    pub async fn publish_with_key(
        &self,
        channel: &str,
        data: Box<RawValue>,
        key: Option<&str>,
    ) -> Result<StreamPosition, CommandError> {
        let ns = self.shared.resolve(channel)?;
        self.shared
            .publish(channel, &ns, Arc::from(data), None, key)
            .await
    }

    /// Channels with local subscribers, sorted by name.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.shared
            .node
            .channel_counts()
            .into_iter()
            .map(|(name, n)| ChannelInfo {
                channel: name.to_string(),
                subscribers: n,
            })
            .collect()
    }

    /// Current figures for `/api/stats`.
    pub fn stats(&self) -> Stats {
        let m = &self.shared.metrics;
        Stats {
            node: self.shared.node_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            connections: m.connections.get(),
            subscriptions: m.subscriptions.get(),
            channels: m.channels.get(),
            messages_in: m.messages_received.get(),
            messages_out: m.messages_sent.get(),
            bytes_in: m.bytes_received.get(),
            bytes_out: m.bytes_sent.get(),
            publications: m.publications.get(),
            slow_consumer_disconnects: m.slow_consumer_disconnects(),
            slow_consumer_drops: m.slow_consumer_drops(),
            conflated: m.conflated_total(),
            queued_bytes: m.queued_bytes.get(),
            handshake_failures: m.handshake_failures_total(),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Starts a graceful shutdown: new upgrades are refused with 503 and every open
    /// connection is closed with 1001. See [`Hub::drain`] to wait for them.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Whether the broker can serve requests now; `Err` says why not.
    pub fn broker_health(&self) -> Result<(), String> {
        self.shared.broker.health()?;
        if self.shared.node.control_pending() {
            return Err("not yet receiving the other nodes' server API commands".into());
        }
        Ok(())
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.shared.limits.open()
    }

    /// Waits until every connection has ended, or `deadline` has passed; returns how many
    /// were still open.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        loop {
            let open = self.connections();
            if open == 0 || Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Shared {
    /// A new client id, unique on this node and across nodes (the node id is a prefix).
    pub(crate) fn new_client_id(&self) -> Arc<str> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.node_id).into()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Validates a channel name and returns its namespace's options.
    pub(crate) fn resolve(&self, channel: &str) -> Result<NamespaceConfig, CommandError> {
        let ns = channel::validate(channel)
            .map_err(|e| CommandError::new(ErrorCode::BadChannel, e.to_string()))?;
        self.namespaces.get(ns).cloned().ok_or_else(|| {
            CommandError::new(
                ErrorCode::UnknownNamespace,
                format!("namespace {ns:?} is not configured"),
            )
        })
    }

    /// The publish path shared by clients, the HTTP API and the demo feed.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        data: Arc<RawValue>,
        from: Option<Arc<str>>,
        key: Option<&str>,
    ) -> Result<StreamPosition, CommandError> {
        let key = self.check_key(key)?;
        let max_depth = self.config.limits.max_json_depth;
        if crate::protocol::json_too_deep(data.get(), max_depth) {
            self.metrics.limit_hit("json_depth");
            return Err(crate::protocol::too_deep("data", max_depth));
        }
        let max = self.config.limits.max_publication_size;
        if data.get().len() > max {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("data is {} bytes; the limit is {max}", data.get().len()),
            ));
        }
        let max_entry = self.config.memory.max_history_entry;
        if ns.history_size > 0 && data.get().len() > max_entry {
            self.metrics.limit_hit("history_entry");
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!(
                    "data is {} bytes; history entries are limited to {max_entry}",
                    data.get().len()
                ),
            ));
        }
        let pos = self
            .broker
            .publish(channel, data, from, key, retention(ns))
            .await
            .map_err(|e| self.broker_error(e))?;
        self.metrics.publications.inc();
        Ok(pos)
    }
}

impl Shared {
    /// Checks a publication key against `limits.max_key_size` (a key is carried by every
    /// queued and retained copy of its publication).
    fn check_key(&self, key: Option<&str>) -> Result<Option<Arc<str>>, CommandError> {
        let Some(key) = key else { return Ok(None) };
        let max = self.config.limits.max_key_size;
        if key.is_empty() {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                "\"key\" must not be empty (leave it out for no key)",
            ));
        }
        if key.len() > max {
            self.metrics.limit_hit("publication_key");
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("\"key\" is {} bytes; the limit is {max}", key.len()),
            ));
        }
        Ok(Some(key.into()))
    }

    /// Checks the channel-creation rules before a client's `subscribe` (`subscribing`) or
    /// `publish` on `channel`. Creating means using a name this node does not hold: the
    /// memory broker's channels, or with a networked broker the channels with local
    /// subscribers. Anonymous clients need `anonymous_create`; a subscription that adds a
    /// local channel needs room under `memory.max_channels` (local channels cannot be
    /// evicted, so with the Redis broker this is the node's channel cap; the memory broker
    /// also enforces the cap itself, evicting idle channels first).
    pub(crate) fn check_create(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        identity: &Identity,
        subscribing: bool,
    ) -> Result<(), CommandError> {
        let local = self.node.holds(channel);
        let held = self.broker.holds(channel).unwrap_or(local);
        if !held && identity.user.is_none() && !ns.anonymous_create {
            self.metrics.limit_hit("anonymous_create");
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("anonymous clients may not create channel {channel:?}"),
            ));
        }
        let max = self.config.memory.max_channels;
        let count = usize::try_from(self.metrics.channels.get()).unwrap_or(0);
        if subscribing && !local && count >= max {
            self.metrics.limit_hit("channels");
            return Err(CommandError::new(
                ErrorCode::OverCapacity,
                format!("this node holds its limit of {max} channels with subscribers"),
            ));
        }
        Ok(())
    }

    /// Up to `limit` publications of `channel` after `since` (the most recent ones without
    /// it), with whether they are complete: `None` without `since`, `Some(false)` when
    /// `since` names another epoch, whose offsets mean nothing here (the latest ones are
    /// read instead). Shared by the `history` command and the server API.
    pub(crate) async fn history_since(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        since: Option<&crate::protocol::Since>,
        limit: usize,
    ) -> Result<(crate::broker::History, Option<bool>), BrokerError> {
        let query = crate::broker::HistoryQuery {
            since: since.map(|s| s.offset),
            limit: Some(limit),
        };
        let h = self.broker.history(channel, query, retention(ns)).await?;
        match since {
            None => Ok((h, None)),
            Some(s) if *s.epoch == *h.position.epoch => {
                let complete = h.complete;
                Ok((h, Some(complete)))
            }
            Some(_) => {
                let latest = crate::broker::HistoryQuery {
                    since: None,
                    limit: Some(limit),
                };
                let h = self.broker.history(channel, latest, retention(ns)).await?;
                Ok((h, Some(false)))
            }
        }
    }

    /// The error reply for a broker failure.
    pub(crate) fn broker_error(&self, e: BrokerError) -> CommandError {
        match e {
            BrokerError::OverCapacity(why) => CommandError::new(ErrorCode::OverCapacity, why),
            e => CommandError::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}

/// The memory broker's caps from the configuration.
fn memory_limits(config: &Config) -> MemoryLimits {
    let mut limits = MemoryLimits::new(config.memory.max_channels, config.memory.max_history_bytes);
    limits.namespace_history_bytes = config
        .namespace_configs()
        .into_iter()
        .filter(|(_, ns)| ns.max_history_bytes > 0)
        .map(|(name, ns)| (name, ns.max_history_bytes))
        .collect();
    limits
}

pub(crate) fn retention(ns: &NamespaceConfig) -> Retention {
    Retention {
        size: ns.history_size,
        ttl: ns.history_ttl,
    }
}
