//! Envelopes between pods, on one capped Valkey stream.
//!
//! One entry per publish call (a commit batch is one entry), carrying the publishing pod's name
//! and the envelopes as JSON. Every pod reads every entry after the last one it read, so a pod
//! that was slow, or briefly disconnected, misses nothing. Entries can still be lost — Valkey
//! restarted without persistence, or the stream was trimmed past a reader that fell far behind
//! — and then the core is told to resync ([`Inbound::Resync`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ValkeyBus, failed};
use crate::core::model::Envelope;
use crate::core::ports::{Bus, BusError, Inbound};

const STREAM: &str = "bus";
/// A random id of the stream's incarnation: a changed or missing one means Valkey lost it.
const STREAM_EPOCH: &str = "bus:epoch";
/// Entries kept (about): at thousands of messages a second, tens of seconds for a reader to
/// catch up after a hiccup, a few tens of MB of memory.
const STREAM_CAP: i64 = 100_000;
/// Entries per read.
const READ_COUNT: u64 = 1_024;
/// How long one read blocks waiting for entries.
pub(super) const BLOCK: Duration = Duration::from_secs(2);
/// Envelopes handed to the core but not yet taken, at most: past this the reader waits (and
/// Valkey holds the rest), rather than the pod buffering without bound.
const INBOUND: usize = 8_192;

type Entries = XReadResponse<String, String, String, Bytes>;

#[async_trait]
impl Bus for ValkeyBus {
    async fn ping(&self) -> Result<(), BusError> {
        let _: String = self
            .client
            .ping(None)
            .await
            .map_err(failed("pinging Valkey"))?;
        Ok(())
    }

    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), BusError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let payload = serde_json::to_vec(envelopes).expect("envelopes serialize");
        let _: String = self
            .client
            .xadd(
                STREAM,
                false,
                ("MAXLEN", "~", STREAM_CAP),
                "*",
                vec![
                    ("pod", Bytes::from(self.instance.clone())),
                    ("e", Bytes::from(payload)),
                ],
            )
            .await
            .map_err(failed("publishing"))?;
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(INBOUND);
        *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

impl ValkeyBus {
    /// Reads every entry other pods publish, in order, until `shutdown` or until the core stops
    /// listening.
    pub(super) async fn read_stream(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(inbound) = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        // Where reading starts, and which incarnation of the stream that is in.
        let mut position: Option<(String, String)> = None;
        let mut broken = false;
        // A read in flight when the connection drops may be sent again on the new one and answer
        // as if nothing happened: reconnections are watched too.
        let mut reconnects = self.reader.reconnect_rx();
        loop {
            let (last, epoch) = match &position {
                Some(position) => position.clone(),
                None => match shutdown.run_until_cancelled(self.start_position()).await {
                    None => return,
                    Some(Ok(start)) => {
                        position = Some(start.clone());
                        start
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reading the bus failed; retrying");
                        broken = true;
                        shutdown
                            .run_until_cancelled(tokio::time::sleep(Duration::from_millis(200)))
                            .await;
                        continue;
                    }
                },
            };
            let read = self.reader.xread::<Value, _, _>(
                Some(READ_COUNT),
                Some(BLOCK.as_millis() as u64),
                STREAM,
                last.as_str(),
            );
            // A read that waited out its block with nothing new answers nil.
            let entries: Entries = match shutdown.run_until_cancelled(read).await {
                None => return,
                Some(Ok(Value::Null)) => Entries::default(),
                Some(Ok(value)) => match value.into_xread_response() {
                    Ok(entries) => entries,
                    Err(e) => {
                        tracing::warn!(error = %e, "an undecodable read of the bus");
                        continue;
                    }
                },
                Some(Err(e)) => {
                    if !broken {
                        tracing::warn!(error = %e, "reading the bus failed; retrying");
                    }
                    broken = true;
                    shutdown
                        .run_until_cancelled(tokio::time::sleep(Duration::from_millis(200)))
                        .await;
                    continue;
                }
            };
            while reconnects.try_recv().is_ok() {
                broken = true;
            }
            if broken {
                broken = false;
                // Back after a break: if Valkey lost the stream meanwhile, start over on the new
                // one. Either way, what was in flight may be gone: the core resyncs.
                let state_lost = match self.epoch().await {
                    Ok(now) if now != epoch => {
                        position = Some(("0-0".into(), now));
                        true
                    }
                    Ok(_) => false,
                    Err(_) => {
                        position = None;
                        false
                    }
                };
                tracing::info!(state_lost, "reading the bus again; resyncing");
                if inbound.send(Inbound::Resync { state_lost }).await.is_err() {
                    return;
                }
                continue;
            }
            let mut read = 0;
            for (id, fields) in entries.into_values().flatten() {
                read += 1;
                if let Some(position) = &mut position {
                    position.0 = id;
                }
                if fields
                    .get("pod")
                    .is_some_and(|pod| pod.as_ref() == self.instance.as_bytes())
                {
                    continue;
                }
                for envelope in decode(&fields) {
                    if inbound.send(Inbound::Envelope(envelope)).await.is_err() {
                        return;
                    }
                }
            }
            if read == READ_COUNT as usize && self.trimmed_past(&position).await {
                tracing::warn!("the bus was trimmed past this reader; resyncing");
                let resync = Inbound::Resync { state_lost: false };
                if inbound.send(resync).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The newest entry id (reading starts after it) and the stream's epoch.
    async fn start_position(&self) -> Result<(String, String), BusError> {
        let epoch = self.epoch().await?;
        let newest: Vec<(String, HashMap<String, Bytes>)> = self
            .client
            .xrevrange(STREAM, "+", "-", Some(1))
            .await
            .map_err(failed("reading the bus"))?;
        let last = newest
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
        Ok((last, epoch))
    }

    /// The stream's epoch, made now if it has none (a new or restarted Valkey).
    async fn epoch(&self) -> Result<String, BusError> {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let _: Option<String> = self
            .client
            .set(
                STREAM_EPOCH,
                fresh.as_str(),
                None,
                Some(fred::types::SetOptions::NX),
                false,
            )
            .await
            .map_err(failed("reading the bus epoch"))?;
        self.client
            .get(STREAM_EPOCH)
            .await
            .map_err(failed("reading the bus epoch"))
    }

    /// Whether entries after `position` were trimmed away before this pod read them.
    async fn trimmed_past(&self, position: &Option<(String, String)>) -> bool {
        let Some((last, _)) = position else {
            return false;
        };
        let info: HashMap<String, Value> = match self.client.xinfo_stream(STREAM, false, None).await
        {
            Ok(info) => info,
            Err(_) => return false,
        };
        // The newest entry trimmed away: past what this pod read means lost to it.
        let deleted = info.get("max-deleted-entry-id").and_then(Value::as_string);
        deleted.is_some_and(|deleted| id_after(&deleted, last))
    }
}

/// Whether stream id `a` comes after `b` (ids are `millis-seq`).
fn id_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-')?;
        Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

fn decode(fields: &HashMap<String, Bytes>) -> Vec<Envelope> {
    let Some(payload) = fields.get("e") else {
        return Vec::new();
    };
    serde_json::from_slice(payload).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "undecodable bus entry");
        Vec::new()
    })
}
