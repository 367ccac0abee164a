//! `loadgen`: drives a Baby Discord deployment and reports what its users would have seen.
//!
//! `loadgen chat`: M members join one room (or are dealt over K rooms) over one or more
//! endpoints; S of them send at a total rate R for D seconds. Every message carries its sender, its per-sender sequence number and
//! its *scheduled* send time, so a sender that falls behind reports the delay as latency instead
//! of hiding it (no coordinated omission). Reports delivery latency percentiles, deliveries/s,
//! loss, duplicates and per-sender order violations.
//!
//! `loadgen idle`: opens N connections that log in (and optionally join a room), then holds them,
//! for measuring what an idle connection costs the server.

mod chat;
mod http;
mod idle;
mod report;
mod tcp;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generator for Baby Discord")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Members chatting in one room: latency, throughput, loss, order.
    Chat(ChatArgs),
    /// Idle logged-in connections, held open.
    Idle(IdleArgs),
}

#[derive(Args, Clone)]
pub struct ChatArgs {
    /// TCP endpoints; TCP members are spread round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9001")]
    endpoints: Vec<SocketAddr>,
    /// HTTP endpoints; SSE subscribers and HTTP senders are spread round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3001")]
    http_endpoints: Vec<SocketAddr>,
    /// TCP members in the room, TCP senders included.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// How many of the TCP members send.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Browser-like members: each subscribes to the room's SSE stream.
    #[arg(long, default_value_t = 0)]
    sse_members: usize,
    /// HTTP senders (POST /api/message), in addition to the TCP senders; they do not receive.
    #[arg(long, default_value_t = 0)]
    http_senders: usize,
    /// Total messages per second, over all senders.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Extra bytes of padding per message.
    #[arg(long, default_value_t = 0)]
    padding: usize,
    /// The room (created if missing).
    #[arg(long, default_value = "load")]
    room: String,
    /// Rooms: TCP members and TCP senders are dealt round-robin over `<room>0`, `<room>1`, …
    /// (with one, the room is `<room>`); each member expects the messages of its room's senders.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Speak IRC instead (register, `JOIN #<room>…`, `PRIVMSG`) to run the same workload against
    /// an IRC server, which does not echo a sender's own messages. Runs must be shorter than the
    /// server's ping interval: receivers do not answer pings.
    #[arg(long)]
    irc: bool,
    /// SSE members and HTTP senders use nginx + nchan instead (`GET /sub/<room>` as
    /// `EventSource` would, `POST /pub/<room>`): the same load on a pub/sub server with no
    /// users, rooms or store. TCP members are not supported.
    #[arg(long)]
    nchan: bool,
    /// Seconds to wait for stragglers after the last send.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Print the report as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
pub struct IdleArgs {
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9001")]
    endpoints: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// HTTP endpoints, for `--sse`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3001")]
    http_endpoints: Vec<SocketAddr>,
    /// Also join this room.
    #[arg(long)]
    room: Option<String>,
    /// Hold SSE streams of `room` (an HTTP session each) instead of TCP connections.
    #[arg(long, requires = "room")]
    sse: bool,
    /// Seconds to hold the connections once all are logged in.
    #[arg(long, default_value_t = 10)]
    hold: u64,
}

impl ChatArgs {
    fn drain(&self) -> Duration {
        Duration::from_secs(self.drain)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Chat(args) => {
            anyhow::ensure!(
                args.senders <= args.members,
                "TCP senders must be TCP members"
            );
            anyhow::ensure!(
                args.senders + args.http_senders >= 1,
                "need at least one sender"
            );
            anyhow::ensure!(
                args.members + args.sse_members >= 1,
                "need at least one receiver"
            );
            anyhow::ensure!(
                args.rate >= 1 && args.duration >= 1 && args.rooms >= 1,
                "rate, duration and rooms must be positive"
            );
            anyhow::ensure!(
                (args.rooms == 1 && !args.irc) || args.sse_members + args.http_senders == 0,
                "SSE members and HTTP senders are for one room of this server"
            );
            anyhow::ensure!(
                !args.nchan || args.members == 0,
                "nchan has SSE members and HTTP senders only"
            );
            let report = chat::run(args.clone()).await?;
            println!("{}", report.text());
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }
        Mode::Idle(args) => idle::run(args).await,
    }
}
