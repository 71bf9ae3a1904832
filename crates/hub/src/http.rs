//! HTTP on the WebSocket's port: health, metrics, the embedded pages, and the server API's
//! routes (module `api`).

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::check_read;
use crate::assets::ASSETS;
use crate::Hub;

impl Hub {
    /// The hub's HTTP routes: `/ws`, `/api/*` (see `docs/api.md`), `/healthz`, `/metrics` and the pages. Serve it
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
            .merge(crate::api::routes(self))
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
