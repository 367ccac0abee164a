//! Minimal line-protocol clients: this server's (log in, join a room), and IRC's (register, join
//! a channel), for running the same workload against an IRC server.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const PROMPT: &[u8] = b"Enter your nickname: ";

pub struct Member {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Member {
    /// Connects and logs in as `nick`; if `room` is given, creates or joins it and reads past the
    /// history block.
    pub async fn join(
        addr: SocketAddr,
        nick: String,
        room: Option<&str>,
    ) -> anyhow::Result<Member> {
        tokio::time::timeout(SETUP_TIMEOUT, Self::join_inner(addr, &nick, room))
            .await
            .with_context(|| format!("{nick}: setup timed out"))?
    }

    async fn connect(addr: SocketAddr) -> anyhow::Result<Member> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Member {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer,
        })
    }

    async fn join_inner(
        addr: SocketAddr,
        nick: &str,
        room: Option<&str>,
    ) -> anyhow::Result<Member> {
        let mut member = Member::connect(addr).await?;
        member.expect_line("Welcome to Baby Discord!").await?;
        let mut prompt = [0; PROMPT.len()];
        member.reader.read_exact(&mut prompt).await?;
        member.send(nick).await?;
        member.expect_line(&format!("Welcome, {nick}!")).await?;
        member.line().await?;
        if let Some(room) = room {
            // Create it, or join it if it exists; either way a history block follows.
            member.send(&format!("/create {room}")).await?;
            if member
                .line()
                .await?
                .starts_with("Error: Room already exists")
            {
                member.send(&format!("/join {room}")).await?;
                member.line().await?;
            }
            while member.line().await? != "---" {}
        }
        Ok(member)
    }

    /// Connects to an IRC server, registers as `nick` and joins `channel` (reading past its
    /// names list).
    pub async fn join_irc(addr: SocketAddr, nick: String, channel: &str) -> anyhow::Result<Member> {
        tokio::time::timeout(SETUP_TIMEOUT, Self::join_irc_inner(addr, &nick, channel))
            .await
            .with_context(|| format!("{nick}: IRC setup timed out"))?
    }

    async fn join_irc_inner(addr: SocketAddr, nick: &str, channel: &str) -> anyhow::Result<Member> {
        let mut member = Member::connect(addr).await?;
        member
            .send(&format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r"))
            .await?;
        member.irc_until("001").await?;
        member.send(&format!("JOIN {channel}\r")).await?;
        member.irc_until("366").await?;
        Ok(member)
    }

    /// Reads IRC lines until the reply `numeric`, answering pings meanwhile.
    async fn irc_until(&mut self, numeric: &str) -> anyhow::Result<()> {
        loop {
            let line = self.line().await?;
            // ":server 001 nick :text": the reply's number is the second word.
            let reply = line.split(' ').nth(1);
            if let Some(token) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {token}\r")).await?;
            } else if reply == Some(numeric) {
                return Ok(());
            } else if line.starts_with("ERROR") || reply == Some("433") {
                bail!("the IRC server refused: {line}");
            }
        }
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        Ok(())
    }

    pub async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(line.trim_end().to_owned())
    }

    async fn expect_line(&mut self, expected: &str) -> anyhow::Result<()> {
        let line = self.line().await?;
        if line != expected {
            bail!("expected {expected:?}, got {line:?}");
        }
        Ok(())
    }
}
