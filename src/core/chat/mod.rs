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

use governor::Quota;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::command::{self, Command, HELP, Input};
use super::commit::{Ack, Committer, Publisher};
use super::error::Error;
use super::feed::{Feeds, RoomActivity};
use super::model::{Envelope, SessionId, SessionRecord};
use super::names::sanitize;
use super::ports::{Bus, Circuit, Claim, Holder, Inbound, Presence, Sessions, Store};
use super::session::Session;
use crate::telemetry::metric;
use detached::{LOCK_LEASE, LOCK_WAIT};
pub use streams::{EventStream, Resume};

/// The per-session limits of SPEC §3 and §4.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest line: the TCP adapter's framing enforces it; an HTTP command is held to it
    /// here, so it gets the words a TCP user would.
    pub max_line_bytes: usize,
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
    /// Every session's rate limit; a live session's is counted on its pod, a detached one's where
    /// the sessions are kept (its requests may come to any pod).
    quota: Quota,
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
            quota,
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

    /// The `n` rooms with the most members on this pod, for operators ([`Feeds::busiest`]).
    pub fn busiest_rooms(&self, n: usize) -> Vec<RoomActivity> {
        self.feeds.busiest(n)
    }

    /// The store's circuit breaker.
    pub fn circuit(&self) -> Circuit {
        self.store.circuit()
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
        self.check_rate(session).await?;
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

    async fn check_rate(&self, session: &Session) -> Result<(), Error> {
        let allowed = match &session.limiter {
            Some(limiter) => limiter.check().is_ok(),
            None => self.sessions.spend(session.id, self.quota).await?,
        };
        if !allowed {
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
    /// session's record is read again — and brought back if the shared state lost it, or holds
    /// it older than a stream here followed.
    pub async fn run_inbound(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: CancellationToken,
    ) {
        while let Some(Some(item)) = shutdown.run_until_cancelled(inbound.recv()).await {
            match item {
                Inbound::Envelope(envelope) => self.feeds.deliver(envelope),
                Inbound::Resync { state_lost } => {
                    self.feeds.resync();
                    let chat = self.clone();
                    tokio::spawn(async move { chat.refollow(state_lost).await }.in_current_span());
                }
            }
        }
    }

    /// Re-reads every followed session and moves its streams where it is now. A session the
    /// shared state lost while a stream of it is open here is brought back, nickname first (no
    /// newcomer can take it while live users re-register); one whose name was taken meanwhile
    /// stays gone, and its streams end at their next keepalive. One the shared state holds older
    /// than a stream here followed (Valkey restarted from an append-only file that missed its
    /// last writes) is brought back the same way: a stream's cookie from the older state would
    /// match it again, though the stream has since followed the session elsewhere.
    async fn refollow(&self, state_lost: bool) {
        for record in self.feeds.held() {
            let id = record.id;
            match self.sessions.load(id).await {
                // Revisions only grow, whatever the pods' clocks: an older one stored means
                // writes were lost. (0: unstamped, from a pod of an older release.)
                Ok(Some(stored))
                    if stored.record.revision != 0 && stored.record.revision < record.revision =>
                {
                    if let Err(e) = self.restore(&record).await {
                        tracing::warn!(error = %e, session = %id, "a session the shared state went back on could not be brought forward");
                    }
                }
                Ok(Some(stored)) => self.feeds.deliver(Envelope::SessionMoved(stored.record)),
                Ok(None) if state_lost => {
                    if let Err(e) = self.restore(&record).await {
                        tracing::warn!(error = %e, session = %id, "a session lost with the shared state could not be brought back");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, session = %id, "re-reading a followed session failed")
                }
            }
        }
    }

    /// Brings back the record a stream here last followed, as it was: pods that hold streams of
    /// the session may each bring back a different one, and the newest stands (one that missed
    /// a move must not undo it — a stream that followed the move, resumed with the cookie it
    /// opened with before it, would have its other room's position trusted). Its revision and
    /// join stay, so a stream that followed it resumes where it was. Under the session's lock,
    /// as a command: the names claimed must be those of the record that stands.
    async fn restore(&self, record: &SessionRecord) -> Result<(), Error> {
        let Some(lock) = self.sessions.lock(record.id, LOCK_WAIT, LOCK_LEASE).await? else {
            // A command of the session, or one that died holding the lock, for longer than a
            // command may run: the session's next read of the shared state settles it.
            tracing::warn!(session = %record.id, "a session's lock stayed taken; not brought back now");
            return Ok(());
        };
        let result = self.restore_locked(record).await;
        self.sessions.unlock(lock).await;
        result
    }

    async fn restore_locked(&self, record: &SessionRecord) -> Result<(), Error> {
        let holder = Holder::Session(self.limits.session_idle);
        match self
            .presence
            .reclaim(&record.nick, record.id, holder)
            .await?
        {
            Claim::Granted => {}
            Claim::Taken | Claim::Recovering => {
                return Err(Error::NicknameInUse(record.nick.to_string()));
            }
        }
        let replaced = self.sessions.load(record.id).await?.map(|s| s.record);
        let restored = self
            .sessions
            .restore(record, self.limits.session_idle)
            .await?;
        // The record that stands, and the one that does not: this one over what it replaced,
        // or — another pod brought back a newer state — the other way round.
        let (gone, kept) = if restored {
            tracing::info!(session = %record.id, nick = %record.nick, "brought back a session the shared state lost or went back on");
            (replaced, Some(record.clone()))
        } else {
            let stored = self.sessions.load(record.id).await?.map(|s| s.record);
            (Some(record.clone()), stored)
        };
        // The name of the record that does not stand is given up, unless the standing one goes
        // by it too; then the claim must say the standing one's spelling, the one its saves
        // renew (this pod's reclaim wrote its own).
        match (&gone, &kept) {
            (Some(gone), Some(kept)) if gone.nick.key() == kept.nick.key() => {
                if !restored && gone.nick != kept.nick {
                    self.presence.reclaim(&kept.nick, kept.id, holder).await?;
                }
            }
            (Some(gone), _) => self.presence.release(&gone.nick, gone.id).await,
            (None, _) => {}
        }
        let Some(kept) = kept else {
            return Ok(());
        };
        // After the claims: a reclaim writes the session's presence without its room.
        let room = kept.room.as_ref().map(|r| &r.name);
        self.presence
            .set_room(&kept.nick, kept.id, room, holder)
            .await;
        if restored {
            self.publish_moved(kept);
        } else {
            self.feeds.deliver(Envelope::SessionMoved(kept));
        }
        Ok(())
    }
}

fn help() -> String {
    let mut text = String::from("Available commands:");
    for (usage, what) in HELP {
        text.push_str(&format!("\n  {usage:<22} {what}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::bus::local::LocalBus;
    use crate::core::model::{Delivery, Event};
    use crate::core::names::{Nickname, RoomName};
    use crate::core::outbox::Inbox;
    use crate::core::ports::{BusError, SessionLock, Stored};
    use crate::core::session::Transport;
    use crate::store::memory::MemoryStore;

    /// A chat over the in-memory store and bus, its commit and publish tasks running.
    fn chat() -> Arc<Chat> {
        chat_with_sessions(|local| local)
    }

    /// The same, its sessions kept by what `sessions` makes of the in-memory bus.
    fn chat_with_sessions(sessions: impl FnOnce(Arc<LocalBus>) -> Arc<dyn Sessions>) -> Arc<Chat> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1000));
        let local = Arc::new(LocalBus::new());
        let shutdown = CancellationToken::new();
        let feeds = Arc::new(Feeds::new(store.clone(), 3, shutdown.clone()));
        let (publisher, publishing) = Publisher::start(local.clone(), shutdown);
        let (committer, committing) =
            Committer::start(store.clone(), feeds.clone(), publisher.clone(), 16);
        tokio::spawn(publishing);
        tokio::spawn(committing);
        let limits = Limits {
            max_line_bytes: 200,
            max_message_chars: 100,
            rate_per_sec: NonZeroU32::new(1000).unwrap(),
            rate_burst: NonZeroU32::new(1000).unwrap(),
            send_queue: 64,
            session_idle: Duration::from_secs(60),
        };
        let ports = Ports {
            store,
            bus: local.clone(),
            presence: local.clone(),
            sessions: sessions(local),
        };
        Arc::new(Chat::new(ports, feeds, publisher, committer, limits))
    }

    /// Sessions whose saves fail while `failing` is set (Valkey gone between two commands).
    struct FlakySaves {
        inner: Arc<LocalBus>,
        failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Sessions for FlakySaves {
        async fn create(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError> {
            self.inner.create(record, ttl).await
        }
        async fn restore(&self, record: &SessionRecord, ttl: Duration) -> Result<bool, BusError> {
            self.inner.restore(record, ttl).await
        }
        async fn load(&self, id: SessionId) -> Result<Option<Stored>, BusError> {
            self.inner.load(id).await
        }
        async fn save(&self, r: &SessionRecord, v: u64, ttl: Duration) -> Result<bool, BusError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(BusError::Unavailable("saves fail".into()));
            }
            self.inner.save(r, v, ttl).await
        }
        async fn touch(
            &self,
            id: SessionId,
            ttl: Duration,
        ) -> Result<Option<SessionRecord>, BusError> {
            self.inner.touch(id, ttl).await
        }
        async fn delete(&self, id: SessionId) -> Result<(), BusError> {
            self.inner.delete(id).await
        }
        async fn lock(
            &self,
            id: SessionId,
            wait: Duration,
            lease: Duration,
        ) -> Result<Option<SessionLock>, BusError> {
            self.inner.lock(id, wait, lease).await
        }
        async fn unlock(&self, lock: SessionLock) {
            self.inner.unlock(lock).await
        }
        async fn take_expired(&self) -> Result<Vec<SessionRecord>, BusError> {
            self.inner.take_expired().await
        }
        async fn spend(&self, id: SessionId, quota: Quota) -> Result<bool, BusError> {
            self.inner.spend(id, quota).await
        }
    }

    #[tokio::test]
    async fn a_move_that_could_not_be_saved_leaves_the_sessions_streams_where_they_were() {
        let flaky = Arc::new(std::sync::OnceLock::<Arc<FlakySaves>>::new());
        let chat = chat_with_sessions(|local| {
            let sessions = Arc::new(FlakySaves {
                inner: local,
                failing: Default::default(),
            });
            let _ = flaky.set(sessions.clone());
            sessions
        });
        let (_setup, record) = web_in_a(&chat).await;
        let web = &record;
        let stream = chat
            .open_session_stream(&record, Resume::default())
            .await
            .unwrap();
        flaky.get().unwrap().failing.store(true, Ordering::SeqCst);
        assert!(chat.command(web.id, "/join b").await.is_err());
        // The stored session is still in a, and so is its stream: a move here, undone at the
        // stream's next keepalive, would show it b for a while, then a again from its join.
        while let Some(delivery) = stream.inbox.try_recv() {
            assert!(
                !matches!(delivery, Delivery::Moved(_)),
                "the stream moved: {delivery:?}"
            );
        }
        assert_eq!(
            chat.resume(web.id).await.unwrap().record().unwrap().room,
            record.room
        );
    }

    #[tokio::test]
    async fn a_session_store_gone_back_in_time_gets_the_newer_record_its_streams_hold() {
        let chat = chat();
        let (mut setup, _) = live(&chat, "setup").await;
        say(&chat, &mut setup, "/create b").await;
        for i in 0..12 {
            say(&chat, &mut setup, &format!("b{i}")).await;
        }
        say(&chat, &mut setup, "/create a").await;
        for i in 0..10 {
            say(&chat, &mut setup, &format!("a{i}")).await;
        }
        let web = chat.connect("web").await.unwrap();
        chat.command(web.id, "/join a").await.unwrap();
        for i in 10..15 {
            say(&chat, &mut setup, &format!("a{i}")).await;
        }
        let in_a = chat.resume(web.id).await.unwrap().record().unwrap();
        let stream = chat
            .open_session_stream(&in_a, Resume::default())
            .await
            .unwrap();
        chat.command(web.id, "/join b").await.unwrap();
        while !matches!(stream.inbox.recv().await, Some(Delivery::Moved(_))) {}
        // Valkey comes back from its append-only file without its last second: the session is
        // in a again, as joined when the stream's client took its mark. Streams here hold b.
        chat.sessions
            .create(&in_a, Duration::from_secs(60))
            .await
            .unwrap();
        chat.refollow(false).await;
        let record = chat.resume(web.id).await.unwrap().record().unwrap();
        let resume = Resume {
            after: Some(11),
            epoch: None,
            mark: Some(in_a.mark()),
        };
        let resumed = chat.open_session_stream(&record, resume).await.unwrap();
        let first = resumed.inbox.try_recv();
        assert!(
            matches!(first, Some(Delivery::Reset(_))),
            "a position kept across the move is not trusted: {first:?}"
        );
        assert_eq!(record.room.map(|r| r.name.to_string()), Some("b".into()));
    }

    #[tokio::test]
    async fn pods_bringing_back_a_lost_session_leave_the_newest_state_whatever_their_order() {
        let chat = chat();
        let (_setup, in_a) = web_in_a(&chat).await;
        let web = &in_a;
        chat.command(web.id, "/nick webby").await.unwrap();
        chat.command(web.id, "/join b").await.unwrap();
        let in_b = chat.resume(web.id).await.unwrap().record().unwrap();
        // Valkey loses it; the pod whose stream followed the moves brings it back first, then
        // one whose stream missed them (cut off from Valkey then) brings back what it saw.
        chat.sessions.delete(web.id).await.unwrap();
        chat.restore(&in_b).await.unwrap();
        chat.restore(&in_a).await.unwrap();
        let stored = chat.resume(web.id).await.unwrap().record().unwrap();
        assert_eq!(stored, in_b);
        // Its name and room are the newer record's, and the older name is free.
        let b = RoomName::parse("b").unwrap();
        let members = chat.presence.room_members(&b).await.unwrap();
        assert!(members.iter().any(|n| n.as_str() == "webby"), "{members:?}");
        assert!(
            chat.connect("webby").await.is_err(),
            "the name kept is held"
        );
        assert!(chat.connect("web").await.is_ok(), "the older name is free");
    }

    #[tokio::test]
    async fn a_rename_brought_forward_frees_the_name_the_older_record_had() {
        let chat = chat();
        let (_setup, as_web) = web_in_a(&chat).await;
        let web = &as_web;
        let _stream = chat
            .open_session_stream(&as_web, Resume::default())
            .await
            .unwrap();
        // The stream here follows the rename (delivered to this pod's feeds as it is saved).
        chat.command(web.id, "/nick webby").await.unwrap();
        // Valkey comes back without the rename, its old claim of `web` with it.
        chat.sessions
            .create(&as_web, Duration::from_secs(60))
            .await
            .unwrap();
        chat.presence
            .reclaim(
                &as_web.nick,
                web.id,
                Holder::Session(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        chat.refollow(false).await;
        let record = chat.resume(web.id).await.unwrap().record().unwrap();
        assert_eq!(record.nick.to_string(), "webby");
        assert!(
            chat.connect("web").await.is_ok(),
            "the name given up is free again"
        );
        assert!(
            chat.connect("webby").await.is_err(),
            "the name kept is held"
        );
    }

    /// Rooms `a` and `b`, made by a netcat user `setup` (returned, to speak in them), and a
    /// browser session `web` in `a` (its record as it joined).
    async fn web_in_a(chat: &Chat) -> (Session, SessionRecord) {
        let (mut setup, _) = live(chat, "setup").await;
        say(chat, &mut setup, "/create a").await;
        say(chat, &mut setup, "/create b").await;
        let web = chat.connect("web").await.unwrap();
        chat.command(web.id, "/join a").await.unwrap();
        (setup, chat.resume(web.id).await.unwrap().record().unwrap())
    }

    async fn live(chat: &Chat, nick: &str) -> (Session, Inbox) {
        let (mut session, inbox) = chat.open(Transport::Tcp, &CancellationToken::new());
        chat.login(&mut session, nick).await.unwrap();
        (session, inbox)
    }

    async fn say(chat: &Chat, session: &mut Session, line: &str) -> String {
        match chat.handle(session, line).await.unwrap() {
            Reply::Text(text) | Reply::Quit(text) => text,
            Reply::Sent(ack) => ack.committed().await.unwrap().line(),
            Reply::Nothing => String::new(),
        }
    }

    /// Every line a receiver has been queued, as a TCP user would read them.
    fn lines(session: &mut Session, inbox: &mut Inbox) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(delivery) = inbox.try_recv() {
            if let Some(crate::core::Show::Event(event)) = session.admit(&delivery) {
                lines.push(event.event.text());
            }
        }
        lines
    }

    #[tokio::test]
    async fn a_join_shows_the_history_then_every_later_message_once() {
        let chat = chat();
        let (mut ann, mut ann_in) = live(&chat, "ann").await;
        say(&chat, &mut ann, "/create r").await;
        for i in 1..=4 {
            say(&chat, &mut ann, &format!("m{i}")).await;
        }
        let (mut bob, mut bob_in) = live(&chat, "bob").await;
        let joined = say(&chat, &mut bob, "/join r").await;
        assert_eq!(
            joined,
            "Joined room: r\n--- Recent Messages ---\n[r] ann: m2\n[r] ann: m3\n[r] ann: m4\n---"
        );
        say(&chat, &mut ann, "m5").await;
        assert_eq!(lines(&mut bob, &mut bob_in), ["[r] ann: m5"]);
        let ann_saw = lines(&mut ann, &mut ann_in);
        assert_eq!(ann_saw.last().unwrap(), "[r] ann: m5");
        assert!(ann_saw.contains(&"[system] bob joined r".to_owned()));
    }

    #[tokio::test]
    async fn joining_the_room_one_is_in_shows_its_history_up_to_what_one_has_seen() {
        let chat = chat();
        let (mut ann, _) = live(&chat, "ann").await;
        say(&chat, &mut ann, "/create r").await;
        for i in 1..=4 {
            say(&chat, &mut ann, &format!("m{i}")).await;
        }
        let (mut bob, mut bob_in) = live(&chat, "bob").await;
        say(&chat, &mut bob, "/join r").await;
        // Five more arrive while bob's client has not read them yet: they wait in his queue,
        // past what the ring of three still holds of what he saw.
        for i in 5..=9 {
            say(&chat, &mut ann, &format!("m{i}")).await;
        }
        let again = say(&chat, &mut bob, "/join r").await;
        assert_eq!(
            again,
            "Joined room: r\n--- Recent Messages ---\n[r] ann: m2\n[r] ann: m3\n[r] ann: m4\n---",
            "the block ends where bob is, and is not empty"
        );
        let queued = lines(&mut bob, &mut bob_in);
        assert_eq!(
            queued,
            [
                "[r] ann: m5",
                "[r] ann: m6",
                "[r] ann: m7",
                "[r] ann: m8",
                "[r] ann: m9"
            ],
            "then what came after, once"
        );
    }

    #[tokio::test]
    async fn a_rename_holds_the_new_name_frees_the_old_and_tells_the_room() {
        let chat = chat();
        let (mut ann, _) = live(&chat, "ann").await;
        say(&chat, &mut ann, "/create r").await;
        let (mut bob, mut bob_in) = live(&chat, "bob").await;
        say(&chat, &mut bob, "/join r").await;
        assert_eq!(
            say(&chat, &mut ann, "/nick anne").await,
            "You are now known as anne"
        );
        assert_eq!(
            lines(&mut bob, &mut bob_in),
            ["[system] ann is now known as anne"]
        );
        let (mut newcomer, _) = chat.open(Transport::Tcp, &CancellationToken::new());
        assert!(matches!(
            chat.login(&mut newcomer, "ANNE").await,
            Err(Error::NicknameInUse(_))
        ));
        assert!(chat.login(&mut newcomer, "ann").await.is_ok());
    }

    #[tokio::test]
    async fn an_http_sessions_nick_and_join_at_once_both_take_effect() {
        let chat = chat();
        let (mut setup, _) = live(&chat, "setup").await;
        say(&chat, &mut setup, "/create a").await;
        say(&chat, &mut setup, "/create b").await;
        let record = chat.connect("web").await.unwrap();
        for round in 0..10 {
            let (nick, room) = (format!("web{round}"), ["a", "b"][round % 2]);
            let (rename, join) = (format!("/nick {nick}"), format!("/join {room}"));
            let (renamed, joined) = tokio::join!(
                chat.command(record.id, &rename),
                chat.command(record.id, &join)
            );
            assert!(renamed.is_ok() && joined.is_ok());
            let posted = chat.post(record.id, "hi", None).await.unwrap();
            assert_eq!(
                (posted.room.as_str(), posted.user.as_str()),
                (room, nick.as_str())
            );
        }
    }

    #[tokio::test]
    async fn a_retried_client_message_id_returns_the_original_even_after_a_move() {
        let chat = chat();
        let (_setup, web) = web_in_a(&chat).await;
        let first = chat.post(web.id, "once", Some("k")).await.unwrap();
        chat.command(web.id, "/join b").await.unwrap();
        let again = chat.post(web.id, "once", Some("k")).await.unwrap();
        assert_eq!(again, first, "the original message, in its own room");
        let other = chat.post(web.id, "once", Some("k2")).await.unwrap();
        assert_eq!((other.room.as_str(), other.seq), ("b", 1));
    }

    #[tokio::test]
    async fn a_retried_client_message_id_returns_the_original_after_the_session_left_its_room() {
        let chat = chat();
        let (_setup, web) = web_in_a(&chat).await;
        let first = chat.post(web.id, "once", Some("k")).await.unwrap();
        chat.command(web.id, "/leave").await.unwrap();
        let again = chat.post(web.id, "once", Some("k")).await.unwrap();
        assert_eq!(again, first);
        assert!(matches!(
            chat.post(web.id, "new", Some("k2")).await,
            Err(Error::NotInRoom)
        ));
    }

    #[tokio::test]
    async fn a_live_session_ends_when_its_pod_stops_or_it_is_kicked_and_only_it() {
        let chat = chat();
        let stopping = CancellationToken::new();
        let (kicked, _) = chat.open(Transport::Tcp, &stopping);
        let (other, _) = chat.open(Transport::Tcp, &stopping);
        let (revoke, revoked) = tokio::sync::mpsc::unbounded_channel();
        revoke.send(kicked.id).unwrap();
        drop(revoke);
        chat.clone()
            .run_revocations(revoked, CancellationToken::new())
            .await;
        assert!(kicked.ended.is_cancelled(), "kicked");
        assert!(!other.ended.is_cancelled(), "another session is not");
        stopping.cancel();
        assert!(other.ended.is_cancelled(), "the pod stopping ends it");
    }

    #[tokio::test]
    async fn a_dm_reaches_the_recipient_and_an_unknown_one_is_refused() {
        let chat = chat();
        let (mut ann, _) = live(&chat, "ann").await;
        let (mut bob, bob_in) = live(&chat, "bob").await;
        assert_eq!(
            say(&chat, &mut ann, "/dm BOB psst").await,
            "[DM to bob] psst"
        );
        let delivery = bob_in.try_recv().unwrap();
        assert!(
            matches!(&delivery, Delivery::Event(e) if e.event == Event::Dm {
                from: Nickname::parse("ann").unwrap(),
                to: Nickname::parse("bob").unwrap(),
                content: "psst".into(),
            })
        );
        assert!(matches!(
            chat.handle(&mut ann, "/dm carl hello").await,
            Err(Error::UnknownUser(_))
        ));
        let _ = &mut bob;
    }
}
