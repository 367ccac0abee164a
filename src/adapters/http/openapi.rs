//! The OpenAPI description of the API, generated from the handlers' annotations and served at
//! `/api/openapi.json` with this server's limits filled in. It describes the wire exactly —
//! envelopes, every status, the name rules — and schemathesis checks that against the server.

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa::OpenApi;

use super::{AppState, api, sse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Baby Discord",
        description = "Chat over REST and Server-Sent Events. Every reply is \
        {\"success\":true,\"data\":…} or {\"success\":false,\"error\":\"…\"}. The session travels \
        as an `Authorization: Bearer` header, a sessionId body field or query parameter, or the \
        sessionId cookie (first found in that order). A 503 or 504 carries Retry-After."
    ),
    paths(
        api::post_connect,
        api::post_disconnect,
        api::post_command,
        api::post_message,
        api::get_rooms,
        api::get_history,
        sse::get_room_stream,
        sse::get_session_stream,
    )
)]
struct ApiDoc;

/// The description as this server serves it: MAX_MESSAGE_CHARS is a setting, so the length
/// limit of a message's content is filled in at start.
pub fn document(max_message_chars: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the description serializes");
    doc["components"]["schemas"]["MessageRequest"]["properties"]["content"]["maxLength"] =
        max_message_chars.into();
    doc
}

pub async fn get_openapi(State(state): State<AppState>) -> Json<Value> {
    Json(Value::clone(&state.openapi))
}
