//! The `chat` mode: paced senders, counting receivers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ChatArgs;
use crate::report::{Receiver, Report};
use crate::tcp::Member;

/// Members connecting at once during setup.
const SETUP_CONCURRENCY: usize = 32;

/// Nanoseconds since the Unix epoch: the clock shared by the senders and receivers of every
/// process on this machine.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

pub async fn run(args: ChatArgs) -> anyhow::Result<Report> {
    let run_id: u32 = rand::random();
    let members: Vec<Member> = futures::stream::iter(0..args.members)
        .map(|i| {
            let addr = args.endpoints[i % args.endpoints.len()];
            let nick = format!("lg{run_id:08x}_{i}");
            let room = args.room.clone();
            async move { Member::join(addr, &nick, Some(&room)).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("setting up members")?;
    eprintln!(
        "{} members joined {}; sending for {}s",
        members.len(),
        args.room,
        args.duration
    );

    // Each receiver learns, once sending is over, how many messages each sender sent, so it can
    // stop as soon as it has them all.
    let (sent_tx, sent_rx) = watch::channel(None::<Arc<Vec<u64>>>);
    let give_up = CancellationToken::new();
    let mut writers = Vec::new();
    let mut receivers = Vec::new();
    for member in members {
        writers.push(member.writer);
        let receiver = Receiver::new(args.senders, run_id);
        receivers.push(tokio::spawn(receiver.run(
            member.reader,
            sent_rx.clone(),
            give_up.clone(),
        )));
    }

    let interval = Duration::from_nanos(1_000_000_000 * args.senders as u64 / args.rate);
    let start = Instant::now() + Duration::from_millis(100);
    let started_unix = unix_nanos() + 100_000_000;
    let deadline = start + Duration::from_secs(args.duration);
    let padding = "p".repeat(args.padding);
    let senders: Vec<_> = writers
        .drain(..args.senders)
        .enumerate()
        .map(|(id, writer)| {
            let pace = Pace {
                start,
                started_unix,
                interval,
                deadline,
                offset: interval * id as u32 / args.senders as u32,
            };
            tokio::spawn(send(writer, id, pace, padding.clone()))
        })
        .collect();
    let mut sent = Vec::new();
    for sender in senders {
        let (count, writer) = sender.await??;
        sent.push(count);
        // Kept open: dropping a write half closes the member's session and its receiving too.
        writers.push(writer);
    }
    let send_window = start.elapsed();
    let _ = sent_tx.send(Some(Arc::new(sent.clone())));
    let drain_timer = tokio::spawn({
        let give_up = give_up.clone();
        let drain = args.drain();
        async move {
            tokio::time::sleep(drain).await;
            give_up.cancel();
        }
    });
    let mut stats = Vec::new();
    for receiver in receivers {
        stats.push(receiver.await?);
    }
    drain_timer.abort();
    drop(writers);
    Ok(Report::new(
        &args,
        &sent,
        send_window,
        start.elapsed(),
        stats,
    ))
}

/// When a sender's messages are due.
struct Pace {
    start: Instant,
    started_unix: u64,
    interval: Duration,
    deadline: Instant,
    /// Staggers senders across one interval so they do not all fire at once.
    offset: Duration,
}

/// Sends on schedule until the deadline. Everything due at a wake-up goes out in one write, each
/// message stamped with the time it was *due*, not the time it left. Returns how many it sent,
/// and the writer, which must stay open until the receivers are done. A sender the server cut off
/// (too slow a reader, say) stops early; the receivers' counts show what that cost.
async fn send(
    mut writer: OwnedWriteHalf,
    id: usize,
    pace: Pace,
    padding: String,
) -> anyhow::Result<(u64, OwnedWriteHalf)> {
    let mut seq = 0u64;
    let mut batch = String::new();
    loop {
        let due_at = pace.start + pace.offset + pace.interval * seq as u32;
        if due_at >= pace.deadline {
            return Ok((seq, writer));
        }
        tokio::time::sleep_until(due_at.into()).await;
        let now = Instant::now();
        batch.clear();
        loop {
            let due = pace.offset + pace.interval * seq as u32;
            if pace.start + due > now || pace.start + due >= pace.deadline {
                break;
            }
            let stamp = pace.started_unix + due.as_nanos() as u64;
            batch.push_str(&format!("{id} {seq} {stamp} {padding}\n"));
            seq += 1;
        }
        writer
            .write_all(batch.as_bytes())
            .await
            .context("sending")?;
    }
}
