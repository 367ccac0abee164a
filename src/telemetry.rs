//! Logs (tracing) and metrics (the `metrics` facade, exported in Prometheus format).
//!
//! Metric names are part of the contract (SPEC §7) and live here, described once, so that code
//! and dashboards cannot drift apart silently.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// The names of every metric the server exports.
pub mod metric {
    pub const CONNECTIONS: &str = "chat_connections";
    pub const CONNECTIONS_LIMIT: &str = "chat_connections_limit";
    pub const MESSAGES: &str = "chat_messages_total";
    pub const DELIVERIES: &str = "chat_deliveries_total";
    pub const DELIVERY_LATENCY: &str = "chat_delivery_latency_seconds";
    pub const COMMAND_DURATION: &str = "chat_command_duration_seconds";
    pub const HISTORY_REQUESTS: &str = "chat_history_requests_total";
    pub const BUS_PUBLISH_DURATION: &str = "chat_bus_publish_duration_seconds";
    pub const DROPPED: &str = "chat_dropped_total";
    pub const COMMIT_BATCH_SIZE: &str = "chat_commit_batch_size";
    pub const HTTP_REQUEST_DURATION: &str = "chat_http_request_duration_seconds";
    pub const BREAKER_STATE: &str = "chat_circuit_breaker_state";
    pub const DB_QUERY_DURATION: &str = "chat_db_query_duration_seconds";
    pub const DB_POOL_CONNECTIONS: &str = "chat_db_pool_connections";
    pub const GAP_REPAIRS: &str = "chat_gap_repairs_total";
    /// Per room, for the pod's busiest rooms only (rendered with `/metrics`, not recorded).
    pub const ROOM_MEMBERS: &str = "chat_room_members";
    pub const ROOM_MESSAGES: &str = "chat_room_messages_total";
}

/// Installs the tracing subscriber. Every line carries the instance id through the root span
/// that `main` enters.
pub fn init_logging(config: &Config) {
    // Config::load has checked the filter.
    let filter = EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match config.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    // Tests build several apps in one process; the first subscriber stays.
    let _ = installed;
}

/// Latency buckets from 50 µs to 10 s: sub-millisecond local delivery up to a stalled database.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the process-wide metrics recorder (once; later calls return the same handle).
pub fn metrics_handle() -> PrometheusHandle {
    install_metrics(None)
}

/// Installs the recorder, labelling every series with `instance_id` when given (the first call
/// decides; the process has one recorder). Returns its handle.
pub fn install_metrics(instance_id: Option<&str>) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            if let Some(id) = instance_id {
                builder = builder.add_global_label("instance_id", id);
            }
            let handle = builder
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metric::COMMIT_BATCH_SIZE.into()),
                        BATCH_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metric::*;
    describe_gauge!(
        CONNECTIONS,
        "Open client connections and streams, by transport."
    );
    describe_gauge!(
        CONNECTIONS_LIMIT,
        "MAX_CONNECTIONS: the most connections and streams this pod serves at once."
    );
    describe_counter!(
        MESSAGES,
        "Chat messages accepted, by the transport they came in on."
    );
    describe_counter!(DELIVERIES, "Events written to a receiver, by transport.");
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From a message's acceptance to its write to a receiver."
    );
    describe_histogram!(
        COMMAND_DURATION,
        Unit::Seconds,
        "Time to run a slash command, by command."
    );
    describe_counter!(
        HISTORY_REQUESTS,
        "History reads on join, by whether the pod cache had them."
    );
    describe_histogram!(
        BUS_PUBLISH_DURATION,
        Unit::Seconds,
        "Time to publish one event on the bus."
    );
    describe_counter!(
        DROPPED,
        "Connections, messages or events refused or cut off, by reason."
    );
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        "Messages stored per group-commit round trip."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Database circuit breaker: 0 closed, 1 half-open, 2 open."
    );
    describe_histogram!(
        DB_QUERY_DURATION,
        Unit::Seconds,
        "Database calls through the breaker, waiting for a connection included."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections by state (idle, active, max)."
    );
    describe_counter!(
        GAP_REPAIRS,
        "Gaps in a room's order filled from the store (a message the bus lost or delayed)."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration, by route pattern and status."
    );
}

/// Folds recorded histogram samples into their buckets every second, so memory stays bounded
/// however long it is between scrapes; and samples the process's own metrics (`process_*`: CPU,
/// resident memory, open file descriptors, threads) at the same pace.
///
/// Every delivery is a sample, and folding costs ~40 ns each: at 33,000 deliveries a second a
/// pod folding every 5 s spent 5–11 ms at a time on an async worker, and every task queued
/// behind it (deliveries, commits) waited that long. Folding each second, on a blocking thread,
/// leaves the workers free and keeps a scrape's own fold small too.
pub async fn run_metrics_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let process = metrics_process::Collector::default();
    process.describe();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    while shutdown.run_until_cancelled(every.tick()).await.is_some() {
        let (handle, process) = (handle.clone(), process.clone());
        let _ = tokio::task::spawn_blocking(move || {
            process.collect();
            handle.run_upkeep();
        })
        .await;
    }
}
