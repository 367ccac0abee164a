//! The `baby-discord` binary: the server (default), and the database admin commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use baby_discord::app::{App, connect_postgres};
use baby_discord::config::Config;
use baby_discord::store::archive;
use baby_discord::telemetry;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use time::OffsetDateTime;
use tracing::Instrument;

/// sysexits' EX_CONFIG: the configuration, not the program, is at fault.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    version,
    about = "A chat server for netcat and browsers. Configured by environment (see README)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve TCP and HTTP (the default).
    Serve,
    #[command(flatten)]
    Admin(Admin),
}

/// One-off database work; each needs DATABASE_URL.
#[derive(Subcommand)]
enum Admin {
    /// Apply database migrations and exit.
    Migrate,
    /// Move messages older than a cut-off into JSON files, one per room, and delete them.
    Archive {
        /// Archive messages created more than this many days ago.
        #[arg(long, conflicts_with = "before", required_unless_present = "before")]
        older_than_days: Option<u32>,
        /// Archive messages created before this instant (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        before: Option<OffsetDateTime>,
        /// Where to write the files.
        #[arg(long, default_value = "archive")]
        dir: PathBuf,
    },
    /// Put archived messages back (idempotent).
    Replay {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_rfc3339(raw: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::command()
        .after_help(Config::settings_help())
        .get_matches();
    let cli = Cli::from_arg_matches(&cli).unwrap_or_else(|e| e.exit());
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init_logging(&config);
    let span = tracing::info_span!("server", instance = %config.instance_id);
    match run(cli.command.unwrap_or(Command::Serve), config)
        .instrument(span)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Admin(admin) => run_admin(admin, config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

async fn run_admin(admin: Admin, config: Config) -> anyhow::Result<()> {
    let url = config
        .database_url
        .as_deref()
        .context("this command needs DATABASE_URL")?;
    let store = connect_postgres(url, &config).await?;
    match admin {
        Admin::Migrate => store.migrate().await?,
        Admin::Archive {
            older_than_days,
            before,
            dir,
        } => {
            let cutoff = before.unwrap_or_else(|| {
                OffsetDateTime::now_utc()
                    - time::Duration::days(older_than_days.unwrap_or(0).into())
            });
            let files = archive::archive(&store, cutoff, &dir).await?;
            println!("archived {} room(s) into {}", files.len(), dir.display());
        }
        Admin::Replay { files } => {
            for file in files {
                let inserted = archive::replay(&store, &file).await?;
                println!("{}: {inserted} message(s) restored", file.display());
            }
        }
    }
    Ok(())
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
