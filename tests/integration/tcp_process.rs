//! The real binary as an operator runs it: signals, exit codes, configuration errors.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::*;
use crate::services::postgres::Postgres;

#[tokio::test]
async fn sigterm_tells_every_client_to_reconnect_and_exits_cleanly() {
    let (mut server, addr) = start_server(&[("SHUTDOWN_GRACE_SECS", "5")]).await;
    let mut alice = Client::login(addr, "alice").await;
    alice.create("r").await;
    let mut prompting = Client::connect(addr).await;
    prompting.expect("Welcome to Baby Discord!").await;
    prompting.expect_prompt().await;

    signal(&server, "-TERM");
    alice
        .expect("[system] Server restarting, please reconnect")
        .await;
    assert!(alice.until_closed().await.is_empty());
    assert_eq!(
        prompting.until_closed().await,
        b"[system] Server restarting, please reconnect\n"
    );
    let status = tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_drain_writes_what_was_gathered_before_telling_clients_to_reconnect() {
    // The longest gathering: the signal comes well within it (on a machine so slow that the
    // gathering ends first, this passes untested).
    let (server, addr) = start_server(&[("WRITE_COALESCE_MS", "100")]).await;
    let mut sender = Client::login(addr, "sender").await;
    let mut reader = Client::login(addr, "reader").await;
    sender.create("r").await;
    reader.join("r").await;
    sender.expect("[system] reader joined r").await;
    sender.send("m1").await;
    reader.expect("[r] sender: m1").await;
    // m2 is gathered for the reader; once /list is answered, it was handed to every member.
    sender.send("m2").await;
    sender.send("/list").await;
    sender
        .expect_lines(&[
            "[r] sender: m1",
            "[r] sender: m2",
            "Users in r: reader, sender",
        ])
        .await;
    signal(&server, "-TERM");
    let mut before_notice = Vec::new();
    loop {
        match reader.line().await {
            notice if notice == "[system] Server restarting, please reconnect" => break,
            line => before_notice.push(line),
        }
    }
    assert_eq!(
        before_notice.first().map(String::as_str),
        Some("[r] sender: m2")
    );
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    for (setting, value) in [
        ("MAX_CONNECTIONS", "lots"),
        ("LOG_LEVEL", "info,baby_discord=loud"),
        ("DATABASE_URL", "localhost:5432/chat"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_baby-discord"))
            .env_clear()
            .env(setting, value)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(78), "{setting}={value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("invalid configuration: {setting}")),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_baby-discord"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for setting in [
        "TCP_PORT",
        "MAX_CONNECTIONS",
        "DATABASE_URL",
        "STARTUP_WAIT_SECS",
    ] {
        assert!(help.contains(setting), "{setting} missing from:\n{help}");
    }
}

#[tokio::test]
async fn start_up_waits_for_a_database_that_is_not_up_yet() {
    let mut pg = Postgres::start();
    let url = pg.create_database().await;
    pg.stop();
    let mut server = Command::new(env!("CARGO_BIN_EXE_baby-discord"))
        .env_clear()
        .envs([
            ("BIND_ADDRESS", "127.0.0.1"),
            ("TCP_PORT", "0"),
            ("HTTP_PORT", "0"),
            ("LOG_FORMAT", "json"),
            ("DATABASE_URL", url.as_str()),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut next_message = async || loop {
        let line = tokio::time::timeout(TIMEOUT, logs.next_line())
            .await
            .expect("a log line")
            .unwrap()
            .expect("the server is running");
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(message) = entry["fields"]["message"].as_str() {
            return (message.to_owned(), entry);
        }
    };
    // It says it is waiting, and waits; once PostgreSQL is up it serves.
    loop {
        let (message, _) = next_message().await;
        if message.starts_with("PostgreSQL not reachable yet") {
            break;
        }
    }
    pg.resume();
    let tcp = loop {
        let (message, entry) = next_message().await;
        if message == "listening" {
            break entry["fields"]["tcp"].as_str().unwrap().parse().unwrap();
        }
    };
    let mut alice = Client::login(tcp, "alice").await;
    alice.create("late").await;
}
