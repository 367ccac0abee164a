//! The real binary as an operator runs it: signals, exit codes, configuration errors.

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::*;

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
async fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_baby-discord"))
        .env_clear()
        .env("MAX_CONNECTIONS", "lots")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("invalid configuration: MAX_CONNECTIONS"),
        "{stderr}"
    );
}
