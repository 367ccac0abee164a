//! `chaos`: the delivery promises of SPEC §5 checked under faults, the way Jepsen checks
//! databases. It starts a cluster (N replicas on one PostgreSQL and one Valkey, on loopback),
//! runs a workload of netcat and browser clients against it while a seeded nemesis kills,
//! restarts, pauses and partitions its parts, records everything every client was acknowledged
//! and shown, and then checks that record against the invariants in [`check::INVARIANTS`].
//!
//! ```text
//! chaos --seed 42 --duration 120 --out chaos.json
//! ```
//! Exits 1 when any anomaly is found; the JSON record holds each one with the events behind it.

mod check;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use cluster::{Cluster, Settings};
use history::History;
use workload::{Ctx, Role, Spec};

#[derive(Parser)]
#[command(
    about = "Checks Baby Discord's delivery promises under faults (kill -9, crashes, restarts, pauses, partitions)"
)]
struct Args {
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults (the workload runs a little longer: warm-up, recovery, drain).
    #[arg(long, default_value_t = 120)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 3)]
    rooms: usize,
    /// Comma-separated fault kinds, or "all". Kinds: kill, rolling-restart, pg-crash,
    /// valkey-restart, pg-pause, valkey-pause, pg-partition, valkey-partition.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Mean seconds between one fault's end and the next one's start.
    #[arg(long, default_value_t = 6)]
    every: u64,
    /// Mean milliseconds between one sender's messages.
    #[arg(long, default_value_t = 150)]
    send_every_ms: u64,
    #[arg(long, default_value_t = 3)]
    presence_ttl: u64,
    /// Messages put into each room's history before the run (a room with a past).
    #[arg(long, default_value_t = 3000)]
    preload: u64,
    /// Seconds of calm after the last fault, so that every replica's recovery is measured.
    #[arg(long, default_value_t = 10)]
    recover: u64,
    /// PostgreSQL with fsync off (faster; a process crash still loses what was never written).
    #[arg(long)]
    no_fsync: bool,
    /// The server binary (default: `baby-discord` beside this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// A setting for every replica, as `NAME=value` (repeatable), e.g. `WRITE_COALESCE_MS=10`.
    #[arg(long = "server-env", value_parser = parse_setting)]
    server_env: Vec<(String, String)>,
    /// Where to write the JSON record (schedule, anomalies, statistics, every event).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_setting(setting: &str) -> Result<(String, String), String> {
    let (name, value) = setting
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=value, got {setting:?}"))?;
    Ok((name.to_owned(), value.to_owned()))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let kinds: Vec<String> = match args.faults.as_str() {
        "all" => nemesis::KINDS.iter().map(|k| k.to_string()).collect(),
        list => list.split(',').map(str::to_owned).collect(),
    };
    if let Some(bad) = kinds.iter().find(|k| !nemesis::KINDS.contains(&k.as_str())) {
        anyhow::bail!(
            "unknown fault kind {bad:?}; kinds: {}",
            nemesis::KINDS.join(", ")
        );
    }
    let warmup = Duration::from_secs(5);
    let plan = nemesis::plan(
        seed,
        &kinds,
        args.replicas,
        warmup,
        warmup + Duration::from_secs(args.duration),
        Duration::from_secs(args.every),
    );
    println!(
        "chaos: seed {seed}, {} replicas, {} rooms, faults: {}",
        args.replicas,
        args.rooms,
        kinds.join(",")
    );
    let schedule: Vec<String> = plan
        .iter()
        .map(|s| format!("{:>6.1}s  {}", s.at.as_secs_f64(), s.fault))
        .collect();
    println!(
        "chaos: schedule ({} faults; replay with --seed {seed}):",
        plan.len()
    );
    for line in &schedule {
        println!("  {line}");
    }

    let server = match args.server.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("baby-discord"),
    };
    anyhow::ensure!(
        server.exists(),
        "no server binary at {} (build it, or pass --server)",
        server.display()
    );
    let cluster = Cluster::start(&Settings {
        server,
        replicas: args.replicas,
        presence_ttl_secs: args.presence_ttl,
        fsync: !args.no_fsync,
        server_env: args.server_env.clone(),
    })
    .await
    .context("starting the cluster")?;
    println!(
        "chaos: cluster up in {} (logs there)",
        cluster.dir.display()
    );
    let outcome = exercise(&args, &cluster, plan, seed, &schedule).await;
    cluster.stop().await;
    outcome
}

async fn exercise(
    args: &Args,
    cluster: &Arc<Cluster>,
    plan: Vec<nemesis::Step>,
    seed: u64,
    schedule: &[String],
) -> anyhow::Result<bool> {
    let mut rooms: Vec<String> = (0..args.rooms).map(|i| format!("r{i}")).collect();
    // The availability probes' own room, last, where no other client goes.
    rooms.push("pulse".into());
    create_rooms(cluster, &rooms).await?;
    preload(cluster, &rooms[..args.rooms], args.preload).await?;
    let history = Arc::new(History::new());
    let ctx = Arc::new(Ctx {
        history: history.clone(),
        addrs: cluster.addrs.clone(),
        rooms: rooms[..args.rooms].to_vec(),
        sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        online: Mutex::new(Default::default()),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()?,
        send_every: Duration::from_millis(args.send_every_ms),
    });
    let supervising = CancellationToken::new();
    for i in 0..args.replicas {
        tokio::spawn(
            cluster
                .clone()
                .supervise(i, history.clone(), supervising.clone()),
        );
    }
    let mut clients = Vec::new();
    let mut id = 0;
    let mut spawn = |nick: String, room: usize, replica: usize, role: Role| {
        id += 1;
        clients.push(tokio::spawn(workload::run(
            ctx.clone(),
            Spec {
                id,
                nick,
                room,
                replica,
                role,
            },
        )));
    };
    let n = args.replicas;
    for room in 0..args.rooms {
        spawn(
            format!("ts{room}"),
            room,
            room % n,
            Role::Tcp {
                sender: true,
                churn: false,
                dm: false,
            },
        );
        spawn(
            format!("tc{room}"),
            room,
            (room + 1) % n,
            Role::Tcp {
                sender: false,
                churn: true,
                dm: true,
            },
        );
        spawn(
            format!("tm{room}"),
            room,
            (room + 2) % n,
            Role::Tcp {
                sender: false,
                churn: false,
                dm: false,
            },
        );
        spawn(format!("sr{room}"), room, room % n, Role::SseRoom);
        spawn(
            format!("se{room}"),
            room,
            (room + 1) % n,
            Role::SseEvents { churn: true },
        );
        spawn(format!("hs{room}"), room, (room + 2) % n, Role::HttpSender);
    }
    spawn("wc".into(), 0, 0, Role::WebChurn);
    let observer = tokio::spawn(workload::observe(ctx.clone()));
    for replica in 0..n {
        let spec = Spec {
            id: 1000 + replica,
            nick: format!("p{replica}"),
            room: 0,
            replica,
            role: Role::HttpSender,
        };
        clients.push(tokio::spawn(workload::pulse(
            ctx.clone(),
            spec,
            "pulse".into(),
        )));
    }

    let begun = Instant::now();
    nemesis::run(
        plan,
        cluster.clone(),
        history.clone(),
        begun,
        CancellationToken::new(),
    )
    .await;
    println!(
        "chaos: faults over at {:.1}s; {}s of calm",
        begun.elapsed().as_secs_f64(),
        args.recover
    );
    tokio::time::sleep(Duration::from_secs(args.recover)).await;
    ctx.sending.cancel();
    // The last sends are answered and the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctx.stop.cancel();
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(15), client).await;
    }
    let _ = observer.await;
    supervising.cancel();
    let rows = cluster
        .stored_messages()
        .await
        .context("reading the store")?;
    let records = history.records();
    let (anomalies, stats) = check::check(
        &records,
        &check::Store { rows },
        Duration::from_secs(args.presence_ttl),
    );
    print_report(&anomalies, &stats, &records);
    if let Some(out) = &args.out {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut file = std::io::BufWriter::new(file);
        serde_json::to_writer(
            &mut file,
            &serde_json::json!({
                "seed": seed,
                "schedule": schedule,
                "invariants": check::INVARIANTS,
                "stats": stats,
                "anomalies": anomalies,
                "records": records,
            }),
        )?;
        file.flush()?;
        println!("chaos: record written to {}", out.display());
    }
    Ok(anomalies.is_empty())
}

/// What a CI log needs to tell an anomaly's cause without the JSON record: the records behind
/// it, and what its client did in the ten seconds before (its joins and segments).
fn print_evidence(anomaly: &check::Anomaly, records: &[history::Record]) {
    let compact = |v: &serde_json::Value| {
        let text = v.to_string();
        text.chars().take(400).collect::<String>()
    };
    for event in &anomaly.events {
        println!("         {}", compact(event));
    }
    // The client is named by a segment's start (a shown message names only its segment).
    let client = anomaly.events.iter().find_map(|e| e["client"].as_u64());
    let at = anomaly.events.iter().filter_map(|e| e["at"].as_u64()).max();
    let (Some(client), Some(at)) = (client, at) else {
        return;
    };
    println!("         client {client} before it:");
    for record in records
        .iter()
        .filter(|r| r.at + 10_000_000 >= at && r.at <= at)
    {
        let value = serde_json::to_value(record).unwrap_or_default();
        let kind = value["type"].as_str().unwrap_or_default();
        if value["client"].as_u64() == Some(client) && matches!(kind, "joined" | "segment") {
            println!("           {}", compact(&value));
        }
    }
}

/// Each room, created once through replica 0.
async fn create_rooms(cluster: &Cluster, rooms: &[String]) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(cluster.addrs[0].0).await?;
    let (read, mut write) = stream.into_split();
    let mut script = String::from("setup\n");
    for room in rooms {
        script.push_str(&format!("/create {room}\n"));
    }
    script.push_str("/quit\n");
    write.write_all(script.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let mut created = 0;
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??
    {
        created += usize::from(line.starts_with("Created and joined room"));
    }
    anyhow::ensure!(
        created == rooms.len(),
        "created {created} of {} rooms",
        rooms.len()
    );
    Ok(())
}

/// Gives each room `count` old messages, written straight into the store, as a room that has been
/// in use for a while has. Their contents (`h<room>-<n>`) are unique like every other.
async fn preload(cluster: &Cluster, rooms: &[String], count: u64) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let names = rooms
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "INSERT INTO messages (room_id, seq, nickname, content, created_at) \
         SELECT r.id, g, 'old', 'h' || r.name || '-' || g, now() FROM rooms r, generate_series(1, {count}) g \
         WHERE r.name IN ({names}); \
         UPDATE rooms SET last_seq = {count} WHERE name IN ({names})"
    );
    cluster.pg.lock().await.psql("chat", &sql).await?;
    Ok(())
}

fn print_report(anomalies: &[check::Anomaly], stats: &check::Stats, records: &[history::Record]) {
    println!(
        "chaos: {} messages sent ({} acknowledged, {} failed, {} unknown), {} stored ({} more removed by retention), {} shown in {} segments, {} DMs, {} faults, {} nickname probes",
        stats.sent,
        stats.acknowledged,
        stats.failed,
        stats.unknown,
        stats.stored,
        stats.retired,
        stats.shown,
        stats.segments,
        stats.dms,
        stats.faults,
        stats.probes
    );
    let show = |v: &Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.1}s"));
    for ((fault, recovered), (_, presence)) in stats.recovery_secs.iter().zip(&stats.presence_secs)
    {
        println!(
            "  after {fault}: every replica acknowledging in {}, presence converged in {}",
            show(recovered),
            show(presence)
        );
    }
    for (number, text) in check::INVARIANTS {
        let found: Vec<&check::Anomaly> = anomalies
            .iter()
            .filter(|a| a.invariant == *number)
            .collect();
        let verdict = if found.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} ANOMALIES", found.len())
        };
        println!("{number}. {text}: {verdict}");
        for anomaly in found.iter().take(5) {
            println!("     - {}", anomaly.what);
            print_evidence(anomaly, records);
        }
        if found.len() > 5 {
            println!("     … and {} more (see the JSON record)", found.len() - 5);
        }
    }
    println!(
        "chaos: {}",
        if anomalies.is_empty() {
            "no anomalies".to_owned()
        } else {
            format!("{} anomalies", anomalies.len())
        }
    );
}
