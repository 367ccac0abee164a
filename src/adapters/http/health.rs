//! `/health` (liveness), `/health/ready` (readiness) and `/metrics`.
//!
//! Liveness says only that the process serves: a database or Valkey outage must not make the
//! kubelet restart every pod at once, so it does no I/O at all — it shows the dependencies as
//! last checked, by the background [`run_checks`] or the latest readiness probe. Readiness says
//! whether this pod should get traffic: both dependencies answer now (within [`PING_TIMEOUT`])
//! and it is not draining.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::core::Chat;
use crate::core::feed::RoomActivity;
use crate::core::ports::Circuit;
use crate::telemetry::metric;

/// How long a check waits for a dependency before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the dependencies are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether each dependency answered the last check.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checked {
    pub db: bool,
    pub valkey: bool,
}

/// Asks the database and the bus whether they answer.
pub async fn check(chat: &Chat) -> Checked {
    match tokio::time::timeout(PING_TIMEOUT, chat.ping()).await {
        Ok((store, bus)) => Checked {
            db: store.is_ok(),
            valkey: bus.is_ok(),
        },
        Err(_) => Checked::default(),
    }
}

/// Checks the dependencies every second until `shutdown`, publishing each result.
pub async fn run_checks(
    chat: Arc<Chat>,
    checked: Arc<watch::Sender<Checked>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        checked.send_replace(check(&chat).await);
    }
}

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
    /// The database circuit breaker: `closed`, `half_open` or `open`.
    breaker: &'static str,
    draining: bool,
}

fn word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

pub async fn get_health(State(state): State<AppState>) -> impl IntoResponse {
    let checked = *state.checked.borrow();
    let (db, valkey) = (word(checked.db), word(checked.valkey));
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
    let checked = check(&state.chat).await;
    state.checked.send_replace(checked);
    let (db, valkey) = (word(checked.db), word(checked.valkey));
    // Read after the ping, which may have been the breaker's probe.
    let circuit = state.chat.circuit();
    let ready = !draining && checked.db && checked.valkey && circuit != Circuit::Open;
    let breaker = match circuit {
        Circuit::Closed => "closed",
        Circuit::HalfOpen => "half_open",
        Circuit::Open => "open",
    };
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
            breaker,
            draining,
        }),
    )
}

pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = crate::telemetry::metrics_handle().render();
    render_rooms(
        &mut body,
        &state.instance,
        &state.chat.busiest_rooms(TOP_ROOMS),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

/// Rooms named in `/metrics`: each pod's busiest, so the label set stays bounded however many
/// rooms exist. A room that drops out of them goes stale in Prometheus, as a series should.
const TOP_ROOMS: usize = 20;

/// Appends the per-room series in the Prometheus text format. They are rendered from the feeds
/// at each scrape rather than recorded, so a room this pod no longer carries leaves no series.
/// (Room names are `[A-Za-z0-9_-]`: nothing to escape.)
fn render_rooms(body: &mut String, instance: &str, rooms: &[RoomActivity]) {
    use std::fmt::Write;
    type Value = fn(&RoomActivity) -> i64;
    let series: [(&str, &str, &str, Value); 2] = [
        (
            metric::ROOM_MEMBERS,
            "gauge",
            "Members connected to this pod, in the pod's busiest rooms",
            |room| room.members as i64,
        ),
        (
            metric::ROOM_MESSAGES,
            "counter",
            "Messages ever sent to the room (its last seq), in the pod's busiest rooms",
            |room| room.last_seq,
        ),
    ];
    // The exporter escapes its own copy of this label; INSTANCE_ID is free-form.
    let instance = instance
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    for (name, kind, help, value) in series {
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for room in rooms {
            let _ = writeln!(
                body,
                "{name}{{instance_id=\"{instance}\",room=\"{}\"}} {}",
                room.room.as_str(),
                value(room)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::names::RoomName;

    #[test]
    fn busiest_rooms_are_rendered_in_the_text_format_with_the_instance_escaped() {
        let mut body = String::new();
        let lobby = RoomActivity {
            room: RoomName::parse("lobby").unwrap(),
            members: 3,
            last_seq: 42,
        };
        render_rooms(&mut body, "pod\"1", &[lobby]);
        let series: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                r#"chat_room_members{instance_id="pod\"1",room="lobby"} 3"#,
                r#"chat_room_messages_total{instance_id="pod\"1",room="lobby"} 42"#,
            ]
        );
        assert!(body.contains("# TYPE chat_room_members gauge\n"));
        assert!(body.contains("# TYPE chat_room_messages_total counter\n"));
    }
}
