//! The delivery promises of SPEC §5 under faults, one test per defect found: PostgreSQL crashing
//! and stalling, Valkey restarting and stalling, replicas draining, browsers racing their own
//! requests, rooms with a long past, and streams resuming from positions they cannot have. Each
//! runs real server processes on a real PostgreSQL and Valkey.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::cluster::Cluster;
use crate::helpers::*;
use crate::http_client::{Http, Sse};

/// The next chat message of a stream (room events pass by), as JSON.
async fn next_message(stream: &mut crate::http_client::Sse) -> serde_json::Value {
    loop {
        let event = stream.next().await;
        if event.event == "message" {
            return serde_json::from_str(&event.data).unwrap();
        }
    }
}

/// `(seq, content)` of every stored message of a room, by seq.
async fn stored(db: &sqlx::PgPool, room: &str) -> BTreeMap<i64, String> {
    sqlx::query(
        "SELECT m.seq, m.content FROM messages m JOIN rooms r ON r.id = m.room_id
         WHERE lower(r.name) = lower($1) ORDER BY m.seq",
    )
    .bind(room)
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Makes `room` with `count` old messages of `size` bytes, written straight into the store, as a
/// room in use for a while has them.
async fn plant(db: &sqlx::PgPool, room: &str, count: i64, size: usize) {
    sqlx::query("INSERT INTO rooms (name) VALUES ($1)")
        .bind(room)
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "WITH r AS (SELECT id, last_seq FROM rooms WHERE name = $1)
         INSERT INTO messages (room_id, seq, nickname, content, created_at)
         SELECT r.id, r.last_seq + g, 'old', g || ':' || repeat('x', $3), now()
         FROM r, generate_series(1, $2) g",
    )
    .bind(room)
    .bind(count)
    .bind(size as i32)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("UPDATE rooms SET last_seq = last_seq + $2 WHERE name = $1")
        .bind(room)
        .bind(count)
        .execute(db)
        .await
        .unwrap();
}

/// A netcat member that sends `prefix-0`, `prefix-1`, … one at a time — each after the answer to
/// the one before (its echo, or an error) — until `stop`. Returns the acknowledged ones.
async fn keep_sending(
    mut client: Client,
    room: &str,
    nick: &str,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let content = format!("{prefix}-{n}");
        n += 1;
        client.send(&content).await;
        let echo = format!("[{room}] {nick}: {content}");
        loop {
            let line = client.line().await;
            if line == echo {
                acked.push(content);
                break;
            }
            if line.starts_with("Error: ") {
                // Refused or unconfirmed: not acknowledged. A short pause while the database is
                // down keeps the loop from spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
        }
    }
    acked
}

#[tokio::test]
async fn acknowledged_messages_survive_postgresql_crashes_and_their_seqs_are_never_reused() {
    let crashes: usize = std::env::var("CRASHES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(8);
    let mut cluster = Cluster::start(
        2,
        &[("DB_ACQUIRE_TIMEOUT_SECS", "1"), ("BREAKER_OPEN_SECS", "1")],
    )
    .await;
    let (a, b) = cluster.one_on_each_replica("crashes", "sa", "sb").await;
    let web = cluster.http(1).connect("web").await;
    cluster.http(1).command(&web, "/join crashes").await;
    let watcher = cluster.http(0).connect("watcher").await;
    let mut watch = cluster
        .http(0)
        .stream(&format!("/api/messages/crashes?sessionId={watcher}"), None)
        .await;
    watch.expect("connected").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_a = tokio::spawn(keep_sending(a, "crashes", "sa", "a", stop.clone()));
    let tcp_b = tokio::spawn(keep_sending(b, "crashes", "sb", "b", stop.clone()));
    let http = {
        let (http, stop) = (cluster.http(1), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let content = format!("h-{n}");
                let (status, body) = http
                    .post(
                        "/api/message",
                        json!({ "sessionId": web, "content": content, "clientMessageId": content }),
                    )
                    .await;
                if status == StatusCode::OK {
                    acked.push((body["data"]["seq"].as_i64().unwrap(), content));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            acked
        })
    };
    // What a browser watching the room was shown, (seq, content).
    let shown = tokio::spawn(async move {
        let mut shown = Vec::new();
        while let Some(event) = watch.try_next().await {
            if event.event == "message" {
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                shown.push((
                    data["seq"].as_i64().unwrap(),
                    data["content"].as_str().unwrap().to_owned(),
                ));
            }
        }
        shown
    });
    for _ in 0..crashes {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.pg.crash();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.pg.resume();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (tcp_a, tcp_b, http) = (
        tcp_a.await.unwrap(),
        tcp_b.await.unwrap(),
        http.await.unwrap(),
    );
    let db = cluster.db().await;
    let store = stored(&db, "crashes").await;
    let contents: HashMap<&str, i64> = store.iter().map(|(seq, c)| (c.as_str(), *seq)).collect();
    for content in tcp_a.iter().chain(&tcp_b) {
        assert!(
            contents.contains_key(content.as_str()),
            "acknowledged {content} is not in the store"
        );
    }
    for (seq, content) in &http {
        assert_eq!(
            store.get(seq),
            Some(content),
            "acknowledged {content} (seq {seq}) is not what the store has there"
        );
    }
    assert!(
        tcp_a.len() + tcp_b.len() + http.len() > 30 * crashes / 4,
        "traffic went on between the crashes"
    );
    // Nothing shown was taken back, and no seq shown was given to another message afterwards.
    drop(cluster);
    let shown = shown.await.unwrap();
    for (seq, content) in &shown {
        assert_eq!(
            store.get(seq),
            Some(content),
            "seq {seq} was shown as {content}"
        );
    }
    // For the record (docs/RELIABILITY.md; run with CRASHES=25 and --no-capture).
    eprintln!(
        "{crashes} crashes: {} acknowledged over TCP and {} over HTTP, all stored; {} shown to \
         the watcher, none taken back",
        tcp_a.len() + tcp_b.len(),
        http.len(),
        shown.len()
    );
}

#[tokio::test]
async fn a_half_open_breaker_lets_one_probe_through_and_fails_the_rest_fast() {
    let cluster = Cluster::start(
        1,
        &[
            ("BREAKER_FAILURES", "1"),
            ("BREAKER_OPEN_SECS", "1"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "1"),
            ("DB_STATEMENT_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(Client::login(cluster.tcp(0), &format!("c{i}")).await);
    }
    cluster.pg.pause(true);
    // A stalled database: the first call waits out its timeout and opens the breaker.
    clients[0].send("/rooms").await;
    clients[0]
        .expect("Error: Service temporarily unavailable")
        .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Half-open: one call goes through as a probe (and waits); the others must not.
    let started = Instant::now();
    for client in &mut clients {
        client.send("/rooms").await;
    }
    let answered = futures::future::join_all(clients.iter_mut().map(|client| async move {
        client
            .expect("Error: Service temporarily unavailable")
            .await;
        started.elapsed()
    }))
    .await;
    cluster.pg.pause(false);
    let slow = answered
        .iter()
        .filter(|took| **took > Duration::from_millis(600))
        .count();
    assert!(
        slow <= 1,
        "{slow} of 4 callers waited for the stalled database"
    );
}

#[tokio::test]
async fn a_retried_send_with_its_client_message_id_posts_once_on_any_replica() {
    let cluster = Cluster::start(2, &[]).await;
    let mut member = Client::login(cluster.tcp(0), "member").await;
    member.create("retries").await;
    let (a, b) = (cluster.http(0), cluster.http(1));
    let web = a.connect("web").await;
    a.command(&web, "/join retries").await;
    let first = a
        .post(
            "/api/message",
            json!({ "sessionId": web, "content": "once", "clientMessageId": "k-1" }),
        )
        .await;
    let again = b
        .post(
            "/api/message",
            json!({ "sessionId": web, "content": "once", "clientMessageId": "k-1" }),
        )
        .await;
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(first, again, "the retry answers with the original");
    // The header is the same key.
    let header = reqwest::Client::new()
        .post(b.url("/api/message"))
        .header("Idempotency-Key", "k-1")
        .json(&json!({ "sessionId": web, "content": "once" }))
        .send()
        .await
        .unwrap();
    assert_eq!(header.json::<serde_json::Value>().await.unwrap(), first.1);
    // Another session's k-1 is another message.
    let other = b.connect("other").await;
    b.command(&other, "/join retries").await;
    let (status, theirs) = b
        .post(
            "/api/message",
            json!({ "sessionId": other, "content": "theirs", "clientMessageId": "k-1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(theirs["data"]["seq"], first.1["data"]["seq"]);
    // A retry after the session moved on is still the original, in its own room.
    a.command(&web, "/create elsewhere").await;
    let moved = b
        .post(
            "/api/message",
            json!({ "sessionId": web, "content": "once", "clientMessageId": "k-1" }),
        )
        .await;
    assert_eq!(moved, first);
    // And after it left every room (SPEC §4: the original reply, nothing posted).
    a.command(&web, "/leave").await;
    let left = b
        .post(
            "/api/message",
            json!({ "sessionId": web, "content": "once", "clientMessageId": "k-1" }),
        )
        .await;
    assert_eq!(left, first);
    // Events published by two replicas may come in either order; the messages in theirs.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(member.line().await);
    }
    let chat: Vec<&String> = seen.iter().filter(|l| l.starts_with("[retries]")).collect();
    assert_eq!(chat, ["[retries] web: once", "[retries] other: theirs"]);
    for event in [
        "web joined retries",
        "web left retries",
        "other joined retries",
    ] {
        assert!(seen.contains(&format!("[system] {event}")), "{seen:?}");
    }
    let db = cluster.db().await;
    assert_eq!(
        stored(&db, "retries").await.values().collect::<Vec<_>>(),
        ["once", "theirs"]
    );
}

#[tokio::test]
async fn a_drain_answers_every_message_the_client_sent_before_its_notice() {
    let cluster = Cluster::start(1, &[]).await;
    let mut nc = Client::login(cluster.tcp(0), "nc").await;
    nc.create("drain").await;
    // The database stalls with the messages on their way in: their acknowledgements are still
    // outstanding when the drain begins.
    cluster.pg.pause(true);
    let burst: String = (0..20).map(|i| format!("m{i}\n")).collect();
    nc.send_raw(burst.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&cluster.replicas[0].process, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pg.pause(false);
    let rest = String::from_utf8(nc.until_closed().await).unwrap();
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"[system] Server restarting, please reconnect")
    );
    let echoed: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[drain] nc: "))
        .collect();
    let db = cluster.db().await;
    let store = stored(&db, "drain").await;
    assert_eq!(
        store.values().map(String::as_str).collect::<Vec<_>>(),
        echoed,
        "every stored message was echoed before the notice, and only those"
    );
    assert_eq!(
        echoed.len() + lines.iter().filter(|l| l.starts_with("Error: ")).count(),
        20,
        "each message was answered: echoed or refused"
    );
}

#[tokio::test]
async fn a_stalled_database_stops_neither_cross_pod_dms_nor_presence() {
    let mut cluster = Cluster::start(2, &[("DB_STATEMENT_TIMEOUT_SECS", "30")]).await;
    let (_ann, mut bob) = cluster.one_on_each_replica("stall", "ann", "bob").await;
    let mut carl = Client::login(cluster.tcp(0), "carl").await;
    // The database stalls; then Valkey restarts, so every replica must catch up on what it may
    // have missed (from the stalled database) and re-register its users (in Valkey).
    cluster.pg.pause(true);
    cluster.valkey.stop();
    cluster.valkey.resume();
    let back = Instant::now();
    // A DM between replicas needs neither the database nor a caught-up room.
    loop {
        carl.send("/dm bob the database is stuck, not us").await;
        let reply = carl.line().await;
        if reply == "[DM to bob] the database is stuck, not us" {
            break;
        }
        assert!(reply.starts_with("Error: "), "{reply}");
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "bob could not be reached: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut line = bob.line().await;
    while line.starts_with("[system]") {
        line = bob.line().await;
    }
    assert_eq!(line, "[DM from carl] the database is stuck, not us");
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "the DM took {:?}",
        back.elapsed()
    );
    // Past PRESENCE_TTL (2 s) bob's claim is renewed still. (A free name would be claimed and
    // then wait on the stalled database; a taken one is refused at once.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = cluster.http(0);
    let probe = http.post("/api/connect", json!({ "nickname": "bob" }));
    let refused = tokio::time::timeout(Duration::from_secs(1), probe).await;
    cluster.pg.pause(false);
    assert_eq!(
        refused.map(|(status, _)| status).ok(),
        Some(StatusCode::CONFLICT),
        "bob's nickname was free while bob was online"
    );
}

#[tokio::test]
async fn concurrent_nick_and_join_of_a_browser_session_both_take_effect() {
    let cluster = Cluster::start(2, &[("RATE_LIMIT_PER_SEC", "1000")]).await;
    let mut setup = Client::login(cluster.tcp(0), "setup").await;
    for room in ["north", "south"] {
        setup.create(room).await;
    }
    let (a, b) = (cluster.http(0), cluster.http(1));
    let web = a.connect("w0").await;
    for round in 1..=20 {
        let (nick, room) = (format!("w{round}"), ["north", "south"][round % 2]);
        let old = format!("w{}", round - 1);
        let (rename, join) = (format!("/nick {nick}"), format!("/join {room}"));
        let (renamed, joined) = tokio::join!(a.command(&web, &rename), b.command(&web, &join));
        assert_eq!(renamed, format!("You are now known as {nick}"));
        assert!(
            joined.starts_with(&format!("Joined room: {room}")),
            "{joined}"
        );
        let posted = a.message(&web, &format!("round {round}")).await;
        assert_eq!(
            posted["room"], room,
            "round {round}: /join answered, the next message went elsewhere"
        );
        let history = b.get(&format!("/api/rooms/{room}/history?limit=1")).await.1;
        assert_eq!(
            history["data"]["messages"][0]["user"],
            nick.as_str(),
            "round {round}"
        );
        let (taken, _) = b.post("/api/connect", json!({ "nickname": nick })).await;
        assert_eq!(
            taken,
            StatusCode::CONFLICT,
            "round {round}: the new name is held"
        );
        let (free, body) = b.post("/api/connect", json!({ "nickname": old })).await;
        assert_eq!(
            free,
            StatusCode::OK,
            "round {round}: the old name is free: {body}"
        );
        b.post(
            "/api/disconnect",
            json!({ "sessionId": body["data"]["sessionId"] }),
        )
        .await;
    }
}

#[tokio::test]
async fn after_a_valkey_restart_live_users_keep_their_nicknames_and_their_presence() {
    let mut cluster = Cluster::start(2, &[("PRESENCE_TTL_SECS", "3")]).await;
    let (mut ann, _bob) = cluster.one_on_each_replica("lobby", "ann", "bob").await;
    cluster.valkey.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.valkey.resume();
    let back = Instant::now();
    // From the moment Valkey answers again, neither name can be taken, on either replica…
    let mut listed = false;
    while back.elapsed() < Duration::from_secs(5) {
        for replica in 0..2 {
            for nick in ["ann", "bob"] {
                let (status, body) = cluster
                    .http(replica)
                    .post("/api/connect", json!({ "nickname": nick }))
                    .await;
                assert_ne!(
                    status,
                    StatusCode::OK,
                    "{nick} was taken on replica {replica} {:?} after the restart: {body}",
                    back.elapsed()
                );
            }
        }
        // …and within PRESENCE_TTL both are listed again.
        ann.send("/list").await;
        let mut line = ann.line().await;
        while line.starts_with("[system]") {
            line = ann.line().await;
        }
        listed |= line == "Users in lobby: ann, bob";
        if listed && back.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "presence did not come back within PRESENCE_TTL");
}

#[tokio::test]
async fn a_long_valkey_outage_never_leaves_a_connected_users_nickname_free() {
    let cluster = Cluster::start(2, &[("PRESENCE_TTL_SECS", "3")]).await;
    let (mut ann, mut bob) = cluster.one_on_each_replica("lobby", "ann", "bob").await;
    cluster.valkey.pause(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.valkey.pause(false);
    // Past PRESENCE_TTL the replicas cannot vouch for their users any more: a user is either told
    // and disconnected, or keeps its name.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (client, nick) in [(&mut ann, "ann"), (&mut bob, "bob")] {
        client.send("/help").await;
        let mut kicked = false;
        loop {
            let line = client.raw_line().await;
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8_lossy(&line);
            kicked |= line.starts_with("[system] Disconnected");
            if line.starts_with("Available commands") {
                break;
            }
        }
        if !kicked {
            let (status, _) = cluster
                .http(0)
                .post("/api/connect", json!({ "nickname": nick }))
                .await;
            assert_ne!(
                status,
                StatusCode::OK,
                "{nick} is connected and its name was free"
            );
        }
    }
}

#[tokio::test]
async fn a_browser_joining_a_room_with_a_long_past_replays_nothing_to_its_members() {
    let cluster = Cluster::start(2, &[]).await;
    plant(&cluster.db().await, "old", 3000, 20).await;
    let mut m0 = Client::login(cluster.tcp(0), "m0").await;
    let mut m1 = Client::login(cluster.tcp(1), "m1").await;
    assert_eq!(m0.join("old").await.len(), 10);
    m1.join("old").await;
    m0.expect("[system] m1 joined old").await;
    let web = cluster.http(0).connect("web").await;
    cluster.http(1).command(&web, "/join old").await;
    // The join reaches m0 over the bus, and room events are not ordered with messages: m0 has
    // seen it before it speaks, so each member's next line is the message, nothing replayed.
    m0.expect("[system] web joined old").await;
    m1.expect("[system] web joined old").await;
    m0.send("after the join").await;
    for member in [&mut m0, &mut m1] {
        member.expect("[old] m0: after the join").await;
    }
}

#[tokio::test]
async fn a_join_on_a_replica_that_no_longer_carries_the_room_shows_its_current_history() {
    let cluster = Cluster::start(2, &[]).await;
    let mut bob = Client::login(cluster.tcp(1), "bob").await;
    bob.create("here").await;
    bob.send("one").await;
    bob.expect("[here] bob: one").await;
    // A browser joins through replica 0, where nobody else is in the room.
    let a = cluster.http(0);
    let first = a.connect("first").await;
    a.command(&first, "/join here").await;
    bob.expect("[system] first joined here").await;
    for text in ["two", "three"] {
        bob.send(text).await;
        bob.expect(&format!("[here] bob: {text}")).await;
    }
    let second = a.connect("second").await;
    let reply = a.command(&second, "/join here").await;
    assert_eq!(
        reply,
        "Joined room: here\n--- Recent Messages ---\n[here] bob: one\n[here] bob: two\n[here] bob: three\n---"
    );
}

#[tokio::test]
async fn a_lost_publish_of_a_rooms_last_message_reaches_every_member_without_another() {
    let cluster = Cluster::start(2, &[]).await;
    let (mut ann, mut bob) = cluster.one_on_each_replica("quiet", "ann", "bob").await;
    let db = cluster.db().await;
    sqlx::query(
        "WITH r AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE name = 'quiet' RETURNING id, last_seq)
         INSERT INTO messages (room_id, seq, nickname, content, created_at)
         SELECT id, last_seq, 'ghost', 'the last word', now() FROM r",
    )
    .execute(&db)
    .await
    .unwrap();
    // Nobody says anything more: the replicas find it on their own.
    ann.expect("[quiet] ghost: the last word").await;
    bob.expect("[quiet] ghost: the last word").await;
}

#[tokio::test]
async fn an_events_stream_resumed_with_an_id_from_the_previous_room_gets_a_reset_then_every_message()
 {
    let cluster = Cluster::start(1, &[]).await;
    let http = cluster.http(0);
    let mut nc = Client::login(cluster.tcp(0), "nc").await;
    nc.create("busy").await;
    for i in 0..30 {
        nc.send(&format!("b{i}")).await;
        nc.expect(&format!("[busy] nc: b{i}")).await;
    }
    nc.create("calm").await;
    let web = http.connect("web").await;
    http.command(&web, "/join busy").await;
    let mut events = http
        .stream(&format!("/api/events?sessionId={web}"), None)
        .await;
    events.expect("connected").await;
    let mut second = Client::login(cluster.tcp(0), "other").await;
    second.join("busy").await;
    second.send("seen in busy").await;
    let last_id: i64 = loop {
        let event = events.next().await;
        if event.event == "message" {
            break event.id.parse().unwrap();
        }
    };
    drop(events);
    http.command(&web, "/join calm").await;
    // EventSource reconnects with the last id it saw — busy's 31 — now that the session is in calm.
    let mut resumed = http
        .stream(&format!("/api/events?sessionId={web}"), Some(last_id))
        .await;
    assert_eq!(resumed.expect("connected").await["room"], "calm");
    for i in 0..4 {
        nc.send(&format!("c{i}")).await;
    }
    let mut contents = Vec::new();
    let mut reset = false;
    while contents.len() < 4 {
        let event = resumed.next().await;
        match event.event.as_str() {
            "reset" => reset = true,
            "message" => contents.push(
                serde_json::from_str::<serde_json::Value>(&event.data).unwrap()["content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            _ => {}
        }
    }
    assert!(
        reset,
        "a position from another room is not resumed silently"
    );
    assert_eq!(contents, ["c0", "c1", "c2", "c3"]);
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn twenty_streams_resuming_far_back_arrive_intact_in_bounded_memory() {
    let cluster = Cluster::start(1, &[]).await;
    // 9,000 messages of 2 KB: 360 MB replayed over twenty streams whose readers start late.
    plant(&cluster.db().await, "archive", 9_000, 2000).await;
    let http = cluster.http(0);
    let pid = cluster.replicas[0].process.id().unwrap();
    let before = rss(pid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let mut readers = Vec::new();
    for i in 0..20 {
        let web = http.connect(&format!("r{i}")).await;
        let mut stream = http
            .stream(&format!("/api/messages/archive?sessionId={web}"), Some(0))
            .await;
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stream.expect("connected").await;
            for seq in 1..=9_000 {
                let event = stream.next().await;
                assert_eq!(event.event, "message", "{event:?}");
                assert_eq!(event.id, seq.to_string());
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let grew = peak.await.unwrap().saturating_sub(before);
    // Pages and bounded queues, not backlogs: far below the 360 MB replayed.
    assert!(grew < 150 << 20, "the server grew by {} MB", grew >> 20);
}

#[tokio::test]
async fn a_stream_resuming_across_a_restore_of_the_store_gets_a_reset_not_a_silent_skip() {
    let pg = crate::services::postgres::Postgres::start();
    let live = pg.create_database().await;
    let serve = |url: String| async move {
        start_server_http(&[("DATABASE_URL", url.as_str()), ("RATE_LIMIT_BURST", "1000")]).await
    };
    let (mut server, tcp, http) = serve(live.clone()).await;
    let mut nc = Client::login(tcp, "nc").await;
    nc.create("kept").await;
    for i in 1..=7 {
        nc.send(&format!("m{i}")).await;
        nc.expect(&format!("[kept] nc: m{i}")).await;
    }
    drop(nc);
    signal(&server, "-TERM");
    server.wait().await.unwrap();
    // The backup: the database as it is now, seven messages.
    let backup = pg.create_database().await;
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    let name = backup.rsplit('/').next().unwrap().to_owned();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let source = live.rsplit('/').next().unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {source}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    // Three more, seen by a browser, whose last id is then 10.
    let (mut server, tcp, http_addr) = serve(live.clone()).await;
    let _ = http;
    let web = Http::new(http_addr);
    let session = web.connect("web").await;
    let (mut stream, epoch) = web
        .stream_with_cookie(
            &format!("/api/messages/kept?sessionId={session}"),
            Some(7),
            None,
        )
        .await;
    stream.expect("connected").await;
    let mut nc = Client::login(tcp, "nc").await;
    nc.join("kept").await;
    for i in 8..=10 {
        nc.send(&format!("m{i}")).await;
        assert_eq!(next_message(&mut stream).await["seq"], i);
    }
    drop((nc, stream));
    signal(&server, "-TERM");
    server.wait().await.unwrap();
    // The restore: the store goes back to the backup, and life goes on from there.
    let (_server, tcp, http_addr) = serve(backup).await;
    let web = Http::new(http_addr);
    let mut nc = Client::login(tcp, "nc").await;
    nc.join("kept").await;
    for text in ["new 8", "new 9", "new 10", "new 11"] {
        nc.send(text).await;
        nc.expect(&format!("[kept] nc: {text}")).await;
    }
    let session = web.connect("web").await;
    let (mut resumed, _) = web
        .stream_with_cookie(
            &format!("/api/messages/kept?sessionId={session}"),
            Some(10),
            epoch.as_deref(),
        )
        .await;
    resumed.expect("connected").await;
    resumed.expect("reset").await;
    let mut contents = Vec::new();
    while contents.last().map(String::as_str) != Some("new 11") {
        let data = next_message(&mut resumed).await;
        contents.push(data["content"].as_str().unwrap().to_owned());
    }
    assert!(
        contents.ends_with(&[
            "new 8".into(),
            "new 9".into(),
            "new 10".into(),
            "new 11".into()
        ]),
        "the messages after the restore are all shown: {contents:?}"
    );
}

/// Rooms busy (35 messages, seqs 1..=35) and calm (30), written by the returned netcat user, who
/// stays in calm.
async fn busy_and_calm(cluster: &Cluster) -> Client {
    let mut nc = Client::login(cluster.tcp(0), "nc").await;
    nc.create("busy").await;
    for i in 0..35 {
        nc.send(&format!("b{i}")).await;
        nc.expect(&format!("[busy] nc: b{i}")).await;
    }
    nc.create("calm").await;
    for i in 0..30 {
        nc.send(&format!("c{i}")).await;
        nc.expect(&format!("[calm] nc: c{i}")).await;
    }
    nc
}

/// Busy and calm, and a browser session `web` in calm with its events stream open there (told
/// it is in calm): the netcat user, the session, the stream and the cookies it set.
async fn a_stream_in_calm(cluster: &Cluster, http: &Http) -> (Client, String, Sse, Option<String>) {
    let mut nc = busy_and_calm(cluster).await;
    let web = http.connect("web").await;
    http.command(&web, "/join calm").await;
    nc.expect("[system] web joined calm").await;
    let (mut events, cookie) = http
        .stream_with_cookie(&format!("/api/events?sessionId={web}"), None, None)
        .await;
    assert_eq!(events.expect("connected").await["room"], "calm");
    (nc, web, events, cookie)
}

/// Calm goes on (`more`: c30..c39, seqs 31..=40, unless the test sent some of them already);
/// then `web`'s session stream resumes with busy's last id, 35 — which calm also has — and the
/// cookies it was given. It must say `reset` in calm, then show every one of `kept`.
async fn resume_in_calm_with_busys_35(
    http: &Http,
    nc: &mut Client,
    web: &str,
    cookie: Option<&str>,
    more: std::ops::Range<usize>,
    kept: &[&str],
) {
    let last = format!("c{}", more.end - 1);
    for i in more {
        nc.send(&format!("c{i}")).await;
        nc.expect(&format!("[calm] nc: c{i}")).await;
    }
    let (mut resumed, _) = http
        .stream_with_cookie(&format!("/api/events?sessionId={web}"), Some(35), cookie)
        .await;
    assert_eq!(resumed.expect("connected").await["room"], "calm");
    resumed.expect("reset").await;
    let mut contents = Vec::new();
    while contents.last() != Some(&last) {
        contents.push(
            next_message(&mut resumed).await["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        kept.iter().all(|c| contents.iter().any(|s| s == c)),
        "nothing after the join is skipped: {contents:?}"
    );
}

/// A browser session `web` in busy whose events stream opened there and is down again: the
/// session and the cookies the stream set.
async fn a_session_whose_stream_opened_in_busy(http: &Http) -> (String, Option<String>) {
    let web = http.connect("web").await;
    http.command(&web, "/join busy").await;
    let (mut events, cookie) = http
        .stream_with_cookie(&format!("/api/events?sessionId={web}"), None, None)
        .await;
    events.expect("connected").await;
    (web, cookie)
}

#[tokio::test]
async fn an_events_stream_resumed_with_a_plausible_id_from_the_room_it_started_in_gets_a_reset() {
    let cluster = Cluster::start(1, &[]).await;
    let http = cluster.http(0);
    let mut nc = busy_and_calm(&cluster).await;
    let (web, cookie) = a_session_whose_stream_opened_in_busy(&http).await;
    // The session moves while its stream is down.
    http.command(&web, "/join calm").await;
    nc.expect("[system] web joined calm").await;
    let kept = ["c31", "c32", "c33", "c34", "c35"];
    resume_in_calm_with_busys_35(&http, &mut nc, &web, cookie.as_deref(), 30..40, &kept).await;
}

#[tokio::test]
async fn an_events_stream_resumed_with_another_rooms_id_equal_to_its_join_position_gets_a_reset() {
    let cluster = Cluster::start(1, &[]).await;
    let http = cluster.http(0);
    let mut nc = busy_and_calm(&cluster).await;
    let (web, cookie) = a_session_whose_stream_opened_in_busy(&http).await;
    // Calm reaches 35 too, and the session joins it there while its stream is down: busy's
    // last id is, by chance, the session's join position in calm — a number, not a place.
    for i in 30..35 {
        nc.send(&format!("c{i}")).await;
        nc.expect(&format!("[calm] nc: c{i}")).await;
    }
    http.command(&web, "/join calm").await;
    nc.expect("[system] web joined calm").await;
    let kept = ["c30", "c34", "c35", "c39"];
    resume_in_calm_with_busys_35(&http, &mut nc, &web, cookie.as_deref(), 35..40, &kept).await;
}

#[tokio::test]
async fn an_events_stream_that_followed_its_session_away_and_back_resumed_with_the_other_rooms_id_gets_a_reset()
 {
    let cluster = Cluster::start(1, &[]).await;
    let http = cluster.http(0);
    // The stream opens in calm (its cookie says so) and follows the session to busy, where it
    // is told its position: 35.
    let (mut nc, web, mut events, cookie) = a_stream_in_calm(&cluster, &http).await;
    http.command(&web, "/join busy").await;
    nc.expect("[system] web left calm").await;
    assert_eq!(events.expect("connected").await["room"], "busy");
    // It drops before it is told of the way back to calm.
    drop(events);
    http.command(&web, "/join calm").await;
    nc.expect("[system] web joined calm").await;
    let kept = ["c30", "c31", "c32", "c33", "c34"];
    resume_in_calm_with_busys_35(&http, &mut nc, &web, cookie.as_deref(), 30..40, &kept).await;
}

#[tokio::test]
async fn an_events_stream_resumed_after_a_rename_goes_on_where_it_was() {
    let cluster = Cluster::start(1, &[]).await;
    let http = cluster.http(0);
    let (mut nc, web, mut events, cookie) = a_stream_in_calm(&cluster, &http).await;
    nc.send("c30").await;
    nc.expect("[calm] nc: c30").await;
    assert_eq!(next_message(&mut events).await["seq"], 31);
    drop(events);
    // A rename changes the session, not the room its stream was in.
    http.command(&web, "/nick webby").await;
    nc.expect("[system] web is now known as webby").await;
    nc.send("c31").await;
    nc.expect("[calm] nc: c31").await;
    let (mut resumed, _) = http
        .stream_with_cookie(
            &format!("/api/events?sessionId={web}"),
            Some(31),
            cookie.as_deref(),
        )
        .await;
    resumed.expect("connected").await;
    let next = resumed.next().await;
    assert_eq!(next.event, "message", "no reset: {next:?}");
    assert_eq!(next.id, "32");
}

#[tokio::test]
async fn a_browser_with_an_open_stream_keeps_its_session_and_name_through_a_valkey_restart() {
    let mut cluster = Cluster::start(2, &[("PRESENCE_TTL_SECS", "3")]).await;
    let mut nc = Client::login(cluster.tcp(0), "nc").await;
    nc.create("lobby").await;
    let (a, b) = (cluster.http(0), cluster.http(1));
    let web = a.connect("web").await;
    a.command(&web, "/join lobby").await;
    nc.expect("[system] web joined lobby").await;
    let mut events = b
        .stream(&format!("/api/events?sessionId={web}"), None)
        .await;
    events.expect("connected").await;
    cluster.valkey.stop();
    cluster.valkey.resume();
    // The replica holding its stream brings the session back; meanwhile, and after, its name is
    // never free.
    let back = Instant::now();
    loop {
        for http in [&a, &b] {
            let (status, body) = http
                .post("/api/connect", json!({ "nickname": "web" }))
                .await;
            assert_ne!(
                status,
                StatusCode::OK,
                "web was free {:?} after the restart: {body}",
                back.elapsed()
            );
        }
        let (status, body) = a
            .post(
                "/api/message",
                json!({ "sessionId": web, "content": "still here" }),
            )
            .await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the session is not back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next_message(&mut events).await["content"], "still here");
    nc.expect("[lobby] web: still here").await;
}

#[tokio::test]
async fn a_request_the_database_holds_past_the_time_limit_is_answered_in_the_envelope() {
    // Database timeouts longer than the HTTP request limit (10 s): the limit answers first.
    let cluster = Cluster::start(
        1,
        &[
            ("DB_STATEMENT_TIMEOUT_SECS", "60"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let http = cluster.http(0);
    let web = http.connect("held").await;
    http.command(&web, "/create held").await;
    cluster.pg.pause(true);
    let body = json!({"sessionId": web, "content": "in limbo", "clientMessageId": "limbo-1"});
    let (sent, listed) = tokio::join!(http.post("/api/message", body), http.get("/api/rooms"));
    cluster.pg.pause(false);
    // The message may have been stored: "unconfirmed", and a retry with its id settles it.
    assert_eq!(sent.0, StatusCode::GATEWAY_TIMEOUT, "{}", sent.1);
    assert_eq!(sent.1["success"], false);
    assert_eq!(
        sent.1["error"],
        "Could not confirm that the message was stored; it may have been"
    );
    assert_eq!(listed.0, StatusCode::SERVICE_UNAVAILABLE, "{}", listed.1);
    assert_eq!(listed.1["error"], "Service temporarily unavailable");
    let retry = json!({"sessionId": web, "content": "in limbo", "clientMessageId": "limbo-1"});
    let (status, posted) = http.post("/api/message", retry).await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    let db = cluster.db().await;
    assert_eq!(
        stored(&db, "held").await.values().collect::<Vec<_>>(),
        ["in limbo"]
    );
}
