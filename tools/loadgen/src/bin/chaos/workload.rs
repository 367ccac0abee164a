//! The clients, behaving as real ones do: netcat members that reconnect to another replica and
//! rejoin when cut off, browser streams that resume with `Last-Event-ID`, HTTP senders that retry
//! with their client message id, DMs, `/nick` and `/join` churn, and an observer that samples
//! presence and probes whether live users' nicknames can be taken. Everything they do and see goes
//! into the [`History`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use rand::RngExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use loadgen::sse::FrameReader;

use crate::history::{ClientId, Event, History, Seg, SegKind, Via};

/// How long one reply may take before the client gives up on the connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const PROMPT: &[u8] = b"Enter your nickname: ";

pub struct Ctx {
    pub history: Arc<History>,
    /// Each replica's (TCP, HTTP) address.
    pub addrs: Vec<(SocketAddr, SocketAddr)>,
    pub rooms: Vec<String>,
    /// Cancelled when clients should stop starting new operations.
    pub sending: CancellationToken,
    /// Cancelled when every client should end.
    pub stop: CancellationToken,
    /// Who holds which nickname right now, by the clients' own account: what the probes try.
    pub online: Mutex<HashMap<ClientId, (String, Instant)>>,
    pub http: reqwest::Client,
    /// Mean time between one sender's messages.
    pub send_every: Duration,
}

impl Ctx {
    fn tcp(&self, replica: usize) -> SocketAddr {
        self.addrs[replica % self.addrs.len()].0
    }

    fn url(&self, replica: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[replica % self.addrs.len()].1)
    }

    fn login(&self, client: ClientId, nick: &str, http: bool) {
        self.login_as(client, nick, http, false);
    }

    fn login_as(&self, client: ClientId, nick: &str, http: bool, stream: bool) {
        self.history.push(Event::Login {
            client,
            nick: nick.into(),
            http,
            stream,
        });
        self.online
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client, (nick.to_owned(), Instant::now()));
    }

    fn logout(&self, client: ClientId, nick: &str, why: &str) {
        self.history.push(Event::Logout {
            client,
            nick: nick.into(),
            why: why.into(),
        });
        self.online
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client);
    }

    fn end_segment(&self, seg: &mut Option<(Seg, String)>, why: &str) {
        if let Some((seg, _)) = seg.take() {
            self.history.push(Event::SegmentEnd {
                seg,
                why: why.into(),
            });
        }
    }

    /// A random wait around `mean`, ended early by `stop`. False when stopped.
    async fn pause(&self, mean: Duration) -> bool {
        let jitter = rand::rng().random_range(0.5..1.5);
        self.stop
            .run_until_cancelled(tokio::time::sleep(mean.mul_f64(jitter)))
            .await
            .is_some()
    }
}

/// What a client does.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A netcat member of its room; maybe a sender, maybe hopping to another room and back,
    /// maybe sending DMs.
    Tcp { sender: bool, churn: bool, dm: bool },
    /// A browser's `/api/messages/:room` stream.
    SseRoom,
    /// A browser's `/api/events` stream; its session hops rooms when `churn`.
    SseEvents { churn: bool },
    /// `POST /api/message` with a client message id, retried on other replicas when unanswered.
    HttpSender,
    /// A browser session sending `/nick` and `/join` at the same time, then a message.
    WebChurn,
}

pub struct Spec {
    pub id: ClientId,
    pub nick: String,
    pub room: usize,
    pub replica: usize,
    pub role: Role,
}

pub async fn run(ctx: Arc<Ctx>, spec: Spec) {
    let result = match spec.role {
        Role::Tcp { .. } => tcp_client(&ctx, &spec).await,
        Role::SseRoom | Role::SseEvents { .. } => sse_client(&ctx, &spec).await,
        Role::HttpSender => http_sender(&ctx, &spec).await,
        Role::WebChurn => web_churn(&ctx, &spec).await,
    };
    if let Err(e) = result {
        ctx.history.push(Event::Note {
            text: format!("client {} ({}) gave up: {e:#}", spec.id, spec.nick),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// netcat members

struct Line {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Line {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Line> {
        let stream =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
        let (read, writer) = stream.into_split();
        Ok(Line {
            reader: BufReader::new(read),
            writer,
        })
    }

    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        Ok(self
            .writer
            .write_all(format!("{line}\n").as_bytes())
            .await?)
    }

    /// The next line; `None` at the end of the connection.
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()))
    }

    async fn expect_line(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(REPLY_TIMEOUT, self.next())
            .await
            .context("no reply")??
            .context("connection closed")
    }

    async fn prompt(&mut self) -> anyhow::Result<()> {
        let mut prompt = [0; PROMPT.len()];
        tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_exact(&mut prompt)).await??;
        anyhow::ensure!(prompt == PROMPT, "no nickname prompt");
        Ok(())
    }
}

/// What a TCP client is waiting for.
enum Pending {
    Send {
        op: u64,
        content: String,
    },
    Dm {
        op: u64,
    },
    Join {
        room: String,
        history: Option<Vec<String>>,
        empty: bool,
    },
}

async fn tcp_client(ctx: &Ctx, spec: &Spec) -> anyhow::Result<()> {
    let Role::Tcp { sender, churn, dm } = spec.role else {
        unreachable!()
    };
    let mut replica = spec.replica;
    while !ctx.stop.is_cancelled() {
        let outcome = tcp_session(ctx, spec, replica, sender, churn, dm).await;
        if let Err(e) = outcome {
            ctx.history.push(Event::Note {
                text: format!(
                    "client {} on replica-{}: {e:#}",
                    spec.id,
                    replica % ctx.addrs.len()
                ),
            });
        }
        // Cut off: the next replica, as a client behind a load balancer would get.
        replica += 1;
        if !ctx.pause(Duration::from_millis(300)).await {
            break;
        }
    }
    Ok(())
}

/// Logs in, answering "in use" (a claim left by a killed replica) by trying again.
async fn log_in(ctx: &Ctx, line: &mut Line, nick: &str) -> anyhow::Result<()> {
    let welcome = line.expect_line().await?;
    anyhow::ensure!(
        welcome == "Welcome to Baby Discord!",
        "greeted with {welcome:?}"
    );
    line.prompt().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        line.send(nick).await?;
        let reply = line.expect_line().await?;
        if reply == format!("Welcome, {nick}!") {
            line.expect_line().await?;
            return Ok(());
        }
        anyhow::ensure!(reply.starts_with("Error: "), "login answered {reply:?}");
        line.prompt().await?;
        if Instant::now() > deadline || !ctx.pause(Duration::from_millis(400)).await {
            bail!("could not log in: {reply}");
        }
    }
}

async fn tcp_session(
    ctx: &Ctx,
    spec: &Spec,
    replica: usize,
    sender: bool,
    churn: bool,
    dm: bool,
) -> anyhow::Result<()> {
    let r = replica % ctx.addrs.len();
    let mut line = Line::connect(ctx.tcp(r)).await?;
    let nick = spec.nick.clone();
    log_in(ctx, &mut line, &nick).await?;
    ctx.login(spec.id, &nick, false);
    let home = ctx.rooms[spec.room].clone();
    let mut seg: Option<(Seg, String)> = None;
    let mut pending = Some(Pending::Join {
        room: home.clone(),
        history: None,
        empty: false,
    });
    line.send(&format!("/join {home}")).await?;
    let mut deadline = Instant::now() + REPLY_TIMEOUT;
    let mut next_action = Instant::now() + ctx.send_every;
    let active = sender || churn || dm;
    let why = loop {
        let idle = pending.is_none() && !ctx.sending.is_cancelled();
        let read = tokio::select! {
            _ = ctx.stop.cancelled() => break "end of run".to_owned(),
            read = line.next() => read,
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                break "no reply in time".to_owned();
            }
            _ = tokio::time::sleep_until(next_action), if idle && (active || seg.is_none()) => {
                let (action, text) = next_tcp_action(ctx, spec, r, &seg, &home, sender, churn, dm);
                line.send(&text).await?;
                pending = Some(action);
                deadline = Instant::now() + REPLY_TIMEOUT;
                let jitter = rand::rng().random_range(0.5..1.5);
                next_action = Instant::now() + ctx.send_every.mul_f64(jitter);
                continue;
            }
        };
        let Some(text) = read? else {
            break "connection closed".to_owned();
        };
        if text == "[system] Server restarting, please reconnect" {
            break "drain notice".to_owned();
        }
        if on_tcp_line(ctx, spec, &nick, r, &text, &mut pending, &mut seg) {
            deadline = Instant::now() + REPLY_TIMEOUT;
        }
    };
    match pending {
        Some(Pending::Send { op, .. }) | Some(Pending::Dm { op }) => {
            ctx.history.push(Event::Unknown {
                op,
                why: why.clone(),
            });
        }
        _ => {}
    }
    ctx.end_segment(&mut seg, &why);
    ctx.logout(spec.id, &nick, &why);
    Ok(())
}

/// The next thing a member does, and the line that does it: back home if elsewhere; a sender
/// mostly sends; a churning member hops rooms; a DM sender writes to another member.
#[allow(clippy::too_many_arguments)]
fn next_tcp_action(
    ctx: &Ctx,
    spec: &Spec,
    replica: usize,
    seg: &Option<(Seg, String)>,
    home: &str,
    sender: bool,
    churn: bool,
    dm: bool,
) -> (Pending, String) {
    let mut rng = rand::rng();
    let here = seg.as_ref().map(|(_, room)| room.as_str());
    let join = |room: &str| {
        (
            Pending::Join {
                room: room.into(),
                history: None,
                empty: false,
            },
            format!("/join {room}"),
        )
    };
    if here != Some(home) && (here.is_none() || rng.random_bool(0.5)) {
        return join(home);
    }
    let others: Vec<String> = ctx
        .online
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|(nick, _)| nick.clone())
        .filter(|n| *n != spec.nick && n.starts_with('t'))
        .collect();
    let roll: f64 = rng.random();
    if churn && (roll < 0.4 || !sender && !dm) {
        return join(&ctx.rooms[rng.random_range(0..ctx.rooms.len())]);
    }
    if dm && !others.is_empty() && (!sender || roll > 0.8) {
        let to = others[rng.random_range(0..others.len())].clone();
        let op = ctx.history.next_op();
        let content = format!("d{op}");
        ctx.history.push(Event::Dm {
            op,
            client: spec.id,
            to: to.clone(),
            content: content.clone(),
        });
        return (Pending::Dm { op }, format!("/dm {to} {content}"));
    }
    if !sender {
        return join(home);
    }
    let op = ctx.history.next_op();
    let content = format!("m{op}");
    ctx.history.push(Event::Send {
        op,
        client: spec.id,
        via: Via::Tcp,
        replica,
        room: here.unwrap_or(home).to_owned(),
        content: content.clone(),
    });
    (
        Pending::Send {
            op,
            content: content.clone(),
        },
        content,
    )
}

/// Handles one line from the server. True when it answered what the client was waiting for.
fn on_tcp_line(
    ctx: &Ctx,
    spec: &Spec,
    nick: &str,
    replica: usize,
    text: &str,
    pending: &mut Option<Pending>,
    seg: &mut Option<(Seg, String)>,
) -> bool {
    // A join's history block, line by line.
    if let Some(Pending::Join {
        room,
        history,
        empty,
    }) = pending
    {
        match (history.as_mut(), text) {
            (None, _) if text.strip_prefix("Joined room: ").is_some() => return true,
            (None, "--- Recent Messages ---") => {
                *history = Some(Vec::new());
                return true;
            }
            (Some(_), "No recent messages") => {
                *empty = true;
                return true;
            }
            (Some(lines), "---") => {
                ctx.end_segment(seg, "joined another room");
                let id = ctx.history.next_seg();
                let contents = lines
                    .iter()
                    .filter_map(|l| l.split_once(": ").map(|(_, c)| c.to_owned()))
                    .collect();
                ctx.history.push(Event::Segment {
                    seg: id,
                    client: spec.id,
                    replica,
                    kind: SegKind::Tcp,
                    room: room.clone(),
                    resume_from: None,
                    resume_room: None,
                    history: contents,
                    empty_history: *empty,
                });
                *seg = Some((id, room.clone()));
                *pending = None;
                return true;
            }
            (Some(lines), _) if text.starts_with('[') => {
                lines.push(text.to_owned());
                return true;
            }
            (_, error) if error.starts_with("Error: ") => {
                // The session may have left its room before the failure: start over from none.
                ctx.end_segment(seg, "join failed");
                *pending = None;
                return true;
            }
            _ => {}
        }
    }
    if let Some(rest) = text.strip_prefix("[DM from ") {
        if let Some((_, content)) = rest.split_once("] ") {
            ctx.history.push(Event::DmShown {
                client: spec.id,
                content: content.into(),
            });
        }
        return false;
    }
    if text.starts_with("[DM to ") {
        if let Some(Pending::Dm { op }) = pending.take() {
            ctx.history.push(Event::Ack {
                op,
                room: String::new(),
                seq: None,
            });
            return true;
        }
        return false;
    }
    if let Some(error) = text.strip_prefix("Error: ") {
        match pending.take() {
            // "Could not confirm…": the outcome is unknown (SPEC §4), not a failure.
            Some(Pending::Send { op, .. }) | Some(Pending::Dm { op })
                if error.starts_with(UNCONFIRMED) =>
            {
                ctx.history.push(Event::Unknown {
                    op,
                    why: error.into(),
                });
            }
            Some(Pending::Send { op, .. }) | Some(Pending::Dm { op }) => {
                ctx.history.push(Event::Fail {
                    op,
                    error: error.into(),
                });
            }
            _ => ctx.history.push(Event::Note {
                text: format!("client {} ({nick}) was told: {text}", spec.id),
            }),
        }
        return true;
    }
    if text.starts_with("[system] ") {
        return false;
    }
    // "[room] user: content"
    let Some((room, rest)) = text.strip_prefix('[').and_then(|t| t.split_once("] ")) else {
        return false;
    };
    let Some((user, content)) = rest.split_once(": ") else {
        return false;
    };
    if let Some((id, _)) = seg {
        ctx.history.push(Event::Shown {
            seg: *id,
            room: room.into(),
            seq: None,
            user: user.into(),
            content: content.into(),
        });
    }
    if let Some(Pending::Send { op, content: mine }) = pending
        && mine == content
        && user == nick
    {
        ctx.history.push(Event::Ack {
            op: *op,
            room: room.into(),
            seq: None,
        });
        *pending = None;
        return true;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// browsers

/// An HTTP session of a client.
struct Web {
    session: String,
    nick: String,
}

#[derive(Deserialize)]
struct Envelope {
    success: bool,
    data: Option<Value>,
    error: Option<String>,
}

/// Posts JSON with the session as a bearer token; `Ok((status, envelope))`, `Err` when no answer
/// came (the outcome is unknown).
async fn post(
    ctx: &Ctx,
    replica: usize,
    path: &str,
    session: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Envelope)> {
    let mut request = ctx
        .http
        .post(ctx.url(replica, path))
        .json(&body)
        .timeout(Duration::from_secs(5));
    if let Some(session) = session {
        request = request.bearer_auth(session);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let envelope = response.json::<Envelope>().await.unwrap_or(Envelope {
        success: false,
        data: None,
        error: Some(format!("status {status} without an envelope")),
    });
    Ok((status, envelope))
}

/// Connects a session for `nick` (a taken nickname gets a suffix), trying replicas in turn.
async fn connect_web(ctx: &Ctx, spec: &Spec, replica: &mut usize) -> anyhow::Result<Web> {
    let mut suffix = 0u32;
    loop {
        if ctx.stop.is_cancelled() {
            bail!("stopped");
        }
        let nick = if suffix == 0 {
            spec.nick.clone()
        } else {
            format!("{}x{suffix}", spec.nick)
        };
        match post(
            ctx,
            *replica,
            "/api/connect",
            None,
            json!({ "nickname": nick }),
        )
        .await
        {
            Ok((
                200,
                Envelope {
                    data: Some(data), ..
                },
            )) => {
                let session = data["sessionId"]
                    .as_str()
                    .context("no sessionId")?
                    .to_owned();
                let stream = matches!(spec.role, Role::SseRoom | Role::SseEvents { .. });
                ctx.login_as(spec.id, &nick, true, stream);
                return Ok(Web { session, nick });
            }
            // Its own old session still holds it (or a stale claim): use another.
            Ok((409, _)) => suffix += 1,
            _ => *replica += 1,
        }
        ctx.pause(Duration::from_millis(300)).await;
    }
}

/// Runs a command; `Ok(Some(text))` on success, `Ok(None)` when the session is gone.
async fn command(
    ctx: &Ctx,
    replica: usize,
    web: &Web,
    command: &str,
) -> anyhow::Result<Option<String>> {
    let (status, envelope) = post(
        ctx,
        replica,
        "/api/command",
        Some(&web.session),
        json!({ "command": command }),
    )
    .await?;
    match status {
        200 => Ok(envelope
            .data
            .and_then(|d| d["message"].as_str().map(str::to_owned))),
        401 => Ok(None),
        _ => bail!("{command}: {status} {}", envelope.error.unwrap_or_default()),
    }
}

async fn join(
    ctx: &Ctx,
    spec: &Spec,
    replica: usize,
    web: &Web,
    room: &str,
) -> anyhow::Result<Option<String>> {
    let reply = command(ctx, replica, web, &format!("/join {room}")).await?;
    if let Some(reply) = &reply
        && let Some(joined) = reply
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("Joined room: "))
    {
        ctx.history.push(Event::Joined {
            client: spec.id,
            room: joined.to_owned(),
        });
    }
    Ok(reply)
}

#[derive(Deserialize)]
struct MessageData {
    seq: i64,
    room: String,
    user: String,
    content: String,
}

async fn sse_client(ctx: &Ctx, spec: &Spec) -> anyhow::Result<()> {
    let mut replica = spec.replica;
    let home = ctx.rooms[spec.room].clone();
    let events = matches!(spec.role, Role::SseEvents { .. });
    let churn = matches!(spec.role, Role::SseEvents { churn: true });
    // What EventSource keeps between reconnections: the last event id (and, for the checker, the
    // room it was seen in), and the browser's cookies.
    let mut last_event_id: Option<(String, String)> = None;
    let browser = reqwest::Client::builder().cookie_store(true).build()?;
    while !ctx.stop.is_cancelled() {
        let web = connect_web(ctx, spec, &mut replica).await?;
        // A new session's stream is a new EventSource: the page resumes it with the last seq it
        // showed in the room it joins again (home), and with nothing from another room.
        if events {
            last_event_id.take_if(|(_, room)| !room.eq_ignore_ascii_case(&home));
        }
        if events
            && join(ctx, spec, replica, &web, &home)
                .await
                .ok()
                .flatten()
                .is_none()
        {
            ctx.logout(spec.id, &web.nick, "could not join");
            replica += 1;
            continue;
        }
        // One session, streams resumed on replica after replica until the session is gone.
        loop {
            match stream(
                ctx,
                &browser,
                spec,
                replica,
                &web,
                &home,
                events,
                churn,
                &mut last_event_id,
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => ctx.history.push(Event::Note {
                    text: format!("client {} stream: {e:#}", spec.id),
                }),
            }
            if ctx.stop.is_cancelled() {
                return Ok(());
            }
            replica += 1;
            ctx.pause(Duration::from_millis(200)).await;
        }
        ctx.logout(spec.id, &web.nick, "session gone");
    }
    Ok(())
}

/// One stream, until it ends. `Ok(false)` when the session is gone.
#[allow(clippy::too_many_arguments)]
async fn stream(
    ctx: &Ctx,
    browser: &reqwest::Client,
    spec: &Spec,
    replica: usize,
    web: &Web,
    home: &str,
    events: bool,
    churn: bool,
    last_event_id: &mut Option<(String, String)>,
) -> anyhow::Result<bool> {
    let r = replica % ctx.addrs.len();
    let path = if events {
        "/api/events".to_owned()
    } else {
        format!("/api/messages/{home}")
    };
    let mut request = browser
        .get(ctx.url(r, &path))
        .bearer_auth(&web.session)
        .header("accept", "text/event-stream");
    // Resumed from (seq, the room it was seen in).
    let resume = last_event_id
        .as_ref()
        .and_then(|(id, room)| Some((id.parse::<i64>().ok()?, room.clone())));
    if let Some((id, _)) = last_event_id {
        request = request.header("last-event-id", id.as_str());
    }
    let response = tokio::time::timeout(REPLY_TIMEOUT, request.send())
        .await
        .context("no answer")??;
    match response.status().as_u16() {
        200 => {}
        401 => return Ok(false),
        status => bail!("stream refused: {status}"),
    }
    let mut body = response.bytes_stream();
    let mut frames = FrameReader::default();
    let mut seg: Option<(Seg, String)> = None;
    let kind = if events {
        SegKind::SseEvents
    } else {
        SegKind::SseRoom
    };
    let new_segment =
        |ctx: &Ctx, seg: &mut Option<(Seg, String)>, room: &str, resume: Option<(i64, String)>| {
            ctx.end_segment(seg, "room changed");
            let id = ctx.history.next_seg();
            ctx.history.push(Event::Segment {
                seg: id,
                client: spec.id,
                replica: r,
                kind,
                room: room.into(),
                resume_from: resume.as_ref().map(|r| r.0),
                resume_room: resume.map(|r| r.1),
                history: Vec::new(),
                empty_history: false,
            });
            *seg = Some((id, room.to_owned()));
        };
    if !events {
        new_segment(ctx, &mut seg, home, resume.clone());
    }
    let mut first_connected = true;
    let mut hop = Instant::now() + ctx.send_every * 8;
    // A hop under way: its requests run beside the reading of the stream, as a browser's would —
    // one that waits (a session lock lapsing after a fault) must not leave the stream unread.
    let mut hopping: Option<futures::future::BoxFuture<'_, ()>> = None;
    let why = loop {
        let chunk = tokio::select! {
            _ = ctx.stop.cancelled() => break "end of run".to_owned(),
            chunk = body.next() => chunk,
            _ = tokio::time::sleep_until(hop),
                if churn && hopping.is_none() && !ctx.sending.is_cancelled() => {
                // The session hops to another room and back, on whichever replica.
                let other = &ctx.rooms[(spec.room + 1) % ctx.rooms.len()];
                let pick = rand::rng().random_range(0..ctx.addrs.len());
                hopping = Some(Box::pin(async move {
                    let _ = join(ctx, spec, pick, web, other).await;
                    let _ = join(ctx, spec, pick + 1, web, home).await;
                }));
                continue;
            }
            () = async { hopping.as_mut().expect("a hop under way").await }, if hopping.is_some() => {
                hopping = None;
                hop = Instant::now() + ctx.send_every * 8;
                continue;
            }
        };
        let Some(chunk) = chunk else {
            break "stream ended".to_owned();
        };
        let Ok(chunk) = chunk else {
            break "stream broke".to_owned();
        };
        for frame in frames.push(&chunk) {
            match frame.event.as_str() {
                "connected" if events => {
                    let room: Value = serde_json::from_str(&frame.data).unwrap_or_default();
                    if let Some(room) = room["room"].as_str() {
                        let resume = if first_connected {
                            resume.clone()
                        } else {
                            None
                        };
                        new_segment(ctx, &mut seg, room, resume);
                    } else {
                        ctx.end_segment(&mut seg, "left the room");
                    }
                    first_connected = false;
                }
                "message" => {
                    if let (Ok(m), Some((id, _))) =
                        (serde_json::from_str::<MessageData>(&frame.data), &seg)
                    {
                        ctx.history.push(Event::Shown {
                            seg: *id,
                            room: m.room,
                            seq: Some(m.seq),
                            user: m.user,
                            content: m.content,
                        });
                    }
                }
                "reset" => {
                    if let Some((id, _)) = &seg {
                        ctx.history.push(Event::Reset { seg: *id });
                    }
                }
                "dm" => {
                    let dm: Value = serde_json::from_str(&frame.data).unwrap_or_default();
                    if let Some(content) = dm["content"].as_str() {
                        ctx.history.push(Event::DmShown {
                            client: spec.id,
                            content: content.into(),
                        });
                    }
                }
                _ => {}
            }
            // The SSE rule: an `id` field sets the last event id; an empty one clears it. (The
            // checker notes the room it belongs to: the stream's, after this frame.)
            if let Some(id) = &frame.id {
                let room = seg
                    .as_ref()
                    .map(|(_, room)| room.clone())
                    .unwrap_or_default();
                *last_event_id = Some((id.clone(), room)).filter(|(id, _)| !id.is_empty());
            }
        }
    };
    ctx.end_segment(&mut seg, &why);
    // A hop under way is seen through (bounded by its requests' timeouts) unless the run is
    // over: dropped mid-request, it would leave its session's lock to lapse.
    if let Some(hop) = hopping.take()
        && !ctx.stop.is_cancelled()
    {
        hop.await;
    }
    Ok(true)
}

async fn http_sender(ctx: &Ctx, spec: &Spec) -> anyhow::Result<()> {
    let mut replica = spec.replica;
    let home = ctx.rooms[spec.room].clone();
    'session: while !ctx.stop.is_cancelled() {
        let web = connect_web(ctx, spec, &mut replica).await?;
        if join(ctx, spec, replica, &web, &home)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            ctx.logout(spec.id, &web.nick, "could not join");
            replica += 1;
            continue;
        }
        while ctx.pause(ctx.send_every).await && !ctx.sending.is_cancelled() {
            if !send_http(ctx, spec, &mut replica, &web, &home).await {
                ctx.logout(spec.id, &web.nick, "session gone");
                continue 'session;
            }
        }
        ctx.logout(spec.id, &web.nick, "end of run");
        return Ok(());
    }
    Ok(())
}

/// What the server says when a message may or may not have been stored.
const UNCONFIRMED: &str = "Could not confirm that the message was stored";

/// Sends one message, retrying an unanswered or unconfirmed (504) attempt on the next replica
/// with the same client message id, as SPEC §4 tells clients to. False when the session is gone.
async fn send_http(ctx: &Ctx, spec: &Spec, replica: &mut usize, web: &Web, room: &str) -> bool {
    let op = ctx.history.next_op();
    let content = format!("m{op}");
    let body = json!({ "content": content, "clientMessageId": format!("c{op}") });
    // Set once an attempt may have stored the message: a later error does not undo that.
    let mut uncertain = false;
    for _attempt in 0..3 {
        ctx.history.push(Event::Send {
            op,
            client: spec.id,
            via: Via::Http,
            replica: *replica % ctx.addrs.len(),
            room: room.into(),
            content: content.clone(),
        });
        match post(
            ctx,
            *replica,
            "/api/message",
            Some(&web.session),
            body.clone(),
        )
        .await
        {
            Ok((
                200,
                Envelope {
                    success: true,
                    data: Some(data),
                    ..
                },
            )) => {
                ctx.history.push(Event::Ack {
                    op,
                    room: data["room"].as_str().unwrap_or_default().into(),
                    seq: data["seq"].as_i64(),
                });
                return true;
            }
            Ok((504, envelope)) => {
                uncertain = true;
                ctx.history.push(Event::Note {
                    text: format!(
                        "client {} op {op}: unconfirmed by replica-{}: {}",
                        spec.id,
                        *replica % ctx.addrs.len(),
                        envelope.error.unwrap_or_default()
                    ),
                });
                *replica += 1;
            }
            Ok((status, envelope)) => {
                let error = format!("{status} {}", envelope.error.unwrap_or_default());
                if uncertain {
                    let why = format!("{error}, after an attempt whose outcome is unknown");
                    ctx.history.push(Event::Unknown { op, why });
                } else {
                    ctx.history.push(Event::Fail { op, error });
                }
                return status != 401;
            }
            Err(e) => {
                uncertain = true;
                if ctx.stop.is_cancelled() {
                    break;
                }
                ctx.history.push(Event::Note {
                    text: format!(
                        "client {} op {op}: no answer from replica-{}: {e}",
                        spec.id,
                        *replica % ctx.addrs.len()
                    ),
                });
                *replica += 1;
            }
        }
    }
    ctx.history.push(Event::Unknown {
        op,
        why: "no attempt was answered, or confirmed".into(),
    });
    true
}

/// `/nick` and `/join` at once on two replicas, then a message that must carry both changes.
async fn web_churn(ctx: &Ctx, spec: &Spec) -> anyhow::Result<()> {
    let mut replica = spec.replica;
    let mut round = 0u32;
    while !ctx.stop.is_cancelled() {
        let mut web = connect_web(ctx, spec, &mut replica).await?;
        while ctx.pause(ctx.send_every * 4).await && !ctx.sending.is_cancelled() {
            round += 1;
            let nick = format!("{}n{round}", spec.nick);
            let room = ctx.rooms[round as usize % ctx.rooms.len()].clone();
            let command = json!({ "command": format!("/nick {nick}") });
            // The rename is recorded as soon as its answer comes, not once the join's does too:
            // the server gives the old name up when it answers, and a probe may take it then.
            let rename = async {
                let answer = post(ctx, replica, "/api/command", Some(&web.session), command).await;
                let took = matches!(
                    &answer,
                    Ok((200, Envelope { data: Some(data), .. }))
                        if data["message"] == format!("You are now known as {nick}")
                );
                if took {
                    ctx.logout(spec.id, &web.nick, "renamed");
                    ctx.login(spec.id, &nick, true);
                }
                (answer, took)
            };
            let ((answer, took), joined) =
                tokio::join!(rename, join(ctx, spec, replica + 1, &web, &room));
            // Whatever became of the other, a rename that was answered took effect; one that
            // was not answered may have: the client cannot tell its name, and starts over.
            let renamed = match answer {
                _ if took => {
                    web.nick = nick;
                    true
                }
                Ok((401, _)) | Err(_) => break,
                Ok(_) => false,
            };
            match joined {
                Ok(Some(_)) if renamed => {}
                Ok(None) => break,
                _ => continue,
            }
            if !send_http(ctx, spec, &mut replica, &web, &room).await {
                break;
            }
        }
        ctx.logout(spec.id, &web.nick, "session gone");
        if ctx.sending.is_cancelled() {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the observer

/// Samples `/list` on every replica twice a second and, every 1.5 s, tries to take the nickname
/// of a client that has held it for a while.
pub async fn observe(ctx: Arc<Ctx>) {
    let mut observers: Vec<Observer> = vec![Observer::default(); ctx.addrs.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut round = 0u64;
    while ctx.stop.run_until_cancelled(tick.tick()).await.is_some() {
        round += 1;
        for (replica, observer) in observers.iter_mut().enumerate() {
            sample_presence(&ctx, replica, observer).await;
        }
        if round.is_multiple_of(3) {
            probe(&ctx).await;
        }
    }
}

/// Sends through one replica only, twice a second, into a room of its own: how soon each replica
/// acknowledges again after a fault (invariant 7), whatever the other clients are doing.
pub async fn pulse(ctx: Arc<Ctx>, spec: Spec, room: String) {
    let room = &room;
    while !ctx.sending.is_cancelled() {
        let mut at = spec.replica;
        let Ok(web) = connect_web(&ctx, &spec, &mut at).await else {
            return;
        };
        if at != spec.replica
            || join(&ctx, &spec, at, &web, room)
                .await
                .ok()
                .flatten()
                .is_none()
        {
            ctx.logout(spec.id, &web.nick, "not on its replica");
            ctx.pause(Duration::from_millis(500)).await;
            continue;
        }
        while ctx.pause(Duration::from_millis(500)).await && !ctx.sending.is_cancelled() {
            let mut pinned = spec.replica;
            if !send_http(&ctx, &spec, &mut pinned, &web, room).await {
                break;
            }
        }
        ctx.logout(spec.id, &web.nick, "session gone");
    }
}

/// The observer's session on `replica`, opened anew (under a fresh name) whenever it is lost.
#[derive(Default, Clone)]
struct Observer {
    session: Option<String>,
    opened: u32,
}

async fn sample_presence(ctx: &Ctx, replica: usize, observer: &mut Observer) {
    let session = &mut observer.session;
    if session.is_none() {
        // A fresh name each time: a connect whose answer was lost (a timeout while Valkey was
        // paused) may still have opened a session that holds the last name for its idle time.
        let nick = match observer.opened {
            0 => format!("obs{replica}"),
            n => format!("obs{replica}x{n}"),
        };
        observer.opened += 1;
        if let Ok((
            200,
            Envelope {
                data: Some(data), ..
            },
        )) = post(
            ctx,
            replica,
            "/api/connect",
            None,
            json!({ "nickname": nick }),
        )
        .await
        {
            *session = data["sessionId"].as_str().map(str::to_owned);
        }
    }
    let Some(id) = session.clone() else { return };
    match post(
        ctx,
        replica,
        "/api/command",
        Some(&id),
        json!({ "command": "/list" }),
    )
    .await
    {
        Ok((
            200,
            Envelope {
                data: Some(data), ..
            },
        )) => {
            if let Some(list) = data["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("Online users: "))
            {
                let online = list
                    .split(", ")
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                ctx.history.push(Event::Presence { replica, online });
            }
        }
        Ok((401, _)) => *session = None,
        _ => {}
    }
}

async fn probe(ctx: &Ctx) {
    let candidates: Vec<String> = ctx
        .online
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|(_, since)| since.elapsed() > Duration::from_secs(1))
        .map(|(nick, _)| nick.clone())
        .collect();
    if candidates.is_empty() {
        return;
    }
    let (nick, replica) = {
        let mut rng = rand::rng();
        (
            candidates[rng.random_range(0..candidates.len())].clone(),
            rng.random_range(0..ctx.addrs.len()),
        )
    };
    match post(
        ctx,
        replica,
        "/api/connect",
        None,
        json!({ "nickname": nick }),
    )
    .await
    {
        Ok((
            200,
            Envelope {
                data: Some(data), ..
            },
        )) => {
            ctx.history.push(Event::Probe {
                nick: nick.clone(),
                replica,
                granted: true,
            });
            // Give it back at once, so the client it belongs to is not disturbed further.
            if let Some(session) = data["sessionId"].as_str() {
                let _ = post(ctx, replica, "/api/disconnect", Some(session), json!({})).await;
            }
        }
        Ok((409, _)) => ctx.history.push(Event::Probe {
            nick,
            replica,
            granted: false,
        }),
        _ => {}
    }
}
