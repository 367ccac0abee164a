//! The netcat adapter: a TCP listener speaking the line protocol of SPEC §3.
//!
//! Admission happens here, before a connection costs anything: a per-pod connect-rate limit sheds
//! reconnect storms and the pod's [`Slots`] cap open connections at MAX_CONNECTIONS. Every socket
//! gets TCP keepalive: netcat never writes on its own, and a peer that vanished without a FIN
//! (a laptop closed, a NAT entry dropped) would otherwise hold its nickname until the next write.

mod connection;
pub mod lines;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Slots, keep_alive};
use crate::config::Config;
use crate::core::{Chat, Error};

/// What each connection needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_line_bytes: usize,
    pub nick_timeout: Duration,
    /// See [`Config::write_coalesce_ms`].
    pub write_coalesce: Duration,
}

pub struct TcpServer {
    listener: TcpListener,
    chat: Arc<Chat>,
    settings: Arc<Settings>,
    slots: Slots,
    keepalive: Duration,
}

impl TcpServer {
    pub fn new(listener: TcpListener, chat: Arc<Chat>, slots: Slots, config: &Config) -> Self {
        TcpServer {
            listener,
            chat,
            settings: Arc::new(Settings {
                max_line_bytes: config.max_line_bytes,
                nick_timeout: config.nick_timeout(),
                write_coalesce: config.write_coalesce(),
            }),
            slots,
            keepalive: config.tcp_keepalive(),
        }
    }

    /// Accepts until `shutdown`; each connection runs as a task on `tracker` and ends on
    /// `shutdown` too, after telling its user.
    pub async fn serve(self, tracker: TaskTracker, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    super::accept_failed(e).await;
                    continue;
                }
            };
            let slot = match self.slots.take() {
                Ok(slot) => slot,
                Err(refused) => {
                    refuse(&stream, &refused);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            keep_alive(&stream, self.keepalive);
            let connection = connection::serve(
                stream,
                slot,
                self.chat.clone(),
                self.settings.clone(),
                shutdown.clone(),
            );
            // Spawned as is: wrapping it in another async block would store it twice in the task.
            tracker.spawn(connection.instrument(tracing::info_span!("tcp", %peer)));
        }
    }
}

/// Tells a refused client why, without waiting on it: a fresh socket's send buffer is empty, so
/// the line fits or the client gets nothing. Then the socket is closed.
fn refuse(stream: &TcpStream, error: &Error) {
    let _ = stream.try_write(format!("Error: {error}\n").as_bytes());
}
