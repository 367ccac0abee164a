//! Talking to the HTTP API and its event streams like a browser.

use std::net::SocketAddr;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TIMEOUT;

pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// Connects `nick`; returns the session id.
    pub async fn connect(&self, nick: &str) -> String {
        let (status, body) = self.post("/api/connect", json!({ "nickname": nick })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]["sessionId"].as_str().unwrap().to_owned()
    }

    /// Runs a command; returns its reply text.
    pub async fn command(&self, session: &str, command: &str) -> String {
        let (status, body) = self
            .post(
                "/api/command",
                json!({ "sessionId": session, "command": command }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{command}: {body}");
        body["data"]["message"].as_str().unwrap().to_owned()
    }

    pub async fn message(&self, session: &str, content: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/message",
                json!({ "sessionId": session, "content": content }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }

    /// Opens an event stream at `path` (query included), optionally resuming with Last-Event-ID,
    /// as `EventSource` does: `Accept: text/event-stream`, on a connection of its own.
    pub async fn stream(&self, path: &str, last_event_id: Option<i64>) -> Sse {
        self.stream_with_cookie(path, last_event_id, None).await.0
    }

    /// Like `stream`, sending `cookie` as a browser would; returns the cookies the server set too.
    pub async fn stream_with_cookie(
        &self,
        path: &str,
        last_event_id: Option<i64>,
        cookie: Option<&str>,
    ) -> (Sse, Option<String>) {
        let mut request = reqwest::Client::new()
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        // Every cookie set, as a browser would send them back.
        let set: Vec<String> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect();
        let set = (!set.is_empty()).then(|| set.join("; "));
        let sse = Sse {
            events: Box::pin(response.bytes_stream().eventsource()),
        };
        (sse, set)
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

type EventResult = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>;

pub struct Sse {
    events: std::pin::Pin<Box<dyn Stream<Item = EventResult> + Send>>,
}

impl Sse {
    /// The next event (keepalive comments are not events); panics at the end or after TIMEOUT.
    pub async fn next(&mut self) -> Event {
        self.try_next()
            .await
            .expect("the stream ended while an event was expected")
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn try_next(&mut self) -> Option<Event> {
        let next = tokio::time::timeout(TIMEOUT, self.events.next())
            .await
            .expect("timed out waiting for an event");
        next.and_then(Result::ok)
    }

    /// The next event, which must be of this type; returns its JSON data.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let event = self.next().await;
        assert_eq!(event.event, kind, "{event:?}");
        serde_json::from_str(&event.data).unwrap()
    }
}
