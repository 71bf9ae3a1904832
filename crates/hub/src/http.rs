//! HTTP on the WebSocket's port: the API, health, metrics and the embedded pages.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::assets::ASSETS;
use crate::protocol::{CommandError, ErrorCode, PositionBody};
use crate::Hub;

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

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match e.code {
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::OverCapacity => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code.as_str(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl Hub {
    /// The hub's HTTP routes: `/ws`, `/api/*`, `/healthz`, `/metrics` and the pages. Serve it
    /// with `into_make_service_with_connect_info::<SocketAddr>()` so that per-IP limits see
    /// the peer address.
    ///
    /// Served this way, the router applies the upgrade checks, the API key, the body limit
    /// and the connection limits to WebSockets only. What happens before a request reaches
    /// it is the server's part, which [`crate::Server`] does and another server must do
    /// itself: the header timeout (`limits.header_timeout`), the head size limit
    /// (`limits.max_header_bytes`), the request timeout (`limits.request_timeout`),
    /// counting unfinished HTTP requests against the connection limits, and answering 503
    /// while shutting down.
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/api/publish", post(api_publish))
            .route("/api/channels", get(api_channels))
            .route("/api/stats", get(api_stats))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics));
        router = crate::ws::route(router);
        for asset in ASSETS {
            let a = *asset;
            router = router.route(
                a.path,
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, a.content_type),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        ],
                        a.body,
                    )
                }),
            );
        }
        let body_limit = self.config().limits.max_message_size + 1024;
        router
            .layer(DefaultBodyLimit::max(body_limit))
            .with_state(self.clone())
    }
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
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong Authorization: Bearer <api key>",
        )),
    }
}

fn check_read(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    if hub.config().api.protect_reads {
        check_key(hub, headers)
    } else {
        Ok(())
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: Option<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    /// The publication's key (see `Hub::publish_with_key`).
    #[serde(default)]
    key: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

async fn api_publish(
    State(hub): State<Hub>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&hub, &headers)?;
    let bad = |code, msg: String| ApiError::new(StatusCode::BAD_REQUEST, code, msg);
    let text =
        std::str::from_utf8(&body).map_err(|_| bad("bad_json", "the body is not UTF-8".into()))?;
    if !text.trim_start().starts_with('{') {
        return Err(bad("bad_json", "the body must be a JSON object".into()));
    }
    let parsed: PublishBody<'_> =
        serde_json::from_str(text).map_err(|e| bad("bad_json", format!("invalid JSON: {e}")))?;
    let channel = parsed
        .channel
        .ok_or_else(|| bad("bad_request", "missing field \"channel\"".into()))?;
    let data = parsed
        .data
        .ok_or_else(|| bad("bad_request", "missing field \"data\"".into()))?;
    let data =
        RawValue::from_string(data.get().to_owned()).map_err(|e| bad("bad_json", e.to_string()))?;
    let pos = hub
        .publish_with_key(&channel, data, parsed.key.as_deref())
        .await?;
    Ok(Json(PositionBody::new(&channel, &pos)).into_response())
}

async fn api_channels(State(hub): State<Hub>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_read(&hub, &headers)?;
    Ok(Json(serde_json::json!({ "channels": hub.channels() })).into_response())
}

async fn api_stats(State(hub): State<Hub>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_read(&hub, &headers)?;
    Ok(Json(hub.stats()).into_response())
}

async fn healthz(State(hub): State<Hub>) -> Response {
    if hub.is_shutting_down() {
        let body = serde_json::json!({ "status": "shutting_down" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else if let Err(reason) = hub.broker_health() {
        // Connections stay open, but publishing, subscribing and presence fail until the
        // broker is back: a load balancer should prefer other nodes.
        let body = serde_json::json!({ "status": "degraded", "broker": reason });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    }
}

async fn metrics(State(hub): State<Hub>, headers: HeaderMap) -> Response {
    if let Err(e) = check_read(&hub, &headers) {
        return e.into_response();
    }
    let mut response = Response::new(Body::from(hub.metrics_text()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
