//! The fronts under abuse (SPEC §3): streams count against MAX_CONNECTIONS with netcat users, HTTP
//! connections are bounded, slow heads are cut off, a stream that stops reading holds neither
//! its task nor the drain, the per-session rate limit holds across replicas, and a netcat peer
//! that vanished without a FIN gives its nickname back (a browser, its stream slot).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cluster::Cluster;
use crate::helpers::*;
use crate::http_client::Http;

/// Sends a stream request on a fresh connection and reads the answer's head.
async fn open_stream(http: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(http).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        let n = tokio::time::timeout(TIMEOUT, socket.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (socket, String::from_utf8(head).unwrap())
}

#[tokio::test]
async fn a_stream_past_max_connections_gets_503_with_retry_after_and_netcat_users_stay_served() {
    let app = spawn_app_with(|c| c.max_connections = 4).await;
    let (mut alice, mut bob) = app.two_in_a_room("full").await;
    let http = Http::new(app.http);
    let web = http.connect("web").await;
    let path = format!("/api/events?sessionId={web}");
    // Two netcat users and two streams fill the four slots.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (socket, head) = open_stream(app.http, &path).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        streams.push(socket);
    }
    let (mut refused, head) = open_stream(app.http, &path).await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{head}"
    );
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body).await;
    assert!(body.contains(r#""error":"Server is full""#), "{body}");
    let mut newcomer = Client::connect(app.tcp).await;
    assert_eq!(newcomer.until_closed().await, b"Error: Server is full\n");
    // Plain requests still get through, and the users in the slots chat on.
    let (status, _) = http.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    alice.send("still here").await;
    bob.expect("[full] alice: still here").await;
}

#[tokio::test]
async fn http_connections_past_the_cap_are_answered_503_and_netcat_users_stay_served() {
    // MAX_CONNECTIONS plus the 256 spare connections for plain requests.
    let cap = 2 + 256;
    let app = spawn_app_with(|c| c.max_connections = 2).await;
    let (mut alice, mut bob) = app.two_in_a_room("busy").await;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(TcpStream::connect(app.http).await.unwrap());
    }
    let mut one_more = TcpStream::connect(app.http).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, one_more.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    alice.send("unbothered").await;
    bob.expect("[busy] alice: unbothered").await;
    // The held connections are served as usual.
    let first = &mut idle[0];
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 15];
    first.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
}

#[tokio::test]
async fn heads_trickled_in_are_cut_off_and_the_pod_keeps_answering() {
    let app = spawn_app_with(|c| c.http_head_timeout_secs = 1).await;
    let http = Http::new(app.http);
    // Fifty clients each sending a byte of a never-ending head every 100 ms (slowloris).
    let began = Instant::now();
    let trickling: Vec<_> = (0..50)
        .map(|_| {
            let addr = app.http;
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                socket.write_all(b"GET / HTTP/1.1\r\nX: ").await.unwrap();
                loop {
                    if socket.write_all(b"a").await.is_err() {
                        return;
                    }
                    let mut byte = [0];
                    match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut byte))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => return,
                        Ok(Ok(_)) => panic!("an answer to a head that never ended"),
                        Err(_still_open) => {}
                    }
                }
            })
        })
        .collect();
    let (status, _) = http.get("/health").await;
    assert_eq!(status, StatusCode::OK, "answered while the heads trickle");
    for client in trickling {
        tokio::time::timeout(TIMEOUT, client)
            .await
            .expect("every trickling client is cut off")
            .unwrap();
    }
    assert!(began.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_stream_that_stops_reading_does_not_hold_the_drain() {
    let app = spawn_app_with(|c| {
        c.shutdown_grace_secs = 30;
        // Large enough that the stream is never dropped as too slow: only the drain ends it.
        c.send_queue_lines = 1_000_000;
        c.rate_limit_per_sec = NonZeroU32::new(1_000_000).unwrap();
        c.rate_limit_burst = NonZeroU32::new(1_000_000).unwrap();
    })
    .await;
    let http = Http::new(app.http);
    let mut sender = app.login("sender").await;
    sender.create("flood").await;
    let web = http.connect("web").await;
    // A reader with a small receive window, which then never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.http).await.unwrap();
    let request = format!(
        "GET /api/messages/flood?sessionId={web} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    // 16 MB of messages: far more than the socket buffers on both sides hold.
    let body = "z".repeat(1990);
    for i in 0..8000 {
        sender.send(&format!("{i} {body}")).await;
        assert!(
            sender
                .line()
                .await
                .starts_with(&format!("[flood] sender: {i} "))
        );
    }
    let began = Instant::now();
    app.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(15), app.stopped())
        .await
        .expect("the drain did not wait for the stalled stream's writes");
    assert!(began.elapsed() < Duration::from_secs(15));
    drop(stalled);
}

#[tokio::test]
async fn the_per_session_rate_limit_holds_across_replicas() {
    let burst = 5;
    let cluster =
        Cluster::start(2, &[("RATE_LIMIT_PER_SEC", "1"), ("RATE_LIMIT_BURST", "5")]).await;
    let web = cluster.http(0).connect("web").await;
    cluster.http(0).command(&web, "/create limits").await;
    let began = Instant::now();
    let mut accepted = 0;
    for i in 0..4 * burst {
        let (status, body) = cluster
            .http(i % 2)
            .post(
                "/api/message",
                serde_json::json!({ "sessionId": web, "content": format!("m{i}") }),
            )
            .await;
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(body["error"], "Rate limit exceeded"),
            other => panic!("{other}: {body}"),
        }
    }
    // The /create above spent one; a second refills per second elapsed.
    let refilled = began.elapsed().as_secs() as usize + 1;
    assert!(
        accepted >= burst - 1 && accepted <= burst - 1 + refilled,
        "{accepted} accepted over two replicas with a burst of {burst}"
    );
}

/// Drops every packet the client at `port` sends to the server: to the server, the client has
/// vanished without a FIN or a reset. Removed when dropped.
struct Vanished {
    rule: Vec<String>,
}

impl Vanished {
    fn client(port: u16) -> Vanished {
        let rule: Vec<String> = ["INPUT", "-i", "lo", "-p", "tcp", "--sport"]
            .iter()
            .map(|s| s.to_string())
            .chain([port.to_string(), "-j".into(), "DROP".into()])
            .collect();
        let added = std::process::Command::new("iptables")
            .arg("-I")
            .args(&rule)
            .status()
            .expect("iptables (this test needs root and the iptables package)");
        assert!(added.success(), "iptables -I {}", rule.join(" "));
        Vanished { rule }
    }
}

impl Drop for Vanished {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-D")
            .args(&self.rule)
            .status();
    }
}

#[tokio::test]
async fn a_netcat_peer_that_vanished_frees_its_nickname_within_the_keepalive_bound() {
    let app = spawn_app_with(|c| c.tcp_keepalive_secs = 1).await;
    let ghost = Client::login(app.tcp, "ghost").await;
    let _cut = Vanished::client(ghost.local_port());
    let vanished = Instant::now();
    // Probes after 1 s idle, then three 1-s probes: the kernel gives up after about 4 s.
    loop {
        let mut again = Client::connect(app.tcp).await;
        again.expect("Welcome to Baby Discord!").await;
        again.expect_prompt().await;
        again.send("ghost").await;
        let answer = again.line().await;
        if answer == "Welcome, ghost!" {
            break;
        }
        assert!(answer.contains("in use"), "{answer}");
        assert!(
            vanished.elapsed() < Duration::from_secs(15),
            "ghost still held {:?} after the peer vanished",
            vanished.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(ghost);
}

#[tokio::test]
async fn a_browser_that_vanished_gives_its_stream_slot_back_within_the_keepalive_bound() {
    let app = spawn_app_with(|c| {
        c.max_connections = 1;
        c.tcp_keepalive_secs = 1;
    })
    .await;
    let web = Http::new(app.http).connect("wisp").await;
    let path = format!("/api/events?sessionId={web}");
    let (ghost, head) = open_stream(app.http, &path).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let _cut = Vanished::client(ghost.local_addr().unwrap().port());
    let vanished = Instant::now();
    // The one slot is the ghost's until the kernel gives up on it: about 4 s with 1-s probes.
    loop {
        let (_again, head) = open_stream(app.http, &path).await;
        if head.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            vanished.elapsed() < Duration::from_secs(15),
            "the vanished browser still held its slot {:?} later",
            vanished.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(ghost);
}
