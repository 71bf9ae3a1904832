//! Backend hooks: the application's HTTP endpoints decide who connects, subscribes and
//! publishes, answer `rpc` commands, and extend the connections whose deadline they set
//! (`refresh`) (`docs/hooks.md`).
//!
//! Each call is one `POST` of a JSON body to the hook's URL, through one pooled HTTP/1.1
//! client per node, with the connection's allowlisted request headers. Every call is bounded:
//! at most `hooks.max_in_flight` at once on the node (one more fails at once with
//! [`HookError::Busy`], it does not queue), `hooks.timeout` for the whole exchange, and
//! `hooks.max_reply_bytes` of reply body. A backend that is down, slow or answers garbage
//! costs its callers a distinct error and nothing else: no lock is held across a call, and
//! connections and namespaces without hooks never wait for one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::{CommandError, ErrorCode};

pub(crate) mod config;
pub(crate) mod connect;
pub(crate) mod events;
pub(crate) mod refresh;
pub(crate) mod wire;

/// Idle pooled connections kept per backend host. More than the calls a backend serves at
/// once in a steady state; beyond it a burst's extra connections are closed when idle.
const MAX_IDLE_PER_HOST: usize = 64;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest denial message passed on to the client, in bytes.
pub(crate) const MAX_MESSAGE_LEN: usize = 256;

/// Longest close reason: a Close frame's body is at most 125 bytes, 2 of them the code
/// (RFC 6455 §5.5).
const MAX_REASON_LEN: usize = 123;

/// The close codes a backend may choose when it refuses or ends a connection; others are
/// replaced by [`CLOSE_FORBIDDEN`]. 4500–4999 are the hub's own (docs/protocol.md).
const BACKEND_CLOSE_CODES: std::ops::RangeInclusive<u16> = 4000..=4499;

/// Close code: the backend refused the connection without choosing a code.
pub(crate) const CLOSE_FORBIDDEN: u16 = 4403;
/// Close code: the `connect` hook failed (refused, 5xx, a reply that is not one).
pub(crate) const CLOSE_UNAVAILABLE: u16 = 4502;
/// Close code: `hooks.max_in_flight` calls were already running.
pub(crate) const CLOSE_BUSY: u16 = 4503;
/// Close code: the `connect` hook did not answer within `hooks.timeout`.
pub(crate) const CLOSE_TIMEOUT: u16 = 4504;

/// One of the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Connect,
    Subscribe,
    Publish,
    Rpc,
    Refresh,
}

impl Hook {
    /// Every hook, for metrics registration.
    pub(crate) const ALL: [Self; 5] = [
        Self::Connect,
        Self::Subscribe,
        Self::Publish,
        Self::Rpc,
        Self::Refresh,
    ];

    /// The `hook` label of the metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
            Self::Refresh => "refresh",
        }
    }
}

/// A call that produced no answer from the application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookError {
    /// `hooks.max_in_flight` calls were running already; this one was not made.
    #[error("too many backend calls in flight")]
    Busy,
    /// No complete reply within `hooks.timeout`.
    #[error("the backend did not answer in time")]
    Timeout,
    /// Refused, reset, a status other than 2xx, a reply too large or not JSON of the
    /// documented shape. The text is for the log; clients get a fixed message.
    #[error("the backend failed: {0}")]
    Unavailable(String),
}

impl HookError {
    /// The `result` label of `duplex_hook_calls_total`.
    fn label(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The error reply to a command whose hook failed. The message never carries the
    /// backend's own words: those may hold internals (addresses, stack traces).
    pub(crate) fn command_error(&self) -> CommandError {
        match self {
            Self::Busy => CommandError::new(ErrorCode::BackendBusy, "too many backend calls"),
            Self::Timeout => CommandError::new(
                ErrorCode::BackendTimeout,
                "the application did not answer in time",
            ),
            Self::Unavailable(_) => CommandError::new(
                ErrorCode::BackendUnavailable,
                "the application could not be asked",
            ),
        }
    }

    /// The close code and reason when the `connect` hook failed.
    pub(crate) fn close(&self) -> (u16, &'static str) {
        match self {
            Self::Busy => (CLOSE_BUSY, "backend busy"),
            Self::Timeout => (CLOSE_TIMEOUT, "backend timeout"),
            Self::Unavailable(_) => (CLOSE_UNAVAILABLE, "backend unavailable"),
        }
    }
}

/// What the application answered.
#[derive(Debug)]
pub(crate) enum Verdict<T> {
    /// `{"result": ...}`: go ahead, with what the result says.
    Allow(T),
    /// `{"error": {"message": ...}}`: refused; the client gets `forbidden` with the message
    /// (for `connect`: close 4403 with it as the reason).
    Deny(String),
    /// `{"disconnect": {"code": 4000-4499, "reason": ...}}`: close the connection.
    Disconnect(u16, String),
}

/// The connection details every hook call of one connection carries: the allowlisted
/// headers of its upgrade request and the client's address.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The headers of `hooks.headers`, as the client sent them.
    pub(crate) headers: HeaderMap,
    /// The client's address (after trusted proxies).
    pub(crate) ip: IpAddr,
}

/// The limits a result is checked against: the same as for a client's own input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_json_depth: usize,
    pub(crate) max_channels: usize,
    pub(crate) max_publication_size: usize,
}

/// A hook's `result`, checked before it is used: one that breaks a bound is a failed call
/// (`backend_unavailable`), counted as one.
pub(crate) trait Check {
    /// `Err` names what is wrong, for the log.
    fn check(&self, bounds: &Bounds) -> Result<(), String>;
}

/// A namespace's hooks after `""` and inheritance are resolved.
#[derive(Debug, Default)]
struct NamespaceUris {
    subscribe: Option<Uri>,
    publish: Option<Uri>,
    rpc: Option<Uri>,
}

/// The node's hook client.
#[derive(Debug)]
pub(crate) struct Hooks {
    client: Client<HttpConnector, Full<Bytes>>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    max_reply_bytes: usize,
    connect: Option<Uri>,
    refresh: Option<Uri>,
    /// The pause between two attempts of the `refresh` hook.
    refresh_retry: Duration,
    /// Keyed by namespace name, `""` for the default namespace.
    namespaces: HashMap<String, NamespaceUris>,
    /// The `[hooks]` hooks, for namespaces without their own and `rpc` methods without one.
    global: NamespaceUris,
    headers: Vec<HeaderName>,
    bounds: Bounds,
    /// The backend events queue, when `hooks.events` is set.
    events: Option<Arc<events::Events>>,
    metrics: Arc<Metrics>,
}

fn uri(url: Option<&str>) -> Result<Option<Uri>, ConfigError> {
    match url {
        None | Some("") => Ok(None),
        Some(url) => config::check_url(url)
            .map(Some)
            .map_err(ConfigError::Invalid),
    }
}

impl Hooks {
    /// The hooks of a validated configuration, on node `node`.
    pub(crate) fn new(
        config: &Config,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let h = &config.hooks;
        let global = NamespaceUris {
            subscribe: uri(h.subscribe.as_deref())?,
            publish: uri(h.publish.as_deref())?,
            rpc: uri(h.rpc.as_deref())?,
        };
        let mut namespaces = HashMap::new();
        for (name, ns) in &config.namespaces {
            let Some(own) = &ns.hooks else { continue };
            let pick = |own: &Option<String>, global: &Option<Uri>| match own {
                Some(url) => uri(Some(url)),
                None => Ok(global.clone()),
            };
            namespaces.insert(
                name.clone(),
                NamespaceUris {
                    subscribe: pick(&own.subscribe, &global.subscribe)?,
                    publish: pick(&own.publish, &global.publish)?,
                    rpc: pick(&own.rpc, &global.rpc)?,
                },
            );
        }
        let headers = h
            .headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| ConfigError::Invalid(format!("hooks.headers: {name:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(h.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .build(connector);
        let events = uri(h.events.as_deref())?.map(|uri| {
            Arc::new(events::Events::new(
                h,
                uri,
                client.clone(),
                node.to_owned(),
                metrics.clone(),
            ))
        });
        Ok(Self {
            client,
            events,
            in_flight: Arc::new(Semaphore::new(h.max_in_flight)),
            timeout: h.timeout,
            max_reply_bytes: h.max_reply_bytes,
            connect: uri(h.connect.as_deref())?,
            refresh: uri(h.refresh.as_deref())?,
            refresh_retry: h.refresh_retry,
            namespaces,
            global,
            headers,
            bounds: Bounds {
                max_json_depth: config.limits.max_json_depth,
                max_channels: config.limits.max_channels_per_connection,
                max_publication_size: config.limits.max_publication_size,
            },
            metrics,
        })
    }

    /// The backend events queue, when `hooks.events` is set.
    pub(crate) fn events(&self) -> Option<&Arc<events::Events>> {
        self.events.as_ref()
    }

    /// Queues a backend event, when `hooks.events` is set.
    pub(crate) fn emit(
        &self,
        kind: events::Kind,
        client: &Arc<str>,
        user: Option<&Arc<str>>,
        channel: Option<&str>,
    ) {
        if let Some(events) = &self.events {
            events.emit(kind, Some(client), user, channel);
        }
    }

    /// The `connect` hook, when one is configured.
    pub(crate) fn connect(&self) -> Option<&Uri> {
        self.connect.as_ref()
    }

    /// The `refresh` hook, when one is configured.
    pub(crate) fn refresh(&self) -> Option<&Uri> {
        self.refresh.as_ref()
    }

    /// The pause between two attempts of the `refresh` hook.
    pub(crate) fn refresh_retry(&self) -> Duration {
        self.refresh_retry
    }

    /// The hook of `hook` for the channel (or rpc method) namespace `namespace`, if any.
    pub(crate) fn endpoint(&self, hook: Hook, namespace: &str) -> Option<&Uri> {
        let uris = self.namespaces.get(namespace).unwrap_or(&self.global);
        match hook {
            Hook::Connect => self.connect.as_ref(),
            Hook::Refresh => self.refresh.as_ref(),
            Hook::Subscribe => uris.subscribe.as_ref(),
            Hook::Publish => uris.publish.as_ref(),
            Hook::Rpc => uris.rpc.as_ref(),
        }
    }

    /// The allowlisted headers of a client's request. Nothing else is kept, so what a
    /// connection holds for its hooks is bounded by `limits.max_header_bytes`.
    pub(crate) fn select_headers(&self, headers: &HeaderMap) -> HeaderMap {
        let mut selected = HeaderMap::new();
        for name in &self.headers {
            for value in headers.get_all(name) {
                selected.append(name.clone(), value.clone());
            }
        }
        selected
    }

    /// POSTs `body` to `uri` and reads the verdict, within every bound of the module.
    pub(crate) async fn call<B: Serialize, T: DeserializeOwned + Check>(
        &self,
        hook: Hook,
        uri: &Uri,
        context: &Context,
        body: &B,
    ) -> Result<Verdict<T>, HookError> {
        let started = Instant::now();
        let result = match Arc::clone(&self.in_flight).try_acquire_owned() {
            Err(_) => {
                self.metrics.limit_hit("hook_in_flight");
                Err(HookError::Busy)
            }
            Ok(_permit) => {
                match tokio::time::timeout(self.timeout, self.exchange(uri, context, body)).await {
                    Ok(result) => result,
                    Err(_) => Err(HookError::Timeout),
                }
            }
        };
        let label = match &result {
            Ok(Verdict::Allow(_)) => "allowed",
            Ok(Verdict::Deny(_) | Verdict::Disconnect(..)) => "denied",
            Err(e) => {
                tracing::warn!(hook = hook.as_str(), %uri, error = %e, "backend hook failed");
                e.label()
            }
        };
        self.metrics
            .hook_call(hook.as_str(), label, started.elapsed().as_secs_f64());
        result
    }

    async fn exchange<B: Serialize, T: DeserializeOwned + Check>(
        &self,
        uri: &Uri,
        context: &Context,
        body: &B,
    ) -> Result<Verdict<T>, HookError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| HookError::Unavailable(format!("cannot encode the request: {e}")))?;
        let mut request = Request::post(uri.clone())
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| HookError::Unavailable(e.to_string()))?;
        let headers = request.headers_mut();
        for (name, value) in &context.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| HookError::Unavailable(format!("{e:?}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HookError::Unavailable(format!("status {status}")));
        }
        let body = Limited::new(response.into_body(), self.max_reply_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    self.metrics.limit_hit("hook_reply_size");
                    HookError::Unavailable(format!(
                        "reply above hooks.max_reply_bytes ({})",
                        self.max_reply_bytes
                    ))
                } else {
                    HookError::Unavailable(format!("reading the reply: {e}"))
                }
            })?
            .to_bytes();
        match parse_reply::<T>(&body).map_err(HookError::Unavailable)? {
            Verdict::Allow(result) => match result.check(&self.bounds) {
                Ok(()) => Ok(Verdict::Allow(result)),
                Err(e) => Err(HookError::Unavailable(e)),
            },
            other => Ok(other),
        }
    }
}

pub(crate) const USER_AGENT: &str = concat!("duplex/", env!("CARGO_PKG_VERSION"));

/// `{"result": ...}`, `{"error": {...}}` or `{"disconnect": {...}}`. Unknown fields are
/// ignored so applications may add their own.
#[derive(Deserialize)]
struct Reply {
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Denial>,
    #[serde(default)]
    disconnect: Option<Disconnect>,
}

#[derive(Deserialize)]
struct Denial {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Disconnect {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: String,
}

/// Keeps `"result": null` as `Some` (an `rpc` may answer `null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn parse_reply<T: DeserializeOwned>(body: &[u8]) -> Result<Verdict<T>, String> {
    let reply: Reply =
        serde_json::from_slice(body).map_err(|e| format!("the reply is not a hook reply: {e}"))?;
    if let Some(d) = reply.disconnect {
        let code = d
            .code
            .filter(|c| BACKEND_CLOSE_CODES.contains(c))
            .unwrap_or(CLOSE_FORBIDDEN);
        return Ok(Verdict::Disconnect(
            code,
            truncate(d.reason, MAX_REASON_LEN),
        ));
    }
    if let Some(e) = reply.error {
        return Ok(Verdict::Deny(truncate(e.message, MAX_MESSAGE_LEN)));
    }
    let result = reply
        .result
        .ok_or("the reply has none of \"result\", \"error\", \"disconnect\"")?;
    serde_json::from_str(result.get())
        .map(Verdict::Allow)
        .map_err(|e| format!("\"result\" is not of the documented shape: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Shape {
        n: u32,
    }

    #[test]
    fn replies_are_allow_deny_or_disconnect() {
        let allow: Verdict<Shape> = parse_reply(br#"{"result":{"n":3},"extra":1}"#).unwrap();
        assert!(matches!(allow, Verdict::Allow(Shape { n: 3 })));
        let deny: Verdict<Shape> = parse_reply(br#"{"error":{"message":"no"}}"#).unwrap();
        assert!(matches!(deny, Verdict::Deny(m) if m == "no"));
        let bye: Verdict<Shape> =
            parse_reply(br#"{"disconnect":{"code":4001,"reason":"banned"}}"#).unwrap();
        assert!(matches!(bye, Verdict::Disconnect(4001, r) if r == "banned"));
        let null: Verdict<Box<RawValue>> = parse_reply(br#"{"result":null}"#).unwrap();
        assert!(matches!(null, Verdict::Allow(r) if r.get() == "null"));
    }

    #[test]
    fn codes_outside_the_backend_range_become_4403() {
        for code in ["1000", "4500", "4999", "3000"] {
            let body = format!(r#"{{"disconnect":{{"code":{code}}}}}"#);
            let v: Verdict<Shape> = parse_reply(body.as_bytes()).unwrap();
            assert!(
                matches!(v, Verdict::Disconnect(CLOSE_FORBIDDEN, _)),
                "{code}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_verdict() {
        for body in [
            &b"<html>"[..],
            b"{}",
            b"[]",
            br#"{"result":{"n":"x"}}"#,
            b"",
        ] {
            assert!(parse_reply::<Shape>(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let cut = truncate(reason, MAX_REASON_LEN);
        assert!(cut.len() <= MAX_REASON_LEN && cut.chars().all(|c| c == 'é'));
        let body = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(5000));
        let v: Verdict<Shape> = parse_reply(body.as_bytes()).unwrap();
        assert!(matches!(v, Verdict::Deny(m) if m.len() == MAX_MESSAGE_LEN));
    }
}
