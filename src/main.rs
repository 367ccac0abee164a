//! The `baby-discord` server: configuration → telemetry → build → run until a signal.

use std::process::ExitCode;

use baby_discord::app::App;
use baby_discord::config::Config;
use baby_discord::telemetry;
use tracing::Instrument;

/// sysexits' EX_CONFIG: the configuration, not the program, is at fault.
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init_logging(&config);
    telemetry::metrics_handle();
    let span = tracing::info_span!("server", instance = %config.instance_id);
    match run(config).instrument(span).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
