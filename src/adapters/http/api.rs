//! The JSON routes of SPEC §4. Each handler loads the session (if it needs one), makes one call
//! on the core and wraps the answer; a detached session is saved back after a command.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::response::{AppendHeaders, IntoResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{COOKIE, Credentials};
use super::error::{
    ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Data, Failure, Success, Unavailable,
    Unconfirmed,
};
use crate::core::model::ChatMessage;
use crate::core::names::{Nickname, RoomName};
use crate::core::{Error, Reply};

/// The most messages one history request returns.
const MAX_HISTORY_PAGE: usize = 100;
/// What one history request returns when it does not say.
const DEFAULT_HISTORY_PAGE: usize = 50;
/// The longest client message id (or `Idempotency-Key`) accepted.
const MAX_CLIENT_ID: usize = 64;

#[derive(Deserialize, ToSchema)]
pub struct ConnectRequest {
    /// Unique among the users online, compared case-insensitively.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,32}$", min_length = 1, max_length = 32)]
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
    /// The session, unless an `Authorization: Bearer` header or the cookie carries it.
    pub session_id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    /// The session, unless an `Authorization: Bearer` header or the cookie carries it.
    pub session_id: Option<String>,
    /// A line as a TCP user would type it: a slash command, or a chat message. Its errors are
    /// the TCP user's, with a status (400 for an unknown command or a missing argument).
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
    /// The session, unless an `Authorization: Bearer` header or the cookie carries it.
    pub session_id: Option<String>,
    /// Posted as written — a leading `/` too — once control characters are removed and the
    /// ends trimmed; at most MAX_MESSAGE_CHARS characters as sent (the served description says
    /// how many). It must have something to show: a character that is neither blank nor a
    /// control character.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub content: String,
    /// Makes the send idempotent: a retry with the same id by the same session returns the
    /// original reply and posts nothing. The `Idempotency-Key` header does the same.
    #[schema(min_length = 1, max_length = 64)]
    pub client_message_id: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// Same as `clientMessageId` (which wins when both are given).
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 64)]
    pub key: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey { key: None });
        };
        let key = value
            .to_str()
            .map_err(|_| ApiError::BadRequest("Idempotency-Key must be text".into()))?;
        check_client_id(key, "Idempotency-Key")?;
        Ok(IdempotencyKey {
            key: Some(key.to_owned()),
        })
    }
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
#[into_params(parameter_in = Path)]
pub struct RoomPath {
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub room: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Only messages with a lower seq (for the page before one already shown).
    #[param(minimum = 1)]
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

/// A client message id (or `Idempotency-Key`) of 1 to MAX_CLIENT_ID characters.
fn check_client_id(id: &str, name: &str) -> Result<(), ApiError> {
    if (1..=MAX_CLIENT_ID).contains(&id.chars().count()) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "{name} must be 1 to {MAX_CLIENT_ID} characters"
    )))
}

/// Starts a session.
#[utoipa::path(post, path = "/api/connect", request_body = ConnectRequest,
    responses((status = 200, body = Success<Connected>), (status = 400, body = Failure),
        (status = 409, body = Failure), (status = 413, body = Failure), Unavailable))]
pub async fn post_connect(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConnectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let nick = Nickname::parse_exact(&body.nickname).map_err(Error::from)?;
    let record = state.chat.connect(nick.as_str()).await?;
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
#[utoipa::path(post, path = "/api/disconnect", request_body = Option<SessionBody>,
    responses((status = 200, body = Success<Empty>), (status = 400, body = Failure),
        (status = 401, body = Failure), (status = 413, body = Failure), Unavailable))]
pub async fn post_disconnect(
    State(state): State<AppState>,
    credentials: Credentials,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map_err(|rejection| ApiError::Body {
        status: rejection.status(),
        message: rejection.body_text(),
    })?;
    // The body is optional here (absent, empty or `null`): the session may travel as a bearer
    // token or cookie alone.
    let body: SessionBody = if body.iter().all(u8::is_ascii_whitespace) {
        SessionBody::default()
    } else {
        serde_json::from_slice::<Option<SessionBody>>(&body)
            .map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))?
            .unwrap_or_default()
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
    responses((status = 200, body = Success<CommandReply>), (status = 400, body = Failure),
        (status = 401, body = Failure), (status = 404, body = Failure),
        (status = 409, body = Failure), (status = 413, body = Failure),
        (status = 429, body = Failure), Unavailable, Unconfirmed))]
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
#[utoipa::path(post, path = "/api/message", request_body = MessageRequest, params(IdempotencyKey),
    responses((status = 200, body = Success<Posted>), (status = 400, body = Failure),
        (status = 401, body = Failure), (status = 413, body = Failure),
        (status = 429, body = Failure), Unavailable, Unconfirmed))]
pub async fn post_message(
    State(state): State<AppState>,
    credentials: Credentials,
    idempotency: IdempotencyKey,
    ApiJson(body): ApiJson<MessageRequest>,
) -> ApiResult<Posted> {
    let id = credentials.session(body.session_id.as_deref())?;
    if let Some(client_id) = &body.client_message_id {
        check_client_id(client_id, "clientMessageId")?;
    }
    let client_id = body.client_message_id.or(idempotency.key);
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
#[utoipa::path(get, path = "/api/rooms",
    responses((status = 200, body = Success<Rooms>), Unavailable))]
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
#[utoipa::path(get, path = "/api/rooms/{room}/history", params(RoomPath, HistoryQuery),
    responses((status = 200, body = Success<History>), (status = 400, body = Failure),
        (status = 404, body = Failure), Unavailable))]
pub async fn get_history(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<RoomPath>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<History> {
    let name = RoomName::parse_exact(&path.room).map_err(Error::from)?;
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_PAGE);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_HISTORY_PAGE}"
        )));
    }
    if query.before.is_some_and(|before| before < 1) {
        return Err(ApiError::BadRequest("before must be at least 1".into()));
    }
    let room = state.chat.find_room(&name).await?;
    let page = state.chat.history_page(&room, query.before, limit).await?;
    Ok(Data(History {
        messages: page.into_iter().map(HistoryMessage::from).collect(),
    }))
}
