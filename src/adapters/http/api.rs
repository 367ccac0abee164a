//! The JSON routes of SPEC §4. Each handler loads the session (if it needs one), makes one call
//! on the core and wraps the answer; a detached session is saved back after a command.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::{AppendHeaders, IntoResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{COOKIE, Credentials};
use super::error::{ApiError, ApiJson, ApiResult, Data};
use crate::core::model::ChatMessage;
use crate::core::names::RoomName;
use crate::core::{Error, Reply};

/// The most messages one history request returns.
const MAX_HISTORY_PAGE: usize = 100;
/// The longest client message id (or `Idempotency-Key`) accepted.
const MAX_CLIENT_ID: usize = 64;

#[derive(Deserialize, ToSchema)]
pub struct ConnectRequest {
    pub nickname: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    pub session_id: String,
    pub user_id: i64,
    pub nickname: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    pub session_id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    pub session_id: Option<String>,
    pub command: String,
}

#[derive(Serialize, ToSchema)]
pub struct CommandReply {
    /// Exactly what a TCP user would read (several lines joined by `\n`).
    pub message: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageRequest {
    pub session_id: Option<String>,
    pub content: String,
    /// Makes the send idempotent: a retry with the same id by the same session returns the
    /// original reply and posts nothing. The `Idempotency-Key` header does the same.
    pub client_message_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Posted {
    pub id: i64,
    pub room: String,
    pub seq: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Rooms {
    pub rooms: Vec<RoomSummary>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub name: String,
    pub member_count: usize,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// At most this many (1–100, default 50).
    pub limit: Option<usize>,
    /// Only messages with a lower seq.
    pub before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct History {
    pub messages: Vec<HistoryMessage>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryMessage {
    pub id: i64,
    pub seq: i64,
    pub room: String,
    pub user: String,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<ChatMessage> for HistoryMessage {
    fn from(m: ChatMessage) -> Self {
        HistoryMessage {
            id: m.id,
            seq: m.seq,
            room: m.room.to_string(),
            user: m.user.to_string(),
            content: m.content,
            created_at: m.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Empty {}

fn session_cookie(value: &str, max_age: i64) -> String {
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Starts a session.
#[utoipa::path(post, path = "/api/connect", request_body = ConnectRequest,
    responses((status = 200, body = Connected), (status = 400), (status = 409), (status = 503)))]
pub async fn post_connect(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConnectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let record = state.chat.connect(&body.nickname).await?;
    let id = record.id.to_string();
    let cookie = session_cookie(&id, state.session_idle_secs);
    let data = Connected {
        session_id: id,
        user_id: record.user_id,
        nickname: record.nick.to_string(),
    };
    Ok((AppendHeaders([(SET_COOKIE, cookie)]), Data(data)))
}

/// Ends a session: leaves its room and frees its nickname.
#[utoipa::path(post, path = "/api/disconnect", request_body = SessionBody,
    responses((status = 200, body = Empty), (status = 401)))]
pub async fn post_disconnect(
    State(state): State<AppState>,
    credentials: Credentials,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // The body is optional here: the session may travel as a bearer token or cookie alone.
    let body: SessionBody = if body.iter().all(u8::is_ascii_whitespace) {
        SessionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))?
    };
    let id = credentials.session(body.session_id.as_deref())?;
    state.chat.disconnect(id).await?;
    Ok((
        AppendHeaders([(SET_COOKIE, session_cookie("", 0))]),
        Data(Empty {}),
    ))
}

/// Runs a slash command (or sends a chat line) and answers with the text a TCP user would read.
#[utoipa::path(post, path = "/api/command", request_body = CommandRequest,
    responses((status = 200, body = CommandReply), (status = 400), (status = 401), (status = 404),
              (status = 409), (status = 413), (status = 429), (status = 503)))]
pub async fn post_command(
    State(state): State<AppState>,
    credentials: Credentials,
    ApiJson(body): ApiJson<CommandRequest>,
) -> ApiResult<CommandReply> {
    let id = credentials.session(body.session_id.as_deref())?;
    let message = match state.chat.command(id, &body.command).await? {
        Reply::Nothing => String::new(),
        Reply::Text(text) | Reply::Quit(text) => text,
        Reply::Sent(ack) => ack.committed().await?.line(),
    };
    Ok(Data(CommandReply { message }))
}

/// Sends a message to the session's current room; answers once it is stored.
#[utoipa::path(post, path = "/api/message", request_body = MessageRequest,
    responses((status = 200, body = Posted), (status = 400), (status = 401), (status = 413),
              (status = 429), (status = 503)))]
pub async fn post_message(
    State(state): State<AppState>,
    credentials: Credentials,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MessageRequest>,
) -> ApiResult<Posted> {
    let id = credentials.session(body.session_id.as_deref())?;
    let header = headers.get("idempotency-key").map(|v| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::BadRequest("Idempotency-Key must be text".into()))
    });
    let client_id = body.client_message_id.map(Ok).or(header).transpose()?;
    if client_id
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > MAX_CLIENT_ID)
    {
        return Err(ApiError::BadRequest(format!(
            "clientMessageId must be 1 to {MAX_CLIENT_ID} characters"
        )));
    }
    let sent = state
        .chat
        .post(id, &body.content, client_id.as_deref())
        .await?;
    Ok(Data(Posted {
        id: sent.id,
        room: sent.room.to_string(),
        seq: sent.seq,
    }))
}

/// Every room, with how many are in it.
#[utoipa::path(get, path = "/api/rooms", responses((status = 200, body = Rooms), (status = 503)))]
pub async fn get_rooms(State(state): State<AppState>) -> ApiResult<Rooms> {
    let rooms = state
        .chat
        .room_list()
        .await?
        .into_iter()
        .map(|(room, online)| RoomSummary {
            name: room.name.to_string(),
            member_count: online,
            created_at: room.created_at,
        })
        .collect();
    Ok(Data(Rooms { rooms }))
}

/// A page of a room's history, oldest first.
#[utoipa::path(get, path = "/api/rooms/{room}/history", params(("room" = String, Path), HistoryQuery),
    responses((status = 200, body = History), (status = 400), (status = 404), (status = 503)))]
pub async fn get_history(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<History> {
    let name = RoomName::parse(&room).map_err(Error::from)?;
    let room = state.chat.find_room(&name).await?;
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_HISTORY_PAGE);
    let page = state.chat.history_page(&room, query.before, limit).await?;
    Ok(Data(History {
        messages: page.into_iter().map(HistoryMessage::from).collect(),
    }))
}
