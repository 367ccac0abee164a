//! The browser side of a load: SSE subscribers and HTTP senders.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use loadgen::sse::FrameReader;

/// A client that keeps no idle connections: each stream then arrives on a connection of its own,
/// the way `EventSource` opens one, and the server holds exactly one socket per stream.
pub fn unpooled_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?)
}

/// An HTTP session of the load generator.
pub struct WebUser {
    client: reqwest::Client,
    base: String,
    session: String,
}

impl WebUser {
    /// Connects `nick` and, with `room`, creates or joins it. Users may share one client (and
    /// its connection pool).
    pub async fn connect(
        client: reqwest::Client,
        addr: SocketAddr,
        nick: String,
        room: Option<&str>,
    ) -> anyhow::Result<WebUser> {
        let base = format!("http://{addr}");
        let reply: serde_json::Value = client
            .post(format!("{base}/api/connect"))
            .json(&json!({ "nickname": nick }))
            .send()
            .await
            .context("connecting over HTTP")?
            .json()
            .await?;
        let Some(session) = reply["data"]["sessionId"].as_str() else {
            bail!("connect refused: {reply}");
        };
        let user = WebUser {
            client,
            base,
            session: session.to_owned(),
        };
        if let Some(room) = room {
            // Either creates it or says it exists; then join (a no-op for its creator).
            user.command(&format!("/create {room}")).await?;
            user.command(&format!("/join {room}")).await?;
        }
        Ok(user)
    }

    async fn command(&self, command: &str) -> anyhow::Result<()> {
        self.client
            .post(format!("{}/api/command", self.base))
            .bearer_auth(&self.session)
            .json(&json!({ "command": command }))
            .send()
            .await?;
        Ok(())
    }

    /// Posts a message and waits for its acknowledgement.
    pub async fn post(&self, content: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/api/message", self.base))
            .bearer_auth(&self.session)
            .json(&json!({ "content": content }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("message refused: {}", response.status());
        }
        Ok(())
    }

    /// Opens the room's event stream; yields each message's (user, content).
    pub async fn subscribe(
        &self,
        room: &str,
    ) -> anyhow::Result<impl futures::Stream<Item = (String, String)> + use<>> {
        let response = self
            .client
            .get(format!("{}/api/messages/{room}", self.base))
            .bearer_auth(&self.session)
            // What EventSource sends.
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("stream refused: {}", response.status());
        }
        let mut frames = FrameReader::default();
        Ok(response.bytes_stream().flat_map(move |chunk| {
            let messages: Vec<(String, String)> = match chunk {
                Ok(chunk) => frames
                    .push(&chunk)
                    .into_iter()
                    .filter(|f| f.event == "message")
                    .filter_map(|f| serde_json::from_str::<MessageData>(&f.data).ok())
                    .map(|m| (m.user, m.content))
                    .collect(),
                Err(_) => Vec::new(),
            };
            futures::stream::iter(messages)
        }))
    }
}

#[derive(Deserialize)]
struct MessageData {
    user: String,
    content: String,
}
