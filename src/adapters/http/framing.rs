//! Where one HTTP/1.1 request ends: read from the bytes at the front of a connection, before
//! hyper sees them (see [`listener`](super::listener) for why).
//!
//! This is where request smuggling would live, so it decides only the plain cases and leaves
//! every other one to hyper: a request is framed here only when its head parses, it is HTTP/1.1,
//! and its body is absent or has exactly one `Content-Length` of plain digits. The fuzz targets
//! `http_framing` (prefixes: the decision does not depend on how the bytes arrived) and
//! `http_differential` (hyper, given the same bytes, sees the same request boundaries) check it.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version};

/// Most of a request head read here; a longer head is hyper's to judge.
pub const HEAD_LIMIT: usize = 8 * 1024;
/// Most headers a request read here may carry.
const MAX_HEADERS: usize = 64;

#[derive(Debug)]
pub enum Next {
    /// A plain `GET` that opens an event stream, with nothing after it: served by the listener.
    Stream(Box<Request<Body>>),
    /// An ordinary request of this many bytes, head and body: one exchange with hyper.
    Exchange(usize),
    /// The head has not all arrived yet.
    Incomplete,
    /// Something only hyper should handle: the rest of the connection is its.
    HandOver,
}

/// What to do with the request at the start of `bytes`.
pub fn next_request(bytes: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if bytes.len() < HEAD_LIMIT => return Next::Incomplete,
        _ => return Next::HandOver,
    };
    if parsed.version != Some(1) {
        return Next::HandOver;
    }
    let mut body: Option<usize> = None;
    let mut event_stream = false;
    for h in parsed.headers.iter() {
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" if body.is_none() => match content_length(h.value) {
                Some(length) => body = Some(length),
                None => return Next::HandOver,
            },
            // A second Content-Length, a chunked body, a protocol switch, a last request.
            "content-length" | "transfer-encoding" | "upgrade" => return Next::HandOver,
            "connection" if !h.value.eq_ignore_ascii_case(b"keep-alive") => {
                return Next::HandOver;
            }
            "accept" => event_stream |= contains(h.value, b"text/event-stream"),
            _ => {}
        }
    }
    let body = body.unwrap_or(0);
    let Some(length) = head.checked_add(body) else {
        return Next::HandOver;
    };
    if event_stream
        && parsed.method == Some("GET")
        && body == 0
        && length == bytes.len()
        && let Some(request) = to_request(&parsed)
    {
        return Next::Stream(Box::new(request));
    }
    Next::Exchange(length)
}

/// A `Content-Length` value as RFC 9110 §8.6 has it: digits only (no sign, no list), around
/// them optional whitespace. Anything else is hyper's to refuse.
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn to_request(parsed: &httparse::Request) -> Option<Request<Body>> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(parsed.path?)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        request = request.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(head: &str) -> Next {
        next_request(head.as_bytes())
    }

    #[test]
    fn an_event_source_request_is_served_here() {
        let head = "GET /api/events?sessionId=x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\nLast-Event-ID: 7\r\n\r\n";
        let Next::Stream(request) = next(head) else {
            panic!("not recognised as a stream");
        };
        assert_eq!(request.uri(), "/api/events?sessionId=x");
        assert_eq!(request.headers()["last-event-id"], "7");
    }

    #[test]
    fn an_ordinary_request_is_one_exchange_of_its_head_and_body() {
        let post = "POST /api/message HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(next(&format!("{post}hi")), Next::Exchange(n) if n == post.len() + 2));
        // The body need not have arrived yet; what follows it is the next request's.
        assert!(matches!(next(post), Next::Exchange(n) if n == post.len() + 2));
        let get = "GET /health HTTP/1.1\r\nConnection: keep-alive\r\n\r\n";
        assert!(
            matches!(next(&format!("{get}GET / HTTP/1.1\r\n")), Next::Exchange(n) if n == get.len())
        );
        // A stream request with bytes after it is left to hyper, within one exchange.
        let stream = "GET /api/events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n";
        assert!(matches!(next(&format!("{stream}GET /")), Next::Exchange(n) if n == stream.len()));
    }

    #[test]
    fn a_partial_head_is_read_on_and_anything_unusual_goes_to_hyper() {
        assert!(matches!(next(""), Next::Incomplete));
        assert!(matches!(
            next("GET /api/events HTTP/1.1\r\nAccept: text/"),
            Next::Incomplete
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(HEAD_LIMIT));
        for head in [
            "GET /api/events HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 3\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: two\r\n\r\n",
            // Lengths hyper would read differently, or refuse: not framed here.
            "POST /api/message HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /api/message HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x16\x03\x01 not http",
            &huge,
        ] {
            assert!(matches!(next(head), Next::HandOver), "{head:?}");
        }
    }
}
