//! The HTTP listener: event streams on the bare socket, everything else through hyper.
//!
//! Request heads are read here (httparse), one request at a time:
//! - a `GET` that accepts `text/event-stream` (what every `EventSource` sends) goes through the
//!   router — same routes, extractors, errors and metrics — but its response is written to the
//!   socket directly, and the connection ends with the stream;
//! - any other request is one exchange with hyper: hyper reads exactly that request and then sees
//!   the end of its input, answers as on any kept-alive connection, and gives the socket back, so
//!   the next request on the connection — maybe a stream — is read here again;
//! - anything unusual (HTTP/1.0, a chunked body, an upgrade, `Connection: close`, a head over
//!   8 KiB, bad syntax) hands the rest of the connection to hyper, for HTTP/1 only: what speaks
//!   to this port is a browser, a load balancer or an Ingress, all HTTP/1.1, and an HTTP/2
//!   connection would be one more thing for a client to hold open without limits.
//!
//! Why: hyper keeps two fixed 8 KiB buffers (read, response head) per HTTP/1.1 connection for the
//! connection's whole life — most of what an idle stream cost. Here they exist only during an
//! exchange, and a stream needs neither once its head is written.
//!
//! What a client can hold is bounded ([`Limits`]): a connection waiting for a request is closed
//! after the idle timeout, a head trickled in after the head timeout (slowloris), a response
//! (a stream's included) that makes no progress into the socket after the write-stall timeout,
//! a peer that vanished by TCP keepalive, and connections past the cap are answered 503 at once.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{Request, Response, header, response};
use bytes::Bytes;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_io_timeout::TimeoutWriter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::framing::{Next, next_request};
use crate::core::outbox::TooSlow;
use crate::telemetry::metric;

/// What a request head usually fits in.
const HEAD_INITIAL: usize = 1024;

/// What the listener bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a connection may wait with no request begun.
    pub idle: Duration,
    /// From a request head's first byte to its last: a client trickling one in stops here.
    pub head: Duration,
    /// How long a response may make no progress into the socket: a client that stopped reading
    /// gives its connection up here, whoever writes to it.
    pub write_stall: Duration,
    /// TCP keepalive idle time: a peer that vanished without a FIN is found about twice this later.
    pub keepalive: Duration,
    /// Open connections, streams included; one past it is answered 503 and closed at once.
    pub connections: usize,
}

/// Once the listener stops: how long a request in flight may take to finish.
const FINISH_GRACE: Duration = Duration::from_secs(5);
/// Once the pod drains: how long a stream's last words (the drain notice) may take to go out to
/// a client that is not reading.
const NOTICE_GRACE: Duration = Duration::from_secs(1);

/// The answer to a connection over [`Limits::connections`], written without reading its
/// request: a fresh socket's send buffer takes it whole.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\ncontent-length: 42\r\nconnection: close\r\n\r\n\
{\"success\":false,\"error\":\"Server is full\"}";

/// Set by a streaming handler on its response: what ends the stream's writes early.
#[derive(Clone)]
pub(super) struct StreamEnd {
    /// The pod is draining.
    pub shutdown: CancellationToken,
    /// The client reads too slowly; its stream is being dropped.
    pub too_slow: TooSlow,
}

impl StreamEnd {
    /// Resolves when a write still in progress should be given up.
    async fn abandoned(&self) {
        tokio::select! {
            _ = self.too_slow.wait() => {}
            // Boxed: the timer is needed only once draining, not in every idle stream's task.
            _ = async {
                self.shutdown.cancelled().await;
                Box::pin(tokio::time::sleep(NOTICE_GRACE)).await;
            } => {}
        }
    }
}

/// Accepts until `stop`, then waits for the connections: idle ones close at once, requests in
/// flight finish (within [`FINISH_GRACE`]), streams end on their own drain token.
pub async fn serve(tcp: TcpListener, router: Router, stop: CancellationToken, limits: Limits) {
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.connections));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => {
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    metrics::counter!(metric::DROPPED, "reason" => "server_full").increment(1);
                    let _ = socket.try_write(FULL);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                crate::adapters::keep_alive(&socket, limits.keepalive);
                let served = connection(socket, permit, router.clone(), stop.clone(), limits);
                connections.spawn(tracing::Instrument::in_current_span(served));
            }
            Err(e) => crate::adapters::accept_failed(e).await,
        }
    }
    drop(tcp);
    connections.close();
    connections.wait().await;
}

/// Serves one connection; `_open` is its place under [`Limits::connections`], given back when
/// this returns.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn connection(
    mut socket: TcpStream,
    _open: OwnedSemaphorePermit,
    router: Router,
    stop: CancellationToken,
    limits: Limits,
) -> impl Future<Output = ()> + use<> {
    // A block, not an `async fn`: an async fn keeps each argument twice in its state, and this
    // state is most of what an idle connection or stream costs.
    async move {
        // Moved into the block (a `move` block takes all it names), held until it ends.
        let _open = &_open;
        // Bytes read and not yet served; empty (no allocation) while the connection is idle.
        let mut unread = Vec::new();
        loop {
            // Boxed, and gone before a stream starts: a stream's task should not carry a timer.
            let mut give_up = Box::pin(tokio::time::sleep(limits.idle));
            let mut head_begun = false;
            let next = loop {
                match next_request(&unread) {
                    Next::Incomplete => {}
                    next => break next,
                }
                if !head_begun && !unread.is_empty() {
                    head_begun = true;
                    give_up.as_mut().reset(Instant::now() + limits.head);
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
                    return serve_stream(socket, request, router, stop, limits.write_stall).await;
                }
                Next::Exchange(length) => {
                    let exchange = Box::pin(exchange(
                        &mut socket,
                        &mut unread,
                        length,
                        &router,
                        limits.write_stall,
                    ));
                    let served = tokio::select! {
                        served = exchange => served,
                        () = stopped_for(&stop, FINISH_GRACE) => false,
                    };
                    if !served || stop.is_cancelled() {
                        return;
                    }
                }
                // (Incomplete does not get here: the loop above reads on until it is something.)
                Next::HandOver | Next::Incomplete => {
                    return Box::pin(hand_over(socket, unread, router, stop, limits)).await;
                }
            }
            if unread.is_empty() {
                unread = Vec::new();
            }
        }
    }
}

/// Serves the `length` bytes of request at the front of `unread` (and the rest of its body from
/// the socket) through hyper. False when the connection should close.
async fn exchange(
    socket: &mut TcpStream,
    unread: &mut Vec<u8>,
    length: usize,
    router: &Router,
    write_stall: Duration,
) -> bool {
    let rest = unread.split_off(length.min(unread.len()));
    let request = std::mem::replace(unread, rest);
    let from_socket = (length - request.len()) as u64;
    let (mut read, mut write) = socket.split();
    // After the request, end of input: hyper answers, finds the connection idle and done.
    let input = io::Cursor::new(request).chain((&mut read).take(from_socket));
    // A response's body may be a stream (a client that asked for one without saying it accepts
    // `text/event-stream`): only the write-stall timeout ends it if its reader stops.
    let mut output = TimeoutWriter::new(&mut write);
    output.set_timeout(Some(write_stall));
    let io = TokioIo::new(tokio::io::join(input, Box::pin(output)));
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

/// Gives the rest of the connection to hyper (HTTP/1), bytes already read first.
async fn hand_over(
    socket: TcpStream,
    unread: Vec<u8>,
    router: Router,
    stop: CancellationToken,
    limits: Limits,
) {
    let (read, write) = socket.into_split();
    let mut write = TimeoutWriter::new(write);
    write.set_timeout(Some(limits.write_stall));
    let io = TokioIo::new(tokio::io::join(
        io::Cursor::new(unread).chain(read),
        Box::pin(write),
    ));
    // hyper's one timer runs from when it starts waiting for a request until its head is in, so
    // it stands for both of ours; the idle timeout bounds the two together.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    // A response that a client does not read would hold the drain: given up after the grace.
    let _ = tokio::time::timeout(FINISH_GRACE, conn).await;
}

/// Resolves `grace` after `stop` is cancelled.
async fn stopped_for(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    Box::pin(tokio::time::sleep(grace)).await;
}

/// Runs the request through the router and writes the response straight to the socket. Every
/// write races what ends the stream: a client that stops reading cannot pin this task.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn serve_stream(
    mut socket: TcpStream,
    // Boxed: an argument keeps its room in the task for as long as the stream lasts.
    request: Box<Request<Body>>,
    router: Router,
    stop: CancellationToken,
    write_stall: Duration,
) -> impl Future<Output = ()> + use<> {
    // A block, for the reason given at `connection`.
    async move {
        // Boxed: the router's future is large and only needed until the response exists.
        // Taken out of its box in a block of its own: a box moved out of is freed only when
        // the variable holding it goes, which for this one would be when the stream ends.
        let request = {
            let boxed = request;
            *boxed
        };
        let response = match Box::pin(router.oneshot(request)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // The head is written out and its headers dropped here: a stream's task keeps neither.
        let (head, end, body) = split_response(response);
        let abandoned = async {
            match &end {
                Some(end) => end.abandoned().await,
                None => stopped_for(&stop, FINISH_GRACE).await,
            }
        };
        tokio::pin!(abandoned);
        let mut body = body.into_data_stream();
        let mut next = Some(Bytes::from(head));
        loop {
            if let Some(mut bytes) = next.take() {
                while !bytes.is_empty() {
                    tokio::select! {
                        // A stall, not a slow reader: the timer starts again with each write that
                        // makes progress, and exists only while one is under way (boxed: an idle
                        // stream's task carries no room for it).
                        written = Box::pin(tokio::time::timeout(write_stall, socket.write(&bytes))) => {
                            match written {
                                Ok(Ok(n)) if n > 0 => bytes = bytes.slice(n..),
                                _ => return,
                            }
                        }
                        () = abandoned.as_mut() => return,
                    }
                }
            }
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                () = closed_by_peer(&socket) => return,
            };
            match chunk {
                Some(Ok(bytes)) => next = Some(bytes),
                Some(Err(_)) | None => break,
            }
        }
        let _ = tokio::time::timeout(NOTICE_GRACE, socket.shutdown()).await;
    }
}

/// A response's head, what ends it if it is a stream ([`StreamEnd`]; none for a short body, an
/// error say) and its body.
fn split_response(response: Response<Body>) -> (Vec<u8>, Option<StreamEnd>, Body) {
    let (parts, body) = response.into_parts();
    let head = response_head(&parts, body.size_hint().exact());
    (head, parts.extensions.get::<StreamEnd>().cloned(), body)
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
    // Small: it lives in every idle stream's task, and a client has nothing to send meanwhile.
    let mut discard = [0u8; 8];
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
    use axum::http::HeaderValue;

    use super::*;

    /// Serves "/" ("hi"), "/big" (a megabyte) and "/huge" (16) on a free loopback port.
    async fn listening(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/", axum::routing::get(|| async { "hi" }))
            .route("/big", axum::routing::get(|| async { vec![b'x'; 1 << 20] }))
            .route(
                "/huge",
                axum::routing::get(|| async { vec![b'x'; 16 << 20] }),
            );
        tokio::spawn(serve(tcp, router, stop.clone(), limits));
        (addr, stop)
    }

    fn timeouts(idle: Duration, head: Duration) -> Limits {
        Limits {
            idle,
            head,
            write_stall: Duration::from_secs(60),
            keepalive: Duration::from_secs(60),
            connections: 64,
        }
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
        let (addr, _stop) = listening(timeouts(idle, head)).await;
        TcpStream::connect(addr).await.unwrap()
    }

    /// A connection to a listener that gives up on a write making no progress for `stall`.
    async fn connect_with_write_stall(stall: Duration) -> TcpStream {
        let minute = Duration::from_secs(60);
        let (addr, _stop) = listening(Limits {
            write_stall: stall,
            ..timeouts(minute, minute)
        })
        .await;
        TcpStream::connect(addr).await.unwrap()
    }

    /// Asserts that the server closes `socket` with nothing more said, `idle` from now or later.
    async fn closed_after(socket: &mut TcpStream, idle: Duration) {
        let from = Instant::now();
        assert!(until_closed(socket).await.is_empty());
        assert!(from.elapsed() >= idle);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_answers_loses_the_connection_after_the_write_stall() {
        let stall = Duration::from_millis(300);
        let mut socket = connect_with_write_stall(stall).await;
        // 200 MB of answers asked for at once, far past what socket buffers hold.
        let asked = 200;
        socket
            .write_all(&b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n".repeat(asked))
            .await
            .unwrap();
        // The fault: not reading, for longer than the server waits on a full socket.
        tokio::time::sleep(stall * 4).await;
        let got = until_closed(&mut socket).await;
        assert!(
            got.len() < asked << 20,
            "every answer was written: the server waited for the reader"
        );
    }

    #[tokio::test]
    async fn a_stream_read_slowly_but_steadily_is_not_cut_off() {
        let stall = Duration::from_millis(300);
        let mut socket = connect_with_write_stall(stall).await;
        // Written by the listener itself (a stream), as one 16 MB chunk.
        socket
            .write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        // 256 KB every 20 ms: the whole takes several stall timeouts, each read well inside one.
        let mut got = 0;
        let mut buffer = vec![0; 256 << 10];
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            match socket.read(&mut buffer).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        assert!(got > 16 << 20, "cut off after {got} bytes");
    }

    #[tokio::test]
    async fn an_http2_connection_is_refused_not_held() {
        let minute = Duration::from_secs(60);
        let (addr, _stop) = listening(timeouts(minute, minute)).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // The HTTP/2 connection preface, and then nothing, as a client waiting for settings.
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut socket).await;
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
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
    async fn a_connection_past_the_cap_is_answered_503_at_once_and_closed() {
        let minute = Duration::from_secs(60);
        let (addr, _stop) = listening(Limits {
            idle: minute,
            head: minute,
            write_stall: minute,
            keepalive: minute,
            connections: 2,
        })
        .await;
        // Two connections, each served once (so both are surely counted), then held open.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            ask(&mut socket, GET).await;
            held.push(socket);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let got = String::from_utf8(until_closed(&mut third).await).unwrap();
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(head.contains("\r\nretry-after: 1\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "Server is full");
        // The two held connections are still served.
        for socket in &mut held {
            ask(socket, GET).await;
        }
    }

    #[tokio::test]
    async fn a_head_trickled_in_is_cut_off_after_the_head_timeout() {
        let head = Duration::from_millis(200);
        let (addr, _stop) = listening(timeouts(Duration::from_secs(60), head)).await;
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
