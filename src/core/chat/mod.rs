//! The chat service: every command's behaviour and reply text, over the core's ports.
//!
//! Adapters open a [`Session`] (live for TCP, detached for HTTP), feed it lines with
//! [`Chat::handle`] (HTTP: [`Chat::command`] and [`Chat::post`], which load and save the session)
//! and write back the [`Reply`]; what a session is shown arrives in its [`Inbox`], or in the
//! [`EventStream`]s that follow an HTTP session. Nothing here knows about sockets or HTTP.
//!
//! The jobs are split by module: `identity` (nicknames, logging in and out), `rooms` (joining,
//! leaving, listing), `messages` (chat lines and DMs), `detached` (HTTP sessions' requests) and
//! `streams` (SSE streams and their resume).

mod detached;
mod identity;
mod messages;
mod rooms;
mod streams;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::command::{self, Command, HELP, Input};
use super::commit::{Ack, Committer, Publisher};
use super::error::Error;
use super::feed::Feeds;
use super::model::{Envelope, SessionId};
use super::names::sanitize;
use super::ports::{Bus, Inbound, Presence, Sessions, Store};
use super::session::Session;
use crate::telemetry::metric;
pub use streams::{EventStream, Resume};

/// The per-session limits of SPEC §3 and §4.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_chars: usize,
    pub rate_per_sec: NonZeroU32,
    pub rate_burst: NonZeroU32,
    pub send_queue: usize,
    pub session_idle: Duration,
}

/// What an adapter sends back for one line.
pub enum Reply {
    /// Nothing to say (a blank line).
    Nothing,
    /// Text to show the user, possibly several lines.
    Text(String),
    /// A chat message on its way to the store; its echo arrives like any room message.
    Sent(Ack),
    /// Say this, then end the session.
    Quit(String),
}

/// The ports the chat works through.
pub struct Ports {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub sessions: Arc<dyn Sessions>,
}

pub struct Chat {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    sessions: Arc<dyn Sessions>,
    feeds: Arc<Feeds>,
    publisher: Publisher,
    committer: Committer,
    limits: Limits,
    /// Detached sessions have no state of their own on this pod between requests, so their
    /// limits are kept here, by session id.
    detached_limiter: DefaultKeyedRateLimiter<SessionId>,
    /// Open connections and streams on this pod (for health; the metric has them by transport).
    connections: AtomicUsize,
    /// Each live session's kick switch, for when its nickname can no longer be vouched for.
    live: Mutex<HashMap<SessionId, CancellationToken>>,
}

impl Chat {
    pub fn new(
        ports: Ports,
        feeds: Arc<Feeds>,
        publisher: Publisher,
        committer: Committer,
        limits: Limits,
    ) -> Self {
        let quota = Quota::per_second(limits.rate_per_sec).allow_burst(limits.rate_burst);
        Chat {
            store: ports.store,
            bus: ports.bus,
            presence: ports.presence,
            sessions: ports.sessions,
            feeds,
            publisher,
            committer,
            detached_limiter: DefaultKeyedRateLimiter::keyed(quota),
            connections: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// Counts a connection or stream opening (+1) or closing (-1) on this pod.
    pub fn count_connection(&self, transport: &'static str, opened: bool) {
        let gauge = metrics::gauge!(metric::CONNECTIONS, "transport" => transport);
        if opened {
            self.connections.fetch_add(1, Ordering::Relaxed);
            gauge.increment(1);
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            gauge.decrement(1);
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the store and the bus both answer.
    pub async fn ping(&self) -> (Result<(), Error>, Result<(), Error>) {
        let (store, bus) = tokio::join!(self.store.ping(), self.bus.ping());
        (store.map_err(Error::from), bus.map_err(Error::from))
    }

    /// Handles one line from a logged-in session.
    pub async fn handle(&self, session: &mut Session, line: &str) -> Result<Reply, Error> {
        let Some(input) = command::parse(&sanitize(line)) else {
            return Ok(Reply::Nothing);
        };
        self.check_rate(session)?;
        match input? {
            Input::Chat(content) => self.send(session, content, None).await.map(Reply::Sent),
            Input::Command(command) => {
                let name = command.name();
                let started = Instant::now();
                let reply = self.run(session, command).await;
                metrics::histogram!(metric::COMMAND_DURATION, "command" => name)
                    .record(started.elapsed().as_secs_f64());
                reply
            }
        }
    }

    fn check_rate(&self, session: &Session) -> Result<(), Error> {
        let limited = match &session.limiter {
            Some(limiter) => limiter.check().is_err(),
            None => self.detached_limiter.check_key(&session.id).is_err(),
        };
        if limited {
            metrics::counter!(metric::DROPPED, "reason" => "rate_limited").increment(1);
            return Err(Error::RateLimited);
        }
        Ok(())
    }

    async fn run(&self, session: &mut Session, command: Command) -> Result<Reply, Error> {
        let text = match command {
            Command::Help => help(),
            Command::Quit => return Ok(Reply::Quit("Goodbye!".into())),
            Command::Nick(nick) => self.rename(session, nick).await?,
            Command::List => self.list(session).await?,
            Command::Rooms => self.rooms().await?,
            Command::Create(name) => self.create(session, name).await?,
            Command::Join(name) => self.join(session, name).await?,
            Command::Leave => self.leave(session).await?,
            Command::Dm { to, content } => self.dm(session, to, content).await?,
        };
        Ok(Reply::Text(text))
    }

    /// Hands what other pods publish to this pod's feeds, until the bus ends or `shutdown`. After
    /// a possible loss, repairs: every carried room's tail is probed, and every followed
    /// session's record is read again.
    pub async fn run_inbound(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: CancellationToken,
    ) {
        while let Some(Some(item)) = shutdown.run_until_cancelled(inbound.recv()).await {
            match item {
                Inbound::Envelope(envelope) => self.feeds.deliver(envelope),
                Inbound::Resync => {
                    self.feeds.resync();
                    let chat = self.clone();
                    tokio::spawn(async move { chat.refollow().await }.in_current_span());
                }
            }
        }
    }

    /// Re-reads every followed session and moves its streams where it is now.
    async fn refollow(&self) {
        for id in self.feeds.followed() {
            match self.sessions.load(id).await {
                Ok(Some(stored)) => self.feeds.deliver(Envelope::SessionMoved {
                    session: id,
                    nick: stored.record.nick,
                    room: stored.record.room,
                    seen: stored.record.seen,
                }),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, session = %id, "re-reading a followed session failed")
                }
            }
        }
    }
}

fn help() -> String {
    let mut text = String::from("Available commands:");
    for (usage, what) in HELP {
        text.push_str(&format!("\n  {usage:<22} {what}"));
    }
    text
}
