//! SPEC §4 over real HTTP: every route, every error status, sessions by body, bearer and cookie,
//! TCP and HTTP users together, and SSE streams with lossless resume.

use std::num::NonZeroU32;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::http_client::{Http, Sse};

#[tokio::test]
async fn connect_command_message_rooms_history_and_disconnect_succeed() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let (status, body) = http
        .post("/api/connect", json!({ "nickname": "web" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["nickname"], "web");
    assert!(body["data"]["userId"].is_i64());
    let session = body["data"]["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "a 128-bit token in hex");

    assert_eq!(
        http.command(&session, "/create lobby").await,
        "Created and joined room: lobby\n--- Recent Messages ---\nNo recent messages\n---"
    );
    let posted = http.message(&session, "hello").await;
    assert_eq!(posted["room"], "lobby");
    assert_eq!(posted["seq"], 1);
    assert!(posted["id"].is_i64());
    assert_eq!(
        http.command(&session, "second line").await,
        "[lobby] web: second line"
    );

    let (status, rooms) = http.get("/api/rooms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rooms["data"]["rooms"][0]["name"], "lobby");
    assert_eq!(rooms["data"]["rooms"][0]["memberCount"], 1);
    assert!(rooms["data"]["rooms"][0]["createdAt"].is_string());

    let (status, history) = http.get("/api/rooms/lobby/history?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    let messages = history["data"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["content"], "hello");
    assert_eq!(messages[1]["seq"], 2);
    for field in ["id", "seq", "room", "user", "content", "createdAt"] {
        assert!(
            messages[0].get(field).is_some(),
            "history messages carry {field}"
        );
    }
    let (_, page) = http.get("/api/rooms/lobby/history?limit=1&before=2").await;
    assert_eq!(page["data"]["messages"][0]["content"], "hello");

    let (status, body) = http
        .post("/api/disconnect", json!({ "sessionId": session }))
        .await;
    assert_eq!(
        (status, body["success"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, _) = http
        .post(
            "/api/command",
            json!({ "sessionId": session, "command": "/help" }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a disconnected session is gone"
    );
    // And its nickname is free again.
    http.connect("web").await;
}

#[tokio::test]
async fn each_error_has_its_status_and_the_envelope() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_sec = NonZeroU32::new(1).unwrap();
        c.rate_limit_burst = NonZeroU32::new(8).unwrap();
    })
    .await;
    let http = Http::new(app.http);
    let session = http.connect("web").await;
    http.connect("other").await;
    let cases = [
        (
            "/api/connect",
            json!({ "nickname": "bad name!" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/connect",
            json!({ "nick": "missing field" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/connect",
            json!({ "nickname": "OTHER" }),
            StatusCode::CONFLICT,
        ),
        (
            "/api/command",
            json!({ "sessionId": "0123", "command": "/help" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/command",
            json!({ "command": "/help" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/command",
            json!({ "sessionId": session, "command": "/join nowhere" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/command",
            json!({ "sessionId": session, "command": "/dance" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/message",
            json!({ "sessionId": session, "content": "not in a room" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/command",
            json!({ "sessionId": session, "command": "/create r" }),
            StatusCode::OK,
        ),
        (
            "/api/command",
            json!({ "sessionId": session, "command": "/create R" }),
            StatusCode::CONFLICT,
        ),
        (
            "/api/message",
            json!({ "sessionId": session, "content": "x".repeat(2001) }),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // What a TCP user typing the same line would be told (MAX_LINE_BYTES is 4096).
        (
            "/api/command",
            json!({ "sessionId": session, "command": format!("/join {}", "x".repeat(4096)) }),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (path, body, expected) in cases {
        let (status, reply) = http.post(path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body}: {reply}");
        if expected != StatusCode::OK {
            assert_eq!(reply["success"], false);
            assert!(
                reply["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{reply}"
            );
        }
    }
    let (status, reply) = http.get("/api/rooms/nowhere/history").await;
    assert_eq!(
        (status, reply["error"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "No such room: nowhere")
    );
    let (status, reply) = http
        .post(
            "/api/command",
            json!({ "sessionId": session, "command": format!("/join {}", "x".repeat(4096)) }),
        )
        .await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("Line too long"))
    );
    // Every /api reply is in the envelope, a route or method that does not exist too.
    let (status, reply) = http.get("/api/nowhere").await;
    assert_eq!(
        (status, reply["success"].clone(), reply["error"].as_str()),
        (
            StatusCode::NOT_FOUND,
            json!(false),
            Some("No such route: GET /api/nowhere")
        )
    );
    let (status, reply) = http.get("/api/connect").await;
    assert_eq!(
        (status, reply["success"].clone(), reply["error"].as_str()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!(false),
            Some("Method not allowed: GET /api/connect")
        )
    );

    let malformed = http.post_raw("/api/command", "{not json").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.json::<serde_json::Value>().await.unwrap()["success"],
        false
    );
    let oversize = http
        .post_raw(
            "/api/message",
            format!("{{\"content\":\"{}\"}}", "y".repeat(100_000)),
        )
        .await;
    assert_eq!(oversize.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The burst allowance is spent by now (8, one a second); the next commands are refused.
    let mut limited = None;
    for _ in 0..10 {
        let (status, reply) = http
            .post(
                "/api/command",
                json!({ "sessionId": session, "command": "/rooms" }),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
    }
    assert_eq!(
        limited.expect("rate limited")["error"],
        "Rate limit exceeded"
    );
}

#[tokio::test]
async fn the_session_may_travel_as_a_bearer_token_or_a_cookie() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let session = http.connect("web").await;
    let client = reqwest::Client::new();
    let bearer = client
        .post(http.url("/api/command"))
        .bearer_auth(&session)
        .json(&json!({ "command": "/create r" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let cookie = client
        .post(http.url("/api/message"))
        .header("cookie", format!("theme=dark; sessionId={session}"))
        .json(&json!({ "content": "by cookie" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cookie.status(), StatusCode::OK);

    // /api/connect sets the cookie itself.
    let response = client
        .post(http.url("/api/connect"))
        .json(&json!({ "nickname": "jar" }))
        .send()
        .await
        .unwrap();
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.starts_with("sessionId=") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
}

#[tokio::test]
async fn a_tcp_user_and_an_http_user_see_each_others_messages_and_dms() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("mixed").await;
    let web = http.connect("web").await;
    let mut events = http
        .stream(&format!("/api/events?sessionId={web}"), None)
        .await;
    assert_eq!(events.expect("connected").await, json!({ "room": null }));
    http.command(&web, "/join mixed").await;
    assert_eq!(events.expect("connected").await, json!({ "room": "mixed" }));
    nc.expect("[system] web joined mixed").await;

    nc.send("hello browser").await;
    nc.expect("[mixed] nc: hello browser").await;
    let message = events.expect("message").await;
    assert_eq!(
        (message["user"].as_str(), message["content"].as_str()),
        (Some("nc"), Some("hello browser"))
    );
    for field in ["id", "seq", "room", "timestamp"] {
        assert!(message.get(field).is_some(), "message events carry {field}");
    }
    http.message(&web, "hello terminal").await;
    nc.expect("[mixed] web: hello terminal").await;
    assert_eq!(events.expect("message").await["content"], "hello terminal");

    nc.send("/dm web psst").await;
    nc.expect("[DM to web] psst").await;
    assert_eq!(
        events.expect("dm").await,
        json!({ "from": "nc", "to": "web", "content": "psst" })
    );
    nc.send("/nick netcat").await;
    nc.expect("You are now known as netcat").await;
    assert_eq!(
        events.expect("system").await,
        json!({ "room": "mixed", "text": "nc is now known as netcat" })
    );
    assert_eq!(
        http.command(&web, "/list").await,
        "Users in mixed: netcat, web"
    );
}

#[tokio::test]
async fn a_room_stream_has_strictly_increasing_ids_and_resumes_without_gap_or_duplicate() {
    let app = spawn_app_with(|c| c.rate_limit_burst = NonZeroU32::new(1000).unwrap()).await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("feed").await;
    let web = http.connect("web").await;
    let path = format!("/api/messages/feed?sessionId={web}");
    let mut stream = http.stream(&path, None).await;
    assert_eq!(stream.expect("connected").await, json!({ "room": "feed" }));
    let mut last = 0;
    for i in 0..20 {
        nc.send(&format!("m{i}")).await;
        nc.expect(&format!("[feed] nc: m{i}")).await;
        let event = stream.next().await;
        assert_eq!(event.event, "message");
        let seq: i64 = event.id.parse().unwrap();
        assert!(seq > last, "ids strictly increase");
        last = seq;
    }
    drop(stream);

    // Five messages while the browser was away.
    for i in 0..5 {
        nc.send(&format!("missed {i}")).await;
    }
    for i in 0..5 {
        nc.expect(&format!("[feed] nc: missed {i}")).await;
    }
    let mut resumed = http.stream(&path, Some(last)).await;
    resumed.expect("connected").await;
    for i in 0..5 {
        let event = resumed.next().await;
        assert_eq!(event.id, (last + 1 + i).to_string());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.data).unwrap()["content"],
            format!("missed {i}")
        );
    }
    nc.send("live again").await;
    let live = resumed.next().await;
    assert_eq!(
        live.id,
        (last + 6).to_string(),
        "no gap and no duplicate at the switch to live"
    );

    // The query parameter works for clients that cannot set headers.
    let mut by_query = http
        .stream(&format!("{path}&last_event_id={}", last + 4), None)
        .await;
    by_query.expect("connected").await;
    assert_eq!(by_query.next().await.id, (last + 5).to_string());
}

#[tokio::test]
async fn resuming_further_back_than_retention_says_reset() {
    let app = spawn_app_with(|c| c.retention_per_room = 5).await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("short").await;
    for i in 1..=12 {
        nc.send(&format!("m{i}")).await;
        nc.expect(&format!("[short] nc: m{i}")).await;
    }
    let web = http.connect("web").await;
    let mut stream = http
        .stream(&format!("/api/messages/short?sessionId={web}"), Some(2))
        .await;
    stream.expect("connected").await;
    assert_eq!(
        stream.expect("reset").await,
        json!({ "room": "short", "oldestSeq": 8 })
    );
    for seq in 8..=12 {
        assert_eq!(stream.next().await.id, seq.to_string());
    }
}

#[tokio::test]
async fn a_slow_sse_reader_is_closed_without_stalling_others() {
    let app = spawn_app_with(|c| {
        c.send_queue_lines = 64;
        c.rate_limit_per_sec = NonZeroU32::new(100_000).unwrap();
        c.rate_limit_burst = NonZeroU32::new(100_000).unwrap();
    })
    .await;
    let http = Http::new(app.http);
    let mut sender = app.login("sender").await;
    sender.create("busy").await;
    let web = http.connect("web").await;
    // Opened, then never read: its queue fills once the socket buffers do.
    let slow = http
        .stream(&format!("/api/messages/busy?sessionId={web}"), None)
        .await;
    let mut fast = http
        .stream(&format!("/api/messages/busy?sessionId={web}"), None)
        .await;
    fast.expect("connected").await;
    let body = "z".repeat(1900);
    let count = 6000;
    let sending = tokio::spawn(async move {
        for i in 0..count {
            sender.send(&format!("{i} {body}")).await;
            assert!(
                sender
                    .line()
                    .await
                    .starts_with(&format!("[busy] sender: {i} "))
            );
        }
    });
    for i in 0..count {
        let event = fast.next().await;
        assert_eq!(
            event.id,
            (i + 1).to_string(),
            "the fast reader got every message in order"
        );
    }
    sending.await.unwrap();
    let mut slow = slow;
    let mut read = 0;
    while slow.try_next().await.is_some() {
        read += 1;
    }
    assert!(
        read < count,
        "the slow stream was closed after {read} events"
    );
}

/// Reads from `socket` until `needle` has arrived; returns everything read.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut read = Vec::new();
    while !String::from_utf8_lossy(&read).contains(needle) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(TIMEOUT, socket.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&read)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&read)
        );
        read.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(read).unwrap()
}

fn stream_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
}

#[tokio::test]
async fn streams_and_requests_share_connections_as_http_1_1_allows() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("lean").await;
    let web = http.connect("web").await;
    let path = format!("/api/messages/lean?sessionId={web}");

    // A stream on a fresh connection, as EventSource opens it: written on the bare socket, the
    // body delimited by the connection's end.
    let mut fresh = TcpStream::connect(app.http).await.unwrap();
    fresh
        .write_all(stream_request(&path).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut fresh, "event: connected").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("connection: close\r\n"), "{head}");

    // Two pipelined requests on one kept-alive connection, answered in order, then a stream on it.
    let mut reused = TcpStream::connect(app.http).await.unwrap();
    reused
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /api/rooms HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_until(&mut reused, "\"lean\"").await;
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{answers}"
    );
    let (health, rooms) = (answers.find("\"uptime\""), answers.find("\"lean\""));
    assert!(health.unwrap() < rooms.unwrap(), "{answers}");
    reused
        .write_all(stream_request(&path).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut reused, "event: connected").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");

    nc.send("to both").await;
    for socket in [&mut fresh, &mut reused] {
        let frame = read_until(socket, "to both").await;
        assert!(frame.contains("event: message\nid: 1\n"), "{frame}");
    }

    // An error on a stream request keeps its status and envelope, and a length.
    let mut refused = TcpStream::connect(app.http).await.unwrap();
    refused
        .write_all(stream_request("/api/messages/lean?sessionId=bogus").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, refused.read_to_string(&mut response))
        .await
        .expect("the connection closes after the error")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["success"], false);

    // What the listener leaves to hyper still works: a chunked body, and HTTP/1.0.
    let mut chunked = TcpStream::connect(app.http).await.unwrap();
    let json = r#"{"nickname":"chunky"}"#;
    chunked
        .write_all(
            format!(
                "POST /api/connect HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
                json.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_until(&mut chunked, "sessionId").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let mut old = TcpStream::connect(app.http).await.unwrap();
    old.write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, old.read_to_string(&mut answer))
        .await
        .expect("an HTTP/1.0 answer ends the connection")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn a_refused_oversize_body_is_never_read_as_the_next_request() {
    let app = spawn_app().await;
    let mut socket = TcpStream::connect(app.http).await.unwrap();
    let body = format!(r#"{{"content":"{}"}}"#, "x".repeat(200_000));
    let request = format!(
        "POST /api/message HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // Written alongside reading: the server may answer and close before taking it all.
    let (mut read, mut write) = socket.split();
    let (_, answer) = tokio::join!(write.write_all(request.as_bytes()), async {
        let mut answer = Vec::new();
        tokio::time::timeout(TIMEOUT, read.read_to_end(&mut answer))
            .await
            .expect("the connection ends")
            .ok();
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(!answer.contains("400 Bad Request"), "{answer}");
}

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_with_a_notice_within_the_grace_time() {
    let app = spawn_app_with(|c| c.shutdown_grace_secs = 5).await;
    let http = Http::new(app.http);
    let web = http.connect("web").await;
    http.command(&web, "/create r").await;
    let mut room_stream = http
        .stream(&format!("/api/messages/r?sessionId={web}"), None)
        .await;
    let mut events = http
        .stream(&format!("/api/events?sessionId={web}"), None)
        .await;
    room_stream.expect("connected").await;
    events.expect("connected").await;
    let started = std::time::Instant::now();
    app.begin_shutdown();
    for stream in [&mut room_stream, &mut events] {
        assert_eq!(
            stream.expect("system").await["text"],
            "Server restarting, please reconnect"
        );
        assert!(stream.try_next().await.is_none(), "the stream ends");
    }
    app.stopped().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped within the grace period"
    );
}

/// A netcat user `nc` in a new room `r`, and the path of a browser session's stream of it.
async fn sender_and_room(app: &TestApp) -> (Client, String) {
    let mut nc = app.login("nc").await;
    nc.create("r").await;
    let web = Http::new(app.http).connect("web").await;
    (nc, format!("/api/messages/r?sessionId={web}"))
}

/// As [`sender_and_room`], the stream open and its `connected` event read.
async fn sender_and_stream(app: &TestApp) -> (Client, Sse) {
    let (nc, path) = sender_and_room(app).await;
    let mut stream = Http::new(app.http).stream(&path, None).await;
    stream.expect("connected").await;
    (nc, stream)
}

#[tokio::test]
async fn a_gathering_stream_brings_a_burst_whole_and_in_order() {
    let app = spawn_app_with(|c| {
        c.rate_limit_burst = NonZeroU32::new(500).unwrap();
        c.write_coalesce_ms = 20;
    })
    .await;
    let (mut nc, mut stream) = sender_and_stream(&app).await;
    let burst: String = (0..200).map(|i| format!("n{i}\n")).collect();
    nc.send_raw(burst.as_bytes()).await;
    for i in 0..200 {
        let event = stream.next().await;
        assert_eq!(event.id, (i + 1).to_string());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.data).unwrap()["content"],
            format!("n{i}")
        );
    }
}

#[tokio::test]
async fn a_drain_writes_what_a_stream_gathered_before_the_notice() {
    // The longest gathering: the drain comes well within it (on a machine so slow that the
    // gathering ends first, this passes untested).
    let app = spawn_app_with(|c| {
        c.write_coalesce_ms = 100;
        c.shutdown_grace_secs = 5;
    })
    .await;
    let (mut nc, mut stream) = sender_and_stream(&app).await;
    nc.send("m1").await;
    assert_eq!(stream.expect("message").await["content"], "m1");
    // m2 is gathered for the stream; once /list is answered, it was handed to every member.
    nc.send("m2").await;
    nc.send("/list").await;
    nc.expect_lines(&["[r] nc: m1", "[r] nc: m2", "Users in r: nc"])
        .await;
    app.begin_shutdown();
    assert_eq!(stream.expect("message").await["content"], "m2");
    // Room events of the drain (nc's connection closing) may come between.
    loop {
        if stream.expect("system").await["text"] == "Server restarting, please reconnect" {
            break;
        }
    }
}

#[tokio::test]
async fn a_drain_writes_what_a_stream_has_waiting_before_the_notice() {
    // 3,000 messages of 1,900 bytes: more than the sockets hold (the kernel lets a sender's
    // buffer grow to 4 MB), less than the stream's queue.
    let count = 3000;
    let app = spawn_app_with(|c| {
        c.rate_limit_burst = NonZeroU32::new(count + 1).unwrap();
        c.send_queue_lines = 2 * count as usize;
        c.shutdown_grace_secs = 5;
    })
    .await;
    let (mut nc, path) = sender_and_room(&app).await;
    // A reader that reads nothing until the drain, with a small receive buffer: what the
    // sockets cannot hold waits in the stream's queue.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = socket.connect(app.http).await.unwrap();
    reader
        .write_all(stream_request(&path).as_bytes())
        .await
        .unwrap();
    read_until(&mut reader, "event: connected").await;
    let body = "z".repeat(1900);
    for i in 0..count {
        nc.send(&format!("k{i} {body}")).await;
    }
    // Once /list is answered, every message was handed to every member.
    nc.send("/list").await;
    for _ in 0..count {
        nc.line().await;
    }
    nc.expect("Users in r: nc").await;
    app.begin_shutdown();
    let notice = "Server restarting, please reconnect";
    let mut read = Vec::new();
    loop {
        let mut chunk = [0; 65536];
        let n = tokio::time::timeout(TIMEOUT, reader.read(&mut chunk))
            .await
            .expect("the notice comes")
            .unwrap();
        assert!(n > 0, "closed before the notice");
        read.extend_from_slice(&chunk[..n]);
        let tail = &read[read.len().saturating_sub(n + notice.len())..];
        if String::from_utf8_lossy(tail).contains(notice) {
            break;
        }
    }
    let read = String::from_utf8_lossy(&read);
    let written: Vec<u32> = read
        .split("\"content\":\"k")
        .skip(1)
        .map(|rest| rest[..rest.find(' ').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(
        written,
        (0..count).collect::<Vec<_>>(),
        "every message, in order, before the notice"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_api_routes() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let (status, doc) = http.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/command",
            "/api/connect",
            "/api/disconnect",
            "/api/events",
            "/api/message",
            "/api/messages/{room}",
            "/api/rooms",
            "/api/rooms/{room}/history",
        ]
    );
    // Every documented operation is routed (no 404 or 405 from the router).
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let url = http.url(&path.replace("{room}", "anything"));
            let response = reqwest::Client::new()
                .request(method.to_uppercase().parse().unwrap(), url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            // A handler's 404 (no such room) is fine; the router's says no route took it.
            if status == StatusCode::NOT_FOUND {
                let body = response.text().await.unwrap();
                assert!(
                    !body.starts_with(r#"{"success":false,"error":"No such route"#),
                    "{method} {path} is not routed: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_storm_of_stream_reconnects_is_shed_by_the_connect_rate_limit() {
    // Streams and netcat connections share one rate, as they share MAX_CONNECTIONS.
    let app = spawn_app_with(|c| c.connect_rate_per_sec = NonZeroU32::new(20).unwrap()).await;
    let http = Http::new(app.http);
    let session = http.connect("web").await;
    http.command(&session, "/create storm").await;
    let client = reqwest::Client::new();
    let (mut refused, mut admitted) = (0, Vec::new());
    for _ in 0..200 {
        let response = client
            .get(http.url(&format!("/api/messages/storm?sessionId={session}")))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .expect("stream request");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                response
                    .headers()
                    .contains_key(reqwest::header::RETRY_AFTER)
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "Too many connections, try again later");
            refused += 1;
        } else {
            assert_eq!(response.status(), StatusCode::OK);
            admitted.push(response);
        }
    }
    assert!(refused >= 100, "refused only {refused} of 200");
    assert!(!admitted.is_empty());
    let metrics = http.metrics().await;
    assert_eq!(
        total(&metrics, "chat_dropped_total", r#"reason="connect_rate""#),
        refused as f64
    );
}
