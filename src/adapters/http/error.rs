//! The API's one error type and its envelope: `{"success":false,"error":"…"}` with a status that
//! fits. Core errors keep their words; only here do they get a status code.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::core::Error;

/// How long a client should wait before retrying a 503, in seconds.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    /// The request body could not be read as the JSON the route takes.
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("{0}")]
    BadRequest(String),
    /// A command ran past the request's time limit: what it did, if anything, is unknown.
    #[error("No answer within {0} s; the command may have taken effect")]
    CommandTimedOut(u64),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Body { status, .. } => *status,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::CommandTimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Core(e) => match e {
                Error::UnknownSession => StatusCode::UNAUTHORIZED,
                Error::NoSuchRoom(_) | Error::UnknownUser(_) => StatusCode::NOT_FOUND,
                Error::NicknameInUse(_) | Error::RoomExists(_) => StatusCode::CONFLICT,
                Error::MessageTooLong | Error::LineTooLong => StatusCode::PAYLOAD_TOO_LARGE,
                Error::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                Error::Store(_)
                | Error::Bus(_)
                | Error::SessionBusy
                | Error::ShuttingDown
                | Error::ServerFull
                | Error::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
                // Not "failed": the outcome is unknown, and a retry with the same client message
                // id settles it.
                Error::Unconfirmed(_) => StatusCode::GATEWAY_TIMEOUT,
                Error::UnknownCommand(_)
                | Error::MissingArgument(_)
                | Error::InvalidName(_)
                | Error::NotInRoom
                | Error::EmptyMessage
                | Error::DmToSelf => StatusCode::BAD_REQUEST,
            },
        }
    }
}

/// Every error reply: `success` is false, `error` says what went wrong in words a user reads.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    success: bool,
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // Logged once, here, with its cause; the client gets the words only.
            let cause = std::error::Error::source(&self)
                .map(|c| c.to_string())
                .unwrap_or_default();
            tracing::warn!(%status, error = %self, %cause, "request failed");
        }
        let body = Json(Failure {
            success: false,
            error: self.to_string(),
        });
        let mut response = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::Body {
            status,
            message: rejection.body_text(),
        }
    }
}

/// The API description of a 503: the store or Valkey cannot answer, the breaker is open, or the
/// pod is full or draining. Try again (on any pod) after `Retry-After`.
#[derive(IntoResponses)]
#[response(status = 503, headers(("Retry-After" = u32, description = "Seconds to wait")))]
// Described only: the response itself is an ApiError's.
#[allow(dead_code)]
pub struct Unavailable(Failure);

/// The API description of a 504: the message may or may not have been stored. A retry with the
/// same `clientMessageId` settles it without posting it twice.
#[derive(IntoResponses)]
#[response(status = 504, headers(("Retry-After" = u32, description = "Seconds to wait")))]
#[allow(dead_code)]
pub struct Unconfirmed(Failure);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// `Json<T>` whose rejections use the API's envelope.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query<T>` whose rejections use the API's envelope.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` whose rejections use the API's envelope.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `{"success":true,"data":…}`.
pub struct Data<T>(pub T);

/// Every successful reply: `success` is true, `data` is the route's answer.
#[derive(Serialize, ToSchema)]
pub struct Success<T> {
    success: bool,
    data: T,
}

impl<T: Serialize> IntoResponse for Data<T> {
    fn into_response(self) -> Response {
        Json(Success {
            success: true,
            data: self.0,
        })
        .into_response()
    }
}

pub type ApiResult<T> = Result<Data<T>, ApiError>;
