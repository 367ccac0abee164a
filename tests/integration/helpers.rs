//! Spawning servers and talking to them like a netcat user.

use std::net::SocketAddr;
use std::time::Duration;

use baby_discord::app::App;
use baby_discord::config::Config;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long any single expected reply may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const PROMPT: &str = "Enter your nickname: ";

pub fn test_config() -> Config {
    Config {
        bind_address: [127, 0, 0, 1].into(),
        tcp_port: 0,
        http_port: 0,
        ..Config::default()
    }
}

pub struct TestApp {
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    configure(&mut config);
    let app = App::build(config).await.expect("the app builds");
    let (tcp, http) = (app.tcp_addr(), app.http_addr());
    let shutdown = app.shutdown_token();
    let running = Some(tokio::spawn(app.run_until_stopped()));
    TestApp {
        tcp,
        http,
        shutdown,
        running,
    }
}

/// The sum of the series of metric `name` (exactly that name) whose labels contain `labels`, in a
/// Prometheus text exposition; 0 when there are none.
pub fn total(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a signal (`"-TERM"`, `"-KILL"`) to a server process the test started.
pub fn signal(process: &Child, name: &str) {
    let pid = process.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {name} {pid}");
}

impl TestApp {
    /// `alice` creates `room`, `bob` joins it, and alice has seen him arrive.
    pub async fn two_in_a_room(&self, room: &str) -> (Client, Client) {
        let mut alice = self.login("alice").await;
        let mut bob = self.login("bob").await;
        alice.create(room).await;
        bob.join(room).await;
        alice.expect(&format!("[system] bob joined {room}")).await;
        (alice, bob)
    }

    /// Starts the drain (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for a drain begun with `begin_shutdown` to finish.
    pub async fn stopped(mut self) {
        if let Some(running) = self.running.take() {
            running
                .await
                .expect("the server task")
                .expect("a clean stop");
        }
    }

    /// Drains the server as SIGTERM would and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running
                .await
                .expect("the server task")
                .expect("a clean stop");
        }
    }

    pub async fn login(&self, nick: &str) -> Client {
        Client::login(self.tcp, nick).await
    }
}

/// A netcat user.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, writer) = stream.into_split();
        Client {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Connects, answers the prompt and reads the welcome.
    pub async fn login(addr: SocketAddr, nick: &str) -> Client {
        let mut client = Client::connect(addr).await;
        client.expect("Welcome to Baby Discord!").await;
        client.expect_prompt().await;
        client.send(nick).await;
        client.expect(&format!("Welcome, {nick}!")).await;
        client.expect("Type /help for available commands.").await;
        client
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    /// The client's own port (what the server sees it come from).
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("connected").port()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next line, without its LF; panics on EOF or after TIMEOUT.
    pub async fn line(&mut self) -> String {
        let bytes = self.raw_line().await;
        assert!(
            !bytes.is_empty(),
            "connection closed while a line was expected"
        );
        String::from_utf8(bytes)
            .expect("the server sends UTF-8")
            .trim_end_matches('\n')
            .to_owned()
    }

    /// The next line's raw bytes including its LF; empty at EOF.
    pub async fn raw_line(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        tokio::time::timeout(TIMEOUT, self.reader.read_until(b'\n', &mut bytes))
            .await
            .expect("timed out waiting for a line")
            .expect("read");
        bytes
    }

    pub async fn expect(&mut self, expected: &str) {
        assert_eq!(self.line().await, expected);
    }

    pub async fn expect_lines(&mut self, expected: &[&str]) {
        for line in expected {
            self.expect(line).await;
        }
    }

    /// Reads the nickname prompt, which has no line ending.
    pub async fn expect_prompt(&mut self) {
        let mut prompt = vec![0; PROMPT.len()];
        tokio::time::timeout(TIMEOUT, self.reader.read_exact(&mut prompt))
            .await
            .expect("timed out waiting for the prompt")
            .expect("read");
        assert_eq!(String::from_utf8_lossy(&prompt), PROMPT);
    }

    /// Reads until the server closes the connection; returns everything read.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(TIMEOUT, self.reader.read_to_end(&mut rest))
            .await
            .expect("timed out waiting for the server to close")
            .expect("read");
        rest
    }

    /// `/create`s a room and consumes the reply and its empty history block.
    pub async fn create(&mut self, room: &str) {
        self.send(&format!("/create {room}")).await;
        self.expect_lines(&[
            &format!("Created and joined room: {room}"),
            "--- Recent Messages ---",
            "No recent messages",
            "---",
        ])
        .await;
    }

    /// `/join`s a room and returns the history lines shown.
    pub async fn join(&mut self, room: &str) -> Vec<String> {
        self.send(&format!("/join {room}")).await;
        self.expect(&format!("Joined room: {room}")).await;
        self.expect("--- Recent Messages ---").await;
        let mut history = Vec::new();
        loop {
            match self.line().await.as_str() {
                "---" => return history,
                "No recent messages" => {}
                line => history.push(line.to_owned()),
            }
        }
    }
}

/// Starts the server binary (on free ports unless `extra_env` names them); returns it and its TCP
/// address from its log.
pub async fn start_server(extra_env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let (child, tcp, _) = start_server_http(extra_env).await;
    (child, tcp)
}

/// Like `start_server`, also returning the HTTP address.
pub async fn start_server_http(extra_env: &[(&str, &str)]) -> (Child, SocketAddr, SocketAddr) {
    // BABY_DISCORD_BIN runs the suite against another build (an earlier commit's, say).
    let binary = std::env::var("BABY_DISCORD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_baby-discord").to_owned());
    let mut child = Command::new(binary)
        .env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("TCP_PORT", "0")
        .env("HTTP_PORT", "0")
        .env("LOG_FORMAT", "json")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let mut logs = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = logs.next_line().await.unwrap() {
            let entry: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if entry["fields"]["message"] == "listening" {
                let addr = |field: &str| {
                    entry["fields"][field]
                        .as_str()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap()
                };
                return (addr("tcp"), addr("http"));
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("the server listens");
    // Keep draining the log so the server never blocks on a full pipe; show its warnings.
    tokio::spawn(async move {
        while let Ok(Some(line)) = logs.next_line().await {
            if line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#) {
                println!("server: {line}");
            }
        }
    });
    (child, addr.0, addr.1)
}
