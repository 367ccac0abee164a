//! Spawning servers and talking to them like a netcat user.

use std::net::SocketAddr;
use std::time::Duration;

use baby_discord::app::App;
use baby_discord::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    shutdown: CancellationToken,
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
    let tcp = app.tcp_addr();
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    TestApp { tcp, shutdown }
}

impl TestApp {
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
