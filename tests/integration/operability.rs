//! SPEC §5 and §7 for operators: metrics, health and readiness, the database circuit breaker,
//! connection storms and the drain.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::http_client::Http;
use crate::services::postgres::Postgres;

async fn spawn_on_postgres(
    url: &str,
    configure: impl FnOnce(&mut baby_discord::config::Config),
) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |c| {
        c.database_url = Some(url);
        configure(c);
    })
    .await
}

#[tokio::test]
async fn every_spec_metric_is_exported_described_and_moves_with_traffic() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_on_postgres(&url, |_| {}).await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("metrics").await;
    let web = http.connect("web").await;
    http.command(&web, "/join metrics").await;
    let mut stream = http
        .stream(&format!("/api/messages/metrics?sessionId={web}"), None)
        .await;
    stream.expect("connected").await;
    nc.send("over tcp").await;
    http.message(&web, "over http").await;
    stream.expect("message").await;
    stream.expect("message").await;
    let mut late = app.login("late").await;
    late.join("metrics").await; // a history read
    // Past the first pool sample (taken every second), signalled by the gauge itself.
    let deadline = Instant::now() + TIMEOUT;
    let metrics = loop {
        let body = http.metrics().await;
        if body.contains("chat_db_pool_connections{") || Instant::now() > deadline {
            break body;
        }
        tokio::task::yield_now().await;
    };

    for name in [
        "chat_connections",
        "chat_messages_total",
        "chat_deliveries_total",
        "chat_delivery_latency_seconds",
        "chat_command_duration_seconds",
        "chat_history_requests_total",
        "chat_db_pool_connections",
        "chat_db_query_duration_seconds",
        "chat_circuit_breaker_state",
        "chat_bus_publish_duration_seconds",
        "chat_http_request_duration_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} is described"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} is exported"
        );
    }
    // Exact where this test alone produced the traffic; lower bounds where the test's own HTTP
    // requests and scrapes count too.
    let exact = [
        ("chat_connections", r#"transport="tcp""#, 2.0),
        ("chat_connections", r#"transport="sse""#, 1.0),
        ("chat_messages_total", r#"transport="tcp""#, 1.0),
        ("chat_messages_total", r#"transport="http""#, 1.0),
        ("chat_circuit_breaker_state", "", 0.0),
    ];
    for (name, labels, expected) in exact {
        assert_eq!(total(&metrics, name, labels), expected, "{name} {labels}");
    }
    let at_least = [
        ("chat_deliveries_total", r#"transport="tcp""#, 2.0),
        ("chat_deliveries_total", r#"transport="sse""#, 2.0),
        ("chat_delivery_latency_seconds_count", "", 4.0),
        (
            "chat_command_duration_seconds_count",
            r#"command="join""#,
            2.0,
        ),
        ("chat_history_requests_total", r#"result="hit""#, 1.0),
        ("chat_history_requests_total", r#"result="miss""#, 1.0),
        ("chat_db_query_duration_seconds_count", "", 1.0),
        ("chat_bus_publish_duration_seconds_count", "", 2.0),
        ("chat_db_pool_connections", r#"state="max""#, 1.0),
        (
            "chat_http_request_duration_seconds_count",
            r#"route="/api/message",status="200""#,
            1.0,
        ),
    ];
    for (name, labels, minimum) in at_least {
        assert!(
            total(&metrics, name, labels) >= minimum,
            "{name} {labels} below {minimum}"
        );
    }
    // Sub-millisecond buckets exist for latency.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chat_delivery_latency_seconds_bucket{")
                && l.contains(r#"le="0.0005""#)),
        "sub-millisecond buckets"
    );
    // Every series says which replica it comes from.
    assert!(metrics.contains(r#"chat_circuit_breaker_state{instance_id=""#));
    // Per room, for the pod's busiest rooms: its members on this pod (nc, the room stream,
    // late) and the messages ever sent to it.
    assert_eq!(
        total(&metrics, "chat_room_members", r#"room="metrics""#),
        3.0
    );
    assert_eq!(
        total(&metrics, "chat_room_messages_total", r#"room="metrics""#),
        2.0
    );

    // Drops are counted by reason: a rate-limit refusal, here.
    let app2 = spawn_app_with(|c| c.rate_limit_burst = NonZeroU32::new(1).unwrap()).await;
    let mut flood = app2.login("flood").await;
    flood.send("/rooms").await;
    flood.send("/rooms").await;
    flood.line().await;
    flood.expect("Error: Rate limit exceeded").await;
    let metrics = http.metrics().await;
    assert!(total(&metrics, "chat_dropped_total", r#"reason="rate_limited""#) >= 1.0);
}

#[tokio::test]
async fn liveness_and_readiness_report_the_dependencies() {
    let pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_on_postgres(&url, |_| {}).await;
    let http = Http::new(app.http);
    for path in ["/health", "/api/health"] {
        let (status, body) = http.get(path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                body["status"].as_str(),
                body["db"].as_str(),
                body["valkey"].as_str()
            ),
            (Some("ok"), Some("up"), Some("up"))
        );
        assert!(body["connections"].is_u64() && body["uptime"].is_u64());
    }
    let (status, body) = http.get("/health/ready").await;
    assert_eq!(
        (status, body["ready"].clone(), body["breaker"].clone()),
        (StatusCode::OK, json!(true), json!("closed"))
    );
}

#[tokio::test]
async fn liveness_counts_tcp_connections_and_streams_together() {
    let app = spawn_app().await;
    let http = Http::new(app.http);
    let connections = async || http.get("/health").await.1["connections"].as_u64();
    assert_eq!(connections().await, Some(0));
    let mut nc = app.login("nc").await;
    nc.create("count").await;
    assert_eq!(connections().await, Some(1));
    let web = http.connect("web").await;
    http.command(&web, "/join count").await;
    let mut stream = http
        .stream(&format!("/api/messages/count?sessionId={web}"), None)
        .await;
    stream.expect("connected").await;
    assert_eq!(connections().await, Some(2));
}

#[tokio::test]
async fn a_stopped_database_fails_fast_on_both_protocols_and_the_breaker_closes_when_it_is_back() {
    let mut pg = Postgres::start();
    let url = pg.create_database().await;
    let app = spawn_on_postgres(&url, |c| {
        c.rate_limit_burst = NonZeroU32::new(10_000).unwrap();
        c.db_acquire_timeout_secs = 1;
        c.breaker_failures = 3;
        c.breaker_open_secs = 1;
    })
    .await;
    let http = Http::new(app.http);
    let mut nc = app.login("nc").await;
    nc.create("outage").await;
    let web = http.connect("web").await;
    http.command(&web, "/join outage").await;
    nc.expect("[system] web joined outage").await;

    pg.stop();
    for i in 0..6 {
        let started = Instant::now();
        nc.send(&format!("tcp {i}")).await;
        nc.expect("Error: Service temporarily unavailable").await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "TCP reply {i} took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(http.url("/api/message"))
            .json(&json!({ "sessionId": web, "content": format!("http {i}") }))
            .send()
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "HTTP reply {i} took {:?}",
            started.elapsed()
        );
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
    }
    let (ready, body) = http.get("/health/ready").await;
    assert_eq!(
        (ready, body["db"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("down"))
    );
    // Open, or half-open if the background check's ping is the breaker's probe right then.
    assert!(
        matches!(body["breaker"].as_str(), Some("open" | "half_open")),
        "{body}"
    );
    assert_eq!(
        http.get("/health").await.0,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
    let metrics = http.metrics().await;
    // 2 open, 1 half-open (the background check may be the probe by now), never 0.
    let state = total(&metrics, "chat_circuit_breaker_state", "");
    assert!(
        state == 2.0 || state == 1.0,
        "the breaker is not closed: {state}"
    );
    nc.send("/help").await;
    nc.expect("Available commands:").await; // still connected, still served

    pg.resume();
    // Nothing announces the database's return to a client: retry at a modest pace.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    loop {
        pace.tick().await;
        for _ in 0..9 {
            nc.line().await; // the rest of /help, then each failed attempt's error
        }
        nc.send("back").await;
        let line = nc.line().await;
        if line == "[outage] nc: back" {
            break;
        }
        assert_eq!(line, "Error: Service temporarily unavailable");
        assert!(Instant::now() < deadline, "the breaker never closed");
        nc.send("/help").await;
        nc.expect("Available commands:").await;
    }
    let (ready, body) = http.get("/health/ready").await;
    assert_eq!(
        (ready, body["breaker"].as_str()),
        (StatusCode::OK, Some("closed"))
    );
    http.message(&web, "http is back too").await;
}

#[tokio::test]
async fn a_burst_of_2000_connects_is_shed_without_the_server_falling_over() {
    let app = spawn_app_with(|c| c.connect_rate_per_sec = NonZeroU32::new(100).unwrap()).await;
    let http = Http::new(app.http);
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..2000 {
        let mut c = Client::connect(app.tcp).await;
        match c.line().await.as_str() {
            "Error: Too many connections, try again later" => refused += 1,
            "Welcome to Baby Discord!" => held.push(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 1000, "only {refused} of 2000 refused");
    let metrics = http.metrics().await;
    assert_eq!(
        total(&metrics, "chat_dropped_total", r#"reason="connect_rate""#),
        refused as f64
    );
    drop(held);
    // Still serving: the limit refills and a newcomer gets in.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::connect(app.tcp).await;
        if c.line().await == "Welcome to Baby Discord!" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn sigterm_turns_readiness_503_at_once_notifies_tcp_and_sse_and_exits_within_the_grace_time()
{
    let (mut server, tcp, http_addr) = start_server_http(&[("SHUTDOWN_GRACE_SECS", "5")]).await;
    let http = Http::new(http_addr);
    let mut nc = Client::login(tcp, "nc").await;
    nc.create("r").await;
    let web = http.connect("web").await;
    let mut stream = http
        .stream(&format!("/api/messages/r?sessionId={web}"), None)
        .await;
    stream.expect("connected").await;
    assert_eq!(http.get("/health/ready").await.0, StatusCode::OK);

    let started = Instant::now();
    signal(&server, "-TERM");
    nc.expect("[system] Server restarting, please reconnect")
        .await;
    assert_eq!(
        http.get("/health/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while draining"
    );
    // nc's session ends in the same drain, so its departure may reach the stream first: the
    // notice is the stream's last event, with nothing but that departure before it.
    let mut event = stream.expect("system").await;
    if event["text"] == "nc left r" {
        event = stream.expect("system").await;
    }
    assert_eq!(event["text"], "Server restarting, please reconnect");
    assert!(stream.try_next().await.is_none());
    let status = tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
}
