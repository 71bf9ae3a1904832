//! The `[hooks]` table and the `hooks` table of a namespace.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backend hooks: the application's HTTP endpoints that decide who connects, subscribes,
/// publishes, what an `rpc` answers and how long a connection they admitted lives (see
/// `docs/hooks.md`). Each hook is off while its URL
/// is not set.
///
/// ```
/// let config = duplex_hub::Config::from_toml(r#"
///     [hooks]
///     connect = "http://127.0.0.1:3000/duplex/connect"
///     subscribe = "http://127.0.0.1:3000/duplex/subscribe"
///     headers = ["cookie", "x-forwarded-for"]
///     timeout = "2s"
///     [namespaces.public.hooks]
///     subscribe = ""      # no subscribe hook for public:* channels
/// "#).unwrap();
/// assert_eq!(config.hooks.timeout, std::time::Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HooksConfig {
    /// Called once per WebSocket, after the upgrade and before `welcome`. Default: none
    /// (`""` is none too, for every hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Called for each client `subscribe` (namespaces may override it). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<String>,
    /// Called for each client `publish` (namespaces may override it). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// Answers the `rpc` command (a namespace's hook answers the methods `NAME:...`).
    /// Default: none, and `rpc` gets `not_available`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    /// Asked when a connection whose deadline the `connect` hook (or an earlier `refresh`
    /// call) set reaches it: the answer extends the connection or ends it. Default: none,
    /// and such a connection is closed at its deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// The pause after a failed `refresh` call before the next attempt; after
    /// 6 failed attempts in a row the connection is closed as expired. Default
    /// 10 s, between 100 ms and 5 min.
    #[serde(with = "humantime_serde")]
    pub refresh_retry: Duration,
    /// The client's upgrade-request headers passed to every hook of its connection, by
    /// name (an allowlist, case-insensitive), e.g. `["cookie", "authorization"]`. Headers
    /// that describe the hop or the body (`host`, `content-length`, `connection`, ...) may
    /// not be listed. Default: none.
    pub headers: Vec<String>,
    /// Time for one hook call, connecting and reading the reply included; past it the
    /// caller gets `backend_timeout` (close 4504 for `connect`). Default 5 s, at most 60 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Hook calls in flight on this node at once; one more gets `backend_busy` at once
    /// (close 4503 for `connect`) rather than waiting. Default 1000.
    pub max_in_flight: usize,
    /// Largest reply body, in bytes; a larger one is a failed call (`backend_unavailable`).
    /// Default 64 KiB; with the frame around it, it must fit in `limits.max_queue_bytes`.
    pub max_reply_bytes: usize,
    /// Where backend events (connect, disconnect, subscribe, unsubscribe, occupied,
    /// vacated) are POSTed in batches, retried until taken. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// Most events in one batch. Default 100, at most 10 000.
    pub events_batch: usize,
    /// How long the first event of a batch waits for others before the batch is sent.
    /// Default 100 ms, at most 10 s.
    #[serde(with = "humantime_serde")]
    pub events_interval: Duration,
    /// Events waiting to be sent (the batch being retried included); one more is dropped
    /// and counted in `duplex_limit_hits_total{limit="hook_events_queue"}`. Default 10 000.
    pub events_queue: usize,
    /// The longest pause between two attempts to send a batch; pauses double from 100 ms up
    /// to it. Default 10 s, between 100 ms and 5 min.
    #[serde(with = "humantime_serde")]
    pub events_max_backoff: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            connect: None,
            subscribe: None,
            publish: None,
            rpc: None,
            refresh: None,
            refresh_retry: Duration::from_secs(10),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            max_in_flight: 1000,
            max_reply_bytes: 64 * 1024,
            events: None,
            events_batch: 100,
            events_interval: Duration::from_millis(100),
            events_queue: 10_000,
            events_max_backoff: Duration::from_secs(10),
        }
    }
}

/// A namespace's own hooks (`[namespaces.NAME.hooks]`): each one set replaces the `[hooks]`
/// one for the namespace's channels (and, for `rpc`, the methods `NAME:...`); `""` turns the
/// hook off there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NamespaceHooks {
    /// The `subscribe` hook for the namespace's channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<String>,
    /// The `publish` hook for the namespace's channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// The `rpc` hook for methods named `NAME:...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
}

/// The longest hook timeout accepted: a connection waits for its `connect` hook before it is
/// served, and a command for its hook, so a longer one would hold them past what any client
/// waits for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts of the `refresh` hook for one deadline: a backend that fails (or times out, or
/// answers garbage) this many times in a row, `hooks.refresh_retry` apart, ends the
/// connection as if it had answered `expired`.
pub(crate) const REFRESH_ATTEMPTS: u32 = 6;

/// Headers that describe the hook request itself (its hop, its body, its target) or the
/// WebSocket handshake: passing the client's would corrupt the request (RFC 9110 §7.6.1,
/// RFC 9112 §6) or mean nothing to the backend.
const REFUSED_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "expect",
];

impl HooksConfig {
    /// Whether any of the `[hooks]` URLs is set.
    pub(crate) fn any(&self) -> bool {
        [
            &self.connect,
            &self.subscribe,
            &self.publish,
            &self.rpc,
            &self.refresh,
            &self.events,
        ]
        .into_iter()
        .any(|u| u.as_deref().is_some_and(|u| !u.is_empty()))
    }

    /// Checks URLs, header names and ranges; `max_queue_bytes` is `limits.max_queue_bytes`,
    /// checked against `max_reply_bytes` only when some hook is set (`hooks_used`), so a
    /// small queue without hooks stays a valid configuration.
    pub(crate) fn validate(&self, max_queue_bytes: usize, hooks_used: bool) -> Result<(), String> {
        for (name, url) in [
            ("connect", &self.connect),
            ("subscribe", &self.subscribe),
            ("publish", &self.publish),
            ("rpc", &self.rpc),
            ("refresh", &self.refresh),
            ("events", &self.events),
        ] {
            if let Some(url) = url.as_deref().filter(|u| !u.is_empty()) {
                check_url(url).map_err(|e| format!("hooks.{name}: {e}"))?;
            }
        }
        for h in &self.headers {
            let lower = h.to_ascii_lowercase();
            if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(format!("hooks.headers: {h:?} is not a header name"));
            }
            if REFUSED_HEADERS.contains(&lower.as_str()) || lower.starts_with("sec-websocket-") {
                return Err(format!(
                    "hooks.headers: {h:?} describes the request itself and cannot be passed on"
                ));
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err("hooks.timeout must be between 1ms and 60s".to_owned());
        }
        if self.events_batch == 0 || self.events_batch > 10_000 {
            return Err("hooks.events_batch must be between 1 and 10000".to_owned());
        }
        if self.events_queue < self.events_batch {
            return Err("hooks.events_queue must be at least hooks.events_batch".to_owned());
        }
        if self.events_interval > Duration::from_secs(10) {
            return Err("hooks.events_interval must be at most 10s".to_owned());
        }
        if self.events_max_backoff < Duration::from_millis(100)
            || self.events_max_backoff > Duration::from_secs(300)
        {
            return Err("hooks.events_max_backoff must be between 100ms and 5m".to_owned());
        }
        if self.refresh_retry < Duration::from_millis(100)
            || self.refresh_retry > Duration::from_secs(300)
        {
            return Err("hooks.refresh_retry must be between 100ms and 5m".to_owned());
        }
        if self.max_in_flight == 0 {
            return Err("hooks.max_in_flight must be at least 1".to_owned());
        }
        // A reply becomes one frame (an rpc `result`, a publication's new `data`) that must
        // fit in the outbound queue with its envelope.
        let too_big = hooks_used && self.max_reply_bytes.saturating_add(4096) > max_queue_bytes;
        if self.max_reply_bytes == 0 || too_big {
            return Err(format!(
                "hooks.max_reply_bytes must be between 1 and limits.max_queue_bytes - 4096 ({})",
                max_queue_bytes.saturating_sub(4096)
            ));
        }
        Ok(())
    }
}

impl NamespaceHooks {
    /// Whether any of the namespace's URLs is set (not `""`).
    pub(crate) fn any(&self) -> bool {
        [&self.subscribe, &self.publish, &self.rpc]
            .into_iter()
            .any(|u| u.as_deref().is_some_and(|u| !u.is_empty()))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("subscribe", &self.subscribe),
            ("publish", &self.publish),
            ("rpc", &self.rpc),
        ] {
            match url.as_deref() {
                None | Some("") => {}
                Some(url) => {
                    check_url(url).map_err(|e| format!("hooks.{name}: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// A hook URL: absolute `http://` with a host. `https://` is refused: the hub's client
/// speaks plain HTTP/1.1 to backends on the same host or private network (put a local TLS
/// proxy in between to reach one further away).
pub(crate) fn check_url(url: &str) -> Result<axum::http::Uri, String> {
    // `user:password@` would never be sent (the client sets no Authorization from it) and
    // would print with the configuration: refused, before any error could echo the URL.
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    if authority
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|a| a.contains('@'))
    {
        return Err("a hook URL may not hold credentials (user@host)".to_owned());
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported for hooks; use http:// to a backend on a \
                 private network"
            ))
        }
        _ => return Err(format!("{url:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }

    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http_with_a_host() {
        assert!(check_url("http://127.0.0.1:3000/connect").is_ok());
        assert!(check_url("https://app.example/connect")
            .unwrap_err()
            .contains("https"));
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("/connect").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("http://127.0.0.1/hook/@me").is_ok());
        let e = check_url("ftp://user:pw@127.0.0.1/hook").unwrap_err();
        assert!(
            !e.contains("pw"),
            "the error does not echo the password: {e}"
        );
    }

    #[test]
    fn validation_refuses_hop_headers_and_bad_ranges() {
        let ok = HooksConfig {
            headers: vec!["Cookie".into(), "x-forwarded-for".into()],
            ..HooksConfig::default()
        };
        assert_eq!(ok.validate(1 << 20, true), Ok(()));
        for bad in ["Host", "content-length", "Sec-WebSocket-Key", "bad header"] {
            let c = HooksConfig {
                headers: vec![bad.into()],
                ..HooksConfig::default()
            };
            assert!(c.validate(1 << 20, true).is_err(), "{bad}");
        }
        let slow = HooksConfig {
            timeout: Duration::from_secs(61),
            ..HooksConfig::default()
        };
        assert!(slow.validate(1 << 20, true).is_err());
        let big = HooksConfig::default();
        assert!(
            big.validate(64 * 1024, true).is_err(),
            "reply must fit the queue"
        );
        assert_eq!(
            big.validate(64 * 1024, false),
            Ok(()),
            "unless no hook is set"
        );
        let none = HooksConfig {
            max_in_flight: 0,
            ..HooksConfig::default()
        };
        assert!(none.validate(1 << 20, true).is_err());
    }

    #[test]
    fn the_refresh_hook_is_read_from_toml() {
        let config = crate::Config::from_toml(
            r#"
            [hooks]
            refresh = "http://127.0.0.1:3000/refresh"
            refresh_retry = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.hooks.refresh.as_deref(),
            Some("http://127.0.0.1:3000/refresh")
        );
        assert_eq!(config.hooks.refresh_retry, Duration::from_millis(250));
        assert!(crate::Config::from_toml("[hooks]\nrefresh = \"https://x/\"\n").is_err());
        assert!(crate::Config::from_toml("[hooks]\nrefresh_retry = \"1ms\"\n").is_err());
    }

    #[test]
    fn the_refresh_hook_is_validated_like_the_others() {
        let ok = HooksConfig {
            refresh: Some("http://127.0.0.1:3000/refresh".into()),
            ..HooksConfig::default()
        };
        assert!(ok.any());
        assert_eq!(ok.validate(1 << 20, true), Ok(()));
        let off = HooksConfig {
            refresh: Some(String::new()),
            ..HooksConfig::default()
        };
        assert!(!off.any());
        assert_eq!(off.validate(1 << 20, true), Ok(()));
        let https = HooksConfig {
            refresh: Some("https://app.example/refresh".into()),
            ..HooksConfig::default()
        };
        assert!(https
            .validate(1 << 20, true)
            .unwrap_err()
            .contains("hooks.refresh"));
        for retry in [Duration::from_millis(99), Duration::from_secs(301)] {
            let c = HooksConfig {
                refresh_retry: retry,
                ..HooksConfig::default()
            };
            assert!(c
                .validate(1 << 20, true)
                .unwrap_err()
                .contains("refresh_retry"));
        }
    }

    #[test]
    fn an_empty_namespace_hook_is_off_not_invalid() {
        let ns = NamespaceHooks {
            subscribe: Some(String::new()),
            publish: Some("https://x/".into()),
            rpc: None,
        };
        assert!(ns.validate().unwrap_err().contains("hooks.publish"));
    }
}
