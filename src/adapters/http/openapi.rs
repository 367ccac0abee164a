//! The OpenAPI description of the API, generated from the handlers' annotations and served at
//! `/api/openapi.json`.

use utoipa::OpenApi;

use super::{api, sse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Baby Discord",
        description = "Chat over REST and Server-Sent Events. Every reply is \
        {\"success\":true,\"data\":…} or {\"success\":false,\"error\":\"…\"}; the session travels as a \
        sessionId body field or query parameter, a Bearer token, or the sessionId cookie."
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
pub struct ApiDoc;

pub async fn get_openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
