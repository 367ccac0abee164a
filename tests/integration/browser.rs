//! The web page in a real headless browser (Debian chromium driven by playwright-core): two pages
//! and a netcat client in one room, a DM, markup shown as text, a server restart survived without
//! gap or duplicate, and a room's past loaded by scrolling up. Screenshots land in `artifacts/`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::helpers::*;
use crate::services::{free_port, postgres::Postgres};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test]
async fn two_pages_and_a_netcat_user_chat_and_survive_a_restart() {
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test (it runs `npm ci --prefix tests/browser`)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: apt-get install chromium"
    );
    let pg = Postgres::start();
    let url = pg.create_database().await;
    // Fixed ports: the restarted server must be where the pages left it.
    let (tcp_port, http_port) = (free_port().to_string(), free_port().to_string());
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("TCP_PORT", tcp_port.as_str()),
        ("HTTP_PORT", http_port.as_str()),
        ("SHUTDOWN_GRACE_SECS", "5"),
        // The netcat user fills a room with 130 messages at once.
        ("RATE_LIMIT_BURST", "1000"),
    ];
    let (mut server, _, http) = start_server_http(&env).await;

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    let mut scenario = Command::new("node")
        .arg(browser_dir().join("scenario.mjs"))
        .arg(format!("http://{http}"))
        .arg(&tcp_port)
        .arg(&artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut to_scenario = scenario.stdin.take().unwrap();
    let mut from_scenario = BufReader::new(scenario.stdout.take().unwrap()).lines();
    let mut passed = false;
    let deadline = std::time::Duration::from_secs(120);
    tokio::time::timeout(deadline, async {
        while let Some(line) = from_scenario.next_line().await.unwrap() {
            match line.as_str() {
                "RESTART" => {
                    signal(&server, "-TERM");
                    assert!(server.wait().await.unwrap().success(), "a clean drain");
                    server = start_server_http(&env).await.0;
                    to_scenario.write_all(b"RESTARTED\n").await.unwrap();
                }
                "PASS" => passed = true,
                other => println!("scenario: {other}"),
            }
        }
    })
    .await
    .expect("the scenario finishes in time");
    let status = scenario.wait().await.unwrap();
    assert!(
        status.success() && passed,
        "the browser scenario failed (see its output above)"
    );
    assert!(artifacts.join("chat.png").exists());
}
