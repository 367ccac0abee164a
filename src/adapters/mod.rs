//! The ways in: each adapter turns bytes into calls on [`Chat`](crate::core::Chat) and events back
//! into bytes. They hold no chat logic.

use std::sync::Arc;

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
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
