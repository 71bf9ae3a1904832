//! The Redis broker: several `duplex serve` nodes share channels, history and presence.
//!
//! # Keys
//!
//! With prefix `P` (`redis.prefix`), channel `C` uses these keys, all hash-tagged with `{C}`
//! so that on Redis Cluster every key of one channel lives in one slot (the scripts touch
//! several keys of one channel at once):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:{C}:stream` | hash | `e` epoch, `o` last offset, `t` time of the last publication |
//! | `P:{C}:history` | list | the retained publications, oldest first, each with its expiry |
//! | `P:{C}:presence` | hash | client id → presence entry |
//! | `P:{C}:presence_exp` | sorted set | client id scored by the entry's expiry time |
//!
//! and publications, joins and leaves travel on the pub/sub channel `P:{C}`.
//!
//! For the cluster-wide `limits.max_connections_per_user`, user `U` has the hash
//! `P:{user:X}:conns`, where `X` is `U`'s UTF-8 bytes in lowercase hex (so no character of a
//! user id can end the hash tag or clash with another key): node incarnation (node id and a
//! per-process nonce) → its open WebSockets of `U`. It expires [`USER_CONNS_TTL`] after the
//! user's last connection was opened.
//!
//! # Redis Cluster
//!
//! With [`RedisOptions::cluster`] the broker talks to a Redis Cluster: the same scripts run
//! on the shard that owns the channel's slot (every key and the topic share the `{C}` hash
//! tag) and publish with `SPUBLISH`; the node `SSUBSCRIBE`s to each wanted topic on its
//! shard. When a shard connection is lost or the server drops a subscription (a slot moved,
//! a failover), the affected channels are marked stale and resubscribed until the owning
//! shard confirms, then caught up through history as after a reconnect of the single
//! connection.
//!
//! # Delivery order
//!
//! Each node has one pub/sub connection, subscribed to the channels the node has local
//! subscribers on. Offsets are assigned and published inside one script, and Redis runs
//! scripts one at a time, so one connection sees each channel's publications in offset order.
//! The node still checks: an offset at or below the last one delivered is dropped, and a gap
//! (messages lost while the connection was down) is filled from history before going on. When
//! the gap cannot be filled, or the channel's epoch changed (Redis lost its data), the node
//! sends [`Delivery::Reset`] so that the channel's local subscribers resubscribe with `since`
//! and learn the new position.
//!
//! A stream that goes backwards within one epoch (a promoted replica without the last
//! publications the old master acknowledged) is a regression: the node moves the channel to a
//! new epoch (`rebase.lua`) and resets its subscribers. See [`super::continuity`].
//!
//! With Sentinel ([`RedisOptions::sentinel`]), [`super::sentinel`] finds the current master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManagerConfig, PubSubSink};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, ProtocolVersion, PushInfo, PushKind, Script};
use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::continuity::{judge_catch_up, judge_live, CatchUp, Live, Seen};
use super::sentinel::{Master, SentinelOptions};
use super::{
    Broker, BrokerError, Claim, Delivery, DeliverySink, History, HistoryQuery, PresenceEntry,
    Publication, Retention, StreamPosition,
};
use crate::config::{redact_password_in, redact_url};

/// How long a channel's stream hash (epoch and offset) outlives its last use. A channel idle
/// for longer starts a new epoch, as a forgotten channel of the memory broker does.
const STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a user's connection counts outlive the last connection opened (refreshed on
/// every open): a crashed node's fields are ignored as soon as it stops heartbeating, and
/// the hash is gone a day later.
const USER_CONNS_TTL: Duration = Duration::from_secs(24 * 3600);

/// The key of `user`'s connection counts (see the module documentation).
fn user_conns_key(prefix: &str, user: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(prefix.len() + 13 + user.len() * 2);
    key.push_str(prefix);
    key.push_str(":{user:");
    for b in user.as_bytes() {
        let _ = write!(key, "{b:02x}");
    }
    key.push_str("}:conns");
    key
}

/// Longest wait between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often a Redis Cluster node retries the subscriptions of stale channels.
const RESYNC_PERIOD: Duration = Duration::from_millis(200);

/// How many stale channels a Redis Cluster node resubscribes and catches up at once.
const RESYNC_CONCURRENCY: usize = 16;

/// The Lua scripts, loaded once per Redis server by `EVALSHA` (the client falls back to
/// `EVAL` when the server does not know a script, e.g. after a restart).
#[derive(Debug)]
struct Scripts {
    publish: Script,
    history: Script,
    presence_add: Script,
    presence_remove: Script,
    presence: Script,
    rebase: Script,
    user_open: Script,
    user_close: Script,
}

impl Scripts {
    /// The scripts; `sharded` makes them publish with `SPUBLISH` (Redis Cluster), which
    /// reaches the subscribers of the shard that owns the topic's slot, the one the script
    /// runs on since the topic shares the channel's hash tag with the keys.
    fn new(sharded: bool) -> Self {
        let script = |source: &str| {
            if sharded {
                Script::new(&sharded_source(source))
            } else {
                Script::new(source)
            }
        };
        let [publish, history, presence_add, presence_remove, presence] = SCRIPT_SOURCES;
        Self {
            publish: script(publish),
            history: script(history),
            presence_add: script(presence_add),
            presence_remove: script(presence_remove),
            presence: script(presence),
            // Moves a channel to a new epoch; publishes nothing.
            rebase: Script::new(include_str!("redis/rebase.lua")),
            // The per-user connection counts; publish nothing.
            user_open: Script::new(include_str!("redis/user_open.lua")),
            user_close: Script::new(include_str!("redis/user_close.lua")),
        }
    }
}

/// The sources of [`Scripts`], in field order.
const SCRIPT_SOURCES: [&str; 5] = [
    include_str!("redis/publish.lua"),
    include_str!("redis/history.lua"),
    include_str!("redis/presence_add.lua"),
    include_str!("redis/presence_remove.lua"),
    include_str!("redis/presence.lua"),
];

/// A script source with every `PUBLISH` call made a `SPUBLISH` call.
fn sharded_source(source: &str) -> String {
    source.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
}

/// Settings of a [`RedisBroker`]. Its `Debug` form shows the URL without its password.
///
/// ```
/// use std::time::Duration;
/// use duplex_hub::broker::RedisOptions;
///
/// let options = RedisOptions::new("redis://127.0.0.1:6379/0").prefix("chat");
/// assert_eq!(options.timeout, Duration::from_secs(2));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`. Unused when [`cluster`](Self::cluster) is set.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://[user:password@]host:port` each); empty for a
    /// single Redis at [`url`](Self::url).
    pub cluster: Vec<String>,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// Expiry of presence entries; their node refreshes them every third of it.
    pub presence_ttl: Duration,
    /// Timeout of each command and connection attempt.
    pub timeout: Duration,
    /// Find the master through these Sentinels instead of connecting to `url`'s host; `url`
    /// (may be empty) then only gives the master's database, user and password.
    pub sentinel: Option<SentinelOptions>,
}

impl RedisOptions {
    /// Options for the Redis at `url`, with the defaults of `[redis]`: prefix `duplex`,
    /// presence expiry 30 s, timeout 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        let defaults = crate::config::RedisConfig::default();
        Self {
            url: url.into(),
            cluster: Vec::new(),
            prefix: defaults.prefix,
            presence_ttl: defaults.presence_ttl,
            timeout: defaults.timeout,
            sentinel: None,
        }
    }

    /// Options for the Redis Cluster reached through the seed nodes `nodes` (any of its
    /// masters or replicas; the rest is discovered), with the defaults of `[redis]`.
    ///
    /// ```
    /// use duplex_hub::broker::RedisOptions;
    ///
    /// let options = RedisOptions::cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
    /// assert_eq!(options.cluster.len(), 2);
    /// ```
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let mut options = Self::new(String::new());
        options.cluster = nodes.into_iter().map(Into::into).collect();
        options
    }

    /// Set [`prefix`](Self::prefix).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Set [`presence_ttl`](Self::presence_ttl).
    #[must_use]
    pub const fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }

    /// Set [`timeout`](Self::timeout).
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set [`sentinel`](Self::sentinel).
    #[must_use]
    pub fn sentinel(mut self, sentinel: SentinelOptions) -> Self {
        self.sentinel = Some(sentinel);
        self
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .field("timeout", &self.timeout)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

/// Channels, offsets, history and presence in Redis, shared by every node that uses the same
/// Redis and prefix. See the module documentation for the key layout.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.prefix)
            .field("channels", &self.inner.channels.lock().len())
            .finish_non_exhaustive()
    }
}

/// Where commands and subscriptions go: one Redis, or a Redis Cluster.
enum Link {
    /// One Redis: fixed, or the master the Sentinels name.
    Single { master: Arc<Master> },
    Cluster {
        client: Box<ClusterClient>,
        /// The cluster connection, once the first connection to the cluster succeeded (it
        /// reconnects to nodes and follows slot moves by itself from then on).
        conn: Mutex<Option<ClusterConnection>>,
    },
}

struct Inner {
    link: Link,
    prefix: String,
    presence_ttl: Duration,
    timeout: Duration,
    sink: Arc<dyn DeliverySink>,
    scripts: Scripts,
    /// Channels this node is subscribed to, with their delivery state.
    channels: Mutex<HashMap<Arc<str>, ChannelState>>,
    /// Presence entries this node owns, by channel and client id (entry JSON as stored).
    owned: Mutex<HashMap<Arc<str>, OwnedEntries>>,
    /// The pub/sub connection's command half, while connected.
    pubsub: Mutex<Option<PubSubSink>>,
    pubsub_up: AtomicBool,
    commands_ok: AtomicBool,
    /// Set after the pub/sub connection was re-established: Redis may have lost everything,
    /// so the next presence refresh re-adds this node's entries.
    readd: AtomicBool,
}

/// One channel's presence entries owned by this node: client id → entry JSON.
type OwnedEntries = HashMap<Arc<str>, String>;

#[derive(Debug, Default)]
struct ChannelState {
    /// Epoch and offset of the last publication delivered; `None` until the subscription is
    /// confirmed and the position read.
    last: Option<(Arc<str>, u64)>,
    /// Messages that arrived before `last` was known.
    pending: Vec<Incoming>,
    /// Redis Cluster: the subscription may have lapsed (a shard connection was lost, or the
    /// server dropped it after a slot move or failover) and is being renewed.
    stale: bool,
    /// Highest offset received in `last`'s epoch on the current pub/sub connection.
    live: u64,
    /// The last publication delivered, to recognise it in history after a failover.
    delivered: Option<Publication>,
    /// An epoch given up after it regressed.
    retired: Option<Arc<str>>,
}

/// A message from the pub/sub connection.
#[derive(Debug, Clone)]
enum Incoming {
    Publication {
        epoch: Arc<str>,
        publication: Publication,
    },
    Join(PresenceEntry),
    Leave(PresenceEntry),
}

/// Which history entries a read returns with the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    /// The position only.
    None,
    /// The newest entry only (a `subscribe` with `latest_on_subscribe`).
    Last,
    /// Every retained entry.
    All,
}

/// What [`Inner::accept`] needs done next.
enum Next {
    Done,
    /// Publications after this offset are missing.
    Gap(u64),
    /// The stream went backwards in this epoch.
    Regressed(Arc<str>),
}

/// The pub/sub message and history entry format (`k` only on pub/sub).
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default)]
    k: Option<&'a str>,
    #[serde(default)]
    e: Option<&'a str>,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    x: Option<u64>,
    #[serde(default)]
    f: Option<Arc<str>>,
    /// The publication's key.
    #[serde(default)]
    y: Option<Arc<str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    d: Option<&'a RawValue>,
    #[serde(borrow, default)]
    p: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

/// A presence entry as stored: `a` tells whether its channel announces leaves.
#[derive(serde::Serialize, Deserialize)]
struct WireEntry {
    a: bool,
    client: Arc<str>,
    user: Option<Arc<str>>,
    info: Option<Box<RawValue>>,
}

impl WireEntry {
    fn into_entry(self) -> PresenceEntry {
        PresenceEntry {
            client: self.client,
            user: self.user,
            info: self.info.map(Arc::from),
        }
    }
}

fn entry_json(entry: &PresenceEntry, announce: bool) -> Result<String, BrokerError> {
    #[derive(serde::Serialize)]
    struct Borrowed<'a> {
        a: bool,
        #[serde(flatten)]
        entry: &'a PresenceEntry,
    }
    serde_json::to_string(&Borrowed { a: announce, entry })
        .map_err(|e| BrokerError::Unavailable(format!("cannot encode a presence entry: {e}")))
}

fn parse_entry(json: &str) -> Option<PresenceEntry> {
    serde_json::from_str::<WireEntry>(json)
        .ok()
        .map(WireEntry::into_entry)
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

/// The publications after `since` in `entries` (history entries as stored), unexpired at
/// `now`, oldest first.
fn parse_history(entries: &[String], now: u64) -> Vec<Publication> {
    entries
        .iter()
        .filter_map(|json| {
            let w: WireMessage<'_> = serde_json::from_str(json).ok()?;
            if w.x.is_some_and(|x| x <= now) {
                return None;
            }
            Some(Publication {
                offset: w.o?,
                data: Arc::from(w.d?.to_owned()),
                from: w.f,
                key: w.y,
            })
        })
        .collect()
}

impl RedisBroker {
    /// A broker on the Redis at `options.url` that delivers to `sink`. Connects lazily: the
    /// node starts even while Redis is down (and reports itself degraded until it is up).
    /// Spawns its pub/sub and maintenance tasks on the current tokio runtime; they end when
    /// the broker is dropped.
    pub fn new(
        options: &RedisOptions,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<Arc<Self>, BrokerError> {
        let (link, pushes) = if options.cluster.is_empty() {
            (Self::single(options)?, None)
        } else {
            let (link, pushes) = Self::cluster_link(options)?;
            (link, Some(pushes))
        };
        let sharded = pushes.is_some();
        let inner = Arc::new(Inner {
            link,
            prefix: options.prefix.clone(),
            presence_ttl: options.presence_ttl,
            timeout: options.timeout,
            sink,
            scripts: Scripts::new(sharded),
            channels: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashMap::new()),
            pubsub: Mutex::new(None),
            pubsub_up: AtomicBool::new(false),
            commands_ok: AtomicBool::new(true),
            readd: AtomicBool::new(false),
        });
        match pushes {
            None => {
                tokio::spawn(pubsub_loop(Arc::downgrade(&inner)));
            }
            Some(pushes) => {
                tokio::spawn(cluster_loop(Arc::downgrade(&inner), pushes));
                tokio::spawn(resync_loop(Arc::downgrade(&inner)));
            }
        }
        tokio::spawn(maintenance(Arc::downgrade(&inner)));
        Ok(Arc::new(Self { inner }))
    }

    fn single(options: &RedisOptions) -> Result<Link, BrokerError> {
        // Errors built from the URL never show its password.
        let redact = |e: &dyn std::fmt::Display| redact_password_in(&e.to_string(), &options.url);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let master = match &options.sentinel {
            Some(sentinel) => {
                let url = Some(options.url.as_str()).filter(|u| !u.is_empty());
                Master::sentinel(sentinel, url, config, options.timeout)?
            }
            None => {
                let client = Client::open(options.url.as_str()).map_err(|e| {
                    BrokerError::Unavailable(format!(
                        "invalid redis_url {}: {}",
                        redact_url(&options.url),
                        redact(&e)
                    ))
                })?;
                Master::fixed(client, config, options.timeout)
                    .map_err(|e| BrokerError::Unavailable(redact(&e)))?
            }
        };
        Ok(Link::Single {
            master: Arc::new(master),
        })
    }

    /// A cluster client speaking RESP3, whose subscription messages and disconnection
    /// notices arrive on the returned receiver.
    fn cluster_link(
        options: &RedisOptions,
    ) -> Result<(Link, tokio::sync::mpsc::UnboundedReceiver<PushInfo>), BrokerError> {
        let redact = |e: &dyn std::fmt::Display| {
            options
                .cluster
                .iter()
                .fold(e.to_string(), |m, url| redact_password_in(&m, url))
        };
        let shown = || {
            options
                .cluster
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = ClusterClientBuilder::new(options.cluster.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .build()
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "invalid redis_cluster {}: {}",
                    shown(),
                    redact(&e)
                ))
            })?;
        let link = Link::Cluster {
            client: Box::new(client),
            conn: Mutex::new(None),
        };
        Ok((link, rx))
    }
}

impl Inner {
    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.prefix)
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}", self.prefix)
    }

    /// The channel of a pub/sub topic.
    fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }

    /// Runs a script with the command timeout; records whether Redis answered.
    async fn run<T: ::redis::FromRedisValue>(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let result = match &self.link {
            Link::Single { master } => {
                let mut conn = master.commands()?;
                tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await
            }
            Link::Cluster { conn, .. } => {
                let Some(mut conn) = conn.lock().clone() else {
                    self.commands_ok.store(false, Ordering::Relaxed);
                    return Err(unavailable("not connected to the cluster"));
                };
                tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await
            }
        };
        self.answered(result, "command")
    }

    /// Runs one command with the command timeout on the single Redis or the cluster (routed
    /// by its key, or as redis-rs routes keyless commands); records whether Redis answered.
    async fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
        what: &str,
    ) -> Result<T, BrokerError> {
        let result = match &self.link {
            Link::Single { master } => {
                let mut conn = master.commands()?;
                tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await
            }
            Link::Cluster { .. } => {
                let Some(mut conn) = self.cluster_conn()? else {
                    self.commands_ok.store(false, Ordering::Relaxed);
                    return Err(unavailable("not connected to the cluster"));
                };
                tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await
            }
        };
        self.answered(result, what)
    }

    /// A command's outcome: records whether Redis answered, and after a `-READONLY` reply
    /// (the master was demoted) asks the Sentinels again.
    fn answered<T>(
        &self,
        result: Result<::redis::RedisResult<T>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, BrokerError> {
        match result {
            Ok(Ok(v)) => {
                self.commands_ok.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.commands_ok.store(false, Ordering::Relaxed);
                }
                if let Link::Single { master } = &self.link {
                    master.failed(&e);
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.commands_ok.store(false, Ordering::Relaxed);
                Err(unavailable(format!("{what} timed out")))
            }
        }
    }

    /// The position and, with `entries`, the retained publications of `channel`.
    async fn read(
        &self,
        channel: &str,
        entries: Entries,
    ) -> Result<(StreamPosition, Vec<Publication>), BrokerError> {
        let mut inv = self.scripts.history.prepare_invoke();
        inv.key(self.key(channel, "stream"))
            .key(self.key(channel, "history"))
            .arg(match entries {
                Entries::None => "0",
                Entries::All => "1",
                Entries::Last => "l",
            })
            .arg(new_epoch())
            .arg(millis(STREAM_TTL));
        let (epoch, offset, now, raw): (String, u64, u64, Vec<String>) = self.run(&inv).await?;
        let position = StreamPosition {
            epoch: epoch.into(),
            offset,
        };
        Ok((position, parse_history(&raw, now)))
    }

    fn deliver(&self, channel: &Arc<str>, incoming: Incoming) {
        let delivery = match incoming {
            Incoming::Publication { publication, .. } => Delivery::Publication {
                channel: channel.clone(),
                publication,
            },
            Incoming::Join(entry) => Delivery::Join {
                channel: channel.clone(),
                entry,
            },
            Incoming::Leave(entry) => Delivery::Leave {
                channel: channel.clone(),
                entry,
            },
        };
        self.sink.deliver(delivery);
    }

    /// Applies one message to a subscribed channel's state, delivering it if it is the next
    /// one. Called with the channels lock held, which serializes deliveries per channel.
    fn accept(&self, channel: &Arc<str>, state: &mut ChannelState, incoming: Incoming) -> Next {
        let Some((epoch, last)) = &mut state.last else {
            state.pending.push(incoming);
            return Next::Done;
        };
        let (msg_epoch, offset) = match &incoming {
            Incoming::Publication { epoch, publication } => (epoch.clone(), publication.offset),
            Incoming::Join(_) | Incoming::Leave(_) => {
                self.deliver(channel, incoming);
                return Next::Done;
            }
        };
        let seen = Seen {
            epoch,
            last: *last,
            live: state.live,
            retired: state.retired.as_deref(),
        };
        match judge_live(seen, &msg_epoch, offset) {
            Live::Stale => Next::Done,
            Live::Duplicate => {
                state.live = offset;
                Next::Done
            }
            Live::Gap(after) => Next::Gap(after),
            Live::Regressed => {
                tracing::warn!(%channel, %epoch, offset, last = *last, "live stream went backwards");
                Next::Regressed(epoch.clone())
            }
            Live::NewEpoch => {
                tracing::warn!(%channel, old = %epoch, new = %msg_epoch, "channel epoch changed");
                *epoch = msg_epoch;
                *last = offset;
                state.live = offset;
                state.delivered = None;
                self.sink.deliver(Delivery::Reset {
                    channel: channel.clone(),
                });
                Next::Done
            }
            Live::Deliver => {
                *last = offset;
                state.live = offset;
                if let Incoming::Publication { publication, .. } = &incoming {
                    state.delivered = Some(publication.clone());
                }
                self.deliver(channel, incoming);
                Next::Done
            }
        }
    }

    /// Handles one pub/sub message.
    async fn on_message(&self, topic: &str, payload: &[u8]) {
        let Some(channel) = self.channel_of(topic) else {
            return;
        };
        let Some(incoming) = parse_incoming(payload) else {
            tracing::warn!(channel, "unreadable message from redis");
            return;
        };
        let (name, next) = {
            let mut channels = self.channels.lock();
            let Some(name) = channels.get_key_value(channel).map(|(k, _)| k.clone()) else {
                return;
            };
            let Some(state) = channels.get_mut(channel) else {
                return;
            };
            match self.accept(&name, state, incoming.clone()) {
                Next::Done => return,
                next => (name, next),
            }
        };
        if let Next::Regressed(epoch) = next {
            self.rebase(&name, &epoch).await;
            return;
        }
        let _ = self.catch_up(&name).await;
        let regressed = {
            let mut channels = self.channels.lock();
            let Some(state) = channels.get_mut(channel) else {
                return;
            };
            match self.accept(&name, state, incoming.clone()) {
                Next::Done => None,
                Next::Regressed(epoch) => Some(epoch),
                Next::Gap(after) => {
                    // History could not be read: the missed publications cannot be delivered
                    // in order any more, so the subscribers start over.
                    tracing::warn!(%name, after, "gap not filled: resetting subscribers");
                    if let (Some(last), Incoming::Publication { epoch, publication }) =
                        (&mut state.last, incoming)
                    {
                        state.live = publication.offset;
                        *last = (epoch, publication.offset);
                    }
                    state.delivered = None;
                    self.sink.deliver(Delivery::Reset { channel: name });
                    return;
                }
            }
        };
        if let Some(epoch) = regressed {
            self.rebase(&name, &epoch).await;
        }
    }

    /// Delivers the publications of `channel` that this node missed (after its last delivered
    /// offset), from history; sends a reset when they are no longer there or the epoch
    /// changed, and moves the channel to a new epoch when the stream regressed. Returns
    /// `false` when history could not be read.
    async fn catch_up(&self, channel: &Arc<str>) -> bool {
        let Some(last) = self
            .channels
            .lock()
            .get(channel)
            .and_then(|s| s.last.clone())
        else {
            return true;
        };
        let (position, publications) = match self.read(channel, Entries::All).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "cannot read history to fill a gap");
                return false;
            }
        };
        let regressed = {
            let mut channels = self.channels.lock();
            let Some(state) = channels.get_mut(channel) else {
                return true;
            };
            let Some((epoch, offset)) = &mut state.last else {
                return true;
            };
            if *epoch != last.0 || *offset != last.1 {
                // Another round delivered meanwhile; its own checks apply.
                if *epoch != position.epoch || *offset >= position.offset {
                    return true;
                }
            }
            let verdict = if state.retired.as_deref() == Some(&*position.epoch) {
                // A regression whose new epoch could not be written yet.
                CatchUp::Regressed
            } else {
                judge_catch_up(
                    epoch,
                    *offset,
                    state.delivered.as_ref(),
                    &position.epoch,
                    position.offset,
                    &publications,
                )
            };
            match verdict {
                CatchUp::UpToDate => None,
                CatchUp::Regressed => Some(epoch.clone()),
                CatchUp::Lost => {
                    tracing::warn!(
                        %channel,
                        from = %epoch,
                        after = *offset,
                        to = %position.epoch,
                        offset = position.offset,
                        "missed publications are not in history any more: resetting subscribers"
                    );
                    *epoch = position.epoch.clone();
                    *offset = position.offset;
                    state.live = 0;
                    state.delivered = None;
                    self.sink.deliver(Delivery::Reset {
                        channel: channel.clone(),
                    });
                    None
                }
                CatchUp::Fill => {
                    let mut filled = 0;
                    for p in publications {
                        if p.offset == offset.saturating_add(1) && p.offset <= position.offset {
                            *offset = p.offset;
                            filled += 1;
                            state.delivered = Some(p.clone());
                            self.sink.deliver(Delivery::Publication {
                                channel: channel.clone(),
                                publication: p,
                            });
                        }
                    }
                    tracing::info!(%channel, filled, "delivered missed publications from history");
                    None
                }
            }
        };
        if let Some(epoch) = regressed {
            self.rebase(channel, &epoch).await;
        }
        true
    }

    /// Moves `channel` from the epoch `regressed` to a new one in Redis (unless another node
    /// did already) and resets its subscribers here: they resubscribe and learn the new epoch,
    /// instead of getting other publications under offsets they have seen.
    async fn rebase(&self, channel: &Arc<str>, regressed: &Arc<str>) {
        tracing::warn!(
            %channel,
            epoch = %regressed,
            "stream regressed (the master lost acknowledged publications): new epoch, \
             resetting subscribers"
        );
        let mut inv = self.scripts.rebase.prepare_invoke();
        inv.key(self.key(channel, "stream"))
            .key(self.key(channel, "history"))
            .arg(&**regressed)
            .arg(new_epoch())
            .arg(millis(STREAM_TTL));
        let moved: Result<(String, u64), BrokerError> = self.run(&inv).await;
        if let Some(state) = self.channels.lock().get_mut(channel) {
            state.retired = Some(regressed.clone());
            state.live = 0;
            state.delivered = None;
            match moved {
                Ok((epoch, offset)) => state.last = Some((epoch.into(), offset)),
                Err(e) => tracing::warn!(
                    %channel,
                    error = %e,
                    "cannot move the channel to a new epoch yet; retried at the next catch-up"
                ),
            }
        }
        self.sink.deliver(Delivery::Reset {
            channel: channel.clone(),
        });
    }

    /// The pub/sub sink while connected.
    fn pubsub_sink(&self) -> Result<PubSubSink, BrokerError> {
        self.pubsub
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected"))
    }

    /// The cluster connection, once connected.
    fn cluster_conn(&self) -> Result<Option<ClusterConnection>, BrokerError> {
        match &self.link {
            Link::Single { .. } => Ok(None),
            Link::Cluster { conn, .. } => conn
                .lock()
                .clone()
                .map(Some)
                .ok_or_else(|| unavailable("not connected to the cluster")),
        }
    }

    /// Subscribes to `channel`'s topic: `SUBSCRIBE` on the pub/sub connection, or `SSUBSCRIBE`
    /// on the shard that owns its slot.
    async fn listen(&self, channel: &str) -> Result<(), BrokerError> {
        let topic = self.topic(channel);
        let result = match self.cluster_conn()? {
            None => {
                let mut sink = self.pubsub_sink()?;
                tokio::time::timeout(self.timeout, sink.subscribe(topic)).await
            }
            Some(mut conn) => tokio::time::timeout(self.timeout, conn.ssubscribe(topic)).await,
        };
        result
            .map_err(|_| unavailable("subscribe timed out"))?
            .map_err(unavailable)
    }

    /// Ends the subscription of [`Inner::listen`]; nothing to do while disconnected (the
    /// reconnect subscribes only to the channels still wanted).
    async fn unlisten(&self, channel: &str) -> Result<(), BrokerError> {
        let topic = self.topic(channel);
        let result = match self.cluster_conn() {
            Ok(None) => match self.pubsub_sink() {
                Ok(mut sink) => tokio::time::timeout(self.timeout, sink.unsubscribe(topic)).await,
                Err(_) => return Ok(()),
            },
            Ok(Some(mut conn)) => {
                tokio::time::timeout(self.timeout, conn.sunsubscribe(topic)).await
            }
            Err(_) => return Ok(()),
        };
        result
            .map_err(|_| unavailable("unsubscribe timed out"))?
            .map_err(unavailable)
    }

    /// Handles one message of the cluster connection: a publication, or news about the
    /// subscriptions that makes channels stale.
    async fn on_push(&self, push: PushInfo) {
        let text = |i: usize| match push.data.get(i) {
            Some(::redis::Value::BulkString(b)) => Some(b.as_slice()),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                if let (Some(topic), Some(payload)) = (text(0), text(1)) {
                    if let Ok(topic) = std::str::from_utf8(topic) {
                        self.on_message(topic, payload).await;
                    }
                }
            }
            // Redis sends `sunsubscribe` when the slot of a shard channel moved away from
            // the node (slot migration, or the node was demoted to a replica). Our own
            // unsubscribes have removed the channel already.
            PushKind::SUnsubscribe => {
                let topic = text(0).and_then(|t| std::str::from_utf8(t).ok());
                if let Some(channel) = topic.and_then(|t| self.channel_of(t)) {
                    if let Some(state) = self.channels.lock().get_mut(channel) {
                        tracing::info!(channel, "redis dropped a subscription; resubscribing");
                        state.stale = true;
                        self.pubsub_up.store(false, Ordering::Release);
                    }
                }
            }
            PushKind::Disconnection => {
                // Which channels the lost shard owned is not known here: renew them all
                // (`SSUBSCRIBE` of a subscribed channel is harmless) and have the presence
                // entries re-added, in case a replica without them took over.
                let mut channels = self.channels.lock();
                tracing::warn!(
                    channels = channels.len(),
                    "redis cluster connection lost; resubscribing"
                );
                for state in channels.values_mut() {
                    state.stale = true;
                }
                self.pubsub_up.store(false, Ordering::Release);
                self.readd.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Renews the subscriptions of stale channels and catches them up through history once
    /// the owning shard confirmed. Channels that fail stay stale for the next round.
    async fn resync(&self) {
        let stale: Vec<Arc<str>> = self
            .channels
            .lock()
            .iter()
            .filter(|(_, s)| s.stale)
            .map(|(c, _)| c.clone())
            .collect();
        if stale.is_empty() {
            self.pubsub_up.store(true, Ordering::Release);
            return;
        }
        let renewed = futures_util::stream::iter(stale)
            .map(|channel| async move {
                if let Err(e) = self.listen(&channel).await {
                    tracing::debug!(%channel, error = %e, "resubscribe failed");
                    return false;
                }
                if !self.catch_up(&channel).await {
                    return false;
                }
                if let Some(state) = self.channels.lock().get_mut(&channel) {
                    state.stale = false;
                }
                true
            })
            .buffer_unordered(RESYNC_CONCURRENCY)
            .fold(0_usize, |n, ok| async move { n + usize::from(ok) })
            .await;
        let left = self.channels.lock().values().filter(|s| s.stale).count();
        if renewed > 0 {
            tracing::info!(renewed, left, "redis cluster subscriptions renewed");
        }
        if left == 0 {
            self.pubsub_up.store(true, Ordering::Release);
            self.refresh_presence().await;
        }
    }

    /// Refreshes this node's presence entries and collects expired ones, channel by channel.
    async fn refresh_presence(&self) {
        let readd = self.readd.swap(false, Ordering::AcqRel);
        let owned: Vec<(Arc<str>, OwnedEntries)> = self
            .owned
            .lock()
            .iter()
            .map(|(c, entries)| (c.clone(), entries.clone()))
            .collect();
        for (channel, entries) in owned {
            let mut inv = self.scripts.presence.prepare_invoke();
            inv.key(self.key(&channel, "presence"))
                .key(self.key(&channel, "presence_exp"))
                .arg(millis(self.presence_ttl))
                .arg(self.topic(&channel))
                .arg(if readd { "1" } else { "0" });
            for (client, json) in &entries {
                inv.arg(&**client).arg(json);
            }
            if let Err(e) = self.run::<Vec<String>>(&inv).await {
                tracing::debug!(%channel, error = %e, "presence refresh failed");
                if readd {
                    self.readd.store(true, Ordering::Release);
                }
            }
        }
    }
}

fn parse_incoming(payload: &[u8]) -> Option<Incoming> {
    let w: WireMessage<'_> = serde_json::from_slice(payload).ok()?;
    match w.k? {
        "p" => Some(Incoming::Publication {
            epoch: w.e?.into(),
            publication: Publication {
                offset: w.o?,
                data: Arc::from(w.d?.to_owned()),
                from: w.f,
                key: w.y,
            },
        }),
        "j" => parse_entry(w.p?.get()).map(Incoming::Join),
        "l" => parse_entry(w.p?.get()).map(Incoming::Leave),
        _ => None,
    }
}

/// Keeps the node's pub/sub connection: connects, (re)subscribes to every channel the node
/// wants, catches up what was missed while disconnected, and hands messages over.
async fn pubsub_loop(weak: Weak<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let Link::Single { master } = &inner.link else {
            return;
        };
        let master = master.clone();
        let connect = tokio::time::timeout(inner.timeout, async {
            let client = master.pubsub_client().await?;
            client.get_async_pubsub().await.map_err(unavailable)
        })
        .await;
        let pubsub = match connect {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis pub/sub connect failed");
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let topics: Vec<String> = inner
            .channels
            .lock()
            .keys()
            .map(|c| inner.topic(c))
            .collect();
        if !topics.is_empty() {
            match tokio::time::timeout(inner.timeout, sink.subscribe(&topics)).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!("redis resubscribe failed; reconnecting");
                    drop(inner);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        for state in inner.channels.lock().values_mut() {
            // A new connection: its stream is only ordered from here on.
            state.live = 0;
        }
        *inner.pubsub.lock() = Some(sink);
        inner.pubsub_up.store(true, Ordering::Release);
        backoff = Duration::from_millis(50);
        if connected_before {
            tracing::info!(
                channels = topics.len(),
                "redis pub/sub reconnected; catching up"
            );
            inner.readd.store(true, Ordering::Release);
            let channels: Vec<Arc<str>> = inner.channels.lock().keys().cloned().collect();
            for channel in channels {
                let _ = inner.catch_up(&channel).await;
            }
            inner.refresh_presence().await;
        }
        connected_before = true;
        drop(inner);
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                () = master.lost() => None,
            };
            let Some(msg) = msg else {
                break;
            };
            let Some(inner) = weak.upgrade() else {
                return;
            };
            inner
                .on_message(msg.get_channel_name(), msg.get_payload_bytes())
                .await;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        tracing::warn!("redis pub/sub connection lost; reconnecting");
        inner.pubsub_up.store(false, Ordering::Release);
        *inner.pubsub.lock() = None;
    }
}

/// Connects to the cluster (retrying until it answers), then hands the messages of the
/// cluster connection over.
async fn cluster_loop(
    weak: Weak<Inner>,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let Link::Cluster { client, conn } = &inner.link else {
            return;
        };
        match tokio::time::timeout(inner.timeout, client.get_async_connection()).await {
            Ok(Ok(c)) => {
                *conn.lock() = Some(c);
                inner.pubsub_up.store(true, Ordering::Release);
                tracing::info!("connected to the redis cluster");
                break;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "redis cluster connect failed"),
            Err(_) => tracing::debug!("redis cluster connect timed out"),
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    while let Some(push) = pushes.recv().await {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        inner.on_push(push).await;
    }
}

/// Renews stale cluster subscriptions every [`RESYNC_PERIOD`].
async fn resync_loop(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(RESYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.cluster_conn().is_ok() {
            inner.resync().await;
        }
    }
}

/// Refreshes presence every third of its TTL and checks that Redis answers.
async fn maintenance(weak: Weak<Inner>) {
    let period = match weak.upgrade() {
        Some(inner) => (inner.presence_ttl / 3).min(Duration::from_secs(5)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let ping = ::redis::cmd("PING");
        let answered = match &inner.link {
            Link::Single { master } => match master.commands() {
                Ok(mut conn) => {
                    let ping =
                        tokio::time::timeout(inner.timeout, ping.query_async::<String>(&mut conn));
                    matches!(ping.await, Ok(Ok(_)))
                }
                Err(_) => false,
            },
            // Sent to every node of the cluster: degraded while any of them does not answer.
            Link::Cluster { .. } => match inner.cluster_conn().ok().flatten() {
                Some(mut conn) => {
                    let ping =
                        tokio::time::timeout(inner.timeout, ping.query_async::<()>(&mut conn));
                    matches!(ping.await, Ok(Ok(())))
                }
                None => false,
            },
        };
        inner.commands_ok.store(answered, Ordering::Relaxed);
        inner.refresh_presence().await;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Arc<RawValue>,
        from: Option<Arc<str>>,
        key: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError> {
        let inner = &self.inner;
        let from = serde_json::to_string(&from).map_err(unavailable)?;
        let key = match &key {
            Some(key) => format!(
                ",\"y\":{}",
                serde_json::to_string(key).map_err(unavailable)?
            ),
            None => String::new(),
        };
        let tail = format!(",\"f\":{from}{key},\"d\":{}}}", data.get());
        let mut inv = inner.scripts.publish.prepare_invoke();
        inv.key(inner.key(channel, "stream"))
            .key(inner.key(channel, "history"))
            .arg(tail)
            .arg(retention.size)
            .arg(millis(retention.ttl))
            .arg(new_epoch())
            .arg(inner.topic(channel))
            .arg(millis(STREAM_TTL.max(retention.ttl)));
        let (epoch, offset): (String, u64) = inner.run(&inv).await?;
        Ok(StreamPosition {
            epoch: epoch.into(),
            offset,
        })
    }

    async fn user_connection_opened(
        &self,
        user: &str,
        field: &str,
    ) -> Result<Option<Vec<(String, i64)>>, BrokerError> {
        let inner = &self.inner;
        let mut inv = inner.scripts.user_open.prepare_invoke();
        inv.key(user_conns_key(&inner.prefix, user))
            .arg(field)
            .arg(millis(USER_CONNS_TTL));
        let fields: HashMap<String, String> = inner.run(&inv).await?;
        // A field that is not a count is not ours: ignored.
        Ok(Some(
            fields
                .into_iter()
                .filter_map(|(f, n)| Some((f, n.parse::<i64>().ok()?)))
                .collect(),
        ))
    }

    async fn user_connection_closed(&self, user: &str, field: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut inv = inner.scripts.user_close.prepare_invoke();
        inv.key(user_conns_key(&inner.prefix, user)).arg(field);
        inner.run::<::redis::Value>(&inv).await?;
        Ok(())
    }

    /// `SET NX PX` on a key with the channel's hash tag (so it lives with the channel's
    /// stream in Redis Cluster): empty while the first publish runs, then its position.
    async fn claim_idempotency(
        &self,
        channel: &str,
        key: &str,
        window: Duration,
    ) -> Result<Option<Claim>, BrokerError> {
        let inner = &self.inner;
        let name = inner.key(channel, &format!("idem:{key}"));
        let ms = millis(window);
        let mut set = ::redis::cmd("SET");
        set.arg(&name).arg("").arg("NX").arg("PX").arg(ms);
        let claimed = inner.query::<Option<String>>(&set, "SET NX").await?;
        if claimed.is_some() {
            return Ok(Some(Claim::First));
        }
        let mut get = ::redis::cmd("GET");
        get.arg(&name);
        let value = inner.query::<Option<String>>(&get, "GET").await?;
        // Expired between the two calls: the caller asks again, as a pending publish.
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Some(Claim::Pending));
        };
        let position = value
            .split_once(' ')
            .and_then(|(epoch, offset)| Some((epoch, offset.parse::<u64>().ok()?)))
            .map(|(epoch, offset)| StreamPosition {
                epoch: epoch.into(),
                offset,
            })
            .ok_or_else(|| unavailable("an idempotency key holds no position"))?;
        Ok(Some(Claim::Done(position)))
    }

    async fn settle_idempotency(
        &self,
        channel: &str,
        key: &str,
        position: Option<&StreamPosition>,
        window: Duration,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let name = inner.key(channel, &format!("idem:{key}"));
        let cmd = match position {
            Some(p) => {
                let mut c = ::redis::cmd("SET");
                c.arg(&name)
                    .arg(format!("{} {}", p.epoch, p.offset))
                    .arg("XX")
                    .arg("PX")
                    .arg(millis(window));
                c
            }
            None => {
                let mut c = ::redis::cmd("DEL");
                c.arg(&name);
                c
            }
        };
        inner
            .query::<::redis::Value>(&cmd, "settling an idempotency key")
            .await?;
        Ok(())
    }

    /// `PUBSUB CHANNELS` over the prefix's topics (on a Redis Cluster `PUBSUB SHARDCHANNELS`,
    /// asked of every node): every channel some node subscribes to.
    async fn channels(&self) -> Result<Option<Vec<String>>, BrokerError> {
        let inner = &self.inner;
        // Glob characters of the prefix match only themselves (the channel part is `*`).
        let mut pattern = String::with_capacity(inner.prefix.len() + 4);
        for c in inner.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":{*}");
        let sub = match inner.link {
            Link::Single { .. } => "CHANNELS",
            Link::Cluster { .. } => "SHARDCHANNELS",
        };
        let mut cmd = ::redis::cmd("PUBSUB");
        cmd.arg(sub).arg(&pattern);
        let topics = inner.query::<Vec<String>>(&cmd, "PUBSUB CHANNELS").await?;
        // A cluster's answer combines every node's: a channel may appear more than once.
        let channels: std::collections::BTreeSet<&str> =
            topics.iter().filter_map(|t| inner.channel_of(t)).collect();
        Ok(Some(channels.into_iter().map(str::to_owned).collect()))
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let name: Arc<str> = channel.into();
        inner
            .channels
            .lock()
            .insert(name.clone(), ChannelState::default());
        let result = async {
            inner.listen(channel).await?;
            // Read after the subscription is active: whatever is published from here on
            // arrives on the pub/sub connection.
            inner.read(channel, Entries::None).await
        }
        .await;
        let position = match result {
            Ok((position, _)) => position,
            Err(e) => {
                inner.channels.lock().remove(channel);
                return Err(e);
            }
        };
        let mut channels = inner.channels.lock();
        if let Some(state) = channels.get_mut(channel) {
            state.last = Some((position.epoch, position.offset));
            for msg in std::mem::take(&mut state.pending) {
                // Messages that were published after the subscription took effect; a gap
                // among them is impossible on one connection, so `Gap` is not expected.
                let _ = inner.accept(&name, state, msg);
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.channels.lock().remove(channel);
        inner.unlisten(channel).await
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        retention: Retention,
    ) -> Result<History, BrokerError> {
        let entries = match (query.since, query.limit) {
            (None, Some(0)) => Entries::None,
            (None, Some(1)) => Entries::Last,
            _ => Entries::All,
        };
        let (position, mut all) = self.inner.read(channel, entries).await?;
        if all.len() > retention.size {
            all.drain(..all.len() - retention.size);
        }
        let first = all.first().map(|p| p.offset);
        let (publications, complete) = match query.since {
            Some(since) => {
                let complete = since == position.offset
                    || (since < position.offset && first.is_some_and(|f| f <= since + 1));
                let pubs = all
                    .into_iter()
                    .filter(|p| p.offset > since && p.offset <= position.offset)
                    .take(query.limit.unwrap_or(usize::MAX))
                    .collect();
                (pubs, complete)
            }
            None => {
                let n = query.limit.unwrap_or(usize::MAX).min(all.len());
                all.drain(..all.len() - n);
                (all, true)
            }
        };
        Ok(History {
            position,
            publications,
            complete,
        })
    }

    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let json = entry_json(&entry, announce)?;
        inner
            .owned
            .lock()
            .entry(channel.into())
            .or_default()
            .insert(entry.client.clone(), json.clone());
        let mut inv = inner.scripts.presence_add.prepare_invoke();
        inv.key(inner.key(channel, "presence"))
            .key(inner.key(channel, "presence_exp"))
            .arg(&*entry.client)
            .arg(json)
            .arg(millis(inner.presence_ttl))
            .arg(inner.topic(channel))
            .arg(if announce { "1" } else { "0" });
        inner.run::<i64>(&inv).await.map(drop)
    }

    async fn presence_remove(
        &self,
        channel: &str,
        client: &str,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        {
            let mut owned = inner.owned.lock();
            if let Some(entries) = owned.get_mut(channel) {
                entries.remove(client);
                if entries.is_empty() {
                    owned.remove(channel);
                }
            }
        }
        let mut inv = inner.scripts.presence_remove.prepare_invoke();
        inv.key(inner.key(channel, "presence"))
            .key(inner.key(channel, "presence_exp"))
            .arg(client)
            .arg(inner.topic(channel))
            .arg(if announce { "1" } else { "0" });
        inner.run::<i64>(&inv).await.map(drop)
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let inner = &self.inner;
        let mut inv = inner.scripts.presence.prepare_invoke();
        inv.key(inner.key(channel, "presence"))
            .key(inner.key(channel, "presence_exp"))
            .arg(millis(inner.presence_ttl))
            .arg(inner.topic(channel))
            .arg("0");
        let entries: Vec<String> = inner.run(&inv).await?;
        let mut entries: Vec<PresenceEntry> =
            entries.iter().filter_map(|e| parse_entry(e)).collect();
        entries.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(entries)
    }

    fn health(&self) -> Result<(), String> {
        let inner = &self.inner;
        if let Link::Single { master } = &inner.link {
            if !master.known() {
                return Err("no redis master known (asking the sentinels)".into());
            }
        }
        if !inner.pubsub_up.load(Ordering::Acquire) {
            return Err(match inner.link {
                Link::Single { .. } => "redis pub/sub connection is down".into(),
                Link::Cluster { .. } => {
                    "redis cluster: not connected, or renewing subscriptions".into()
                }
            });
        }
        if !inner.commands_ok.load(Ordering::Relaxed) {
            return Err("redis does not answer".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_are_hex_inside_one_hash_tag() {
        assert_eq!(
            user_conns_key("duplex", "ada"),
            "duplex:{user:616461}:conns"
        );
        assert_eq!(
            user_conns_key("p", "a}b{"),
            "p:{user:617d627b}:conns",
            "braces cannot end the tag"
        );
        assert_eq!(user_conns_key("p", "é"), "p:{user:c3a9}:conns");
        assert_ne!(user_conns_key("p", "ab"), user_conns_key("p", "a b"));
    }

    #[test]
    fn cluster_scripts_publish_only_with_spublish() {
        let mut calls = 0;
        for source in SCRIPT_SOURCES {
            let sharded = sharded_source(source);
            let publishes = source.matches("'PUBLISH'").count();
            let code: String = source
                .lines()
                .map(|l| {
                    l.split("--")
                        .next()
                        .unwrap_or_default()
                        .to_ascii_uppercase()
                })
                .collect();
            assert_eq!(
                code.matches("PUBLISH").count(),
                publishes,
                "every PUBLISH is written redis.call('PUBLISH', ...)"
            );
            assert_eq!(sharded.matches("redis.call('SPUBLISH'").count(), publishes);
            assert!(!sharded.contains("'PUBLISH'"));
            calls += publishes;
        }
        assert_eq!(calls, 4, "publish, presence, presence_add, presence_remove");
        let (single, sharded) = (Scripts::new(false), Scripts::new(true));
        assert_ne!(single.publish.get_hash(), sharded.publish.get_hash());
        assert_eq!(single.history.get_hash(), sharded.history.get_hash());
    }

    #[test]
    fn wire_formats_round_trip() {
        let entry = PresenceEntry {
            client: "n1-1".into(),
            user: Some("ada".into()),
            info: Some(Arc::from(
                RawValue::from_string(r#"{"name":"Ada"}"#.into()).unwrap(),
            )),
        };
        let json = entry_json(&entry, true).unwrap();
        assert!(
            json.starts_with(r#"{"a":true,"#),
            "presence.lua relies on it: {json}"
        );
        let back = parse_entry(&json).unwrap();
        assert_eq!(back.client, entry.client);
        assert_eq!(back.info.unwrap().get(), r#"{"name":"Ada"}"#);

        let msg = br#"{"k":"p","e":"00ff","o":7,"f":null,"d":null}"#;
        match parse_incoming(msg) {
            Some(Incoming::Publication { epoch, publication }) => {
                assert_eq!(&*epoch, "00ff");
                assert_eq!(publication.offset, 7);
                assert_eq!(publication.data.get(), "null", "null data is data");
                assert!(publication.from.is_none());
            }
            other => panic!("{other:?}"),
        }
        let entries = [
            r#"{"x":100,"o":1,"f":"ada","d":1}"#.to_owned(),
            r#"{"x":300,"o":2,"f":"ada","y":"EURUSD","d":[2]}"#.to_owned(),
        ];
        let pubs = parse_history(&entries, 200);
        assert_eq!(pubs.len(), 1, "the first one expired");
        assert_eq!(pubs[0].data.get(), "[2]");
        assert_eq!(pubs[0].key.as_deref(), Some("EURUSD"));
        let keyed = br#"{"k":"p","e":"00ff","o":8,"f":null,"y":"k\"1","d":{}}"#;
        let Some(Incoming::Publication { publication, .. }) = parse_incoming(keyed) else {
            panic!("a keyed publication parses");
        };
        assert_eq!(
            publication.key.as_deref(),
            Some("k\"1"),
            "escapes are decoded"
        );
    }
}
