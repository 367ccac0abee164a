//! The ways in: each adapter turns bytes into calls on [`Chat`](crate::core::Chat) and events back
//! into bytes. They hold no chat logic.

pub mod http;
pub mod tcp;

/// After a failed accept (typically out of file descriptors): back off briefly instead of
/// spinning on the listener.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
