//! `/health` (liveness), `/health/ready` (readiness) and `/metrics`.
//!
//! Liveness says only that the process serves: a database or Valkey outage must not make the
//! kubelet restart every pod at once. Readiness says whether this pod should get traffic: both
//! dependencies answer and it is not draining.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::adapters::http::AppState;

/// How long readiness waits for a dependency before calling it down.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Serialize)]
struct Liveness {
    status: &'static str,
    db: &'static str,
    valkey: &'static str,
    connections: usize,
    uptime: u64,
    instance: String,
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    db: &'static str,
    valkey: &'static str,
    draining: bool,
}

/// Whether the database and the bus answer, each as "up" or "down".
async fn dependencies(state: &AppState) -> (&'static str, &'static str) {
    let word = |ok: bool| if ok { "up" } else { "down" };
    match tokio::time::timeout(PING_TIMEOUT, state.chat.ping()).await {
        Ok((store, bus)) => (word(store.is_ok()), word(bus.is_ok())),
        Err(_) => ("down", "down"),
    }
}

pub async fn get_health(State(state): State<AppState>) -> impl IntoResponse {
    let (db, valkey) = dependencies(&state).await;
    Json(Liveness {
        status: "ok",
        db,
        valkey,
        connections: state.chat.connections(),
        uptime: state.started.elapsed().as_secs(),
        instance: state.instance.to_string(),
    })
}

pub async fn get_ready(State(state): State<AppState>) -> impl IntoResponse {
    let draining = state.shutdown.is_cancelled();
    let (db, valkey) = dependencies(&state).await;
    let ready = !draining && db == "up" && valkey == "up";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            db,
            valkey,
            draining,
        }),
    )
}

pub async fn get_metrics() -> impl IntoResponse {
    let body = crate::telemetry::metrics_handle().render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}
