//! The OpenAPI description as a test: schemathesis (PyPI) generates requests from
//! `/api/openapi.json` — valid ones and ones that break the schema — against a server on
//! PostgreSQL and Valkey, authenticated with a real session, and checks every answer: no 5xx,
//! each status and body as described, no valid request refused, no invalid one accepted.
//!
//! `scripts/test` installs schemathesis (pinned) and points `SCHEMATHESIS` at it. The event
//! streams are left out (a stream never ends, and a generated request would wait on it until its
//! timeout); the fuzz target `stream_request` covers what they read from a request.

use std::process::Stdio;

use crate::cluster::Cluster;

/// The `st` command: `SCHEMATHESIS`, else `st` on the PATH.
fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".into())
}

/// Runs `st run` against `base` with the suite's settings and `args`; panics with its report
/// when it finds anything.
async fn run_schemathesis(base: &str, session: &str, args: &[&str]) {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let output = tokio::process::Command::new(schemathesis())
        .args(["--config-file", config, "run"])
        .arg(format!("{base}/api/openapi.json"))
        .args(["--url", base])
        .args(["--header", &format!("Authorization: Bearer {session}")])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} could not run ({e}): scripts/test installs schemathesis",
                schemathesis()
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    println!("{report}");
}

#[tokio::test]
async fn schemathesis_finds_the_server_and_its_description_in_agreement() {
    let cluster = Cluster::start(
        1,
        &[
            ("RATE_LIMIT_PER_SEC", "100000"),
            ("RATE_LIMIT_BURST", "100000"),
        ],
    )
    .await;
    let http = cluster.http(0);
    let base = http.url("");
    let base = base.trim_end_matches('/');
    // A session in a room, with a past: what a real client has.
    let session = http.connect("schemathesis").await;
    http.command(&session, "/create lobby").await;
    http.message(&session, "hello").await;
    run_schemathesis(
        base,
        &session,
        &[
            "--exclude-path-regex",
            "^/api/(events|messages/|disconnect)",
        ],
    )
    .await;
    // Disconnect ends the session: on its own, with a session of its own.
    let leaving = http.connect("leaving").await;
    run_schemathesis(base, &leaving, &["--include-path", "/api/disconnect"]).await;
}
