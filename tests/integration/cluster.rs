//! SPEC §5 "One cluster": three server processes sharing one PostgreSQL and one Valkey behave as
//! one server — delivery, order, presence, DMs, nicknames, HTTP sessions, a replica's death or
//! drain, and a Valkey restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Child;

use crate::helpers::*;
use crate::http_client::Http;
use crate::services::{postgres::Postgres, valkey::Valkey};

pub struct Cluster {
    pub pg: Postgres,
    pub database_url: String,
    pub valkey: Valkey,
    pub replicas: Vec<Replica>,
}

pub struct Replica {
    pub process: Child,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

pub const PRESENCE_TTL_SECS: &str = "2";

async fn cluster(size: usize) -> Cluster {
    Cluster::start(size, &[]).await
}

impl Cluster {
    /// `size` server processes on one PostgreSQL and one Valkey; `extra_env` overrides settings.
    pub async fn start(size: usize, extra_env: &[(&str, &str)]) -> Cluster {
        let pg = Postgres::start();
        let url = pg.create_database().await;
        let valkey = Valkey::start();
        let mut replicas = Vec::new();
        for i in 0..size {
            let instance = format!("replica-{i}");
            let valkey_url = valkey.url();
            let mut env = vec![
                ("DATABASE_URL", url.as_str()),
                ("VALKEY_URL", valkey_url.as_str()),
                ("INSTANCE_ID", instance.as_str()),
                ("PRESENCE_TTL_SECS", PRESENCE_TTL_SECS),
                ("RATE_LIMIT_BURST", "1000"),
                ("SHUTDOWN_GRACE_SECS", "5"),
            ];
            env.extend_from_slice(extra_env);
            let (process, tcp, http) = start_server_http(&env).await;
            replicas.push(Replica { process, tcp, http });
        }
        Cluster {
            pg,
            database_url: url,
            valkey,
            replicas,
        }
    }

    pub fn tcp(&self, i: usize) -> SocketAddr {
        self.replicas[i].tcp
    }

    pub fn http(&self, i: usize) -> Http {
        Http::new(self.replicas[i].http)
    }

    /// `creator` on replica 0 makes `room`, `joiner` on replica 1 joins it; both are logged in
    /// and the creator has seen the join.
    pub async fn one_on_each_replica(
        &self,
        room: &str,
        creator: &str,
        joiner: &str,
    ) -> (Client, Client) {
        let mut first = Client::login(self.tcp(0), creator).await;
        first.create(room).await;
        let mut second = Client::login(self.tcp(1), joiner).await;
        second.join(room).await;
        first
            .expect(&format!("[system] {joiner} joined {room}"))
            .await;
        (first, second)
    }

    /// A connection to the shared database, for what the tests read or plant directly.
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url).await.unwrap()
    }
}

#[tokio::test]
async fn clients_on_three_replicas_receive_every_message_in_one_order() {
    let cluster = cluster(3).await;
    let mut first = Client::login(cluster.tcp(0), "u0").await;
    first.create("everywhere").await;
    let mut clients = vec![first];
    for i in 1..3 {
        let mut c = Client::login(cluster.tcp(i), &format!("u{i}")).await;
        c.join("everywhere").await;
        clients.push(c);
    }
    // Wait for the joins to be seen, then everyone talks at once.
    // Two pods announce the two joins: u0 may see them in either order.
    let mut joins = [clients[0].line().await, clients[0].line().await];
    joins.sort();
    assert_eq!(
        joins,
        [
            "[system] u1 joined everywhere",
            "[system] u2 joined everywhere"
        ]
    );
    clients[1].expect("[system] u2 joined everywhere").await;
    for (i, c) in clients.iter_mut().enumerate() {
        let burst: String = (0..30).map(|n| format!("u{i}-{n}\n")).collect();
        c.send_raw(burst.as_bytes()).await;
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < 90 {
            seen.push(c.line().await);
        }
        orders.push(seen);
    }
    assert!(
        orders.iter().all(|o| o == &orders[0]),
        "one order on every replica"
    );
    for i in 0..3 {
        let mine: Vec<&String> = orders[0]
            .iter()
            .filter(|l| l.starts_with(&format!("[everywhere] u{i}: ")))
            .collect();
        let expected: Vec<String> = (0..30)
            .map(|n| format!("[everywhere] u{i}: u{i}-{n}"))
            .collect();
        assert_eq!(
            mine,
            expected.iter().collect::<Vec<_>>(),
            "each sender's messages, all of them, in its order"
        );
    }
}

#[tokio::test]
async fn list_rooms_dms_and_nicknames_work_across_replicas() {
    let cluster = cluster(3).await;
    let (mut ann, mut bob) = cluster.one_on_each_replica("shared", "ann", "bob").await;
    let mut cat = Client::login(cluster.tcp(2), "cat").await;
    cat.send("/list").await;
    cat.expect("Online users: ann, bob, cat").await;
    cat.send("/rooms").await;
    cat.expect_lines(&["Available rooms:", "  shared (2 online)"])
        .await;
    bob.send("/list").await;
    bob.expect("Users in shared: ann, bob").await;
    // A rename in a room leaves no trace of the old name anywhere.
    bob.send("/nick rob").await;
    bob.expect("You are now known as rob").await;
    ann.expect("[system] bob is now known as rob").await;
    cat.send("/list").await;
    cat.expect("Online users: ann, cat, rob").await;

    cat.send("/dm ANN hello from replica 2").await;
    cat.expect("[DM to ann] hello from replica 2").await;
    ann.expect("[DM from cat] hello from replica 2").await;

    // A nickname held on one replica is taken on every other.
    let mut dup = Client::connect(cluster.tcp(2)).await;
    dup.expect("Welcome to Baby Discord!").await;
    dup.expect_prompt().await;
    dup.send("Rob").await;
    dup.expect("Error: Nickname already in use: Rob").await;
    let (status, _) = cluster
        .http(0)
        .post("/api/connect", json!({ "nickname": "rob" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_http_session_made_on_one_replica_posts_on_another_and_streams_on_a_third() {
    let cluster = cluster(3).await;
    let (a, b, c) = (cluster.http(0), cluster.http(1), cluster.http(2));
    let mut nc = Client::login(cluster.tcp(1), "nc").await;
    nc.create("web").await;
    let session = a.connect("browser").await;
    let mut events = c
        .stream(&format!("/api/events?sessionId={session}"), None)
        .await;
    events.expect("connected").await;
    assert_eq!(
        b.command(&session, "/join web").await.lines().next(),
        Some("Joined room: web")
    );
    assert_eq!(
        events.expect("connected").await,
        json!({ "room": "web" }),
        "the stream on C follows the join made on B"
    );
    nc.expect("[system] browser joined web").await;
    let posted = b.message(&session, "posted on B").await;
    assert_eq!(posted["seq"], 1);
    nc.expect("[web] browser: posted on B").await;
    assert_eq!(events.expect("message").await["content"], "posted on B");
    nc.send("to the browser on C").await;
    assert_eq!(
        events.expect("message").await["content"],
        "to the browser on C"
    );
    nc.send("/dm browser psst").await;
    assert_eq!(events.expect("dm").await["content"], "psst");
}

#[tokio::test]
async fn a_killed_replicas_users_vanish_within_presence_ttl_and_nothing_acknowledged_is_lost() {
    let mut cluster = cluster(2).await;
    let (mut ann, mut doomed) = cluster
        .one_on_each_replica("fragile", "ann", "doomed")
        .await;
    for i in 0..20 {
        doomed.send(&format!("ack {i}")).await;
        doomed.expect(&format!("[fragile] doomed: ack {i}")).await;
    }
    for i in 0..20 {
        ann.expect(&format!("[fragile] doomed: ack {i}")).await;
    }
    // An HTTP session made on the replica about to die belongs to no replica: it stays.
    let web = cluster.http(1).connect("web").await;
    cluster.http(1).command(&web, "/join fragile").await;
    ann.expect("[system] web joined fragile").await;
    cluster.replicas[1].process.start_kill().unwrap();
    cluster.replicas[1].process.wait().await.unwrap();
    let killed = Instant::now();
    // Presence expires on its own (nothing tells the others): poll /list until it does.
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    loop {
        pace.tick().await;
        ann.send("/list").await;
        let mut line = ann.line().await;
        while line.starts_with("[fragile] doomed") {
            line = ann.line().await;
        }
        if line == "Users in fragile: ann, web" {
            break;
        }
        assert_eq!(line, "Users in fragile: ann, doomed, web");
        assert!(
            killed.elapsed() < Duration::from_secs(2 + 3),
            "still present {:?} after the kill",
            killed.elapsed()
        );
    }
    let mut later = Client::login(cluster.tcp(0), "later").await;
    let history = later.join("fragile").await;
    let expected: Vec<String> = (10..20)
        .map(|i| format!("[fragile] doomed: ack {i}"))
        .collect();
    assert_eq!(history, expected, "every acknowledged message is there");
    ann.expect("[system] later joined fragile").await;
    let (status, _) = cluster
        .http(0)
        .post("/api/connect", json!({ "nickname": "WEB" }))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the session still holds its name"
    );
    cluster.http(0).message(&web, "still here").await;
    ann.expect("[fragile] web: still here").await;
}

#[tokio::test]
async fn a_drained_replicas_clients_reconnect_elsewhere_and_resume() {
    let mut cluster = cluster(2).await;
    let (mut stay, mut mover) = cluster.one_on_each_replica("moving", "stay", "mover").await;
    mover.send("before").await;
    mover.expect("[moving] mover: before").await;
    stay.expect("[moving] mover: before").await;

    signal(&cluster.replicas[1].process, "-TERM");
    mover
        .expect("[system] Server restarting, please reconnect")
        .await;
    assert!(cluster.replicas[1].process.wait().await.unwrap().success());
    stay.send("while you moved").await;
    stay.expect("[system] mover left moving").await;
    stay.expect("[moving] stay: while you moved").await;

    let mut moved = Client::login(cluster.tcp(0), "mover").await;
    assert_eq!(
        moved.join("moving").await,
        ["[moving] mover: before", "[moving] stay: while you moved"]
    );
    moved.send("after").await;
    moved.expect("[moving] mover: after").await;
}

#[tokio::test]
async fn after_a_valkey_restart_delivery_resumes_and_what_was_sent_meanwhile_arrives_in_order() {
    let mut cluster = cluster(2).await;
    let (mut ann, mut bob) = cluster.one_on_each_replica("resilient", "ann", "bob").await;
    ann.send("m1").await;
    ann.expect("[resilient] ann: m1").await;
    bob.expect("[resilient] ann: m1").await;

    cluster.valkey.stop();
    // Stored (PostgreSQL is up) while the bus is down; the echoes come once it is back, filled
    // in from the store, in order, with what follows.
    ann.send("m2").await;
    ann.send("m3").await;
    cluster.valkey.resume();
    ann.send("m4").await;
    for expected in ["m2", "m3", "m4"] {
        let mut line = bob.line().await;
        while line.starts_with("[system]") {
            line = bob.line().await;
        }
        assert_eq!(line, format!("[resilient] ann: {expected}"));
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = ann.line().await;
        if line.starts_with("[resilient] ") {
            seen.push(line);
        }
    }
    assert_eq!(
        seen,
        [
            "[resilient] ann: m2",
            "[resilient] ann: m3",
            "[resilient] ann: m4"
        ]
    );
}

/// Ann on replica 0 and bob on replica 1, one DM from ann already through (both pods subscribed).
async fn past_a_first_dm(cluster: &Cluster) -> (Client, Client) {
    let (mut ann, mut bob) = cluster.one_on_each_replica("lounge", "ann", "bob").await;
    ann.send("/dm bob d0").await;
    ann.expect("[DM to bob] d0").await;
    bob.expect("[DM from ann] d0").await;
    (ann, bob)
}

#[tokio::test]
async fn dms_pushed_while_a_replica_was_unsubscribed_arrive_once_and_in_order() {
    let cluster = cluster(2).await;
    let (mut ann, mut bob) = past_a_first_dm(&cluster).await;
    // Every pod's subscription is dropped; until it reconnects and subscribes again, what is
    // pushed on the bus never reaches it. DMs are kept in no store: only the bus's stream can
    // give them back.
    let killed = cluster.valkey.command("CLIENT KILL TYPE pubsub");
    assert_eq!(killed, ":2", "both replicas were subscribed");
    for n in 1..=3 {
        ann.send(&format!("/dm bob d{n}")).await;
        ann.expect(&format!("[DM to bob] d{n}")).await;
    }
    ann.send("/dm bob last").await;
    let mut got = Vec::new();
    while got.last().is_none_or(|line| line != "[DM from ann] last") {
        let line = bob.line().await;
        if !line.starts_with("[system]") {
            got.push(line);
        }
    }
    assert_eq!(
        got,
        [
            "[DM from ann] d1",
            "[DM from ann] d2",
            "[DM from ann] d3",
            "[DM from ann] last"
        ]
    );
    // Nothing came twice: the next line is the next DM.
    ann.send("/dm bob end").await;
    bob.expect("[DM from ann] end").await;
}

#[tokio::test]
async fn an_entry_nobody_pushed_is_read_back_before_the_next_one() {
    let cluster = cluster(2).await;
    let (mut ann, mut bob) = past_a_first_dm(&cluster).await;
    // An entry written straight to the stream, as a pod of the previous version writes them:
    // no predecessor recorded and no push. The next pushed entry names it as its predecessor, so
    // the pods read it back, and hand it over first.
    let added = cluster.valkey.command(
        r#"XADD bus * pod old e '[{"Dm":{"from":"ann","to":"bob","content":"unpushed"}}]'"#,
    );
    assert!(!added.starts_with('-'), "{added}");
    ann.send("/dm bob pushed").await;
    ann.expect("[DM to bob] pushed").await;
    bob.expect("[DM from ann] unpushed").await;
    bob.expect("[DM from ann] pushed").await;
    ann.send("/dm bob end").await;
    bob.expect("[DM from ann] end").await;
}

#[tokio::test]
async fn a_message_committed_but_never_published_reaches_every_replica_from_the_store_in_order() {
    let cluster = cluster(2).await;
    let (mut ann, mut bob) = cluster.one_on_each_replica("gaps", "ann", "bob").await;

    // What a replica that died between its commit and its publish leaves behind: the next seq is
    // taken in the store, and no replica heard of it.
    let db = cluster.db().await;
    sqlx::query(
        "WITH r AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE name = 'gaps' RETURNING id, last_seq)
         INSERT INTO messages (room_id, seq, nickname, content, created_at)
         SELECT id, last_seq, 'ghost', 'committed, never published', now() FROM r",
    )
    .execute(&db)
    .await
    .unwrap();

    // The next published message shows both replicas the gap; after a short hold they read it.
    bob.send("after the gap").await;
    for client in [&mut ann, &mut bob] {
        client
            .expect("[gaps] ghost: committed, never published")
            .await;
        client.expect("[gaps] bob: after the gap").await;
    }
}

#[tokio::test]
async fn with_valkey_down_members_on_one_replica_still_hear_each_other() {
    let mut cluster = cluster(1).await;
    let mut alice = Client::login(cluster.tcp(0), "alice").await;
    alice.create("local").await;
    let mut bob = Client::login(cluster.tcp(0), "bob").await;
    bob.join("local").await;
    alice.expect("[system] bob joined local").await;
    cluster.valkey.stop();
    // Committed, then delivered to this replica's members without the round trip through Valkey
    // (the publish itself fails and other replicas catch up from the store later).
    alice.send("still here").await;
    bob.expect("[local] alice: still here").await;
    alice.expect("[local] alice: still here").await;
}

#[tokio::test]
async fn with_valkey_down_commands_fail_fast_and_a_replica_still_drains_in_time() {
    let mut cluster = cluster(1).await;
    let mut online = Client::login(cluster.tcp(0), "online").await;
    cluster.valkey.stop();
    // Presence lives in Valkey: the command fails with a clear error instead of waiting for it.
    online.send("/list").await;
    online
        .expect("Error: Service temporarily unavailable")
        .await;
    let stopping = Instant::now();
    signal(&cluster.replicas[0].process, "-TERM");
    assert!(cluster.replicas[0].process.wait().await.unwrap().success());
    // SHUTDOWN_GRACE_SECS is 5: a drain that waited on the unreachable Valkey would use all of it.
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "drained in {:?}",
        stopping.elapsed()
    );
}
