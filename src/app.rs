//! Wiring: picks the Store and Bus the configuration asks for, binds the listeners, and runs
//! everything until the shutdown token is cancelled, then drains in a fixed order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::http::{self, AppState};
use crate::adapters::tcp::TcpServer;
use crate::bus::{Bus, local::LocalBus, valkey::ValkeyBus};
use crate::config::Config;
use crate::core::Chat;
use crate::core::commit::Committer;
use crate::core::hub::Hub;
use crate::store::breaker::BreakerStore;
use crate::store::postgres::PgStore;
use crate::store::{Store, memory::MemoryStore, retention};
use crate::telemetry;

/// How long readiness keeps answering 503 after the drain starts, before HTTP stops listening.
const READINESS_LINGER: Duration = Duration::from_secs(1);

/// How often expired HTTP sessions are looked for.
const SESSION_SWEEP: Duration = Duration::from_secs(5);

pub struct App {
    config: Config,
    /// Set when sharing through Valkey: its subscriber loop runs with the app.
    valkey: Option<Arc<ValkeyBus>>,
    /// Set when storing in PostgreSQL: the retention job runs against it.
    postgres: Option<PgStore>,
    chat: Arc<Chat>,
    commit_task: futures::future::BoxFuture<'static, ()>,
    tcp: TcpServer,
    tcp_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    started: Instant,
    shutdown: CancellationToken,
}

impl App {
    /// Builds the service and binds its listeners (port 0 picks a free port, as tests do).
    pub async fn build(config: Config) -> anyhow::Result<App> {
        // Installed before anything records a metric, so that nothing recorded is lost.
        telemetry::install_metrics(Some(&config.instance_id));
        let hub = Arc::new(Hub::new(config.history_size));
        let (store, postgres): (Arc<dyn Store>, _) = match &config.database_url {
            Some(url) => {
                let pg = connect_postgres(url, &config).await?;
                pg.migrate().await?;
                pg.open_writer().await?;
                tracing::info!("DATABASE_URL set: storing in PostgreSQL");
                (
                    Arc::new(BreakerStore::new(Arc::new(pg.clone()), &config.breaker())),
                    Some(pg),
                )
            }
            None => {
                tracing::info!("DATABASE_URL unset: storing in memory; nothing survives a restart");
                (Arc::new(MemoryStore::new(config.retention_per_room)), None)
            }
        };
        let (bus, valkey): (Arc<dyn Bus>, _) = match &config.valkey_url {
            Some(url) => {
                let ttl = Duration::from_secs(config.presence_ttl_secs);
                let valkey =
                    ValkeyBus::connect(url, hub.clone(), store.clone(), &config.instance_id, ttl)
                        .await
                        .context("VALKEY_URL")?;
                tracing::info!(
                    "VALKEY_URL set: sharing delivery, presence and sessions through Valkey"
                );
                (valkey.clone(), Some(valkey))
            }
            None => {
                tracing::info!("VALKEY_URL unset: in-process bus; run a single replica only");
                (Arc::new(LocalBus::new(hub.clone())), None)
            }
        };
        let (committer, commit_task) =
            Committer::start(store.clone(), bus.clone(), config.commit_batch_max);
        let chat = Arc::new(Chat::new(store, bus, hub, committer, config.limits()));

        let tcp_listener = TcpListener::bind((config.bind_address, config.tcp_port))
            .await
            .with_context(|| format!("binding the TCP port {}", config.tcp_port))?;
        let tcp_addr = tcp_listener.local_addr()?;
        let tcp = TcpServer::new(tcp_listener, chat.clone(), &config);
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
            commit_task: Box::pin(commit_task),
            tcp,
            tcp_addr,
            http_listener,
            http_addr,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
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

    /// Serves until the shutdown token is cancelled, then: stop accepting → tell every client and
    /// close it → flush pending writes → return, or give up after SHUTDOWN_GRACE_SECS.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App {
            config,
            valkey,
            postgres,
            chat,
            commit_task,
            tcp,
            http_listener,
            started,
            shutdown,
            ..
        } = self;
        let tracker = TaskTracker::new();
        tracker.spawn(commit_task);
        tracker.spawn(telemetry::run_metrics_upkeep(
            telemetry::metrics_handle(),
            shutdown.clone(),
        ));
        tracker.spawn(tcp.serve(tracker.clone(), shutdown.clone()));
        let state = AppState {
            chat: chat.clone(),
            shutdown: shutdown.clone(),
            started,
            instance: config.instance_id.as_str().into(),
            session_idle_secs: config.session_idle_timeout_secs as i64,
        };
        let http_stop = CancellationToken::new();
        tracker.spawn(http::serve(http_listener, state, http_stop.clone()));
        tracker.spawn(
            chat.clone()
                .run_session_expiry(SESSION_SWEEP, shutdown.clone()),
        );
        if let Some(valkey) = valkey {
            tracker.spawn(valkey.run(shutdown.clone()));
        }
        if let Some(pg) = postgres {
            tracker.spawn(pg.clone().run_pool_gauges(shutdown.clone()));
            tracker.spawn(retention::run(
                pg,
                config.retention_per_room,
                shutdown.clone(),
            ));
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

/// Connects the pool the configuration describes (used by the server and the admin commands).
pub async fn connect_postgres(url: &str, config: &Config) -> anyhow::Result<PgStore> {
    PgStore::connect(url, config.db_pool_size, config.db_acquire_timeout())
        .await
        .context("DATABASE_URL")
}
