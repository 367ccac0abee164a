//! The browser side of a load: SSE subscribers and HTTP senders.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use loadgen::sse::{Frame, FrameReader};

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
        let request = self
            .client
            .get(format!("{}/api/messages/{room}", self.base))
            .bearer_auth(&self.session);
        event_stream(request, |frame| {
            if frame.event != "message" {
                return None;
            }
            let m = serde_json::from_str::<MessageData>(&frame.data).ok()?;
            Some((m.user, m.content))
        })
        .await
    }
}

/// One channel of nginx + nchan: the same load on a pub/sub server with no users, rooms or
/// store, to compare against.
pub struct Nchan {
    client: reqwest::Client,
    base: String,
    channel: String,
}

impl Nchan {
    pub fn new(client: reqwest::Client, addr: SocketAddr, channel: &str) -> Nchan {
        Nchan {
            client,
            base: format!("http://{addr}"),
            channel: channel.to_owned(),
        }
    }

    /// Publishes a message (`POST /pub/<channel>`) and waits for nchan to take it.
    pub async fn post(&self, content: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/pub/{}", self.base, self.channel))
            .body(content.to_owned())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("message refused: {}", response.status());
        }
        Ok(())
    }

    /// Opens the channel's event stream (`GET /sub/<channel>`); yields each message's data.
    pub async fn subscribe(&self) -> anyhow::Result<impl futures::Stream<Item = String> + use<>> {
        let request = self
            .client
            .get(format!("{}/sub/{}", self.base, self.channel));
        event_stream(request, |frame| Some(frame.data)).await
    }
}

/// Sends `request` as `EventSource` would and yields what `pick` takes of each frame.
async fn event_stream<T, P: FnMut(Frame) -> Option<T>>(
    request: reqwest::RequestBuilder,
    mut pick: P,
) -> anyhow::Result<impl futures::Stream<Item = T> + use<T, P>> {
    let response = request
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("stream refused: {}", response.status());
    }
    let mut frames = FrameReader::default();
    Ok(response.bytes_stream().flat_map(move |chunk| {
        let picked: Vec<T> = match chunk {
            Ok(chunk) => frames
                .push(&chunk)
                .into_iter()
                .filter_map(&mut pick)
                .collect(),
            Err(_) => Vec::new(),
        };
        futures::stream::iter(picked)
    }))
}

#[derive(Deserialize)]
struct MessageData {
    user: String,
    content: String,
}
