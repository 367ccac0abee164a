//! SPEC §5 on PostgreSQL: durable before acknowledged, gapless seqs with several writers, history
//! cache, retention, archive/replay, and behaviour while the database is down.

use std::time::Duration;

use baby_discord::core::model::ChatMessage;
use baby_discord::core::names::RoomName;
use baby_discord::core::ports::Store;
use baby_discord::store::postgres::PgStore;
use sqlx::Row;
use tokio::process::Command;

use crate::helpers::*;
use crate::services::postgres::Postgres;

async fn spawn_app_on(url: &str) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |c| {
        c.database_url = Some(url);
        c.rate_limit_burst = std::num::NonZeroU32::new(10_000).unwrap();
        c.rate_limit_per_sec = std::num::NonZeroU32::new(10_000).unwrap();
    })
    .await
}

fn timeouts() -> baby_discord::store::postgres::Timeouts {
    baby_discord::store::postgres::Timeouts {
        acquire: Duration::from_secs(5),
        statement: Duration::from_secs(5),
    }
}

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url).await.unwrap()
}

/// (seq, content) of every stored message of a room, by seq.
async fn stored(url: &str, room: &str) -> Vec<(i64, String)> {
    sqlx::query(
        "SELECT m.seq, m.content FROM messages m JOIN rooms r ON r.id = m.room_id
         WHERE lower(r.name) = lower($1) ORDER BY m.seq",
    )
    .bind(room)
    .fetch_all(&pool(url).await)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

#[tokio::test]
async fn rooms_and_history_survive_a_restart() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_on(&url).await;
    let mut alice = app.login("alice").await;
    alice.create("Durable").await;
    for i in 1..=12 {
        alice.send(&format!("m{i}")).await;
        alice.expect(&format!("[Durable] alice: m{i}")).await;
    }
    drop(alice);
    app.stop().await;

    let app = spawn_app_on(&url).await;
    let mut bob = app.login("bob").await;
    bob.send("/rooms").await;
    bob.expect_lines(&["Available rooms:", "  Durable (0 online)"])
        .await;
    let expected: Vec<String> = (3..=12).map(|i| format!("[Durable] alice: m{i}")).collect();
    assert_eq!(bob.join("Durable").await, expected);
    bob.send("after the restart").await;
    bob.expect("[Durable] bob: after the restart").await;
    assert_eq!(
        stored(&url, "durable").await.last().unwrap(),
        &(13, "after the restart".to_owned())
    );
}

#[tokio::test]
async fn two_servers_writing_one_room_keep_seqs_gapless_and_ordered() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let (a, b) = (spawn_app_on(&url).await, spawn_app_on(&url).await);
    let mut owner = a.login("owner").await;
    owner.create("shared").await;
    let mut writers = Vec::new();
    for (i, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut c = app.login(&format!("w{i}")).await;
        c.join("shared").await;
        writers.push(c);
    }
    let per_writer = 250;
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let burst: String = (0..per_writer).map(|n| format!("w{i}-{n}\n")).collect();
                c.send_raw(burst.as_bytes()).await;
                // Each writer's own echoes come back in its order (its pod delivers what it stored).
                let mut n = 0;
                while n < per_writer {
                    let line = c.line().await;
                    if line.starts_with(&format!("[shared] w{i}: ")) {
                        assert_eq!(line, format!("[shared] w{i}: w{i}-{n}"));
                        n += 1;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rows = stored(&url, "shared").await;
    let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=4 * per_writer as i64).collect::<Vec<_>>(),
        "gapless, no duplicates"
    );
    for i in 0..4 {
        let mine: Vec<&String> = rows
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.starts_with(&format!("w{i}-")))
            .collect();
        let expected: Vec<String> = (0..per_writer).map(|n| format!("w{i}-{n}")).collect();
        assert_eq!(
            mine,
            expected.iter().collect::<Vec<_>>(),
            "each writer's messages in its order"
        );
    }
}

#[tokio::test]
async fn history_is_served_from_the_cache_after_the_first_join() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_on(&url).await;
    let mut alice = app.login("alice").await;
    alice.create("warm").await; // a miss: nothing cached yet for this room
    alice.send("hello").await;
    alice.expect("[warm] alice: hello").await;
    let mut bob = app.login("bob").await;
    assert_eq!(bob.join("warm").await, ["[warm] alice: hello"]); // a hit: fed by the message path
    let metrics = baby_discord::telemetry::metrics_handle().render();
    assert_eq!(
        total(&metrics, "chat_history_requests_total", r#"result="miss""#),
        1.0
    );
    assert_eq!(
        total(&metrics, "chat_history_requests_total", r#"result="hit""#),
        1.0
    );
}

#[tokio::test]
async fn the_store_pages_history_backwards_and_forwards() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_on(&url).await;
    let mut alice = app.login("alice").await;
    alice.create("pages").await;
    for i in 1..=6 {
        alice.send(&format!("p{i}")).await;
        alice.expect(&format!("[pages] alice: p{i}")).await;
    }
    let store = PgStore::connect(&url, 2, timeouts()).await.unwrap();
    let room = store
        .find_room(&RoomName::parse("PAGES").unwrap())
        .await
        .unwrap()
        .unwrap();
    let seqs = |v: Vec<ChatMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.messages_before(room.id, Some(5), 2).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        seqs(store.messages_before(room.id, None, 3).await.unwrap()),
        [4, 5, 6]
    );
    assert_eq!(
        seqs(store.messages_after(room.id, 4, 10).await.unwrap()),
        [5, 6]
    );
}

#[tokio::test]
async fn retention_deletes_only_messages_beyond_the_bound() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_on(&url).await;
    let mut alice = app.login("alice").await;
    alice.create("kept").await;
    alice.create("small").await;
    for i in 1..=3 {
        alice.send(&format!("s{i}")).await;
        alice.expect(&format!("[small] alice: s{i}")).await;
    }
    alice.join("kept").await;
    for i in 1..=12 {
        alice.send(&format!("k{i}")).await;
        alice.expect(&format!("[kept] alice: k{i}")).await;
    }
    let store = PgStore::connect(&url, 2, timeouts()).await.unwrap();
    // Bounded batches: 7 to delete, 4 at a time.
    assert_eq!(store.prune(5, 4).await.unwrap(), 4);
    assert_eq!(store.prune(5, 4).await.unwrap(), 3);
    assert_eq!(store.prune(5, 4).await.unwrap(), 0);
    let kept: Vec<i64> = stored(&url, "kept").await.iter().map(|(s, _)| *s).collect();
    assert_eq!(kept, [8, 9, 10, 11, 12]);
    assert_eq!(
        stored(&url, "small").await.len(),
        3,
        "rooms under the bound are untouched"
    );
}

#[tokio::test]
async fn every_acknowledged_message_survives_a_kill_9_of_the_server() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("RATE_LIMIT_PER_SEC", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ];
    let (mut server, addr) = start_server(&env).await;
    let mut alice = Client::login(addr, "alice").await;
    alice.create("burst").await;
    let burst: String = (0..2000).map(|i| format!("b{i}\n")).collect();
    alice.send_raw(burst.as_bytes()).await;
    // An echo is the acknowledgement: it is sent only after the commit. Kill as soon as a good
    // part of the burst is acknowledged, while the rest is still in flight.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 500 {
        acknowledged.push(
            alice
                .line()
                .await
                .trim_start_matches("[burst] alice: ")
                .to_owned(),
        );
    }
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    let rows = stored(&url, "burst").await;
    let contents: Vec<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    assert!(contents.len() >= acknowledged.len());
    assert_eq!(
        &contents[..acknowledged.len()],
        acknowledged.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=rows.len() as i64).collect::<Vec<_>>(),
        "no gap either"
    );

    // And a restarted server carries on from there.
    let (_server, addr) = start_server(&env).await;
    let mut bob = Client::login(addr, "bob").await;
    let history = bob.join("burst").await;
    assert_eq!(
        history.last().unwrap(),
        &format!("[burst] alice: {}", contents.last().unwrap())
    );
}

#[tokio::test]
async fn archive_then_replay_round_trips_and_replay_is_idempotent() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_on(&url).await;
    let mut alice = app.login("alice").await;
    alice.create("old").await;
    for i in 1..=5 {
        alice.send(&format!("o{i}")).await;
        alice.expect(&format!("[old] alice: o{i}")).await;
    }
    drop(alice);
    app.stop().await;
    let db = pool(&url).await;
    sqlx::query("UPDATE messages SET created_at = created_at - interval '10 days'")
        .execute(&db)
        .await
        .unwrap();
    let before: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, seq, content FROM messages ORDER BY seq")
            .fetch_all(&db)
            .await
            .unwrap();

    let dir = std::env::temp_dir().join(format!(
        "baby-discord-archive-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let admin = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baby-discord"));
        command
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("LOG_LEVEL", "warn")
            .args(args);
        command
    };
    let archived = admin(&[
        "archive",
        "--older-than-days",
        "1",
        "--dir",
        dir.to_str().unwrap(),
    ])
    .output()
    .await
    .unwrap();
    assert!(archived.status.success(), "{archived:?}");
    assert!(
        stored(&url, "old").await.is_empty(),
        "archived messages are deleted"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(file["room"], "old");
    assert!(file["archived_at"].is_string());
    assert_eq!(file["messages"].as_array().unwrap().len(), 5);
    for field in ["id", "user", "content", "created_at"] {
        assert!(
            file["messages"][0].get(field).is_some(),
            "messages carry {field}"
        );
    }

    let file_arg = files[0].to_str().unwrap();
    let replayed = admin(&["replay", file_arg]).output().await.unwrap();
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("5 message(s) restored"));
    let again = admin(&["replay", file_arg]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 message(s) restored"));
    let after: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, seq, content FROM messages ORDER BY seq")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(after, before, "same ids, seqs and contents");
    let _ = std::fs::remove_dir_all(&dir);

    // New messages continue after the replayed ones.
    let app = spawn_app_on(&url).await;
    let mut bob = app.login("bob").await;
    bob.join("old").await;
    bob.send("new").await;
    bob.expect("[old] bob: new").await;
    assert_eq!(
        stored(&url, "old").await.last().unwrap(),
        &(6, "new".to_owned())
    );
}

#[tokio::test]
async fn a_stopped_database_gives_clear_errors_and_service_resumes_when_it_is_back() {
    let mut pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_app_with({
        let url = url.clone();
        move |c| {
            c.database_url = Some(url);
            c.db_acquire_timeout_secs = 1;
        }
    })
    .await;
    let mut alice = app.login("alice").await;
    alice.create("flaky").await;
    alice.send("before").await;
    alice.expect("[flaky] alice: before").await;

    pg.stop();
    alice.send("during").await;
    alice.expect("Error: Service temporarily unavailable").await;
    alice.send("/help").await;
    alice.expect("Available commands:").await; // the connection is still open and served
    for _ in 0..9 {
        alice.line().await;
    }

    pg.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Nothing announces the database's return: retry at a pace under the rate limit.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    loop {
        pace.tick().await;
        alice.send("after").await;
        match alice.line().await.as_str() {
            "[flaky] alice: after" => break,
            "Error: Service temporarily unavailable" => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service never resumed"
        );
    }
    let contents: Vec<String> = stored(&url, "flaky")
        .await
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(contents.first().unwrap(), "before");
    assert!(
        !contents.contains(&"during".to_owned()),
        "a refused message is not stored"
    );
}

#[tokio::test]
async fn replicas_starting_together_on_a_fresh_database_all_come_up() {
    // As a Deployment's pods do on a new cluster: each one migrates at start-up, so they meet
    // in the migrations, including one that builds an index CONCURRENTLY.
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let starting = (0..3).map(|i| {
        let url = url.clone();
        async move {
            let instance = format!("replica-{i}");
            start_server_http(&[("DATABASE_URL", &url), ("INSTANCE_ID", &instance)]).await
        }
    });
    let replicas = futures::future::join_all(starting).await;
    for (_, tcp, _) in &replicas {
        let mut client = Client::login(*tcp, "early").await;
        client.send("/quit").await;
    }
}

/// The append is prepared once per connection and runs on a cached generic plan, made from the
/// statistics of the moment — on a fresh database, those of an empty table. Whatever they said,
/// an append finds stored keys through the key index: a plan that scanned `messages` would cost
/// every append the whole table (it did, until the lookup was written as a per-key probe).
#[tokio::test]
async fn appends_never_scan_the_messages_table_however_it_grew() {
    use baby_discord::core::model::NewMessage;
    use baby_discord::core::names::Nickname;

    let pg = Postgres::start();
    let url = pg.create_database().await;
    // One connection: the migrations (whose index builds count as scans) and the appends run on
    // the same backend, so its statistics reach the shared view together.
    let store = PgStore::connect(&url, 1, timeouts()).await.unwrap();
    store.migrate().await.unwrap();
    let user = Nickname::parse("alice").unwrap();
    let user_id = store.upsert_user(&user).await.unwrap();
    let room = RoomName::parse("big").unwrap();
    let room_id = store.create_room(&room).await.unwrap().unwrap().id;
    let batch = |n: usize| -> Vec<NewMessage> {
        (0..n)
            .map(|i| NewMessage {
                key: uuid::Uuid::new_v4(),
                client_keyed: false,
                room_id,
                room: room.clone(),
                user_id,
                user: user.clone(),
                content: format!("m{i}"),
                created_at: time::OffsetDateTime::now_utc(),
            })
            .collect()
    };
    let db = pool(&url).await;
    // Statistics reach the shared view when a backend flushes them (within seconds of going
    // idle): wait until they show this many inserts, and read the scans counted with them.
    let scans_once_inserted = |count: usize| {
        let db = db.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let row = sqlx::query(
                    "SELECT n_tup_ins, seq_scan FROM pg_stat_user_tables WHERE relname = 'messages'",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                let (inserted, scans): (i64, i64) = (row.get(0), row.get(1));
                if inserted >= count as i64 {
                    return scans;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the inserts never showed in the statistics"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // A table analysed while tiny (autovacuum does so after its first 50 rows), and enough
    // appends on it for PostgreSQL to settle on a generic plan costed for that size...
    let mut appended = 0;
    for _ in 0..10 {
        appended += store.append_messages(&batch(1)).await.unwrap().len();
    }
    sqlx::query("ANALYZE messages").execute(&db).await.unwrap();
    for _ in 0..10 {
        appended += store.append_messages(&batch(1)).await.unwrap().len();
    }
    let before = scans_once_inserted(appended).await;
    // ...then a table grown far past what that plan was costed for.
    for _ in 0..20 {
        appended += store.append_messages(&batch(500)).await.unwrap().len();
    }
    let after = scans_once_inserted(appended).await;
    assert_eq!(after - before, 0, "appends scanned the messages table");
}
