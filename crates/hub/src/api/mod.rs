//! The server API: `POST /api/<method>` with a JSON body and `Authorization: Bearer <api
//! key>`, for application backends; plus the older `GET /api/channels` and
//! `GET /api/stats`. `docs/api.md` documents each method and `docs/openapi.json` describes
//! them; the operations themselves are methods on [`Hub`] (`methods.rs`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::broker::{Publication, StreamPosition};
use crate::protocol::{CommandError, ErrorCode, PositionBody, Since};
use crate::Hub;

pub(crate) mod cluster;
pub(crate) mod idempotency;
mod methods;
pub(crate) mod registry;

pub use methods::{
    ClientOutcome, Done, HistoryRequest, HistoryResult, NodeInfo, Outcomes, PresenceStats, Target,
    DEFAULT_DISCONNECT_CODE, MAX_REASON_BYTES,
};

/// Every method of `POST /api/<method>`, in the order `docs/api.md` lists them.
pub const METHODS: [&str; 11] = [
    "publish",
    "broadcast",
    "history",
    "presence",
    "presence_stats",
    "channels",
    "info",
    "disconnect",
    "refresh",
    "subscribe",
    "unsubscribe",
];

/// An `/api` error: a status and `{"code","message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The HTTP status of a command error.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::OverCapacity => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        Self::new(status_of(e.code), e.code.as_str(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// Adds the `/api` routes, with their own body limit (`api.max_body_bytes`).
pub(crate) fn routes(hub: &Hub) -> Router<Hub> {
    let limit = hub.config().api.max_body_bytes;
    Router::new()
        .route(
            "/api/channels",
            get(legacy_channels).post(|s, h, b| call(s, h, "channels".to_owned(), b)),
        )
        .route("/api/stats", get(legacy_stats))
        .route(
            "/api/{method}",
            post(|s, h, Path(m): Path<String>, b| call(s, h, m, b)),
        )
        .layer(DefaultBodyLimit::max(limit))
}

/// Constant-time comparison, so the API key cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn check_key(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &hub.config().api.key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "disabled",
            "the HTTP API is disabled: no api.key is configured",
        ));
    };
    match bearer(headers) {
        Some(given) if same_secret(given.as_bytes(), key.as_bytes()) => Ok(()),
        _ => {
            hub.shared.metrics.limit_hit("api_key");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong Authorization: Bearer <api key>",
            ))
        }
    }
}

/// `GET /metrics`, `/api/channels` and `/api/stats` need the key with `api.protect_reads`.
pub(crate) fn check_read(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    if hub.config().api.protect_reads {
        check_key(hub, headers)
    } else {
        Ok(())
    }
}

async fn legacy_channels(State(hub): State<Hub>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_read(&hub, &headers)?;
    Ok(Json(json!({ "channels": hub.channels() })).into_response())
}

async fn legacy_stats(State(hub): State<Hub>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_read(&hub, &headers)?;
    Ok(Json(hub.stats()).into_response())
}

/// `POST /api/<method>`: the key first (an unknown method costs a stranger nothing but a
/// 401), then the method, then the body.
async fn call(
    State(hub): State<Hub>,
    headers: HeaderMap,
    method: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_key(&hub, &headers)?;
    if !METHODS.contains(&method.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_method",
            format!(
                "no API method {:?}; the methods are {}",
                truncate(&method, 64),
                METHODS.join(", ")
            ),
        ));
    }
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            hub.shared.metrics.limit_hit("api_body");
            ApiError::new(
                status,
                ErrorCode::TooLarge.as_str(),
                format!(
                    "the body is above api.max_body_bytes ({})",
                    hub.config().api.max_body_bytes
                ),
            )
        } else {
            ApiError::new(status, ErrorCode::BadRequest.as_str(), e.body_text())
        }
    })?;
    let value = match method.as_str() {
        "publish" => publish(&hub, &body).await?,
        "broadcast" => broadcast(&hub, &body).await?,
        "history" => history(&hub, &body).await?,
        "presence" => presence(&hub, &body).await?,
        "presence_stats" => presence_stats(&hub, &body).await?,
        "channels" => channels(&hub, &body).await?,
        "disconnect" => disconnect(&hub, &body).await?,
        "refresh" => refresh(&hub, &body).await?,
        "subscribe" => subscribe(&hub, &body, true).await?,
        "unsubscribe" => subscribe(&hub, &body, false).await?,
        _ => info(&hub, &body)?,
    };
    Ok(Json(value).into_response())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses a body: `bad_json` when it is not a JSON object, `bad_request` when a field is
/// missing, unknown or mistyped. An empty body is `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad =
        |code: ErrorCode, msg: String| ApiError::new(StatusCode::BAD_REQUEST, code.as_str(), msg);
    let text = std::str::from_utf8(body)
        .map_err(|_| bad(ErrorCode::BadJson, "the body is not UTF-8".into()))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    if !text.trim_start().starts_with('{') {
        return Err(bad(
            ErrorCode::BadJson,
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => bad(ErrorCode::BadRequest, e.to_string()),
        _ => bad(ErrorCode::BadJson, format!("invalid JSON: {e}")),
    })
}

/// Keeps an explicit `null` as `Some`: `"data": null` is a valid publication.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest.as_str(),
            format!("missing field {field:?}"),
        )
    })
}

fn to_value<T: Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal.as_str(),
            e.to_string(),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    /// The publication's key (see `Hub::publish_with_key`).
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: PublishBody = parse(body)?;
    let channel = required(b.channel, "channel")?;
    let data = required(b.data, "data")?;
    let pos = hub
        .publish_idempotent(
            &channel,
            data,
            b.key.as_deref(),
            b.idempotency_key.as_deref(),
        )
        .await?;
    to_value(PositionBody::new(&channel, &pos))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    channels: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    key: Option<String>,
}

async fn broadcast(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: BroadcastBody = parse(body)?;
    let channels = required(b.channels, "channels")?;
    let data = required(b.data, "data")?;
    let results = hub.broadcast(&channels, data, b.key.as_deref()).await?;
    let results: Vec<Value> = channels
        .iter()
        .zip(results)
        .map(|(channel, r)| match r {
            Ok(pos) => json!({ "channel": channel, "epoch": &*pos.epoch, "offset": pos.offset }),
            Err(e) => json!({
                "channel": channel,
                "error": { "code": e.code.as_str(), "message": e.message },
            }),
        })
        .collect();
    Ok(json!({ "results": results }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    channel: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Serialize)]
struct PublicationBody<'a> {
    offset: u64,
    data: &'a RawValue,
    from: Option<&'a str>,
}

fn publications(pubs: &[Publication]) -> Vec<PublicationBody<'_>> {
    pubs.iter()
        .map(|p| PublicationBody {
            offset: p.offset,
            data: &p.data,
            from: p.from.as_deref(),
        })
        .collect()
}

async fn history(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: HistoryBody = parse(body)?;
    let channel = required(b.channel, "channel")?;
    let mut request = HistoryRequest::latest().reverse(b.reverse);
    request.limit = b.limit;
    request.since = b.since;
    let h = hub.history(&channel, request).await?;
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        publications: Vec<PublicationBody<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        complete: Option<bool>,
    }
    let StreamPosition { epoch, offset } = &h.position;
    to_value(Body {
        channel: &channel,
        epoch,
        offset: *offset,
        publications: publications(&h.publications),
        complete: h.complete,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: Option<String>,
}

async fn presence(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: ChannelBody = parse(body)?;
    let channel = required(b.channel, "channel")?;
    let clients = hub.presence(&channel).await?;
    to_value(json!({ "channel": channel, "clients": clients }))
}

async fn presence_stats(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: ChannelBody = parse(body)?;
    let channel = required(b.channel, "channel")?;
    let stats = hub.presence_stats(&channel).await?;
    Ok(json!({ "channel": channel, "clients": stats.clients, "users": stats.users }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsBody {
    #[serde(default)]
    pattern: Option<String>,
}

async fn channels(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: ChannelsBody = parse(body)?;
    let channels = hub.channels_matching(b.pattern.as_deref()).await?;
    to_value(json!({ "channels": channels }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoBody {}

fn info(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let InfoBody {} = parse(body)?;
    to_value(json!({ "nodes": hub.info() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

fn target(user: Option<String>, client: Option<String>) -> Result<Target, ApiError> {
    match (user, client) {
        (Some(user), None) => Ok(Target::User(user)),
        (None, Some(client)) => Ok(Target::Client(client)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest.as_str(),
            "exactly one of \"user\" and \"client\" is needed",
        )),
    }
}

async fn disconnect(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: DisconnectBody = parse(body)?;
    let target = target(b.user, b.client)?;
    let code = b.code.unwrap_or(methods::DEFAULT_DISCONNECT_CODE);
    let reason = b.reason.as_deref().unwrap_or("disconnected by the server");
    let done = hub.disconnect(&target, code, reason).await?;
    Ok(json!({ "disconnected": done.here, "all_nodes": done.all_nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    client: Option<String>,
    channel: Option<String>,
}

/// `subscribe` (or, with `subscribe` false, `unsubscribe`): one entry per connection, with
/// the position it was told or why it refused.
async fn subscribe(hub: &Hub, body: &[u8], subscribe: bool) -> Result<Value, ApiError> {
    let b: SubscribeBody = parse(body)?;
    let target = target(b.user, b.client)?;
    let channel = required(b.channel, "channel")?;
    let outcomes = if subscribe {
        hub.subscribe(&target, &channel).await?
    } else {
        hub.unsubscribe(&target, &channel).await?
    };
    let done = outcomes.clients.iter().filter(|o| o.result.is_ok()).count();
    let clients: Vec<Value> = outcomes
        .clients
        .iter()
        .map(|o| match &o.result {
            Ok(Some(pos)) => {
                json!({ "client": o.client, "epoch": &*pos.epoch, "offset": pos.offset })
            }
            Ok(None) => json!({ "client": o.client }),
            Err(e) => json!({
                "client": o.client,
                "error": { "code": e.code.as_str(), "message": e.message },
            }),
        })
        .collect();
    let count = if subscribe {
        "subscribed"
    } else {
        "unsubscribed"
    };
    let mut reply = json!({
        "channel": channel,
        "clients": clients,
        "all_nodes": outcomes.all_nodes,
    });
    reply[count] = json!(done);
    Ok(reply)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    user: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    expire: bool,
}

async fn refresh(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let b: RefreshBody = parse(body)?;
    let user = required(b.user, "user")?;
    let exp = match (b.exp, b.expire) {
        (Some(exp), false) => Some(exp),
        (None, true) => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest.as_str(),
                "exactly one of \"exp\" and \"expire\": true is needed",
            ))
        }
    };
    let done = hub.refresh_user(&user, exp).await;
    Ok(json!({ "connections": done.here, "all_nodes": done.all_nodes }))
}
