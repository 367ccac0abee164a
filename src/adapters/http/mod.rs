//! The browser adapter: the JSON API, Server-Sent Events, health, metrics and the web page, over
//! the same core as TCP.

mod api;
mod auth;
mod error;
pub mod framing;
pub mod health;
mod listener;
pub mod openapi;
mod sse;
mod web;

pub use sse::StreamRequest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use super::Slots;
use crate::core::ports::StoreError;
use crate::core::{Chat, Error};
use crate::telemetry::metric;
use error::ApiError;

/// The largest request body accepted (a 2,000-character message in JSON is far below it).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a non-streaming request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP connections allowed beyond MAX_CONNECTIONS: when streams fill the pod's slots, plain
/// requests — health probes, scrapes, API calls — still get a connection (and a stream past the
/// cap gets its 503 rather than a refused connection).
const SPARE_CONNECTIONS: usize = 256;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub chat: Arc<Chat>,
    /// Cancelled when the pod starts draining: readiness turns 503, streams end.
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub instance: Arc<str>,
    pub session_idle_secs: i64,
    /// WRITE_COALESCE_MS: after a stream is written messages, how long what follows is gathered.
    pub write_coalesce: Duration,
    /// MAX_CONNECTIONS, shared with the TCP adapter: each open stream holds a slot.
    pub slots: Slots,
    /// The API description, made once at start ([`openapi::document`]).
    pub openapi: Arc<serde_json::Value>,
    /// The dependencies as last checked ([`health::run_checks`] and readiness probes).
    pub checked: Arc<tokio::sync::watch::Sender<health::Checked>>,
}

/// How the HTTP front bounds its clients.
#[derive(Clone, Copy, Debug)]
pub struct Front {
    pub idle_timeout: Duration,
    pub head_timeout: Duration,
    pub write_timeout: Duration,
    /// TCP keepalive idle time for client sockets.
    pub keepalive: Duration,
    pub max_connections: usize,
}

/// Every route, with its middleware.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/connect", post(api::post_connect))
        .route("/api/disconnect", post(api::post_disconnect))
        .route("/api/command", post(api::post_command))
        .route("/api/message", post(api::post_message))
        .route("/api/rooms", get(api::get_rooms))
        .route("/api/rooms/{room}/history", get(api::get_history))
        .route("/api/openapi.json", get(openapi::get_openapi))
        .route("/api/health", get(health::get_health))
        .route("/health", get(health::get_health))
        .route("/health/ready", get(health::get_ready))
        .route("/metrics", get(health::get_metrics))
        .route("/", get(web::get_index))
        .layer(middleware::from_fn(time_limit));
    // Streams live as long as the client wants: no request timeout for them.
    let streams = Router::new()
        .route("/api/messages/{room}", get(sse::get_room_stream))
        .route("/api/events", get(sse::get_session_stream));
    api.merge(streams)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(record_duration))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every `/api` reply is in the envelope (SPEC §4), a path no route takes too.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::Body {
        status: StatusCode::NOT_FOUND,
        message: format!("No such route: {method} {}", uri.path()),
    }
}

/// As [`no_route`], for a route that does not take this method (axum adds the `Allow` header).
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::Body {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("Method not allowed: {method} {}", uri.path()),
    }
}

/// Bounds a request that is not a stream: past [`REQUEST_TIMEOUT`] it is answered in the
/// envelope like any failure — 504 where it may have done something (a message may be stored:
/// a retry with its client message id settles it; a command may have taken effect), 503 for any
/// other.
async fn time_limit(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let Ok(response) = tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await else {
        let secs = REQUEST_TIMEOUT.as_secs();
        let why = format!("no answer within {secs} s");
        let error = match path.as_str() {
            "/api/message" => Error::Unconfirmed(StoreError::Ambiguous(why)).into(),
            "/api/command" => error::ApiError::CommandTimedOut(secs),
            _ => Error::Store(StoreError::Unavailable(why)).into(),
        };
        return error.into_response();
    };
    response
}

/// `chat_http_request_duration_seconds{route,status}`; the route is the pattern, never the raw
/// path, so label values stay few.
async fn record_duration(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(metric::HTTP_REQUEST_DURATION, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves until `stop`, then finishes the requests in flight. Streams end earlier, on the drain
/// token in `state`, which also turns readiness to 503.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken, front: Front) {
    let limits = listener::Limits {
        idle: front.idle_timeout,
        head: front.head_timeout,
        write_stall: front.write_timeout,
        keepalive: front.keepalive,
        connections: front.max_connections + SPARE_CONNECTIONS,
    };
    listener::serve(listener, router(state), stop, limits).await;
}
