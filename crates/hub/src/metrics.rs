//! Prometheus metrics (`/metrics`) and the figures behind `/api/stats`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

/// A label set with one label.
pub(crate) type Label = [(&'static str, &'static str); 1];

/// A label set with two labels.
pub(crate) type Labels2 = [(&'static str, &'static str); 2];

/// The `result` labels of `duplex_hook_calls_total`.
const HOOK_RESULTS: [&str; 5] = ["allowed", "denied", "unavailable", "timeout", "busy"];

/// The `code` labels of `duplex_protocol_closes_total`, shown as 0 from the start.
const PROTOCOL_CLOSE_CODES: [&str; 4] = ["1002", "1007", "1009", "other"];

/// Why a WebSocket upgrade was refused, as the `reason` label of
/// `duplex_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    BadRequest,
    Version,
    Unauthorized,
    Origin,
    Capacity,
    PerIp,
    PerUser,
    ShuttingDown,
}

impl HandshakeFailure {
    fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Version => "version",
            Self::Unauthorized => "unauthorized",
            Self::Origin => "origin",
            Self::Capacity => "capacity",
            Self::PerIp => "per_ip",
            Self::PerUser => "per_user",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// Every metric of one hub.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_opened: Counter,
    pub(crate) subscriptions: Gauge,
    pub(crate) channels: Gauge,
    pub(crate) messages_received: Counter,
    pub(crate) messages_sent: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) publications: Counter,
    /// Retained (and reserved) history bytes of the memory broker.
    pub(crate) history_bytes: Gauge,
    /// Channels the memory broker holds (with history, presence or subscribers).
    pub(crate) broker_channels: Gauge,
    slow_consumer: Family<Label, Counter>,
    /// Publications superseded in slow subscribers' queues (`conflate`).
    conflated: Counter,
    /// Bytes queued for all connections together.
    pub(crate) queued_bytes: Gauge,
    handshake_failures: Family<Label, Counter>,
    websocket_upgrades: Family<Label, Counter>,
    command_errors: Family<Label, Counter>,
    limit_hits: Family<Label, Counter>,
    protocol_closes: Family<Label, Counter>,
    command_duration: Family<Label, Histogram>,
    tls_handshake_failures: Family<Label, Counter>,
    tls_reloads: Family<Label, Counter>,
    jwks_fetches: Family<Label, Counter>,
    /// Keys of the last good JWKS fetch.
    pub(crate) jwks_keys: Gauge,
    subscription_tokens_refused: Counter,
    user_limit_unchecked: Counter,
    hook_calls: Family<Labels2, Counter>,
    hook_duration: Family<Label, Histogram>,
}

fn hook_histogram() -> Histogram {
    // 100 µs .. ~26 s: a backend on the same host answers in well under a millisecond, one
    // across a network in milliseconds; the top buckets catch calls near `hooks.timeout`.
    Histogram::new(exponential_buckets(0.000_1, 4.0, 10))
}

fn duration_histogram() -> Histogram {
    // 10 µs .. ~1.3 s: commands on the memory broker take microseconds, a networked broker
    // adds round trips.
    Histogram::new(exponential_buckets(0.000_01, 4.0, 9))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("duplex");
        let m = Self {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            publications: Counter::default(),
            history_bytes: Gauge::default(),
            broker_channels: Gauge::default(),
            slow_consumer: Family::default(),
            conflated: Counter::default(),
            queued_bytes: Gauge::default(),
            handshake_failures: Family::default(),
            websocket_upgrades: Family::default(),
            command_errors: Family::default(),
            limit_hits: Family::default(),
            protocol_closes: Family::default(),
            command_duration: Family::new_with_constructor(duration_histogram),
            tls_handshake_failures: Family::default(),
            tls_reloads: Family::default(),
            jwks_fetches: Family::default(),
            jwks_keys: Gauge::default(),
            subscription_tokens_refused: Counter::default(),
            user_limit_unchecked: Counter::default(),
            hook_calls: Family::default(),
            hook_duration: Family::new_with_constructor(hook_histogram),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "connections_opened",
            "WebSocket connections accepted",
            m.connections_opened.clone(),
        );
        r.register(
            "subscriptions",
            "Active channel subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "channels",
            "Channels with local subscribers",
            m.channels.clone(),
        );
        r.register(
            "messages_received",
            "WebSocket messages received",
            m.messages_received.clone(),
        );
        r.register(
            "messages_sent",
            "WebSocket messages sent",
            m.messages_sent.clone(),
        );
        r.register(
            "bytes_received",
            "WebSocket payload bytes received",
            m.bytes_received.clone(),
        );
        r.register(
            "bytes_sent",
            "WebSocket payload bytes sent",
            m.bytes_sent.clone(),
        );
        r.register(
            "publications",
            "Publications accepted",
            m.publications.clone(),
        );
        r.register(
            "history_bytes",
            "Retained history bytes counted against memory.max_history_bytes (memory broker)",
            m.history_bytes.clone(),
        );
        r.register(
            "broker_channels",
            "Channels held by the memory broker (with history, presence or subscribers)",
            m.broker_channels.clone(),
        );
        r.register(
            "slow_consumer",
            "Slow-consumer actions (disconnect, or frames dropped under drop_oldest)",
            m.slow_consumer.clone(),
        );
        r.register(
            "conflated",
            "Publications superseded in a slow subscriber's queue by a newer one of the same \
             channel and key (slow_consumer = conflate)",
            m.conflated.clone(),
        );
        r.register(
            "queued_bytes",
            "Bytes waiting in the outbound queues of all connections (each bounded by \
             limits.max_queue_bytes)",
            m.queued_bytes.clone(),
        );
        r.register(
            "handshake_failures",
            "Refused WebSocket upgrades by reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "websocket_upgrades",
            "Accepted WebSockets by HTTP version: 1.1 (Upgrade) or 2 (extended CONNECT, RFC 8441)",
            m.websocket_upgrades.clone(),
        );
        r.register(
            "command_errors",
            "Error replies by code",
            m.command_errors.clone(),
        );
        r.register(
            "limit_hits",
            "Inputs refused or cut off by a limit, by limit (see docs/security.md)",
            m.limit_hits.clone(),
        );
        r.register(
            "protocol_closes",
            "Connections the frame layer closed because the client broke the protocol, by close \
             code (1002 protocol error, 1007 invalid UTF-8, 1009 message too big)",
            m.protocol_closes.clone(),
        );
        r.register(
            "command_duration_seconds",
            "Time to execute a command, by type",
            m.command_duration.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (error) or did not finish within limits.header_timeout \
             (timeout)",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "tls_reloads",
            "Loads of the TLS certificate and key after a change or SIGHUP, by result (an error \
             keeps the previous pair)",
            m.tls_reloads.clone(),
        );
        r.register(
            "jwks_fetches",
            "Fetches of auth.jwks_url, by result: ok, unreachable (connect, TLS, timeout), \
             status (not 200), too_large, invalid (not a JWKS with a usable key); a failure \
             keeps the keys of the last good fetch",
            m.jwks_fetches.clone(),
        );
        r.register(
            "jwks_keys",
            "Verification keys held from the last good fetch of auth.jwks_url",
            m.jwks_keys.clone(),
        );
        r.register(
            "subscription_tokens_refused",
            "subscribe commands refused because their subscription token was missing or did \
             not verify",
            m.subscription_tokens_refused.clone(),
        );
        r.register(
            "user_limit_unchecked",
            "WebSockets admitted on the node-local limits.max_connections_per_user alone \
             because the shared broker could not count the user's connections on every node",
            m.user_limit_unchecked.clone(),
        );
        r.register(
            "hook_calls",
            "Backend hook calls by hook and result (allowed, denied, unavailable, timeout, busy); \
             hook=\"events\" counts event batches (allowed: taken)",
            m.hook_calls.clone(),
        );
        r.register(
            "hook_duration_seconds",
            "Time of a backend hook call, by hook, from the call to its verdict or failure",
            m.hook_duration.clone(),
        );
        let hooks = crate::hooks::Hook::ALL.map(crate::hooks::Hook::as_str);
        for hook in hooks.into_iter().chain(["events"]) {
            for result in HOOK_RESULTS {
                let _ = m
                    .hook_calls
                    .get_or_create(&[("hook", hook), ("result", result)]);
            }
        }
        // Pre-create the common series so they show as 0 before the first event.
        for code in ErrorCode::ALL {
            let _ = m.command_errors.get_or_create(&[("code", code.as_str())]);
        }
        for code in PROTOCOL_CLOSE_CODES {
            let _ = m.protocol_closes.get_or_create(&[("code", code)]);
        }
        for version in ["1.1", "2"] {
            let _ = m.websocket_upgrades.get_or_create(&[("version", version)]);
        }
        let _ = m.slow_consumer.get_or_create(&[("action", "disconnect")]);
        let _ = m.slow_consumer.get_or_create(&[("action", "drop_oldest")]);
        Self { registry, ..m }
    }

    pub(crate) fn slow_consumer_disconnect(&self) {
        self.slow_consumer
            .get_or_create(&[("action", "disconnect")])
            .inc();
    }

    pub(crate) fn slow_consumer_dropped(&self, frames: u64) {
        self.slow_consumer
            .get_or_create(&[("action", "drop_oldest")])
            .inc_by(frames);
    }

    pub(crate) fn handshake_failure(&self, why: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    /// A TLS handshake that failed (`"error"`) or ran out of time (`"timeout"`).
    pub(crate) fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A fetch of `auth.jwks_url`, by result.
    pub(crate) fn jwks_fetch(&self, result: &'static str) {
        self.jwks_fetches.get_or_create(&[("result", result)]).inc();
    }

    /// A WebSocket admitted without the cluster-wide per-user count (the broker failed).
    pub(crate) fn user_limit_unchecked(&self) {
        self.user_limit_unchecked.inc();
    }

    /// A `subscribe` refused for its subscription token.
    pub(crate) fn subscription_token_refused(&self) {
        self.subscription_tokens_refused.inc();
    }

    /// A reload of the TLS pair: `"ok"` or `"error"`.
    pub(crate) fn tls_reload(&self, result: &'static str) {
        self.tls_reloads.get_or_create(&[("result", result)]).inc();
    }

    /// Counts one accepted WebSocket, by the HTTP version of its request.
    pub(crate) fn websocket_upgrade(&self, version: axum::http::Version) {
        let label = if version == axum::http::Version::HTTP_2 {
            "2"
        } else {
            "1.1"
        };
        self.websocket_upgrades
            .get_or_create(&[("version", label)])
            .inc();
    }

    pub(crate) fn command_error(&self, code: ErrorCode) {
        self.command_errors
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }

    /// Counts one input that a limit refused or cut off. `limit` is the name listed in
    /// docs/security.md, e.g. `header_timeout`.
    pub(crate) fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&[("limit", limit)]).inc();
    }

    /// Counts one connection closed by the frame layer with `code` for a protocol violation.
    pub(crate) fn protocol_close(&self, code: u16) {
        let label = match code {
            1002 => "1002",
            1007 => "1007",
            1009 => "1009",
            _ => "other",
        };
        self.protocol_closes.get_or_create(&[("code", label)]).inc();
    }

    pub(crate) fn command_duration(&self, kind: &'static str, seconds: f64) {
        self.command_duration
            .get_or_create(&[("type", kind)])
            .observe(seconds);
    }

    /// Counts one backend hook call: its hook, its result label and how long it took.
    pub(crate) fn hook_call(&self, hook: &'static str, result: &'static str, seconds: f64) {
        self.hook_calls
            .get_or_create(&[("hook", hook), ("result", result)])
            .inc();
        self.hook_duration
            .get_or_create(&[("hook", hook)])
            .observe(seconds);
    }

    pub(crate) fn conflated(&self, publications: u64) {
        self.conflated.inc_by(publications);
    }

    pub(crate) fn conflated_total(&self) -> u64 {
        self.conflated.get()
    }

    pub(crate) fn slow_consumer_disconnects(&self) -> u64 {
        self.slow_consumer
            .get_or_create(&[("action", "disconnect")])
            .get()
    }

    pub(crate) fn slow_consumer_drops(&self) -> u64 {
        self.slow_consumer
            .get_or_create(&[("action", "drop_oldest")])
            .get()
    }

    pub(crate) fn handshake_failures_total(&self) -> u64 {
        [
            HandshakeFailure::BadRequest,
            HandshakeFailure::Version,
            HandshakeFailure::Unauthorized,
            HandshakeFailure::Origin,
            HandshakeFailure::Capacity,
            HandshakeFailure::PerIp,
            HandshakeFailure::PerUser,
            HandshakeFailure::ShuttingDown,
        ]
        .iter()
        .map(|w| {
            self.handshake_failures
                .get_or_create(&[("reason", w.as_str())])
                .get()
        })
        .sum()
    }

    /// The registry in the OpenMetrics text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
