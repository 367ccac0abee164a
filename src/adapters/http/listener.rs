//! The HTTP listener: event streams on the bare socket, everything else through hyper.
//!
//! A connection's first request head is read here. If it opens an event stream (a `GET` that
//! accepts `text/event-stream`, as every `EventSource` sends), the request still goes through the
//! router — same routes, extractors, errors and metrics — but the response is written to the
//! socket directly and the connection closes when the stream ends. Any other connection is
//! handed to hyper with the bytes already read put back in front of it.
//!
//! Why: hyper keeps two fixed 8 KiB buffers per HTTP/1.1 connection (read, and response head)
//! for the connection's whole life, which is most of what an idle stream would cost; a stream
//! needs neither once its head is written. A stream opened on a connection that already carried
//! other requests stays with hyper: correct, only heavier.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{HeaderName, HeaderValue, Method, Request, Version, header, response};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Chain, Join};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Most of a request head read before deciding; a longer head is hyper's to judge.
const HEAD_LIMIT: usize = 8 * 1024;
/// What a request head usually fits in.
const HEAD_INITIAL: usize = 1024;
/// Most headers an event-stream request may carry to be served here.
const MAX_HEADERS: usize = 64;

/// A connection handed to hyper: the bytes read while deciding, then the socket.
pub type Handed = Join<Chain<io::Cursor<Vec<u8>>, OwnedReadHalf>, OwnedWriteHalf>;

pub struct HttpListener {
    tcp: TcpListener,
    router: Router,
    stop: CancellationToken,
    handed_tx: mpsc::Sender<(Handed, SocketAddr)>,
    handed_rx: mpsc::Receiver<(Handed, SocketAddr)>,
    /// Connections being read or serving a stream here (hyper tracks its own).
    tasks: TaskTracker,
}

impl HttpListener {
    /// `stop` ends the connections still deciding; streams end on their own drain token.
    pub fn new(tcp: TcpListener, router: Router, stop: CancellationToken) -> Self {
        let (handed_tx, handed_rx) = mpsc::channel(64);
        HttpListener {
            tcp,
            router,
            stop,
            handed_tx,
            handed_rx,
            tasks: TaskTracker::new(),
        }
    }

    /// The connections this listener serves itself, to wait for after the server stops.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Handed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Handed, SocketAddr) {
        loop {
            tokio::select! {
                Some(handed) = self.handed_rx.recv() => return handed,
                accepted = self.tcp.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let _ = socket.set_nodelay(true);
                        self.tasks.spawn(first_request(
                            socket,
                            peer,
                            self.router.clone(),
                            self.handed_tx.clone(),
                            self.stop.clone(),
                        ));
                    }
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning on it.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Reads the first request head, then serves the stream here or hands the connection to hyper.
async fn first_request(
    mut socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    handoff: mpsc::Sender<(Handed, SocketAddr)>,
    stop: CancellationToken,
) {
    let mut head = Vec::with_capacity(HEAD_INITIAL);
    let request = loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = socket.read_buf(&mut head) => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
        match event_stream_request(&head) {
            Sniffed::Stream(request) => break *request,
            Sniffed::Incomplete if head.len() < HEAD_LIMIT => continue,
            Sniffed::Incomplete | Sniffed::Other => {
                head.shrink_to_fit();
                let (read, write) = socket.into_split();
                let handed = tokio::io::join(io::Cursor::new(head).chain(read), write);
                // Refused only when the server has stopped accepting: the connection closes.
                let _ = handoff.send((handed, peer)).await;
                return;
            }
        }
    };
    drop(head);
    serve_stream(socket, request, router).await;
}

enum Sniffed {
    Stream(Box<Request<Body>>),
    Incomplete,
    Other,
}

/// The request in `bytes` if it is a complete event-stream request and nothing else.
fn event_stream_request(bytes: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(length)) if length == bytes.len() => {
            to_request(&parsed).map_or(Sniffed::Other, |r| Sniffed::Stream(Box::new(r)))
        }
        // Still arriving, and may yet be a GET: read on.
        Ok(httparse::Status::Partial) if b"GET ".starts_with(&bytes[..bytes.len().min(4)]) => {
            Sniffed::Incomplete
        }
        _ => Sniffed::Other,
    }
}

fn to_request(parsed: &httparse::Request) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(parsed.path?)
        .version(Version::HTTP_11);
    let mut event_stream = false;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::ACCEPT {
            event_stream |= value
                .to_str()
                .is_ok_and(|v| v.contains("text/event-stream"));
        }
        // A request with a body, or one asking to switch protocols, is not a plain stream.
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ]
        .contains(&name)
        {
            return None;
        }
        request = request.header(name, value);
    }
    event_stream.then(|| request.body(Body::empty()).ok())?
}

/// Runs the request through the router and writes the response straight to the socket.
async fn serve_stream(mut socket: TcpStream, request: Request<Body>, router: Router) {
    // Boxed: the router's future is large and only needed until the response exists, so an idle
    // stream's task does not carry room for it.
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

    fn sniff(head: &str) -> Sniffed {
        event_stream_request(head.as_bytes())
    }

    #[test]
    fn an_event_source_request_is_served_here() {
        let head = "GET /api/events?sessionId=x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\nLast-Event-ID: 7\r\n\r\n";
        let Sniffed::Stream(request) = sniff(head) else {
            panic!("not recognised as a stream");
        };
        assert_eq!(request.uri(), "/api/events?sessionId=x");
        assert_eq!(request.headers()["last-event-id"], "7");
    }

    #[test]
    fn a_partial_get_head_is_read_on_and_anything_else_goes_to_hyper() {
        assert!(matches!(
            sniff("GET /api/events HTTP/1.1\r\nAccept: text/"),
            Sniffed::Incomplete
        ));
        assert!(matches!(sniff("GE"), Sniffed::Incomplete));
        assert!(matches!(
            sniff("POST /api/message HTTP/1.1\r\n"),
            Sniffed::Other
        ));
        assert!(matches!(
            sniff("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Sniffed::Other
        ));
        for head in [
            // No Accept: text/event-stream.
            "GET /api/events HTTP/1.1\r\nHost: h\r\n\r\n",
            // HTTP/1.0.
            "GET /api/events HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            // A body, or a pipelined second request, after the head.
            "GET /api/events HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\nhi",
            "GET /api/events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            // Garbage.
            "\x16\x03\x01 not http",
        ] {
            assert!(matches!(sniff(head), Sniffed::Other), "{head:?}");
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
