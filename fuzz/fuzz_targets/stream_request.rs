//! What a stream request says: its query, `Last-Event-ID`, cookies and credentials.
//!
//! Input: the query string, the `Last-Event-ID` value, the `Cookie` value and the
//! `Authorization` value, separated by NUL bytes. Checks that reading them never panics and
//! never answers anything but 400 or 401, and that a position it accepts is one the server
//! could have sent: a non-negative seq, the one the header says when it says one.
#![no_main]

use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use baby_discord::adapters::http::StreamRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|&b| b == 0);
    let query = fields.next().unwrap_or_default();
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let mut request = Request::builder().uri(format!("/api/events?{query}"));
    let mut last_event_id = None;
    for name in ["last-event-id", "cookie", "authorization"] {
        let Some(value) = fields.next() else { break };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        if name == "last-event-id" {
            last_event_id = Some(value.clone());
        }
        request = request.header(name, value);
    }
    let Ok(request) = request.body(()) else {
        return; // not a URI a server could have received
    };
    let (mut parts, ()) = request.into_parts();
    let read = futures::executor::block_on(StreamRequest::from_request_parts(&mut parts, &()));
    match read {
        Ok(stream) => {
            let after = stream.resume.after;
            assert!(after.is_none_or(|seq| seq >= 0), "resumes after {after:?}");
            let said = last_event_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            if let Some(said) = said {
                assert_eq!(Some(said.parse::<i64>().unwrap()), after);
            }
        }
        Err(refused) => {
            let status = refused.into_response().status();
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED,
                "{status}"
            );
        }
    }
});
