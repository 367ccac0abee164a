//! The `chat` mode: paced senders (TCP or HTTP), counting receivers (TCP or SSE).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::LinesStream;
use tokio_util::sync::CancellationToken;

use crate::ChatArgs;
use crate::http::{Nchan, WebUser, unpooled_client};
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

/// Where a sender's messages go.
enum Port {
    /// Everything due goes out in one write; the echo is the acknowledgement.
    Tcp(OwnedWriteHalf),
    /// The same to an IRC server: one `PRIVMSG` to the channel per message.
    Irc(OwnedWriteHalf, String),
    /// One POST per message, each awaited (its 200 is the acknowledgement).
    Http(Poster),
}

pub async fn run(args: ChatArgs) -> anyhow::Result<Report> {
    let run_id: u32 = rand::random();
    let nick = |kind: &str, i: usize| format!("lg{run_id:08x}_{kind}{i}");
    let room = args.room.as_str();
    // TCP member (and TCP sender) i is in room i % rooms.
    let room_of = |i: usize| match (args.rooms, args.irc) {
        (1, false) => room.to_owned(),
        (1, true) => format!("#{room}"),
        (_, false) => format!("{room}{}", i % args.rooms),
        (_, true) => format!("#{room}{}", i % args.rooms),
    };
    let members: Vec<Member> = futures::stream::iter(0..args.members)
        .map(|i| {
            let addr = args.endpoints[i % args.endpoints.len()];
            let room = room_of(i);
            let nick = nick("t", i);
            async move {
                match args.irc {
                    true => Member::join_irc(addr, nick, &room).await,
                    false => Member::join(addr, nick, Some(&room)).await,
                }
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("setting up TCP members")?;
    let web_http = |i: usize| args.http_endpoints[i % args.http_endpoints.len()];
    // Streams on connections of their own, as browsers' EventSource opens them.
    let stream_client = unpooled_client()?;
    // (nchan has no sessions: its subscribers and publishers need no set-up.)
    let web_users = |n: usize| if args.nchan { 0 } else { n };
    let subscribers: Vec<WebUser> = futures::stream::iter(0..web_users(args.sse_members))
        .map(|i| WebUser::connect(stream_client.clone(), web_http(i), nick("s", i), Some(room)))
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("setting up SSE members")?;
    let posters: Vec<WebUser> = futures::stream::iter(0..web_users(args.http_senders))
        .map(|i| {
            WebUser::connect(
                reqwest::Client::new(),
                web_http(i),
                nick("h", i),
                Some(room),
            )
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("setting up HTTP senders")?;
    let senders = args.senders + args.http_senders;
    // Whose messages member i should get: its room's senders (an IRC server does not echo a
    // sender's own); HTTP senders and SSE members are only in a one-room run.
    let expect_from = |member: Option<usize>| -> Vec<usize> {
        (0..senders)
            .filter(|&s| match member {
                Some(i) => {
                    (s >= args.senders || s % args.rooms == i % args.rooms) && !(args.irc && s == i)
                }
                None => true,
            })
            .collect()
    };

    // Each receiver learns, once sending is over, how many messages each sender sent, so it can
    // stop as soon as it has them all.
    let (sent_tx, sent_rx) = watch::channel(None::<Arc<Vec<u64>>>);
    let give_up = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut ports = Vec::new();
    let mut spawn_receiver = |lines: std::pin::Pin<Box<dyn Stream<Item = String> + Send>>,
                              expect_from: Vec<usize>| {
        let receiver = Receiver::new(expect_from, run_id);
        receivers.push(tokio::spawn(receiver.run(
            lines,
            sent_rx.clone(),
            give_up.clone(),
        )));
    };
    for (i, member) in members.into_iter().enumerate() {
        let lines = LinesStream::new(member.reader.lines())
            .filter_map(|line| futures::future::ready(line.ok()));
        if args.irc {
            spawn_receiver(
                Box::pin(lines.map(|line| irc_as_chat(&line))),
                expect_from(Some(i)),
            );
            ports.push(Port::Irc(member.writer, room_of(i)));
        } else {
            spawn_receiver(Box::pin(lines), expect_from(Some(i)));
            ports.push(Port::Tcp(member.writer));
        }
    }
    // Subscribed before anyone sends; the stream's messages are shown as the TCP lines would be.
    for subscriber in &subscribers {
        let messages = subscriber.subscribe(room).await?;
        spawn_receiver(
            Box::pin(messages.map(|(user, content)| format!("[sse] {user}: {content}"))),
            expect_from(None),
        );
    }
    let mut ports: Vec<Port> = ports
        .drain(..args.senders)
        .chain(
            posters
                .into_iter()
                .map(|user| Port::Http(Poster::Web(user))),
        )
        .collect();
    if args.nchan {
        for i in 0..args.sse_members {
            let data = Nchan::new(stream_client.clone(), web_http(i), room)
                .subscribe()
                .await?;
            // Shown as a line of this run's user, which the receiver counts.
            let who = nick("n", i);
            spawn_receiver(
                Box::pin(data.map(move |data| format!("[sse] {who}: {data}"))),
                expect_from(None),
            );
        }
        let client = reqwest::Client::new();
        ports.extend(
            (0..args.http_senders)
                .map(|i| Port::Http(Poster::Nchan(Nchan::new(client.clone(), web_http(i), room)))),
        );
    }

    // Said once every member is in its room and every stream open: the benchmark scripts start
    // measuring the servers here.
    eprintln!(
        "{} TCP + {} SSE members, {} TCP + {} HTTP senders in {} room(s); sending for {}s",
        args.members, args.sse_members, args.senders, args.http_senders, args.rooms, args.duration
    );
    let start = Instant::now() + Duration::from_millis(100);
    let pace = Pace {
        start,
        started_unix: unix_nanos() + 100_000_000,
        interval: Duration::from_nanos(1_000_000_000 * senders as u64 / args.rate),
        deadline: start + Duration::from_secs(args.duration),
        senders,
    };
    let padding = "p".repeat(args.padding);
    let mut dues = Vec::new();
    let sending: Vec<_> = ports
        .drain(..)
        .enumerate()
        .map(|(id, port)| {
            let (due_tx, due_rx) = mpsc::unbounded_channel();
            dues.push(due_tx);
            tokio::spawn(send(port, id, due_rx, padding.clone()))
        })
        .collect();
    std::thread::spawn(move || pace.run(dues));
    let mut sent = Vec::new();
    let mut keep_open = Vec::new();
    for sender in sending {
        let (count, port) = sender.await??;
        sent.push(count);
        // Kept open: closing a sender's connection would end its session, and its receiving too.
        keep_open.push(port);
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
    drop((keep_open, subscribers));
    Ok(Report::new(
        &args,
        &sent,
        send_window,
        start.elapsed(),
        stats,
    ))
}

/// When the senders' messages are due: every `interval`, from `start` until `deadline`, each
/// sender staggered within the interval so they do not all fire at once.
struct Pace {
    start: Instant,
    started_unix: u64,
    interval: Duration,
    deadline: Instant,
    senders: usize,
}

/// A message that is due: its seq for its sender, and when it was due (Unix nanoseconds).
struct Due {
    seq: u64,
    stamp: u64,
}

impl Pace {
    /// Tells each sender when its messages are due, at the moment they are due. This runs on a
    /// thread of its own, sleeping on the OS timer: tokio's timer wheel rounds every deadline up
    /// to the next millisecond, which measured 0.4–1.1 ms median and up to 2 ms of lateness per
    /// message, all of it counted as the server's latency.
    fn run(self, senders: Vec<mpsc::UnboundedSender<Due>>) {
        for seq in 0u64.. {
            for (id, sender) in senders.iter().enumerate() {
                let due =
                    self.interval * id as u32 / self.senders as u32 + self.interval * seq as u32;
                let due_at = self.start + due;
                if due_at >= self.deadline {
                    return;
                }
                std::thread::sleep(due_at.saturating_duration_since(Instant::now()));
                // A sender the server cut off has stopped listening; the others go on.
                let _ = sender.send(Due {
                    seq,
                    stamp: self.started_unix + due.as_nanos() as u64,
                });
            }
        }
    }
}

/// Who an HTTP sender posts as.
enum Poster {
    Web(WebUser),
    Nchan(Nchan),
}

impl Poster {
    async fn post(&self, content: &str) -> anyhow::Result<()> {
        match self {
            Poster::Web(user) => user.post(content).await,
            Poster::Nchan(channel) => channel.post(content).await,
        }
    }
}

/// Sends each message as the pacer says it is due, stamped with the time it was *due*, not the
/// time it left, so a server that falls behind is charged for the wait. Whatever is due by the
/// time the sender gets to run goes out in one write. Returns how many it sent, and the port,
/// which must stay open until the receivers are done. A sender the server cut off stops early;
/// the receivers' counts show what that cost.
async fn send(
    mut port: Port,
    id: usize,
    mut dues: mpsc::UnboundedReceiver<Due>,
    padding: String,
) -> anyhow::Result<(u64, Port)> {
    let mut sent = 0u64;
    let mut due = Vec::new();
    let mut batch = String::new();
    while dues.recv_many(&mut due, usize::MAX).await > 0 {
        let count = due.len() as u64;
        batch.clear();
        for Due { seq, stamp } in due.drain(..) {
            batch.push_str(&format!("{id} {seq} {stamp} {padding}\n"));
        }
        let written = match &mut port {
            Port::Tcp(writer) => writer
                .write_all(batch.as_bytes())
                .await
                .map_err(anyhow::Error::from),
            Port::Irc(writer, channel) => {
                let lines: String = batch
                    .lines()
                    .map(|line| format!("PRIVMSG {channel} :{line}\r\n"))
                    .collect();
                writer
                    .write_all(lines.as_bytes())
                    .await
                    .map_err(anyhow::Error::from)
            }
            Port::Http(poster) => {
                let mut posted = Ok(());
                for line in batch.lines() {
                    posted = poster.post(line).await;
                    if posted.is_err() {
                        break;
                    }
                }
                posted
            }
        };
        if let Err(e) = written {
            eprintln!("sender {id} stopped after {sent} messages: {e}");
            return Ok((sent, port));
        }
        sent += count;
    }
    Ok((sent, port))
}

/// An IRC channel message (`:nick!user@host PRIVMSG #room :text`) as this server's TCP line
/// (`[#room] nick: text`); any other line becomes one the receiver ignores.
fn irc_as_chat(line: &str) -> String {
    let parsed = line.strip_prefix(':').and_then(|rest| {
        let (prefix, rest) = rest.split_once(" PRIVMSG ")?;
        let (channel, text) = rest.split_once(" :")?;
        let nick = prefix.split('!').next()?;
        Some(format!("[{channel}] {nick}: {text}"))
    });
    parsed.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::irc_as_chat;

    #[test]
    fn an_irc_channel_message_reads_as_a_chat_line() {
        assert_eq!(
            irc_as_chat(":lg1_t0!~lg1@127.0.0.1 PRIVMSG #load0 :0 7 123 "),
            "[#load0] lg1_t0: 0 7 123 "
        );
        assert_eq!(irc_as_chat("PING :irc.local"), "");
    }
}
