//! Server configuration: TOML file, defaults, validation.
//!
//! The file format is the serde form of [`Config`]; every field is optional and falls back to
//! the default shown by `duplex serve --print-config`. Command-line flags and `DUPLEX_*`
//! environment variables are applied on top by the CLI.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod secret;

pub(crate) use secret::read_secret;
pub use secret::{redact_password_in, redact_url, Secret, REDACTED};

pub use crate::hooks::config::{HooksConfig, NamespaceHooks};

/// The whole server configuration.
///
/// ```
/// let config = duplex_hub::Config::from_toml(r#"
///     listen = "127.0.0.1:9000"
///     [limits]
///     max_connections = 500
///     [namespaces.news]
///     client_publish = false
/// "#).unwrap();
/// assert_eq!(config.limits.max_connections, 500);
/// assert!(!config.namespace("news").unwrap().client_publish);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// This node's id, shown in `welcome` and used in client ids. Default: random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Which broker carries publications, history and presence. Default `memory`.
    pub broker: BrokerKind,
    /// Redis URL for `broker = "redis"`, e.g. `redis://127.0.0.1:6379/0`; with a password,
    /// `redis://:PASSWORD@host:6379/0` (shown redacted by `--print-config`). Prefer
    /// `redis_url_file` or the `DUPLEX_REDIS_URL` environment variable for a URL with a
    /// password. Mutually exclusive with `redis_url_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<Secret>,
    /// A file holding the Redis URL (one line; a trailing newline is ignored), read when the
    /// hub starts, so the password is neither in the configuration nor on a command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url_file: Option<PathBuf>,
    /// Seed nodes of the Redis Cluster for `broker = "redis-cluster"`, comma-separated, e.g.
    /// `redis://10.0.0.10:7000,redis://10.0.0.11:7000` (any masters or replicas of the
    /// cluster; the others are discovered). Passwords are shown redacted by `--print-config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<Secret>,
    /// Redis broker details (key prefix, presence expiry, timeouts).
    pub redis: RedisConfig,
    /// How long a graceful shutdown may take before remaining connections are dropped.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Logging.
    pub log: LogConfig,
    /// WebSocket keepalive.
    pub websocket: WebSocketConfig,
    /// Authentication and origin checks.
    pub auth: AuthConfig,
    /// The HTTP API under `/api`.
    pub api: ApiConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Built-in demo data.
    pub demo: DemoConfig,
    /// Options of the default namespace (channels without `:`); other namespaces inherit them.
    pub channels: NamespaceConfig,
    /// Named namespaces (`ns:channel`), each overriding some options of `channels`.
    pub namespaces: BTreeMap<String, NamespaceOverrides>,
    /// The node's memory budget: channels held and retained history.
    pub memory: MemoryBudget,
    /// TLS on the listener (`https://`, `wss://`); off unless `cert` and `key` are set.
    pub tls: TlsConfig,
    /// Backend hooks: the application's endpoints for connect, subscribe, publish and rpc.
    pub hooks: HooksConfig,
}

/// TLS on the listener: a PEM certificate chain and its key, reloaded when they change.
///
/// ```
/// let config = duplex_hub::Config::from_toml(r#"
///     [tls]
///     cert = "/etc/duplex/fullchain.pem"
///     key = "/etc/duplex/privkey.pem"
/// "#).unwrap();
/// assert!(config.tls.enabled());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The PEM certificate chain, leaf first (e.g. a `fullchain.pem`). Needs `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1). Needs `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// How often the files' modification times and sizes are checked; a change loads the
    /// pair again (so does SIGHUP). `0s` checks only on SIGHUP. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl TlsConfig {
    /// Whether the listener serves TLS (both files are set).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// Broker implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BrokerKind {
    /// In-process broker; one node, nothing to install.
    Memory,
    /// Redis: several nodes share channels, history and presence (see `docs/deployment.md`).
    Redis,
    /// Redis Cluster: as `redis`, with channels spread over the cluster's shards and sharded
    /// pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7 or later).
    #[serde(rename = "redis-cluster", alias = "redis_cluster")]
    RedisCluster,
}

/// Settings of the Redis broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Prefix of every key and pub/sub channel, so several deployments can share one Redis.
    /// Default `duplex`.
    pub prefix: String,
    /// How long a presence entry outlives the last refresh by its node. Nodes refresh their
    /// entries every third of it, so a node that dies without cleaning up (SIGKILL, power
    /// loss) has its clients disappear from presence after at most this long. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How long one Redis command may take before it fails (and the client gets
    /// `unavailable`). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redis Sentinels (`redis://[:password@]host:port`, at most 16) that name the current
    /// master; with them, `redis_url` is optional and gives only the master's database, user
    /// and password. Needs `sentinel_master`. Default: none (connect to `redis_url`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<Secret>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "duplex".to_owned(),
            presence_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            sentinels: Vec::new(),
            sentinel_master: None,
        }
    }
}

/// Most Sentinels one node asks.
pub const MAX_SENTINELS: usize = 16;

/// Log output settings (applied by the binary that installs the subscriber).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `duplex_hub=debug`. Default `info`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// WebSocket keepalive settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Interval between server pings. Default 25 s: below the 30–60 s idle timeouts of
    /// common proxies and NATs.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a pong may take before the connection is considered dead. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// permessage-deflate (RFC 7692) with clients that offer it. Off by default.
    pub compression: CompressionConfig,
}

/// permessage-deflate for hub connections (`[websocket.compression]`).
///
/// Publications are compressed once per node and the same bytes go to every subscriber that
/// negotiated compression, so the CPU cost grows with publications, not with subscribers. A
/// compressing connection holds a 46 KiB decompressor once its client sends a compressed
/// message, and the server needs no compressor of its own for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Accept a client's permessage-deflate offer. Default `false`: compression trades CPU
    /// (and a little latency) for bandwidth, worth it for large JSON over slow links.
    pub enabled: bool,
    /// zlib level, 1 (fastest) to 9 (smallest). Default 1.
    pub level: u32,
    /// Frames whose payload is shorter than this many bytes go uncompressed. Default 256.
    pub threshold: usize,
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Accept connections without a token (as user `null`). Default `true`, so the demo works;
    /// turn it off in production when every client has a token.
    pub anonymous: bool,
    /// HS256 shared secret (at least 16 bytes). Mutually exclusive with `jwt_secret_file` and
    /// `jwt_public_key_file`. Prefer `jwt_secret_file` or `DUPLEX_JWT_SECRET`: a secret in a
    /// flag is visible to every local user in the process list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<Secret>,
    /// A file holding the HS256 secret (a trailing newline is ignored), read when the hub
    /// starts. Mutually exclusive with `jwt_secret` and `jwt_public_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// URL of the identity provider's JWKS document (RFC 7517), e.g.
    /// `https://idp.example.com/.well-known/jwks.json`: tokens are verified with the key
    /// their `kid` names (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA; symmetric keys
    /// in the set are ignored). Mutually exclusive with the three settings above. `https`
    /// is verified against the bundled web PKI roots; `http` is accepted for a provider on
    /// the same host or network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How old the fetched key set may get before it is fetched again (in the background;
    /// the cached keys keep serving). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Fetches happen at most this often, whatever tokens arrive: a token naming an unknown
    /// `kid` triggers a fetch (that is how a rotated-in key is found) only if the last one
    /// is older than this. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Time allowed for one fetch (connect, TLS, response). A client whose token needs a
    /// fetch waits at most this long. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Accepted `aud` values. When set, a token must carry an `aud` claim naming at least one
    /// of them. When empty (the default), a token that carries an `aud` claim at all is
    /// refused (RFC 7519 §4.1.3: a recipient that does not identify itself with a value of a
    /// present `aud` must reject the token), so tokens that an identity provider issued for
    /// other applications are not accepted here.
    pub audiences: Vec<String>,
    /// The accepted `iss`. When set, a token must carry exactly this issuer; when unset (the
    /// default), `iss` is not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// What a token without a `channels` claim may use. Default `auto`: every channel when
    /// `audiences` is set (the token was issued for this hub), no channel otherwise.
    pub missing_channels: MissingChannels,
    /// Origins allowed besides the server's own, e.g. `https://app.example.com`; `*` allows
    /// any. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

/// What a verified token that carries no `channels` claim may subscribe to (and, without a
/// `publish` claim, publish to). Anonymous connections are not tokens: they may use every
/// channel that the namespaces allow, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingChannels {
    /// `all` when `auth.audiences` is set, `none` otherwise: only a token addressed to this
    /// hub gets unrestricted access by leaving the claim out.
    #[default]
    Auto,
    /// Every channel (subject to the namespaces' rules).
    All,
    /// No channel: `subscribe`, `presence`, `history` and `publish` answer `forbidden`.
    None,
}

/// HTTP API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Bearer key for `POST /api/publish` (at least 8 bytes); the endpoint is disabled while
    /// neither this nor `key_file` is set. Prefer `key_file` or `DUPLEX_API_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// A file holding the API key (a trailing newline is ignored), read when the hub starts.
    /// Mutually exclusive with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Require the key for `GET /api/channels` and `GET /api/stats` too. Default `false`.
    pub protect_reads: bool,
    /// Largest request body of `POST /api/<method>` in bytes; larger ones get 413.
    /// Default 128 KiB.
    pub max_body_bytes: usize,
    /// Most channels in one `broadcast`. Default 1 000.
    pub max_broadcast_channels: usize,
    /// Longest `pattern` of `channels`, in bytes. Default 256.
    pub max_pattern_bytes: usize,
    /// Most publications one `history` call returns. Default 1 000.
    pub max_history_limit: usize,
    /// How long a publish `idempotency_key` is remembered: a retry within it returns the
    /// first publish's position and publishes nothing. Default 5 minutes.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered at once on this node; past it, a publish with a new
    /// key is refused with `over_capacity` (HTTP 507) until older ones expire.
    /// Default 100 000.
    pub max_idempotency_keys: usize,
    /// Server API commands (`subscribe`, `unsubscribe`) waiting for one connection; past
    /// it, a command for that connection is refused with `over_capacity`. Default 16.
    pub mailbox_size: usize,
    /// How long `subscribe` and `unsubscribe` wait for each connection's answer; a
    /// connection that has not answered by then is reported with `unavailable` (the
    /// command may still run). Default 5 s, at most 1 h.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: None,
            key_file: None,
            protect_reads: false,
            max_body_bytes: 128 * 1024,
            max_broadcast_channels: 1_000,
            max_pattern_bytes: 256,
            max_history_limit: 1_000,
            idempotency_window: Duration::from_secs(300),
            max_idempotency_keys: 100_000,
            mailbox_size: 16,
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// Resource limits. Each one is enforced with a documented error or close code
/// (see `docs/protocol.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Concurrent WebSocket connections. Default 10 000.
    pub max_connections: usize,
    /// Concurrent WebSocket connections from one IP address (0: no limit). Default 1 000.
    pub max_connections_per_ip: usize,
    /// Concurrent WebSocket connections of one authenticated user (0: no limit); more are
    /// refused with 429 before the upgrade. Counted on this node first, then, with a shared
    /// broker (`redis`, `redis-cluster`), across every live node through Redis (when Redis
    /// cannot count, the node-local count alone decides). Anonymous connections count only
    /// against the other limits, and so do users named only by the connect hook (the count
    /// is taken from the token's `sub` at the upgrade). Default 100.
    pub max_connections_per_user: usize,
    /// Largest incoming WebSocket message in bytes; larger ones close with 1009.
    /// Default 64 KiB.
    pub max_message_size: usize,
    /// Largest serialized `data` of one publication in bytes. Default 32 KiB.
    pub max_publication_size: usize,
    /// Longest publication `key` in bytes (UTF-8, as decoded), on every publish path; a
    /// longer one is refused with `too_large` (HTTP 413) and counted in
    /// `duplex_limit_hits_total{limit="publication_key"}`. Keys name what a publication is
    /// the latest value of (a symbol, a sensor id), so 256 is ample; every queued and
    /// retained publication carries its key. Default 256, at most 4096.
    pub max_key_size: usize,
    /// How deeply arrays and objects may nest in a publication's `data` (every publish path)
    /// and a subscription's `info`; deeper ones are refused with `too_deep` (HTTP 400).
    /// Default 32: real payloads rarely pass ten levels, and the frames that wrap `data` (up
    /// to three more levels) stay within the strictest common parsers (.NET stops at 64,
    /// Ruby at 100, serde_json at 128), while a 16,000-deep array would crash recursive ones.
    pub max_json_depth: usize,
    /// Sustained commands per second per connection. Default 100.
    pub commands_per_second: u32,
    /// Commands a connection may send in a burst. Default 200.
    pub commands_burst: u32,
    /// Channels one connection may be subscribed to. Default 128.
    pub max_channels_per_connection: usize,
    /// Bytes queued for one connection before it counts as a slow consumer. Default 1 MiB.
    /// Must hold one publication frame: at least `max_publication_size` + 4 KiB.
    pub max_queue_bytes: usize,
    /// How long a reply to the connection's own command (a reply, a `history` or `presence`
    /// page, a publication replayed by `subscribe` with `since`) may wait for room in its
    /// outbound queue. Replies bigger than the free room wait for the writer to drain the
    /// queue instead of overflowing it; a client that reads nothing for this long is closed
    /// with 1013 like any slow consumer. Default 30 s: a reader as slow as 10 KB/s still
    /// takes a 256 KiB page in time.
    #[serde(with = "humantime_serde")]
    pub max_reply_wait: Duration,
    /// Error replies allowed within 10 s before the connection is closed with 1008.
    /// Default 20.
    pub max_errors: u32,
    /// Addresses of reverse proxies (e.g. nginx) whose `X-Forwarded-For` header is believed:
    /// a connection from one of them counts against the per-IP limit of the client address
    /// that the proxy appended last. From any other peer the header is ignored. Default none.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long a client may take to send a request's head (request line and headers),
    /// counted from the connection's accept or the previous response, so it also bounds an
    /// idle keep-alive connection. A connection that has not sent a whole head by then is
    /// closed. Default 10 s, as `duplex echo`: long enough for a slow mobile link, short
    /// enough that a slowloris holds a slot for seconds, not forever. With `[tls]`, the TLS
    /// handshake must also finish within it, and the head's timer starts after it.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; a larger one is answered
    /// with 431 and the connection closed. Default 16 KiB: browsers send a few hundred
    /// bytes plus cookies, a JWT in `Authorization` or the query is 1-2 KiB; it also caps
    /// what an unfinished head costs in memory. At least 1024.
    pub max_header_bytes: usize,
    /// Most streams (requests, WebSockets) one HTTP/2 connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113 §6.5.2); a client over it gets its new
    /// streams refused (RST_STREAM REFUSED_STREAM). Every WebSocket still counts against
    /// `max_connections` and `max_connections_per_ip` on its own. Default 100, at least 1.
    pub http2_max_concurrent_streams: u32,
    /// How long an HTTP/2 connection may stay open with no stream (no request being
    /// answered, no WebSocket): then it gets GOAWAY and is closed, counted in
    /// `duplex_limit_hits_total{limit="http2_idle_timeout"}`. The HTTP/2 counterpart of the
    /// idle keep-alive bound that `header_timeout` sets on HTTP/1.1. Default 30 s, positive.
    #[serde(with = "humantime_serde")]
    pub http2_idle_timeout: Duration,
    /// How long an HTTP request (other than an upgrade) may take from its head to its
    /// response, body included; past it the client gets 408 and the connection is closed.
    /// Bounds slow bodies, which the header timeout does not cover. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Per-IP limits count IPv6 clients by this prefix length: one subscriber usually holds
    /// a whole /64 (RFC 6177), so counting single addresses would give it 2^64 quotas.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) always count as their IPv4 address.
    /// 0-128, default 64.
    pub ipv6_prefix: u8,
}

/// Built-in demo data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DemoConfig {
    /// Publish a random-walk price tick per symbol to `ticker:prices` every 500 ms.
    /// Default `true`.
    pub ticker: bool,
}

/// The node's memory budget for channels and retained history. What happens at each cap is
/// described in `docs/security.md` ("Memory budget").
///
/// With the defaults a node keeps at most 64 MiB of history and 100 000 channels, whatever
/// clients publish: history of 100 × 32 KiB for 5 min per channel alone would be unbounded
/// across channel names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryBudget {
    /// Channels the node holds at once: with history, presence or local subscribers. A new
    /// channel beyond it replaces the least recently used one without subscribers or presence
    /// (whose history is dropped and whose next use starts a new epoch); when every channel
    /// has subscribers or presence, the publish or subscribe gets `over_capacity`.
    /// Default 100 000 (about 1 KiB of bookkeeping each: ~100 MB at worst). At least 1.
    pub max_channels: usize,
    /// Bytes of retained history on this node (each publication's `data`, its publisher id
    /// and 96 bytes of bookkeeping). A publication that does not fit drops the history of the
    /// least recently used channels until it does. Default 64 MiB: 20 channels with a full
    /// default history (100 × 32 KiB), or ~60 000 publications of 1 KiB. At least
    /// `max_history_entry` + 1 KiB.
    pub max_history_bytes: usize,
    /// Largest `data` (bytes) a publication may have in a namespace that keeps history;
    /// larger ones get `too_large`. Namespaces with `history_size = 0` are not concerned.
    /// Default 32 KiB (the default `limits.max_publication_size`). At least 1.
    pub max_history_entry: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self {
            max_channels: 100_000,
            max_history_bytes: 64 * 1024 * 1024,
            max_history_entry: 32 * 1024,
        }
    }
}

/// What to do with a subscriber whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1013 (try again later).
    Disconnect,
    /// Drop the oldest queued publications of namespaces with this policy to make room.
    DropOldest,
    /// Once the subscriber's queued bytes pass `conflate_watermark` of
    /// `limits.max_queue_bytes`, keep only the newest queued publication per channel and
    /// `key` (publications without a key count as one key per channel): a slow reader gets
    /// the latest value of everything, later, instead of every value. Replies and events
    /// are never conflated; a queue that still cannot fit closes with 1013.
    Conflate,
}

/// Options of one channel namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NamespaceConfig {
    /// Publications kept per channel for `history` and recovery (0 disables both).
    /// Default 100.
    pub history_size: usize,
    /// How long a publication stays in history. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Retained history bytes of all the namespace's channels together (counted as
    /// `memory.max_history_bytes` is); a publication that does not fit drops the history of
    /// the namespace's least recently used channels, so one namespace cannot take the whole
    /// node budget from the others. 0 (the default): only the node-wide cap applies.
    pub max_history_bytes: usize,
    /// Anonymous clients may create channels: publish or subscribe to a name the node does
    /// not hold yet (with the Redis broker: one without subscribers on this node). When
    /// `false` they get `forbidden` and may only use channels that exist. Default `true`, so
    /// the demo and quick starts work; the memory budget bounds what they can create.
    pub anonymous_create: bool,
    /// Subscribing needs a subscription token: a JWT signed like connection tokens whose
    /// `channel` claim names the channel and whose `sub` is the connection's user (`""` for
    /// an anonymous connection), sent as the `subscribe` command's `token`. The token, not
    /// the connection token's `channels` claim, grants the channel, so the application's
    /// backend decides per channel and per user. Default `false`.
    pub subscription_token: bool,
    /// Personal channels: a channel whose name has a `#` may only be subscribed to, read
    /// (`presence`, `history`) and published to by the users listed after its last `#`,
    /// separated by commas (`user:#42`, `dm:#42,43`); others get `forbidden`. The server API
    /// is not limited. Default `false`.
    pub personal: bool,
    /// Answer `presence` commands. Default `true`.
    pub presence: bool,
    /// Send `join`/`leave` events to subscribers (needs `presence`). Default `true`.
    pub join_leave: bool,
    /// Joins and leaves of a channel are collected for this long and sent as one
    /// `presence_diff` frame per subscriber, so a crowd filling a room costs one frame per
    /// subscriber per interval instead of one per subscriber per join (O(N) instead of O(N²)
    /// frames). Default 200 ms: a roster that lags by a fifth of a second still feels live,
    /// and a subscriber gets at most five such frames a second. `0s` sends every change on
    /// its own frame at once (small rooms only). At most 10 s.
    #[serde(with = "humantime_serde")]
    pub join_leave_interval: Duration,
    /// Most changes one `presence_diff` lists by name; an interval with more sends only the
    /// counts (`joined`, `left`) and clients ask `presence` if they want the names. Bounds
    /// what one frame costs per subscriber (100 entries with a 1 KiB `info` each is ~110 KiB)
    /// when a crowd churns. `0` always sends counts only, for very large rooms. Default 100.
    pub join_leave_max_entries: usize,
    /// Clients may publish; when `false` only the HTTP API and the server can. Default `true`.
    pub client_publish: bool,
    /// Slow-consumer policy. Default `disconnect`.
    pub slow_consumer: SlowConsumerPolicy,
    /// With `slow_consumer = "conflate"`: the fraction of `limits.max_queue_bytes` past
    /// which a subscriber's queue starts keeping only the newest publication per key.
    /// Below it every publication is delivered; above it the room left is for replies and
    /// bursts. Default 0.5; between 0.01 and 1.
    pub conflate_watermark: f64,
    /// Right after the `subscribe` reply, send the channel's latest publication (a
    /// `message` frame with its offset, as in the stream) when the client gives no
    /// `since`, so a page shows the current value at once instead of waiting for the next
    /// publication. The value is the newest history entry, read in the same atomic step as
    /// the position the reply carries, so it needs `history_size` ≥ 1 (`history_size = 1`
    /// keeps only the latest value) and is gone after `history_ttl`. Default `false`.
    pub latest_on_subscribe: bool,
}

/// A named namespace: options left out inherit from `[channels]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)] // each field is the same-named field of `NamespaceConfig`
pub struct NamespaceOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_ttl: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_history_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_create: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_token: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub join_leave_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave_max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    /// This namespace's own `subscribe`, `publish` and `rpc` hooks (see [`NamespaceHooks`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<NamespaceHooks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflate_watermark: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_on_subscribe: Option<bool>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML did not parse or has unknown keys.
    #[error("invalid configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The namespace the demo ticker publishes to.
pub const TICKER_NAMESPACE: &str = "ticker";

impl Default for Config {
    fn default() -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(TICKER_NAMESPACE.to_owned(), NamespaceOverrides::ticker());
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node: None,
            broker: BrokerKind::Memory,
            redis_url: None,
            redis_url_file: None,
            redis_cluster: None,
            redis: RedisConfig::default(),
            shutdown_timeout: Duration::from_secs(10),
            log: LogConfig::default(),
            websocket: WebSocketConfig::default(),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            limits: Limits::default(),
            demo: DemoConfig { ticker: true },
            channels: NamespaceConfig::default(),
            namespaces,
            memory: MemoryBudget::default(),
            tls: TlsConfig::default(),
            hooks: HooksConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            compression: CompressionConfig::default(),
        }
    }
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            level: 1,
            threshold: 256,
        }
    }
}

impl CompressionConfig {
    /// The connection's deflate settings, when enabled.
    pub(crate) fn deflate(&self) -> Option<duplex::deflate::DeflateConfig> {
        self.enabled.then(|| {
            duplex::deflate::DeflateConfig::default()
                .level(self.level)
                .threshold(self.threshold)
        })
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            jwks_timeout: Duration::from_secs(5),
            audiences: Vec::new(),
            issuer: None,
            missing_channels: MissingChannels::Auto,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_connections_per_user: 100,
            max_message_size: 64 * 1024,
            max_publication_size: 32 * 1024,
            max_key_size: 256,
            max_json_depth: crate::protocol::DEFAULT_MAX_JSON_DEPTH,
            commands_per_second: 100,
            commands_burst: 200,
            max_channels_per_connection: 128,
            max_queue_bytes: 1024 * 1024,
            max_reply_wait: Duration::from_secs(30),
            max_errors: 20,
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            http2_max_concurrent_streams: 100,
            http2_idle_timeout: Duration::from_secs(30),
            ipv6_prefix: 64,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { ticker: true }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            max_history_bytes: 0,
            anonymous_create: true,
            subscription_token: false,
            personal: false,
            presence: true,
            join_leave: true,
            join_leave_interval: Duration::from_millis(200),
            join_leave_max_entries: 100,
            client_publish: true,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            conflate_watermark: 0.5,
            latest_on_subscribe: false,
        }
    }
}

impl NamespaceOverrides {
    /// The `ticker` namespace of the default configuration: server-side publications only,
    /// short history, no presence, each symbol's latest price on subscribe, and slow readers
    /// get the newest price per symbol (`conflate`).
    pub fn ticker() -> Self {
        Self {
            history_size: Some(20),
            history_ttl: Some(Duration::from_secs(60)),
            max_history_bytes: None,
            anonymous_create: None,
            subscription_token: None,
            personal: None,
            presence: Some(false),
            join_leave: Some(false),
            join_leave_interval: None,
            join_leave_max_entries: None,
            client_publish: Some(false),
            slow_consumer: Some(SlowConsumerPolicy::Conflate),
            conflate_watermark: None,
            latest_on_subscribe: Some(true),
            hooks: None,
        }
    }

    fn apply(&self, base: &NamespaceConfig) -> NamespaceConfig {
        NamespaceConfig {
            history_size: self.history_size.unwrap_or(base.history_size),
            history_ttl: self.history_ttl.unwrap_or(base.history_ttl),
            max_history_bytes: self.max_history_bytes.unwrap_or(base.max_history_bytes),
            anonymous_create: self.anonymous_create.unwrap_or(base.anonymous_create),
            subscription_token: self.subscription_token.unwrap_or(base.subscription_token),
            personal: self.personal.unwrap_or(base.personal),
            presence: self.presence.unwrap_or(base.presence),
            join_leave: self.join_leave.unwrap_or(base.join_leave),
            join_leave_interval: self.join_leave_interval.unwrap_or(base.join_leave_interval),
            join_leave_max_entries: self
                .join_leave_max_entries
                .unwrap_or(base.join_leave_max_entries),
            client_publish: self.client_publish.unwrap_or(base.client_publish),
            slow_consumer: self.slow_consumer.unwrap_or(base.slow_consumer),
            conflate_watermark: self.conflate_watermark.unwrap_or(base.conflate_watermark),
            latest_on_subscribe: self.latest_on_subscribe.unwrap_or(base.latest_on_subscribe),
        }
    }
}

impl Config {
    /// Parses a TOML document; missing keys take their defaults. The result is validated.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // The error names the place, not the line's text: that line may hold a secret.
        let config: Self = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(String::new(), |span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Invalid(format!("{at}{}", e.message().trim_end()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The configuration as TOML, with secrets replaced by `"<redacted>"` (and the password
    /// of `redis_url`, keeping the rest of the URL).
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        let redacted = || Some(Secret::from(REDACTED));
        if shown.auth.jwt_secret.is_some() {
            shown.auth.jwt_secret = redacted();
        }
        if shown.api.key.is_some() {
            shown.api.key = redacted();
        }
        if let Some(url) = &shown.redis_url {
            shown.redis_url = Some(Secret::from(redact_url(url)));
        }
        if let Some(nodes) = &shown.redis_cluster {
            let nodes: Vec<String> = nodes.split(',').map(redact_url).collect();
            shown.redis_cluster = Some(Secret::from(nodes.join(",")));
        }
        for s in &mut shown.redis.sentinels {
            *s = Secret::from(redact_url(s));
        }
        // Serializing plain data structs to TOML only fails for unsupported types, which
        // `Config` does not contain.
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Reads the secrets kept in files (`auth.jwt_secret_file`, `api.key_file`,
    /// `redis_url_file`) into `auth.jwt_secret`, `api.key` and `redis_url`, clears the file
    /// settings and validates the result. [`crate::Hub::new`] calls it; a configuration
    /// without file settings is returned unchanged.
    pub fn with_secret_files(mut self) -> Result<Self, ConfigError> {
        self.validate()?;
        if let Some(path) = self.auth.jwt_secret_file.take() {
            self.auth.jwt_secret = Some(read_secret(&path)?);
        }
        if let Some(path) = self.api.key_file.take() {
            self.api.key = Some(read_secret(&path)?);
        }
        if let Some(path) = self.redis_url_file.take() {
            self.redis_url = Some(read_secret(&path)?);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let l = &self.limits;
        if l.max_connections == 0 {
            return invalid("limits.max_connections must be at least 1".into());
        }
        if l.max_message_size < 64 {
            return invalid("limits.max_message_size must be at least 64 bytes".into());
        }
        if l.max_publication_size == 0 || l.max_publication_size > l.max_message_size {
            return invalid(format!(
                "limits.max_publication_size must be between 1 and limits.max_message_size ({})",
                l.max_message_size
            ));
        }
        if l.max_json_depth == 0 {
            return invalid("limits.max_json_depth must be at least 1".into());
        }
        if l.commands_per_second == 0 || l.commands_burst == 0 || l.max_errors == 0 {
            return invalid(
                "limits.commands_per_second, commands_burst and max_errors must be at least 1"
                    .into(),
            );
        }
        if l.max_queue_bytes < l.max_message_size {
            return invalid(format!(
                "limits.max_queue_bytes must be at least limits.max_message_size ({})",
                l.max_message_size
            ));
        }
        // Every frame the server sends must fit the queue on its own: replies are paged to
        // a quarter of it, but one publication (a `message` frame, a history item) is the
        // smallest unit, and a frame larger than the queue could only overflow it.
        if l.max_key_size == 0 || l.max_key_size > 4096 {
            return invalid("limits.max_key_size must be between 1 and 4096".into());
        }
        // A key escapes to at most six bytes per byte (`\u00XX`) in a frame.
        let frame = l
            .max_publication_size
            .saturating_add(crate::protocol::FRAME_OVERHEAD)
            .saturating_add(l.max_key_size.saturating_mul(6));
        if l.max_queue_bytes < frame {
            return invalid(format!(
                "limits.max_queue_bytes must hold one publication frame: at least \
                 limits.max_publication_size + {} + 6 × limits.max_key_size ({frame})",
                crate::protocol::FRAME_OVERHEAD
            ));
        }
        if l.max_reply_wait.is_zero() {
            return invalid("limits.max_reply_wait must be positive".into());
        }
        if self.websocket.ping_interval.is_zero() || self.websocket.pong_timeout.is_zero() {
            return invalid("websocket.ping_interval and pong_timeout must be positive".into());
        }
        if !(1..=9).contains(&self.websocket.compression.level) {
            return invalid("websocket.compression.level must be 1-9".into());
        }
        self.validate_secrets()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key must be set together".into());
        }
        if let Some(node) = &self.node {
            if node.is_empty() || node.len() > 64 || !node.bytes().all(is_id_byte) {
                return invalid("node must be 1-64 characters of [A-Za-z0-9_-]".into());
            }
        }
        for (name, ns) in &self.namespaces {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(is_id_byte) {
                return invalid(format!(
                    "namespace {name:?}: names are 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
            if let Some(hooks) = &ns.hooks {
                hooks
                    .validate()
                    .map_err(|e| ConfigError::Invalid(format!("namespace {name:?}: {e}")))?;
            }
        }
        let hooks_used = self.hooks.any()
            || self
                .namespaces
                .values()
                .filter_map(|ns| ns.hooks.as_ref())
                .any(NamespaceHooks::any);
        self.hooks
            .validate(self.limits.max_queue_bytes, hooks_used)
            .map_err(ConfigError::Invalid)?;
        for (name, ns) in self.namespace_configs() {
            if ns.history_size > 100_000 {
                return invalid(format!("namespace {name:?}: history_size above 100000"));
            }
            if ns.history_size > 0 && ns.history_ttl.is_zero() {
                return invalid(format!("namespace {name:?}: history_ttl must be positive"));
            }
            if !(0.01..=1.0).contains(&ns.conflate_watermark) {
                return invalid(format!(
                    "namespace {name:?}: conflate_watermark must be between 0.01 and 1"
                ));
            }
            if ns.latest_on_subscribe && ns.history_size == 0 {
                return invalid(format!(
                    "namespace {name:?}: latest_on_subscribe needs history_size >= 1 \
                     (the latest value is the newest history entry)"
                ));
            }
            if ns.join_leave_interval > Duration::from_secs(10) {
                return invalid(format!("namespace {name:?}: join_leave_interval above 10s"));
            }
            if ns.join_leave_max_entries > 10_000 {
                return invalid(format!(
                    "namespace {name:?}: join_leave_max_entries above 10000"
                ));
            }
        }
        let m = &self.memory;
        // The largest entry history can hold, with room for its publisher id and bookkeeping:
        // a byte cap below it would refuse such publications forever.
        let entry = m
            .max_history_entry
            .min(l.max_publication_size)
            .saturating_add(1024);
        if m.max_channels == 0 || m.max_history_entry == 0 {
            return invalid("memory.max_channels and max_history_entry must be at least 1".into());
        }
        if m.max_history_bytes < entry {
            return invalid(format!(
                "memory.max_history_bytes must be at least {entry} (the largest history entry \
                 plus 1 KiB)"
            ));
        }
        for (name, ns) in self.namespace_configs() {
            if ns.max_history_bytes != 0 && ns.max_history_bytes < entry {
                return invalid(format!(
                    "namespace {name:?}: max_history_bytes must be 0 or at least {entry} (the \
                     largest history entry plus 1 KiB)"
                ));
            }
        }
        if self.broker == BrokerKind::Redis
            && self.redis_url.is_none()
            && self.redis_url_file.is_none()
            && self.redis.sentinels.is_empty()
        {
            return invalid(
                "broker = \"redis\" needs redis_url, redis_url_file or redis.sentinels".into(),
            );
        }
        let r = &self.redis;
        if r.sentinels.is_empty() != r.sentinel_master.is_none() {
            return invalid("redis.sentinels and redis.sentinel_master go together".into());
        }
        if r.sentinels.len() > MAX_SENTINELS {
            return invalid(format!("redis.sentinels: at most {MAX_SENTINELS}"));
        }
        if let Some(s) = r.sentinels.iter().find(|s| !s.starts_with("redis://")) {
            return invalid(format!(
                "redis.sentinels: {} is not a redis:// URL",
                redact_url(s)
            ));
        }
        if r.sentinel_master
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 128 || m.chars().any(char::is_whitespace))
        {
            return invalid("redis.sentinel_master must be 1-128 characters without spaces".into());
        }
        if self.broker == BrokerKind::RedisCluster && self.redis_cluster_nodes().is_empty() {
            return invalid(
                "broker = \"redis-cluster\" needs redis_cluster (seed node URLs)".into(),
            );
        }
        if self.broker == BrokerKind::RedisCluster && !r.sentinels.is_empty() {
            // A Redis Cluster fails over by itself; Sentinel is for one master.
            return invalid(
                "redis.sentinels apply to broker = \"redis\", not \"redis-cluster\"".into(),
            );
        }
        if self.redis.prefix.is_empty()
            || self.redis.prefix.len() > 64
            || !self
                .redis
                .prefix
                .bytes()
                .all(|b| is_id_byte(b) || b == b':')
        {
            return invalid("redis.prefix must be 1-64 characters of [A-Za-z0-9_-:]".into());
        }
        if self.redis.presence_ttl < Duration::from_millis(300) || self.redis.timeout.is_zero() {
            return invalid(
                "redis.presence_ttl must be at least 300ms and redis.timeout positive".into(),
            );
        }
        for origin in &self.auth.allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return invalid(format!(
                    "auth.allowed_origins: {origin:?} is not \"*\" or an http(s) origin"
                ));
            }
        }
        if l.header_timeout.is_zero() || l.request_timeout.is_zero() {
            return invalid("limits.header_timeout and request_timeout must be positive".into());
        }
        if l.http2_idle_timeout.is_zero() {
            return invalid("limits.http2_idle_timeout must be positive".into());
        }
        if l.http2_max_concurrent_streams == 0 {
            return invalid("limits.http2_max_concurrent_streams must be at least 1".into());
        }
        if l.max_header_bytes < 1024 {
            return invalid("limits.max_header_bytes must be at least 1024".into());
        }
        if l.ipv6_prefix > 128 {
            return invalid("limits.ipv6_prefix must be between 0 and 128".into());
        }
        Ok(())
    }

    /// The key, API and Redis settings of [`Config::validate`]. Messages name the setting,
    /// never its value.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        let a = &self.auth;
        let keys = [
            a.jwt_secret.is_some(),
            a.jwt_secret_file.is_some(),
            a.jwt_public_key_file.is_some(),
            a.jwks_url.is_some(),
        ];
        if keys.iter().filter(|set| **set).count() > 1 {
            return invalid(
                "auth.jwt_secret, auth.jwt_secret_file, auth.jwt_public_key_file and \
                 auth.jwks_url are mutually exclusive",
            );
        }
        if a.jwks_url.is_some()
            && (a.jwks_timeout.is_zero() || a.jwks_timeout > Duration::from_secs(60))
        {
            return invalid("auth.jwks_timeout must be between 1 ms and 60 s");
        }
        if a.jwks_url.is_some() && a.jwks_refresh < a.jwks_min_refresh {
            return invalid("auth.jwks_refresh must not be shorter than auth.jwks_min_refresh");
        }
        if matches!(&a.jwt_secret, Some(s) if s.len() < 16) {
            return invalid("auth.jwt_secret must be at least 16 bytes");
        }
        if a.audiences.iter().any(String::is_empty) {
            return invalid("auth.audiences must not contain an empty string");
        }
        if matches!(&a.issuer, Some(i) if i.is_empty()) {
            return invalid("auth.issuer must not be empty (leave it out to accept any)");
        }
        if self.api.key.is_some() && self.api.key_file.is_some() {
            return invalid("api.key and api.key_file are mutually exclusive");
        }
        if matches!(&self.api.key, Some(k) if k.len() < 8) {
            return invalid("api.key must be at least 8 bytes");
        }
        if self.api.max_body_bytes == 0
            || self.api.max_broadcast_channels == 0
            || self.api.max_pattern_bytes == 0
            || self.api.max_history_limit == 0
            || self.api.max_idempotency_keys == 0
            || self.api.mailbox_size == 0
        {
            return invalid("api.max_* limits and api.mailbox_size must be at least 1");
        }
        if self.api.idempotency_window.is_zero() {
            return invalid("api.idempotency_window must be above zero");
        }
        // Bounded so that deadlines computed from it cannot overflow.
        if self.api.command_timeout.is_zero()
            || self.api.command_timeout > Duration::from_secs(3600)
        {
            return invalid("api.command_timeout must be above zero and at most 1 h");
        }
        if self.redis_url.is_some() && self.redis_url_file.is_some() {
            return invalid("redis_url and redis_url_file are mutually exclusive");
        }
        Ok(())
    }

    /// The seed node URLs of `redis_cluster`, without blanks.
    pub fn redis_cluster_nodes(&self) -> Vec<String> {
        self.redis_cluster
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The resolved options of namespace `name` (`""` is the default namespace), or `None`
    /// when it is not configured. The demo ticker's namespace exists whenever the demo is on.
    pub fn namespace(&self, name: &str) -> Option<NamespaceConfig> {
        if name.is_empty() {
            return Some(self.channels.clone());
        }
        match self.namespaces.get(name) {
            Some(o) => Some(o.apply(&self.channels)),
            None if name == TICKER_NAMESPACE && self.demo.ticker => {
                Some(NamespaceOverrides::ticker().apply(&self.channels))
            }
            None => None,
        }
    }

    /// Every configured namespace with its resolved options, the default one first as `""`.
    pub fn namespace_configs(&self) -> Vec<(String, NamespaceConfig)> {
        let mut all = vec![(String::new(), self.channels.clone())];
        for name in self.namespaces.keys() {
            if let Some(ns) = self.namespace(name) {
                all.push((name.clone(), ns));
            }
        }
        if self.demo.ticker && !self.namespaces.contains_key(TICKER_NAMESPACE) {
            if let Some(ns) = self.namespace(TICKER_NAMESPACE) {
                all.push((TICKER_NAMESPACE.to_owned(), ns));
            }
        }
        all
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_command_mailbox_and_timeout_must_be_above_zero() {
        let text = |body: &str| format!("[api]\n{body}\n");
        let ok = Config::from_toml(&text("mailbox_size = 4\ncommand_timeout = \"250ms\"")).unwrap();
        assert_eq!(ok.api.mailbox_size, 4);
        assert_eq!(ok.api.command_timeout, Duration::from_millis(250));
        for body in [
            "mailbox_size = 0",
            "command_timeout = \"0s\"",
            "command_timeout = \"2h\"",
        ] {
            assert!(Config::from_toml(&text(body)).is_err(), "{body}");
        }
    }

    #[test]
    fn default_round_trips_through_toml() {
        let text = Config::default().to_toml_redacted();
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.listen, Config::default().listen);
        assert_eq!(
            back.namespace("ticker"),
            Config::default().namespace("ticker")
        );
        assert_eq!(back.websocket.ping_interval, Duration::from_secs(25));
    }

    #[test]
    fn namespaces_inherit_from_channels() {
        let c =
            Config::from_toml("[channels]\nhistory_size = 7\n[namespaces.a]\npresence = false\n")
                .unwrap();
        let a = c.namespace("a").unwrap();
        assert_eq!(a.history_size, 7);
        assert!(!a.presence);
        assert!(c.namespace("b").is_none());
        assert!(
            c.namespace("ticker").is_some(),
            "demo ticker namespace stays"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(Config::from_toml("lisen = \"x\"").is_err());
        assert!(Config::from_toml("[limits]\nmax_connections = 0").is_err());
        assert!(Config::from_toml("[auth]\njwt_secret = \"short\"").is_err());
        assert!(Config::from_toml("[auth]\nallowed_origins = [\"evil\"]").is_err());
        assert!(Config::from_toml("[namespaces.\"a:b\"]").is_err());
        assert!(
            Config::from_toml("broker = \"redis\"").is_err(),
            "no redis_url"
        );
        assert!(
            Config::from_toml("broker = \"redis-cluster\"").is_err(),
            "no redis_cluster"
        );
        let cluster = Config::from_toml(
            "broker = \"redis-cluster\"\nredis_cluster = \"redis://a:7000, redis://b:7000\"",
        )
        .unwrap();
        assert_eq!(cluster.broker, BrokerKind::RedisCluster);
        assert_eq!(
            cluster.redis_cluster_nodes(),
            ["redis://a:7000", "redis://b:7000"]
        );
        assert!(
            Config::from_toml(
                "broker = \"redis-cluster\"\nredis_cluster = \"redis://a:7000\"\n\
                 [redis]\nsentinels = [\"redis://s:26379\"]\nsentinel_master = \"m\"",
            )
            .is_err(),
            "Sentinel is for one master, not a cluster"
        );
        assert!(Config::from_toml("[redis]\nprefix = \"a b\"").is_err());
        assert!(Config::from_toml("[limits]\ntrusted_proxies = [\"nginx\"]").is_err());
        let redis = Config::from_toml(
            "broker = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n\
             [redis]\npresence_ttl = \"5s\"\n[limits]\ntrusted_proxies = [\"127.0.0.2\"]",
        )
        .unwrap();
        assert_eq!(redis.broker, BrokerKind::Redis);
        assert_eq!(redis.redis.presence_ttl, Duration::from_secs(5));
        assert_eq!(redis.redis.prefix, "duplex");
    }

    #[test]
    fn memory_budget_defaults_and_validation() {
        let c = Config::default();
        assert_eq!(c.memory.max_channels, 100_000);
        assert_eq!(c.memory.max_history_bytes, 64 << 20);
        assert_eq!(c.memory.max_history_entry, 32 << 10);
        assert_eq!(c.channels.max_history_bytes, 0);
        assert!(c.channels.anonymous_create);
        let c = Config::from_toml(
            "[memory]\nmax_channels = 5\nmax_history_bytes = 100000\n\
             [namespaces.a]\nmax_history_bytes = 40000\nanonymous_create = false\n",
        )
        .unwrap();
        assert_eq!(c.memory.max_channels, 5);
        let a = c.namespace("a").unwrap();
        assert_eq!(a.max_history_bytes, 40_000);
        assert!(!a.anonymous_create);
        assert!(Config::from_toml("[memory]\nmax_channels = 0").is_err());
        assert!(Config::from_toml("[memory]\nmax_history_entry = 0").is_err());
        assert!(Config::from_toml("[memory]\nmax_history_bytes = 1000").is_err());
        assert!(Config::from_toml("[channels]\nmax_history_bytes = 1000").is_err());
        assert!(
            Config::from_toml("[memory]\nmax_history_bytes = 2000\nmax_history_entry = 10").is_ok()
        );
    }

    #[test]
    fn the_queue_must_hold_one_publication_frame() {
        let e = Config::from_toml(
            "[limits]\nmax_message_size = 65536\nmax_publication_size = 65536\nmax_queue_bytes = 65536",
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_queue_bytes"), "{e}");
        assert!(Config::from_toml(
            "[limits]\nmax_publication_size = 32768\nmax_queue_bytes = 65536"
        )
        .is_ok());
        assert!(Config::from_toml("[limits]\nmax_reply_wait = \"0s\"").is_err());
        let c = Config::from_toml("[limits]\nmax_reply_wait = \"2s\"").unwrap();
        assert_eq!(c.limits.max_reply_wait, Duration::from_secs(2));
        assert_eq!(
            Config::default().limits.max_reply_wait,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::from_toml(
            "broker = \"redis\"\nredis_url = \"redis://app:s3cr%40t-pw@10.0.0.10:6379/0\"\n\
             [api]\nkey = \"0123456789\"\n[auth]\njwt_secret = \"jwt-secret-0123456789\"",
        )
        .unwrap();
        let shown = c.to_toml_redacted();
        for secret in ["0123456789", "jwt-secret", "s3cr", "t-pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("redis://app:<redacted>@10.0.0.10:6379/0"),
            "{shown}"
        );
        let debug = format!("{c:?}");
        for secret in ["0123456789", "jwt-secret", "s3cr", "t-pw"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_the_line() {
        let e = Config::from_toml("[auth]\njwt_secret = \"unterminated-secret-value")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("unterminated-secret-value"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn audiences_and_issuer() {
        let c = Config::from_toml(
            "[auth]\naudiences = [\"duplex\"]\nissuer = \"https://id.example\"\n\
             missing_channels = \"none\"",
        )
        .unwrap();
        assert_eq!(c.auth.audiences, ["duplex"]);
        assert_eq!(c.auth.missing_channels, MissingChannels::None);
        assert_eq!(
            Config::default().auth.missing_channels,
            MissingChannels::Auto
        );
        assert!(Config::from_toml("[auth]\naudiences = [\"\"]").is_err());
        assert!(Config::from_toml("[auth]\nissuer = \"\"").is_err());
        assert!(Config::from_toml("[auth]\nmissing_channels = \"some\"").is_err());
    }

    #[test]
    fn join_leave_settings_inherit_and_are_bounded() {
        let c = Config::from_toml(
            "[channels]\njoin_leave_interval = \"50ms\"\n\
             [namespaces.big]\njoin_leave_max_entries = 0\n\
             [namespaces.fast]\njoin_leave_interval = \"0s\"\n",
        )
        .unwrap();
        let big = c.namespace("big").unwrap();
        assert_eq!(big.join_leave_interval, Duration::from_millis(50));
        assert_eq!(big.join_leave_max_entries, 0);
        assert_eq!(
            c.namespace("fast").unwrap().join_leave_interval,
            Duration::ZERO
        );
        assert_eq!(
            Config::default().channels.join_leave_interval,
            Duration::from_millis(200)
        );
        assert!(Config::from_toml("[channels]\njoin_leave_interval = \"11s\"").is_err());
        assert!(Config::from_toml("[namespaces.a]\njoin_leave_max_entries = 10001").is_err());
        assert_eq!(Config::default().limits.max_json_depth, 32);
        assert!(Config::from_toml("[limits]\nmax_json_depth = 0").is_err());
        assert_eq!(
            Config::from_toml("[limits]\nmax_json_depth = 8")
                .unwrap()
                .limits
                .max_json_depth,
            8
        );
    }
}
