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
    /// Redis URL for `broker = "redis"`, e.g. `redis://127.0.0.1:6379/0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
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
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "duplex".to_owned(),
            presence_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }
}

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
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Accept connections without a token (as user `null`). Default `true`, so the demo works;
    /// turn it off in production when every client has a token.
    pub anonymous: bool,
    /// HS256 shared secret. Mutually exclusive with `jwt_public_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Origins allowed besides the server's own, e.g. `https://app.example.com`; `*` allows
    /// any. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

/// HTTP API settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Bearer key for `POST /api/publish`; the endpoint is disabled while unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Require the key for `GET /api/channels` and `GET /api/stats` too. Default `false`.
    pub protect_reads: bool,
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
    /// Largest incoming WebSocket message in bytes; larger ones close with 1009.
    /// Default 64 KiB.
    pub max_message_size: usize,
    /// Largest serialized `data` of one publication in bytes. Default 32 KiB.
    pub max_publication_size: usize,
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
    pub max_queue_bytes: usize,
    /// Error replies allowed within 10 s before the connection is closed with 1008.
    /// Default 20.
    pub max_errors: u32,
    /// Addresses of reverse proxies (e.g. nginx) whose `X-Forwarded-For` header is believed:
    /// a connection from one of them counts against the per-IP limit of the client address
    /// that the proxy appended last. From any other peer the header is ignored. Default none.
    pub trusted_proxies: Vec<std::net::IpAddr>,
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

/// What to do with a subscriber whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1013 (try again later).
    Disconnect,
    /// Drop the oldest queued publications of namespaces with this policy to make room.
    DropOldest,
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
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            jwt_secret: None,
            jwt_public_key_file: None,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_message_size: 64 * 1024,
            max_publication_size: 32 * 1024,
            max_json_depth: crate::protocol::DEFAULT_MAX_JSON_DEPTH,
            commands_per_second: 100,
            commands_burst: 200,
            max_channels_per_connection: 128,
            max_queue_bytes: 1024 * 1024,
            max_errors: 20,
            trusted_proxies: Vec::new(),
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
            presence: true,
            join_leave: true,
            join_leave_interval: Duration::from_millis(200),
            join_leave_max_entries: 100,
            client_publish: true,
            slow_consumer: SlowConsumerPolicy::Disconnect,
        }
    }
}

impl NamespaceOverrides {
    /// The `ticker` namespace of the default configuration: server-side publications only,
    /// short history, no presence, drop-oldest for slow readers.
    pub fn ticker() -> Self {
        Self {
            history_size: Some(20),
            history_ttl: Some(Duration::from_secs(60)),
            presence: Some(false),
            join_leave: Some(false),
            join_leave_interval: None,
            join_leave_max_entries: None,
            client_publish: Some(false),
            slow_consumer: Some(SlowConsumerPolicy::DropOldest),
        }
    }

    fn apply(&self, base: &NamespaceConfig) -> NamespaceConfig {
        NamespaceConfig {
            history_size: self.history_size.unwrap_or(base.history_size),
            history_ttl: self.history_ttl.unwrap_or(base.history_ttl),
            presence: self.presence.unwrap_or(base.presence),
            join_leave: self.join_leave.unwrap_or(base.join_leave),
            join_leave_interval: self.join_leave_interval.unwrap_or(base.join_leave_interval),
            join_leave_max_entries: self
                .join_leave_max_entries
                .unwrap_or(base.join_leave_max_entries),
            client_publish: self.client_publish.unwrap_or(base.client_publish),
            slow_consumer: self.slow_consumer.unwrap_or(base.slow_consumer),
        }
    }
}

impl Config {
    /// Parses a TOML document; missing keys take their defaults. The result is validated.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
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

    /// The configuration as TOML, with secrets replaced by `"<redacted>"`.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        let redacted = || Some("<redacted>".to_owned());
        if shown.auth.jwt_secret.is_some() {
            shown.auth.jwt_secret = redacted();
        }
        if shown.api.key.is_some() {
            shown.api.key = redacted();
        }
        // Serializing plain data structs to TOML only fails for unsupported types, which
        // `Config` does not contain.
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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
        if self.websocket.ping_interval.is_zero() || self.websocket.pong_timeout.is_zero() {
            return invalid("websocket.ping_interval and pong_timeout must be positive".into());
        }
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key_file.is_some() {
            return invalid(
                "auth.jwt_secret and auth.jwt_public_key_file are mutually exclusive".into(),
            );
        }
        if matches!(&self.auth.jwt_secret, Some(s) if s.len() < 16) {
            return invalid("auth.jwt_secret must be at least 16 bytes".into());
        }
        if matches!(&self.api.key, Some(k) if k.len() < 8) {
            return invalid("api.key must be at least 8 bytes".into());
        }
        if let Some(node) = &self.node {
            if node.is_empty() || node.len() > 64 || !node.bytes().all(is_id_byte) {
                return invalid("node must be 1-64 characters of [A-Za-z0-9_-]".into());
            }
        }
        for name in self.namespaces.keys() {
            if name.is_empty() || name.len() > 64 || !name.bytes().all(is_id_byte) {
                return invalid(format!(
                    "namespace {name:?}: names are 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
        }
        for (name, ns) in self.namespace_configs() {
            if ns.history_size > 100_000 {
                return invalid(format!("namespace {name:?}: history_size above 100000"));
            }
            if ns.history_size > 0 && ns.history_ttl.is_zero() {
                return invalid(format!("namespace {name:?}: history_ttl must be positive"));
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
        if self.broker == BrokerKind::Redis && self.redis_url.is_none() {
            return invalid("broker = \"redis\" needs redis_url".into());
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
        Ok(())
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
    fn secrets_are_redacted() {
        let c = Config::from_toml("[api]\nkey = \"0123456789\"").unwrap();
        let shown = c.to_toml_redacted();
        assert!(!shown.contains("0123456789"));
        assert!(shown.contains("<redacted>"));
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
