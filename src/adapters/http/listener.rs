//! The HTTP listener: event streams on the bare socket, everything else through hyper.
//!
//! Request heads are read here (httparse), one request at a time:
//! - a `GET` that accepts `text/event-stream` (what every `EventSource` sends) goes through the
//!   router — same routes, extractors, errors and metrics — but its response is written to the
//!   socket directly, and the connection ends with the stream;
//! - any other request is one exchange with hyper: hyper reads exactly that request and then sees
//!   the end of its input, answers as on any kept-alive connection, and gives the socket back, so
//!   the next request on the connection — maybe a stream — is read here again;
//! - anything unusual (HTTP/1.0, a chunked body, an upgrade, HTTP/2, `Connection: close`, a head
//!   over 8 KiB, bad syntax) hands the rest of the connection to hyper.
//!
//! Why: hyper keeps two fixed 8 KiB buffers (read, response head) per HTTP/1.1 connection for the
//! connection's whole life — most of what an idle stream cost. Here they exist only during an
//! exchange, and a stream needs neither once its head is written.
//!
//! A connection waiting for a request is closed after [`Timeouts`]: one that never sends one
//! would otherwise hold its socket and task for ever. (HTTP/2 connections, which only hyper
//! serves, have no idle limit.)

use std::io;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{HeaderName, HeaderValue, Method, Request, Version, header, response};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Most of a request head read here; a longer head is hyper's to judge.
const HEAD_LIMIT: usize = 8 * 1024;
/// What a request head usually fits in.
const HEAD_INITIAL: usize = 1024;
/// Most headers a request read here may carry.
const MAX_HEADERS: usize = 64;

/// How long a connection may wait for its next request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// With no request begun. Longer than the keep-alive of the proxies in front (ingress-nginx
    /// keeps idle upstream connections for 60 s), so that they close first: a request a proxy
    /// sends just as this side closes would fail.
    pub idle: Duration,
    /// From a request head's first byte to its last: a client trickling one in stops here.
    pub head: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(75),
            head: Duration::from_secs(10),
        }
    }
}

/// Accepts until `stop`, then waits for the connections: idle ones close at once, requests in
/// flight finish, streams end on their own drain token.
pub async fn serve(tcp: TcpListener, router: Router, stop: CancellationToken, timeouts: Timeouts) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                let served = connection(socket, router.clone(), stop.clone(), timeouts);
                connections.spawn(tracing::Instrument::in_current_span(served));
            }
            Err(e) => crate::adapters::accept_failed(e).await,
        }
    }
    drop(tcp);
    connections.close();
    connections.wait().await;
}

async fn connection(
    mut socket: TcpStream,
    router: Router,
    stop: CancellationToken,
    timeouts: Timeouts,
) {
    // Bytes read and not yet served; empty (no allocation) while the connection is idle.
    let mut unread = Vec::new();
    loop {
        // Boxed, and gone before a stream starts: a stream's task should not carry a timer.
        let mut give_up = Box::pin(tokio::time::sleep(timeouts.idle));
        let mut head_begun = false;
        let next = loop {
            match next_request(&unread) {
                Next::Incomplete => {}
                next => break next,
            }
            if !head_begun && !unread.is_empty() {
                head_begun = true;
                give_up.as_mut().reset(Instant::now() + timeouts.head);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                () = give_up.as_mut() => return,
                ready = socket.readable() => if ready.is_err() { return },
            }
            unread.reserve(HEAD_INITIAL);
            match socket.try_read_buf(&mut unread) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        };
        drop(give_up);
        // The hyper futures are boxed: they are large and short-lived, and an idle stream's
        // task should not carry room for them.
        match next {
            Next::Stream(request) => {
                drop(unread);
                return serve_stream(socket, *request, router).await;
            }
            Next::Exchange(length) => {
                let served = Box::pin(exchange(&mut socket, &mut unread, length, &router)).await;
                if !served || stop.is_cancelled() {
                    return;
                }
            }
            // (Incomplete does not get here: the loop above reads on until it is something.)
            Next::HandOver | Next::Incomplete => {
                return Box::pin(hand_over(socket, unread, router, stop, timeouts)).await;
            }
        }
        if unread.is_empty() {
            unread = Vec::new();
        }
    }
}

enum Next {
    /// A plain `GET` that opens an event stream, with nothing after it: served here.
    Stream(Box<Request<Body>>),
    /// An ordinary request of this many bytes, head and body: one exchange with hyper.
    Exchange(usize),
    /// The head has not all arrived yet.
    Incomplete,
    /// Something only hyper should handle: the rest of the connection is its.
    HandOver,
}

/// What to do with the request at the start of `bytes`.
fn next_request(bytes: &[u8]) -> Next {
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
        let value = String::from_utf8_lossy(h.value);
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" if body.is_none() => match value.trim().parse() {
                Ok(length) => body = Some(length),
                Err(_) => return Next::HandOver,
            },
            // A second Content-Length, a chunked body, a protocol switch, a last request.
            "content-length" | "transfer-encoding" | "upgrade" => return Next::HandOver,
            "connection" if !value.eq_ignore_ascii_case("keep-alive") => return Next::HandOver,
            "accept" => event_stream |= value.contains("text/event-stream"),
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

/// Serves the `length` bytes of request at the front of `unread` (and the rest of its body from
/// the socket) through hyper. False when the connection should close.
async fn exchange(
    socket: &mut TcpStream,
    unread: &mut Vec<u8>,
    length: usize,
    router: &Router,
) -> bool {
    let rest = unread.split_off(length.min(unread.len()));
    let request = std::mem::replace(unread, rest);
    let from_socket = (length - request.len()) as u64;
    let (mut read, mut write) = socket.split();
    // After the request, end of input: hyper answers, finds the connection idle and done.
    let input = io::Cursor::new(request).chain((&mut read).take(from_socket));
    let io = TokioIo::new(tokio::io::join(input, &mut write));
    let served = hyper::server::conn::http1::Builder::new()
        // The end of input comes while the response may still be on its way.
        .half_close(true)
        .serve_connection(io, TowerToHyperService::new(router.clone()))
        .without_shutdown()
        .await;
    let Ok(parts) = served else {
        return false;
    };
    // Bytes hyper read but did not use (none expected): they come first next time.
    unread.splice(0..0, parts.read_buf);
    // A body hyper did not read to the end (one refused as too large, say) would be taken for
    // the next request: close the connection instead.
    let (input, _) = parts.io.into_inner().into_inner();
    let (request, body) = input.into_inner();
    request.position() == request.get_ref().len() as u64 && body.limit() == 0
}

/// Gives the rest of the connection to hyper (HTTP/1.1 or HTTP/2), bytes already read first.
async fn hand_over(
    socket: TcpStream,
    unread: Vec<u8>,
    router: Router,
    stop: CancellationToken,
    timeouts: Timeouts,
) {
    let (read, write) = socket.into_split();
    let io = TokioIo::new(tokio::io::join(io::Cursor::new(unread).chain(read), write));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's one timer runs from when it starts waiting for a request until its head is in, so
    // it stands for both of ours; the idle timeout bounds the two together.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Runs the request through the router and writes the response straight to the socket.
async fn serve_stream(mut socket: TcpStream, request: Request<Body>, router: Router) {
    // Boxed: the router's future is large and only needed until the response exists.
    let response = match Box::pin(router.oneshot(request)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let head = response_head(&parts, body.size_hint().exact());
    if socket.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut body = body.into_data_stream();
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            () = closed_by_peer(&socket) => return,
        };
        match chunk {
            Some(Ok(bytes)) => {
                if socket.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    let _ = socket.shutdown().await;
}

/// The status line and headers; the body is delimited by its length when known, else by the
/// connection closing (RFC 9112 §6.3), so no chunked framing is needed.
fn response_head(parts: &response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let (Some(length), false) = (length, parts.headers.contains_key(header::CONTENT_LENGTH)) {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Resolves when the client has gone: a stream only writes, so without watching the read side a
/// closed connection would go unnoticed until the next keepalive.
async fn closed_by_peer(socket: &TcpStream) {
    let mut discard = [0u8; 64];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut discard) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves a one-route router on a free loopback port.
    async fn listening(timeouts: Timeouts) -> (std::net::SocketAddr, CancellationToken) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        tokio::spawn(serve(tcp, router, stop.clone(), timeouts));
        (addr, stop)
    }

    /// Reads until the server closes the connection, and returns what came meanwhile.
    async fn until_closed(socket: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut got))
            .await
            .expect("the server closes the connection");
        // A reset is a close too: bytes the client sent after the server closed earn one.
        if let Err(e) = read {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        }
        got
    }

    /// Sends `request` for "/" and reads the whole answer.
    async fn ask(socket: &mut TcpStream, request: &[u8]) {
        socket.write_all(request).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nhi") {
            assert_ne!(socket.read_buf(&mut got).await.unwrap(), 0, "closed early");
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A connection to a listener that closes connections idle for `idle`.
    async fn connect_with_idle_timeout(idle: Duration) -> TcpStream {
        let head = Duration::from_secs(60);
        let (addr, _stop) = listening(Timeouts { idle, head }).await;
        TcpStream::connect(addr).await.unwrap()
    }

    /// Asserts that the server closes `socket` with nothing more said, `idle` from now or later.
    async fn closed_after(socket: &mut TcpStream, idle: Duration) {
        let from = Instant::now();
        assert!(until_closed(socket).await.is_empty());
        assert!(from.elapsed() >= idle);
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let mut socket = connect_with_idle_timeout(idle).await;
        closed_after(&mut socket, idle).await;
    }

    #[tokio::test]
    async fn the_idle_timeout_starts_again_after_each_request() {
        let idle = Duration::from_secs(1);
        let mut socket = connect_with_idle_timeout(idle).await;
        // Five requests 300 ms apart: 1.2 s in all, each wait well inside the timeout.
        ask(&mut socket, GET).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ask(&mut socket, GET).await;
        }
        closed_after(&mut socket, idle).await;
    }

    #[tokio::test]
    async fn a_connection_handed_to_hyper_is_closed_after_the_idle_timeout_too() {
        let idle = Duration::from_millis(300);
        let mut socket = connect_with_idle_timeout(idle).await;
        // A chunked body: only hyper reads those, so the rest of the connection is its.
        let chunked = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        ask(&mut socket, chunked).await;
        closed_after(&mut socket, idle).await;
    }

    #[tokio::test]
    async fn a_head_trickled_in_is_cut_off_after_the_head_timeout() {
        let head = Duration::from_millis(200);
        let (addr, _stop) = listening(Timeouts {
            idle: Duration::from_secs(60),
            head,
        })
        .await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = socket.split();
        let begun = Instant::now();
        // A byte every 20 ms: the connection is never idle and the head never ends.
        let trickle = async {
            let bytes = b"GET / HTTP/1.1\r\nX: ".iter().chain([b'a'; 2000].iter());
            for byte in bytes {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = trickle => unreachable!(),
            got = until_closed(&mut read) => assert!(got.is_empty()),
        }
        assert!(begun.elapsed() >= head);
    }

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
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x16\x03\x01 not http",
            &huge,
        ] {
            assert!(matches!(next(head), Next::HandOver), "{head:?}");
        }
    }

    #[test]
    fn the_response_head_is_close_delimited_unless_the_length_is_known() {
        let (mut parts, ()) = axum::http::Response::new(()).into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        assert_eq!(
            String::from_utf8(response_head(&parts, None)).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
        parts.status = axum::http::StatusCode::UNAUTHORIZED;
        assert!(
            String::from_utf8(response_head(&parts, Some(12)))
                .unwrap()
                .starts_with("HTTP/1.1 401 Unauthorized\r\n")
        );
        assert!(
            String::from_utf8(response_head(&parts, Some(12)))
                .unwrap()
                .contains("content-length: 12\r\n")
        );
    }
}
