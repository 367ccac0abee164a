//! Server-Sent Events: `/api/messages/{room}` (one room) and `/api/events` (all a session sees).
//!
//! The body is written by hand rather than through axum's `Sse` so that a message's frame is
//! rendered once and the same bytes go to every subscriber. A stream ends on its own when the
//! server drains (after a notice) — open streams would otherwise hold up shutdown (axum #2673) —
//! or when its queue overflows because the client reads too slowly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

use super::AppState;
use super::api::RoomPath;
use super::auth::Credentials;
use super::error::{ApiError, ApiPath, Failure, Unavailable};
use super::listener::StreamEnd;
use crate::adapters::{Delivered, Gathering};
use crate::core::model::{ChatMessage, Delivery, Event, Position, SessionId};
use crate::core::names::RoomName;
use crate::core::{Chat, Error, EventStream, Resume, Show};

/// A comment line every this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events written per wake-up.
const BATCH: usize = 256;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct StreamQuery {
    /// The session, when not sent as a bearer token or cookie.
    #[serde(rename = "sessionId")]
    pub session_id: Option<String>,
    /// Resume after this seq, for clients that cannot set `Last-Event-ID`.
    #[serde(rename = "last_event_id")]
    #[param(minimum = 0)]
    pub last_event_id: Option<i64>,
}

/// What a stream request says — its session and where it resumes — read from its query,
/// headers and cookies. Refused with 400 (a bad query or `Last-Event-ID`) or 401 (no session).
pub struct StreamRequest {
    pub session: SessionId,
    pub resume: Resume,
}

impl<S: Send + Sync> FromRequestParts<S> for StreamRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<StreamQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let after = resume_after(&parts.headers, &query)?;
        let Ok(credentials) = Credentials::from_request_parts(parts, state).await;
        let session = credentials.session(query.session_id.as_deref())?;
        let cookies = CookieJar::from_headers(&parts.headers);
        let epoch = cookies.get(EPOCH_COOKIE).map(|c| c.value().to_owned());
        let mark = cookies
            .get(&mark_cookie(session))
            .map(|c| c.value().to_owned());
        Ok(StreamRequest {
            session,
            resume: Resume { after, epoch, mark },
        })
    }
}

/// Streams one room's messages and events.
#[utoipa::path(get, path = "/api/messages/{room}", params(RoomPath, StreamQuery),
    responses((status = 200, content_type = "text/event-stream"), (status = 400, body = Failure),
        (status = 401, body = Failure), (status = 404, body = Failure), Unavailable))]
pub async fn get_room_stream(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<RoomPath>,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    let name = RoomName::parse_exact(&path.room).map_err(Error::from)?;
    let slot = state.slots.take()?;
    let session = state.chat.resume(request.session).await?;
    let record = session.record().ok_or(Error::UnknownSession)?;
    let room = state.chat.find_room(&name).await?;
    // The mark cookie is the session stream's: this stream's room is in its path.
    let resume = Resume {
        mark: None,
        ..request.resume
    };
    let stream = state.chat.open_room_stream(&record, &room, resume).await?;
    Ok(respond(stream, slot, &state))
}

/// Streams everything the session would see on TCP: its room (following it), DMs, room events.
#[utoipa::path(get, path = "/api/events", params(StreamQuery),
    responses((status = 200, content_type = "text/event-stream"), (status = 400, body = Failure),
        (status = 401, body = Failure), Unavailable))]
pub async fn get_session_stream(
    State(state): State<AppState>,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    let slot = state.slots.take()?;
    let session = state.chat.resume(request.session).await?;
    let record = session.record().ok_or(Error::UnknownSession)?;
    let stream = state
        .chat
        .open_session_stream(&record, request.resume)
        .await?;
    let cookie = format!(
        "{}={}; Path=/api/; HttpOnly; SameSite=Strict; Max-Age={}",
        mark_cookie(record.id),
        record.mark(),
        state.session_idle_secs
    );
    let mut response = respond(stream, slot, &state);
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The cookie that carries the store's epoch back on a reconnect: `EventSource` resends cookies
/// but not ids of our choosing, and the `id:` of an event stays the plain seq (SPEC §4).
const EPOCH_COOKIE: &str = "chatEpoch";

/// The cookie that says which state of its session (room and revision) a session's stream
/// started in, so that a position from another room is not taken for one of this room. Named
/// after the session (a browser may hold several sessions, one per tab).
fn mark_cookie(session: SessionId) -> String {
    format!("chatRoom-{}", &session.to_string()[..12])
}

/// The seq to resume after: `Last-Event-ID`, else `last_event_id`. Ids this server sends are
/// seqs, so anything but a non-negative integer was never one of them, and is refused rather
/// than taken for a fresh start. (An empty id is none: it is what clears a client's id.)
fn resume_after(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<i64>, ApiError> {
    let refused = || ApiError::BadRequest("Last-Event-ID must be a non-negative integer".into());
    let header = match headers.get("last-event-id") {
        Some(value) => {
            let value = value.to_str().map_err(|_| refused())?.trim();
            match value {
                "" => None,
                value => Some(value.parse::<u64>().map_err(|_| refused())?),
            }
        }
        None => None,
    };
    let after = match header {
        Some(seq) => Some(i64::try_from(seq).map_err(|_| refused())?),
        None => query.last_event_id,
    };
    match after {
        Some(seq) if seq < 0 => Err(refused()),
        after => Ok(after),
    }
}

fn respond(stream: EventStream, slot: OwnedSemaphorePermit, state: &AppState) -> Response {
    let epoch = format!(
        "{EPOCH_COOKIE}={}; Path=/api/; HttpOnly; SameSite=Strict",
        stream.epoch
    );
    let end = StreamEnd {
        shutdown: state.shutdown.clone(),
        too_slow: stream.inbox.too_slow.clone(),
    };
    // Boxed once: the stream's state holds it beside each pending chunk, and moves only a pointer.
    let writer = Box::new(Writer::new(stream, slot, state));
    let body = Body::from_stream(futures::stream::unfold(writer, |mut w| async move {
        w.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), w))
    }));
    let mut response = body.into_response();
    response.extensions_mut().insert(end);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies (the Ingress) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(cookie) = HeaderValue::from_str(&epoch) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Turns an [`EventStream`] into body chunks.
struct Writer {
    stream: EventStream,
    chat: Arc<Chat>,
    shutdown: CancellationToken,
    keepalive: tokio::time::Interval,
    /// What the stream shows: its room and the last seq of it shown.
    view: crate::core::session::View,
    delivered: Delivered,
    ready: VecDeque<Bytes>,
    deliveries: Vec<Delivery>,
    gathering: Gathering,
    finished: bool,
    _slot: OwnedSemaphorePermit,
}

impl Writer {
    fn new(stream: EventStream, slot: OwnedSemaphorePermit, state: &AppState) -> Self {
        state.chat.count_connection("sse", true);
        let mut ready = VecDeque::new();
        ready.push_back(connected(&stream.start));
        let view = crate::core::session::View::new(stream.start.room.clone(), stream.start.seen);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        Writer {
            stream,
            chat: state.chat.clone(),
            shutdown: state.shutdown.clone(),
            keepalive,
            view,
            delivered: Delivered::new("sse"),
            ready,
            deliveries: Vec::new(),
            gathering: Gathering::new(state.write_coalesce),
            finished: false,
            _slot: slot,
        }
    }

    /// The next piece of the body: every frame ready now, in one chunk (one write, not one per
    /// frame); `None` ends the response. With WRITE_COALESCE_MS, a chunk of deliveries starts a
    /// gathering: what reaches the stream until it ends costs a place in the queue, not a
    /// wake-up and a write, and goes out in one chunk when it ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            // Taken whole: an idle stream keeps no buffer.
            let ready = std::mem::take(&mut self.ready);
            match ready.len() {
                0 => {}
                1 => return ready.into_iter().next(),
                _ => {
                    let mut chunk = BytesMut::with_capacity(ready.iter().map(Bytes::len).sum());
                    ready
                        .iter()
                        .for_each(|frame| chunk.extend_from_slice(frame));
                    return Some(chunk.freeze());
                }
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.finished = true;
                    // What is waiting, gathered or not, goes out before the notice (within the
                    // listener's grace for a draining stream's writes).
                    self.gathering.stop();
                    self.take_waiting()?;
                    let notice = Notice { text: "Server restarting, please reconnect" };
                    self.ready.push_back(frame("system", None, &notice));
                }
                received = self.stream.inbox.recv_many(&mut self.deliveries, BATCH), if !self.gathering.is_on() => {
                    if received == 0 {
                        return None;
                    }
                    self.take_deliveries();
                    self.gathering.start();
                }
                () = self.gathering.ended(), if self.gathering.is_on() => {
                    // All that was gathered goes in one chunk, and what comes next is gathered
                    // again; a stream that was sent nothing meanwhile stops gathering.
                    match self.take_waiting() {
                        None => return None,
                        Some(0) => {}
                        Some(_) => self.gathering.start(),
                    }
                }
                _ = self.keepalive.tick() => {
                    // An open stream keeps its session alive; a session that ended ends the stream.
                    match self.chat.keep_alive(&self.stream).await {
                        Ok(false) => return None,
                        Ok(true) | Err(_) => self.ready.push_back(Bytes::from_static(b": keepalive\n\n")),
                    }
                }
            }
        }
    }

    /// Makes the frames of every delivery waiting, and says how many there were; `None` if the
    /// client was found too slow ([`Inbox::take_waiting`]; while gathering, nothing else looks).
    ///
    /// [`Inbox::take_waiting`]: crate::core::outbox::Inbox::take_waiting
    fn take_waiting(&mut self) -> Option<usize> {
        let taken = self.stream.inbox.take_waiting(&mut self.deliveries)?;
        self.take_deliveries();
        Some(taken)
    }

    fn take_deliveries(&mut self) {
        let now = OffsetDateTime::now_utc();
        for delivery in std::mem::take(&mut self.deliveries) {
            match self.view.admit(&delivery) {
                Some(Show::Event(event)) => {
                    if let Event::Message(m) = &event.event {
                        self.delivered.message(m.created_at, now);
                    }
                    self.ready.push_back(event.sse_frame(render).clone());
                }
                // A followed session moved: the stream shows its new room from here on.
                Some(Show::Moved(position)) => self.ready.push_back(connected(position)),
                Some(Show::Reset { room, next }) => self.ready.push_back(frame(
                    "reset",
                    None,
                    &Reset {
                        room: Some(room.to_string()),
                        oldest_seq: Some(next),
                    },
                )),
                None => {}
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.chat.count_connection("sse", false);
    }
}

/// `event: connected` with the stream's room, and as its `id` the position there (the last seq
/// counted as shown), so that a client reconnecting with it resumes exactly there — unless the
/// stream had followed its session there from the room it opened in, which its cookie names
/// (then `reset`). No room: an empty id, which clears the client's.
fn connected(position: &Position) -> Bytes {
    let room = position.room.as_ref().map(|r| r.to_string());
    let id = room.as_ref().map(|_| position.seen);
    let mut frame = frame("connected", id, &Connected { room: room.clone() });
    if room.is_none() {
        frame = Bytes::from([b"id:\n".as_slice(), &frame].concat());
    }
    frame
}

#[derive(Serialize)]
struct Connected {
    room: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Reset {
    room: Option<String>,
    oldest_seq: Option<i64>,
}

#[derive(Serialize)]
struct Notice {
    text: &'static str,
}

#[derive(Serialize)]
struct MessageData<'a> {
    id: i64,
    seq: i64,
    room: &'a str,
    user: &'a str,
    content: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
}

#[derive(Serialize)]
struct RoomEventData<'a> {
    room: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
struct DmData<'a> {
    from: &'a str,
    to: &'a str,
    content: &'a str,
}

fn frame(event: &str, id: Option<i64>, data: &impl Serialize) -> Bytes {
    // serde_json escapes newlines inside strings, so the data is always a single line.
    let json = serde_json::to_string(data).expect("event data serializes");
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("event: {event}\n{id}data: {json}\n\n"))
}

fn message_frame(m: &ChatMessage) -> Bytes {
    let data = MessageData {
        id: m.id,
        seq: m.seq,
        room: m.room.as_str(),
        user: m.user.as_str(),
        content: &m.content,
        timestamp: m.created_at,
    };
    frame("message", Some(m.seq), &data)
}

/// The SSE frame of an event; called once per broadcast, whatever the number of subscribers.
fn render(event: &Event) -> Bytes {
    match event {
        Event::Message(m) => message_frame(m),
        Event::Room { room, text, .. } => frame(
            "system",
            None,
            &RoomEventData {
                room: room.as_str(),
                text,
            },
        ),
        Event::Dm { from, to, content } => frame(
            "dm",
            None,
            &DmData {
                from: from.as_str(),
                to: to.as_str(),
                content,
            },
        ),
        Event::Notice(text) => frame("system", None, &RoomEventData { room: "", text }),
    }
}
