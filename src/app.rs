//! Wiring: picks the Store and the bus the configuration asks for, binds the listeners, and runs
//! everything until the shutdown token is cancelled, then drains in a fixed order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::adapters::Slots;
use crate::adapters::http::health;
use crate::adapters::http::{self, AppState, Front};
use crate::adapters::tcp::TcpServer;
use crate::bus::{local::LocalBus, valkey::ValkeyBus};
use crate::config::Config;
use crate::core::commit::{Committer, Publisher};
use crate::core::feed::Feeds;
use crate::core::ports::{Bus, Presence, Sessions, Store};
use crate::core::{Chat, Limits, Ports};
use crate::store::breaker::{BreakerSettings, BreakerStore};
use crate::store::postgres::{self, PgStore};
use crate::store::{memory::MemoryStore, retention};
use crate::telemetry;

/// How long readiness keeps answering 503 after the drain starts, before HTTP stops listening.
const READINESS_LINGER: Duration = Duration::from_secs(1);
/// How often expired HTTP sessions are looked for.
const SESSION_SWEEP: Duration = Duration::from_secs(5);
/// How often every carried room's tail is probed for a message the bus lost.
const TAIL_PROBE: Duration = Duration::from_secs(1);

pub struct App {
    config: Config,
    /// Set when sharing through Valkey: its reader and heartbeat run with the app.
    valkey: Option<Arc<ValkeyBus>>,
    /// Set when storing in PostgreSQL: the retention job runs against it.
    postgres: Option<PgStore>,
    chat: Arc<Chat>,
    feeds: Arc<Feeds>,
    background: Vec<futures::future::BoxFuture<'static, ()>>,
    tcp: TcpServer,
    slots: Slots,
    tcp_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    started: Instant,
    shutdown: CancellationToken,
}

/// What the replicas share: one implementation behind three ports.
struct Shared {
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    sessions: Arc<dyn Sessions>,
    /// Set when it is Valkey: its reader and heartbeat run with the app.
    valkey: Option<Arc<ValkeyBus>>,
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_line_bytes: config.max_line_bytes,
        max_message_chars: config.max_message_chars,
        rate_per_sec: config.rate_limit_per_sec,
        rate_burst: config.rate_limit_burst,
        send_queue: config.send_queue_lines,
        session_idle: Duration::from_secs(config.session_idle_timeout_secs),
    }
}

fn breaker(config: &Config) -> BreakerSettings {
    BreakerSettings {
        failures: config.breaker_failures,
        open_for: Duration::from_secs(config.breaker_open_secs),
        max_waiting: config.breaker_max_waiting,
        call_timeout: config.db_statement_timeout(),
    }
}

impl App {
    /// Builds the service and binds its listeners (port 0 picks a free port, as tests do).
    pub async fn build(config: Config) -> anyhow::Result<App> {
        // Installed before anything records a metric, so that nothing recorded is lost.
        telemetry::install_metrics(Some(&config.instance_id));
        let shutdown = CancellationToken::new();
        let (store, postgres): (Arc<dyn Store>, _) = match &config.database_url {
            Some(url) => {
                let pg = when_up("PostgreSQL", &config, || connect_postgres(url, &config)).await?;
                pg.migrate().await?;
                pg.open_writer().await?;
                tracing::info!("DATABASE_URL set: storing in PostgreSQL");
                (
                    Arc::new(BreakerStore::new(Arc::new(pg.clone()), &breaker(&config))),
                    Some(pg),
                )
            }
            None => {
                tracing::info!("DATABASE_URL unset: storing in memory; nothing survives a restart");
                (Arc::new(MemoryStore::new(config.retention_per_room)), None)
            }
        };
        let Shared {
            bus,
            presence,
            sessions,
            valkey,
        } = match &config.valkey_url {
            Some(url) => {
                let ttl = Duration::from_secs(config.presence_ttl_secs);
                let valkey = when_up("Valkey", &config, || {
                    connect_valkey(url, &config.instance_id, ttl)
                })
                .await?;
                tracing::info!(
                    "VALKEY_URL set: sharing delivery, presence and sessions through Valkey"
                );
                Shared {
                    bus: valkey.clone(),
                    presence: valkey.clone(),
                    sessions: valkey.clone(),
                    valkey: Some(valkey),
                }
            }
            None => {
                tracing::info!("VALKEY_URL unset: in-process bus; run a single replica only");
                let local = Arc::new(LocalBus::new());
                Shared {
                    bus: local.clone(),
                    presence: local.clone(),
                    sessions: local,
                    valkey: None,
                }
            }
        };
        let feeds = Arc::new(Feeds::new(
            store.clone(),
            config.history_size,
            shutdown.clone(),
        ));
        let (publisher, publishing) = Publisher::start(bus.clone(), shutdown.clone());
        let (committer, committing) = Committer::start(
            store.clone(),
            feeds.clone(),
            publisher.clone(),
            config.commit_batch_max,
        );
        let inbound = bus.subscribe();
        let revoked = presence.revoked();
        let ports = Ports {
            store,
            bus,
            presence,
            sessions,
        };
        let chat = Arc::new(Chat::new(
            ports,
            feeds.clone(),
            publisher,
            committer,
            limits(&config),
        ));
        let background: Vec<futures::future::BoxFuture<'static, ()>> = vec![
            Box::pin(committing),
            Box::pin(publishing),
            Box::pin(chat.clone().run_inbound(inbound, shutdown.clone())),
            Box::pin(chat.clone().run_revocations(revoked, shutdown.clone())),
        ];

        let tcp_listener = TcpListener::bind((config.bind_address, config.tcp_port))
            .await
            .with_context(|| format!("binding the TCP port {}", config.tcp_port))?;
        let tcp_addr = tcp_listener.local_addr()?;
        let slots = Slots::new(config.max_connections, config.connect_rate_per_sec);
        metrics::gauge!(telemetry::metric::CONNECTIONS_LIMIT).set(config.max_connections as f64);
        let tcp = TcpServer::new(tcp_listener, chat.clone(), slots.clone(), &config);
        let http_listener = TcpListener::bind((config.bind_address, config.http_port))
            .await
            .with_context(|| format!("binding the HTTP port {}", config.http_port))?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(tcp = %tcp_addr, http = %http_addr, "listening");
        Ok(App {
            config,
            valkey,
            postgres,
            chat,
            feeds,
            background,
            tcp,
            slots,
            tcp_addr,
            http_listener,
            http_addr,
            started: Instant::now(),
            shutdown,
        })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Cancelling this token starts the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then: not ready → stop accepting → tell every
    /// client and close it (answering what they sent) → flush pending writes → return, or give
    /// up after SHUTDOWN_GRACE_SECS.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App {
            config,
            valkey,
            postgres,
            chat,
            feeds,
            background,
            tcp,
            slots,
            http_listener,
            started,
            shutdown,
            ..
        } = self;
        // Every task runs in the server's span, so that its log lines carry the instance id.
        let tracker = TaskTracker::new();
        let spawn = |task| {
            tracker.spawn(Instrument::in_current_span(task));
        };
        for task in background {
            spawn(task);
        }
        spawn(Box::pin(telemetry::run_metrics_upkeep(
            telemetry::metrics_handle(),
            shutdown.clone(),
        )));
        spawn(Box::pin(async move { feeds.run_probes(TAIL_PROBE).await }));
        spawn(Box::pin(tcp.serve(tracker.clone(), shutdown.clone())));
        // Checked once before serving, so that the first probes already know.
        let checked = Arc::new(tokio::sync::watch::Sender::new(health::check(&chat).await));
        spawn(Box::pin(health::run_checks(
            chat.clone(),
            checked.clone(),
            shutdown.clone(),
        )));
        let state = AppState {
            chat: chat.clone(),
            shutdown: shutdown.clone(),
            started,
            instance: config.instance_id.as_str().into(),
            session_idle_secs: config.session_idle_timeout_secs as i64,
            write_coalesce: config.write_coalesce(),
            slots,
            openapi: Arc::new(http::openapi::document(config.max_message_chars)),
            checked,
        };
        let front = Front {
            idle_timeout: Duration::from_secs(config.http_idle_timeout_secs),
            head_timeout: Duration::from_secs(config.http_head_timeout_secs),
            write_timeout: Duration::from_secs(config.http_write_timeout_secs),
            keepalive: config.tcp_keepalive(),
            max_connections: config.max_connections,
        };
        let http_stop = CancellationToken::new();
        spawn(Box::pin(http::serve(
            http_listener,
            state,
            http_stop.clone(),
            front,
        )));
        spawn(Box::pin(
            chat.clone()
                .run_session_expiry(SESSION_SWEEP, shutdown.clone()),
        ));
        if let Some(valkey) = valkey {
            spawn(Box::pin(valkey.run(shutdown.clone())));
        }
        if let Some(pg) = postgres {
            spawn(Box::pin(pg.clone().run_pool_gauges(shutdown.clone())));
            spawn(Box::pin(retention::run(
                pg,
                config.retention_per_room,
                shutdown.clone(),
            )));
        }

        shutdown.cancelled().await;
        tracing::info!(grace = ?config.shutdown_grace(), "draining");
        // Readiness already answers 503 (it reads the drain token) while TCP clients are told to
        // reconnect and streams end. Keep answering it a moment, so that whatever polls it sees
        // the pod leave before the HTTP listener closes.
        tokio::time::sleep(READINESS_LINGER.min(config.shutdown_grace() / 2)).await;
        http_stop.cancel();
        tracker.close();
        // The commit task ends once every handle to it is gone: connections drop theirs as they
        // close, this is the last, and then it flushes what is queued.
        drop(chat);
        if tokio::time::timeout(config.shutdown_grace(), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "drain ran past the grace period; exiting anyway"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs `connect` until it succeeds, retrying with a growing pause (0.25 s up to 5 s) for at
/// most STARTUP_WAIT_SECS: a pod that starts with its database (a fresh cluster, a restart of
/// everything) waits for it instead of exiting and crash-looping. Each failure is logged.
async fn when_up<T, F, Fut>(service: &str, config: &Config, connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(config.startup_wait_secs)))
        .without_max_times();
    connect
        .retry(backoff)
        .notify(|error, wait| {
            tracing::warn!(error = %format!("{error:#}"), ?wait, "{service} not reachable yet; retrying");
        })
        .await
}

/// Connects the pool the configuration describes (used by the server and the admin commands).
pub async fn connect_postgres(url: &str, config: &Config) -> anyhow::Result<PgStore> {
    let timeouts = postgres::Timeouts {
        acquire: config.db_acquire_timeout(),
        statement: config.db_statement_timeout(),
    };
    PgStore::connect(url, config.db_pool_size, timeouts)
        .await
        .context("DATABASE_URL")
}

async fn connect_valkey(
    url: &str,
    instance: &str,
    ttl: Duration,
) -> anyhow::Result<Arc<ValkeyBus>> {
    ValkeyBus::connect(url, instance, ttl)
        .await
        .context("VALKEY_URL")
}
