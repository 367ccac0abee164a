//! The ways in: each adapter turns bytes into calls on [`Chat`](crate::core::Chat) and events back
//! into bytes. They hold no chat logic.

use std::sync::Arc;

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub mod http;
pub mod tcp;

/// The pod's budget of long-lived connections, MAX_CONNECTIONS: netcat connections and event
/// streams draw on one pool (SPEC §3). A slot is held until its permit drops.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots(Arc::new(Semaphore::new(max)))
    }

    /// A slot, or `None` when the pod is full.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// After a failed accept (typically out of file descriptors): back off briefly instead of
/// spinning on the listener.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Probes per keepalive period; the connection is dropped after this many go unanswered.
const KEEPALIVE_PROBES: u32 = 3;

/// Probes an idle connection after `idle`, then every third of it; after [`KEEPALIVE_PROBES`]
/// unanswered probes — or data unacknowledged as long — the kernel fails the socket, the read
/// ends, and the session closes: about `2 × idle` after the peer vanished.
pub(crate) fn keep_alive(stream: &TcpStream, idle: Duration) {
    let interval = (idle / KEEPALIVE_PROBES).max(Duration::from_secs(1));
    let probes = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    let socket = SockRef::from(stream);
    if let Err(error) = socket
        .set_tcp_keepalive(&probes)
        .and_then(|()| socket.set_tcp_user_timeout(Some(idle + interval * KEEPALIVE_PROBES)))
    {
        tracing::debug!(%error, "could not set TCP keepalive");
    }
}
