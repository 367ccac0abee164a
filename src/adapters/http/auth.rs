//! Where a request's session id may come from, first found first: `Authorization: Bearer`, a
//! `sessionId` field of the JSON body, the `sessionId` query parameter, the `sessionId` cookie.
//! The header wins because it is the one a client sets on purpose for every request; a cookie
//! may be left from another session.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;

use crate::core::Error;
use crate::core::model::SessionId;

pub const COOKIE: &str = "sessionId";

/// The session ids a request carries outside its body.
pub struct Credentials {
    bearer: Option<String>,
    /// From the query, else the cookie.
    fallback: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let query = parts
            .uri
            .query()
            .and_then(|q| url_query_value(q, "sessionId"));
        let cookie = CookieJar::from_request_parts(parts, state)
            .await?
            .get(COOKIE)
            .map(|c| c.value().to_owned());
        Ok(Credentials {
            bearer,
            fallback: query.or(cookie),
        })
    }
}

impl Credentials {
    /// The session id: the bearer token, else the body's, else the query's or cookie's.
    pub fn session(self, body: Option<&str>) -> Result<SessionId, Error> {
        self.bearer
            .or(body.map(str::to_owned))
            .or(self.fallback)
            .as_deref()
            .and_then(SessionId::parse)
            .ok_or(Error::UnknownSession)
    }
}

/// One parameter of a query string, percent-decoded.
fn url_query_value(query: &str, key: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == key).then_some(v))
}
