//! One TCP connection: the nickname prompt, then a loop that reads lines, writes replies and
//! drains the session's event queue.
//!
//! A single task does all of it, so an idle connection costs one small task and no buffers: the
//! read buffer is allocated only while bytes are waiting to be decoded.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::lines::{Line, LineReader, LineTooLong};
use crate::adapters::{Delivered, Gathering};
use crate::core::model::{Broadcast, ChatMessage, Delivery, Event};
use crate::core::outbox::{Inbox, TooSlow};
use crate::core::{Chat, Error, Reply, Session, Show, Transport};
use crate::telemetry::metric;

/// Chat messages one connection may have waiting for their commit; past that it stops reading,
/// which pushes back on the client through TCP.
const MAX_IN_FLIGHT: usize = 64;
/// Events written per batch (one `write` call).
const WRITE_BATCH: usize = 256;
/// The batch buffer a quiet connection keeps; a larger one left by a burst is freed.
const IDLE_BATCH_CAPACITY: usize = 16;
/// How much to read at a time.
const READ_CHUNK: usize = 4096;
/// How long the drain notice may take to reach a client that is not reading.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command waits for the echoes of the messages typed before it.
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// How long a drain waits for the client's messages still being stored, to answer each.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Told to a user whose nickname this server can no longer vouch for.
const KICKED: &str =
    "[system] Disconnected: this server lost contact with the presence service; please reconnect\n";
/// Told to a user whose room skipped messages the store no longer has.
const SKIPPED: &[u8] = b"[system] Some messages of this room are no longer available\n";

/// Why the connection ends.
enum End {
    /// The client left, broke the connection, or asked to quit.
    Client,
    /// The client did not read fast enough; already counted where it was detected.
    TooSlow,
    Shutdown,
    /// The pod can no longer vouch for the user's nickname.
    Kicked,
}

struct Connection {
    stream: TcpStream,
    delivered: Delivered,
    settings: Arc<Settings>,
    read_buf: BytesMut,
    lines: LineReader,
    shutdown: CancellationToken,
    too_slow: TooSlow,
    /// Set once the connection is ending (a drain settling what the client sent, or a kick): a
    /// write then goes on despite the shutdown, for NOTICE_TIMEOUT at most.
    draining: bool,
}

/// Serves one connection until it ends; `_slot` is its place under MAX_CONNECTIONS, given back
/// when this returns.
pub async fn serve(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    chat: Arc<Chat>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let (mut session, inbox) = chat.open(Transport::Tcp, &shutdown);
    let mut conn = Connection {
        stream,
        delivered: Delivered::new("tcp"),
        settings: settings.clone(),
        read_buf: BytesMut::new(),
        lines: LineReader::new(settings.max_line_bytes),
        shutdown,
        too_slow: inbox.too_slow.clone(),
        draining: false,
    };
    let end = match tokio::time::timeout(
        settings.nick_timeout,
        conn.prompt_nickname(&chat, &mut session),
    )
    .await
    {
        Ok(Ok(())) => conn.chat_loop(&chat, &mut session, inbox).await,
        Ok(Err(end)) => end,
        Err(_elapsed) => {
            metrics::counter!(metric::DROPPED, "reason" => "nick_timeout").increment(1);
            let _ = conn
                .write(b"\nError: Timed out waiting for a nickname\n")
                .await;
            End::Client
        }
    };
    match end {
        End::Shutdown => {
            let notice =
                Broadcast::new(Event::Notice("Server restarting, please reconnect".into()));
            let _ =
                tokio::time::timeout(NOTICE_TIMEOUT, conn.stream.write_all(notice.line())).await;
        }
        End::Kicked => {
            let _ = tokio::time::timeout(NOTICE_TIMEOUT, conn.stream.write_all(KICKED.as_bytes()))
                .await;
        }
        End::Client | End::TooSlow => {}
    }
    let _ = conn.stream.shutdown().await;
    chat.close(session).await;
}

impl Connection {
    async fn prompt_nickname(&mut self, chat: &Chat, session: &mut Session) -> Result<(), End> {
        self.write(b"Welcome to Baby Discord!\nEnter your nickname: ")
            .await?;
        let shutdown = self.shutdown.clone();
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => return Err(End::Shutdown),
                line = self.read_line() => line?,
            };
            let result = match line {
                Ok(bytes) => Box::pin(chat.login(session, &String::from_utf8_lossy(&bytes))).await,
                Err(LineTooLong) => Err(Error::LineTooLong),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    self.write(format!("Error: {e}\nEnter your nickname: ").as_bytes())
                        .await?
                }
            }
        }
        let nick = session.nick().map(|n| n.to_string()).unwrap_or_default();
        self.write(format!("Welcome, {nick}!\nType /help for available commands.\n").as_bytes())
            .await
    }

    /// The busy paths (writing a batch, handling a line) are boxed: a task is as large as its
    /// largest state, and most connections spend their life idle in this `select!`.
    async fn chat_loop(&mut self, chat: &Chat, session: &mut Session, mut inbox: Inbox) -> End {
        // Grows while a burst is being written and is given back afterwards (see write_events).
        let mut events = Vec::new();
        let mut in_flight: FuturesOrdered<BoxFuture<'static, Result<ChatMessage, Error>>> =
            FuturesOrdered::new();
        // Made once, not at every turn of the loop: each one made registers a waiter with its
        // token and removes it when dropped. The session's own token (ended by a drain or a kick)
        // is polled at every turn, not the pod's shutdown token, which every connection shares.
        let ended = session.ended.clone().cancelled_owned();
        tokio::pin!(ended);
        let mut gathering = Gathering::new(self.settings.write_coalesce);
        loop {
            let step = tokio::select! {
                // Events first: a busy room must not be starved by a client that keeps typing.
                biased;
                _ = &mut ended => if self.shutdown.is_cancelled() {
                    // Every message the client sent is answered — echoed or refused — before the
                    // drain notice: an acknowledgement in flight is not dropped.
                    Box::pin(self.settle(session, &mut in_flight, &mut inbox, &mut gathering)).await;
                    Err(End::Shutdown)
                } else {
                    Box::pin(async {
                        self.draining = true;
                        self.write_gathered(&mut gathering, session, &mut inbox).await?;
                        Err(End::Kicked)
                    }).await
                },
                received = inbox.recv_many(&mut events, WRITE_BATCH), if !gathering.is_on() => match received {
                    // The queue ended: the client was found too slow (the session's own outbox
                    // keeps it from ending otherwise).
                    0 => Err(End::TooSlow),
                    _ => Box::pin(self.write_and_gather(session, &mut events, &mut gathering)).await,
                },
                () = gathering.ended(), if gathering.is_on() => Box::pin(async {
                    // All that was gathered goes in one write, and what comes next is gathered
                    // again; a connection that was sent nothing meanwhile stops gathering.
                    self.take_waiting(&inbox, &mut events)?;
                    self.write_and_gather(session, &mut events, &mut gathering).await
                }).await,
                Some(acked) = in_flight.next() => match acked {
                    Ok(_) => Ok(()),
                    Err(e) => Box::pin(async {
                        self.write_gathered(&mut gathering, session, &mut inbox).await?;
                        self.write_error(session, &e).await
                    }).await,
                },
                line = self.read_line(), if in_flight.len() < MAX_IN_FLIGHT => match line {
                    Ok(line) => Box::pin(async {
                        // What was gathered comes before any answer: a command may move the
                        // session out of the room it was sent from.
                        self.write_gathered(&mut gathering, session, &mut inbox).await?;
                        self.handle(chat, session, line, &mut in_flight, &mut inbox).await
                    }).await,
                    Err(end) => Err(end),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Waits (bounded) for the client's messages still being stored, writing their echoes and
    /// errors as they come — after what was gathered.
    async fn settle(
        &mut self,
        session: &mut Session,
        in_flight: &mut FuturesOrdered<BoxFuture<'static, Result<ChatMessage, Error>>>,
        inbox: &mut Inbox,
        gathering: &mut Gathering,
    ) {
        self.draining = true;
        let settled = tokio::time::timeout(SETTLE_TIMEOUT, async {
            self.write_gathered(gathering, session, inbox).await?;
            while let Some(acked) = in_flight.next().await {
                if let Err(e) = acked {
                    self.write_error(session, &e).await?;
                }
            }
            self.write_waiting(session, inbox).await
        })
        .await;
        if settled.is_err() {
            tracing::warn!(session = %session.id, pending = in_flight.len(), "drain gave up waiting for messages being stored");
        }
    }

    async fn handle(
        &mut self,
        chat: &Chat,
        session: &mut Session,
        line: Line,
        in_flight: &mut FuturesOrdered<BoxFuture<'static, Result<ChatMessage, Error>>>,
        inbox: &mut Inbox,
    ) -> Result<(), End> {
        let bytes = match line {
            Ok(bytes) => bytes,
            Err(LineTooLong) => return self.write_error(session, &Error::LineTooLong).await,
        };
        let text = String::from_utf8_lossy(&bytes);
        // A command runs, and is answered, after every message typed before it has been stored
        // and echoed. An echo comes in its room's order, so it may wait behind a message of
        // another pod still being repaired: it is waited for (a moment at most).
        if text.trim_start().starts_with('/') && !in_flight.is_empty() {
            let mut echo_up_to = None;
            while let Some(acked) = in_flight.next().await {
                match acked {
                    Ok(m) if session.room().is_some_and(|r| r.name == m.room) => {
                        echo_up_to = echo_up_to.max(Some(m.seq));
                    }
                    Ok(_) => {}
                    Err(e) => self.write_error(session, &e).await?,
                }
            }
            let deadline = tokio::time::Instant::now() + ECHO_WAIT;
            let mut events = Vec::new();
            loop {
                while let Some(event) = inbox.try_recv() {
                    events.push(event);
                }
                self.write_events(session, &mut events).await?;
                if echo_up_to.is_none_or(|seq| session.seen() >= seq) {
                    break;
                }
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(event)) => events.push(event),
                    _ => break,
                }
            }
        }
        match chat.handle(session, &text).await {
            Ok(Reply::Nothing) => Ok(()),
            Ok(Reply::Sent(ack)) => {
                in_flight.push_back(Box::pin(ack.committed()));
                Ok(())
            }
            Ok(Reply::Text(text)) => self.write(format!("{text}\n").as_bytes()).await,
            Ok(Reply::Quit(text)) => {
                self.write(format!("{text}\n").as_bytes()).await?;
                Err(End::Client)
            }
            Err(e) => self.write_error(session, &e).await,
        }
    }

    /// Writes `events` and gathers what comes next (WRITE_COALESCE_MS).
    async fn write_and_gather(
        &mut self,
        session: &mut Session,
        events: &mut Vec<Delivery>,
        gathering: &mut Gathering,
    ) -> Result<(), End> {
        if !events.is_empty() {
            gathering.start();
        }
        self.write_events(session, events).await
    }

    /// Ends a gathering, if one is on, writing what it gathered.
    async fn write_gathered(
        &mut self,
        gathering: &mut Gathering,
        session: &mut Session,
        inbox: &mut Inbox,
    ) -> Result<(), End> {
        if gathering.stop() {
            self.write_waiting(session, inbox).await
        } else {
            Ok(())
        }
    }

    /// Writes every delivery waiting in the queue now.
    async fn write_waiting(&mut self, session: &mut Session, inbox: &mut Inbox) -> Result<(), End> {
        let mut events = Vec::new();
        self.take_waiting(inbox, &mut events)?;
        self.write_events(session, &mut events).await
    }

    /// Moves every delivery waiting into `events` — unless the client was found too slow
    /// ([`Inbox::take_waiting`]; while gathering, nothing else looks).
    fn take_waiting(&self, inbox: &Inbox, events: &mut Vec<Delivery>) -> Result<(), End> {
        inbox.take_waiting(events).map(drop).ok_or(End::TooSlow)
    }

    async fn write_error(&mut self, session: &Session, error: &Error) -> Result<(), End> {
        if let Error::Store(_) | Error::Bus(_) = error {
            let cause = std::error::Error::source(error)
                .map(|c| c.to_string())
                .unwrap_or_default();
            tracing::warn!(session = %session.id, %cause, "request failed");
        }
        self.write(format!("Error: {error}\n").as_bytes()).await
    }

    /// Writes a batch of queued events in one call, skipping those the session no longer wants.
    /// A batch of one line — most of them, at low rates — is written as it is, not copied.
    async fn write_events(
        &mut self,
        session: &mut Session,
        events: &mut Vec<Delivery>,
    ) -> Result<(), End> {
        let mut only = None;
        let mut out = BytesMut::new();
        let mut accepted_at = Vec::new();
        for delivery in events.drain(..) {
            let line = match session.admit(&delivery) {
                Some(Show::Event(event)) => {
                    if let Event::Message(m) = &event.event {
                        accepted_at.push(m.created_at);
                    }
                    event.line().clone()
                }
                Some(Show::Reset { .. }) => Bytes::from_static(SKIPPED),
                // A TCP session is never moved by anyone else.
                Some(Show::Moved(_)) | None => continue,
            };
            if out.is_empty() && only.is_none() {
                only = Some(line);
                continue;
            }
            if let Some(first) = only.take() {
                out.extend_from_slice(&first);
            }
            out.extend_from_slice(&line);
        }
        if events.capacity() > IDLE_BATCH_CAPACITY {
            *events = Vec::new();
        }
        let bytes = only.unwrap_or_else(|| out.freeze());
        if bytes.is_empty() {
            return Ok(());
        }
        self.write(&bytes).await?;
        let now = OffsetDateTime::now_utc();
        for accepted in accepted_at {
            self.delivered.message(accepted, now);
        }
        Ok(())
    }

    /// Writes bytes: at once if the socket's buffer takes them all (even once the connection is
    /// being stopped); otherwise unless it is stopped meanwhile (shutdown, or too slow: a client
    /// that stopped reading must not hold this task in a write forever).
    async fn write(&mut self, mut bytes: &[u8]) -> Result<(), End> {
        // Most writes fit in the socket's buffer: one is tried at once, without the futures
        // below (a shutdown or too-slow signal is then seen by the caller's next wait).
        match self.stream.try_write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(End::Client),
        }
        if self.draining {
            return match tokio::time::timeout(NOTICE_TIMEOUT, self.stream.write_all(bytes)).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(End::Client),
            };
        }
        tokio::select! {
            written = self.stream.write_all(bytes) => written.map_err(|_| End::Client),
            _ = self.shutdown.cancelled() => Err(End::Shutdown),
            _ = self.too_slow.wait() => Err(End::TooSlow),
        }
    }

    /// The next line, without its line ending. Cancel-safe: all state lives in `self`.
    async fn read_line(&mut self) -> Result<Line, End> {
        loop {
            if let Some(line) = self.lines.next(&mut self.read_buf) {
                return Ok(line);
            }
            if self.read_buf.is_empty() {
                // Give the buffer back while idle; most connections are idle most of the time.
                self.read_buf = BytesMut::new();
            }
            // The buffer is taken only once there is something to read (an idle connection
            // holds none). The read itself goes through `AsyncRead`, not `try_read_buf`: a read
            // that does not fill the buffer has emptied the socket, and Tokio's `poll_read` then
            // forgets the readiness, where `try_read_buf` keeps it until a read finds nothing —
            // one more `recvfrom` for every line a client sends. Cancel-safe: a read either
            // completes or takes nothing.
            self.stream.readable().await.map_err(|_| End::Client)?;
            self.read_buf.reserve(READ_CHUNK);
            match self.stream.read_buf(&mut self.read_buf).await {
                // End of input: a last line without a newline still counts.
                Ok(0) => return self.lines.last(&mut self.read_buf).ok_or(End::Client),
                Ok(_) => {}
                Err(_) => return Err(End::Client),
            }
        }
    }
}
