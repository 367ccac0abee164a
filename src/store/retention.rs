//! The retention job: keeps at most RETENTION_PER_ROOM messages per room in PostgreSQL.
//!
//! Deletes in bounded batches (each its own short transaction) so it never holds locks long or
//! competes with the message path for more than a moment. Running on every replica is harmless:
//! concurrent deletes of the same rows simply find them gone.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::postgres::PgStore;

/// Rows deleted per transaction.
const BATCH: usize = 1000;
/// How often the job looks for work.
const EVERY: Duration = Duration::from_secs(60);

pub async fn run(store: PgStore, keep: usize, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    while shutdown.run_until_cancelled(every.tick()).await.is_some() {
        let mut total = 0;
        loop {
            match store.prune(keep, BATCH).await {
                Ok(deleted) => {
                    total += deleted;
                    if deleted < BATCH as u64 || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retrying next round");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, keep, "retention pass");
        }
    }
}
