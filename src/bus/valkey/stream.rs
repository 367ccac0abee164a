//! Envelopes between pods, on one capped Valkey stream whose entries are also pushed to every
//! pod over pub/sub.
//!
//! One entry per publish call (a commit batch is one entry), carrying the publishing pod's name,
//! the envelopes as JSON and the id of the entry before it. One script appends the entry and
//! pushes it, so the pushes come in the stream's order. A pod takes the pushes as they come — no
//! request per entry, as a blocking stream read costs (docs/BENCHMARKS.md §11) — and checks each
//! against the chain: an entry whose predecessor is not the last one the pod took means it
//! missed some (it overflowed its push buffer, or a pod of the previous version, which pushes
//! nothing, wrote them), and it reads them back from the stream, in order, before going on. An
//! entry still not taken a probe interval after it was seen in the stream is read back too. So
//! a pod that was slow misses nothing; one that reconnected reads back what it missed, and the
//! core resyncs anyway (what was in flight may be gone). Entries can be lost — Valkey restarted
//! without persistence, or the stream was trimmed past a reader that fell far behind — and then
//! the core is told to resync ([`Inbound::Resync`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ValkeyBus, failed};
use crate::core::model::Envelope;
use crate::core::ports::{Bus, BusError, Inbound};

const STREAM: &str = "bus";
/// Where entries are pushed.
const CHANNEL: &str = "bus";
/// A random id of the stream's incarnation: a changed or missing one means Valkey lost it.
const STREAM_EPOCH: &str = "bus:epoch";
/// Entries kept (about): at thousands of messages a second, tens of seconds for a reader to
/// catch up after a hiccup, a few tens of MB of memory.
const STREAM_CAP: i64 = 100_000;
/// Entries per read when catching up.
const READ_COUNT: u64 = 1_024;
/// Pushes received and not yet taken, at most; past it the oldest are dropped, and read back
/// from the stream. (fred makes each of a client's notification channels this size up front.)
pub(super) const PUSH_BUFFER: usize = 1_024;
/// How often the newest id is looked at: an entry seen there one interval ago and still not
/// taken is read back (its push was lost, with nothing after it to show the gap).
const PROBE: Duration = Duration::from_secs(2);
/// After a failed subscribe or read, how long before the next try.
const RETRY: Duration = Duration::from_millis(200);
/// Envelopes handed to the core but not yet taken, at most: past this the reader waits (and
/// Valkey holds the rest), rather than the pod buffering without bound.
const INBOUND: usize = 8_192;

/// Appends an entry after the stream's newest and pushes it as `prev \n id \n envelopes \n pod`
/// (JSON has no raw line break; the pod's name comes last, so it may hold anything). The
/// predecessor is read from the stream itself, so entries written without a push (by a pod of
/// the previous version, during a rolling upgrade) are in the chain too. KEYS: stream. ARGV: pod,
/// envelopes, cap, channel.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
          local prev = newest[1] and newest[1][1] or '0-0'
          local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
                                'pod', ARGV[1], 'e', ARGV[2], 'p', prev)
          redis.call('PUBLISH', ARGV[4], prev .. '\n' .. id .. '\n' .. ARGV[2] .. '\n' .. ARGV[1])
          return id",
    )
});

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
        let _: String = APPEND
            .evalsha_with_reload(
                &self.client,
                vec![STREAM],
                vec![
                    Bytes::from(self.instance.clone()),
                    Bytes::from(payload),
                    Bytes::from(STREAM_CAP.to_string()),
                    Bytes::from_static(CHANNEL.as_bytes()),
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

/// Where a pod is in the stream: the last entry it took, in which incarnation of the stream.
struct Position {
    last: String,
    epoch: String,
}

/// Why reading stopped short.
enum Halt {
    Failed(BusError),
    /// The core stopped listening: the pod is stopping.
    CoreGone,
}

impl From<BusError> for Halt {
    fn from(e: BusError) -> Halt {
        Halt::Failed(e)
    }
}

/// What to do with an entry, given the last one taken.
#[derive(Debug, PartialEq)]
enum Next {
    /// It follows the last one taken.
    Take,
    /// Not after the last one taken: taken already (read back from the stream before its push
    /// came).
    Seen,
    /// Entries between the last one taken and this one were missed: read them back first.
    Missed,
}

fn next(last: &str, prev: &str, id: &str) -> Next {
    if !id_after(id, last) {
        Next::Seen
    } else if prev == last {
        Next::Take
    } else {
        Next::Missed
    }
}

/// A pushed entry: `prev \n id \n envelopes \n pod`.
struct Push<'a> {
    prev: &'a str,
    id: &'a str,
    envelopes: &'a [u8],
    pod: &'a [u8],
}

impl<'a> Push<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Push<'a>> {
        let mut parts = bytes.splitn(4, |b| *b == b'\n');
        Some(Push {
            prev: std::str::from_utf8(parts.next()?).ok()?,
            id: std::str::from_utf8(parts.next()?).ok()?,
            envelopes: parts.next()?,
            pod: parts.next()?,
        })
    }
}

/// A pod's reading of the bus, and what it must do before taking pushes again.
#[derive(Default)]
struct Reader {
    /// None until the first subscription: reading starts after the newest entry then.
    position: Option<Position>,
    subscribed: bool,
    /// The subscription was lost and renewed: the core is owed a resync.
    resync: bool,
    /// Entries may have been missed: read them back from the stream first.
    behind: bool,
}

impl Reader {
    /// Whether pushes can be taken: subscribed, placed in the stream, owing nothing.
    fn ready(&self) -> bool {
        self.subscribed && self.position.is_some() && !self.resync && !self.behind
    }
}

impl ValkeyBus {
    /// Hands every entry other pods publish to the core, in order, until `shutdown` or until the
    /// core stops listening.
    pub(super) async fn read_stream(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(inbound) = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let mut pushes = self.reader.message_rx();
        let mut reconnects = self.reader.reconnect_rx();
        let mut probe = tokio::time::interval(PROBE);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The newest id the last probe saw.
        let mut probed: Option<String> = None;
        let mut reader = Reader::default();
        let mut failing = false;
        loop {
            if !reader.ready() {
                let recovered = shutdown
                    .run_until_cancelled(self.recover(&mut reader, &inbound))
                    .await;
                match recovered {
                    None | Some(Err(Halt::CoreGone)) => return,
                    Some(Ok(())) => failing = false,
                    Some(Err(Halt::Failed(e))) => {
                        if !failing {
                            tracing::warn!(error = %e, "reading the bus failed; retrying");
                        }
                        failing = true;
                        shutdown
                            .run_until_cancelled(tokio::time::sleep(RETRY))
                            .await;
                        continue;
                    }
                }
            }
            // (Ready: it has one.)
            let Some(at) = reader.position.as_mut() else {
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                push = pushes.recv() => match push {
                    Ok(message) => {
                        let Some(push) = message.value.as_bytes().and_then(Push::parse) else {
                            tracing::warn!("an undecodable push on the bus");
                            continue;
                        };
                        match next(&at.last, push.prev, push.id) {
                            Next::Seen => {}
                            Next::Missed => reader.behind = true,
                            Next::Take => {
                                at.last = push.id.to_owned();
                                if !self.hand_over(push.pod, push.envelopes, &inbound).await {
                                    return;
                                }
                            }
                        }
                    }
                    // More pushes came than the buffer holds: the oldest were dropped.
                    Err(RecvError::Lagged(_)) => reader.behind = true,
                    Err(RecvError::Closed) => return,
                },
                reconnect = reconnects.recv() => match reconnect {
                    // The subscription went with the connection, and pushes with it.
                    Ok(_) | Err(RecvError::Lagged(_)) => reader.subscribed = false,
                    Err(RecvError::Closed) => return,
                },
                _ = probe.tick() => {
                    if probed.as_ref().is_some_and(|seen| id_after(seen, &at.last)) {
                        reader.behind = true;
                    }
                    match shutdown.run_until_cancelled(self.newest()).await {
                        Some(newest) => probed = newest.ok(),
                        None => return,
                    }
                }
            }
        }
    }

    /// Subscribes again if the subscription was lost, resyncs the core if it is owed that, then
    /// reads back from the stream what came after the last entry taken. Subscribing first means
    /// nothing published meanwhile is missed: what is both pushed and read back is taken once.
    async fn recover(
        &self,
        reader: &mut Reader,
        inbound: &mpsc::Sender<Inbound>,
    ) -> Result<(), Halt> {
        if !reader.subscribed {
            self.reader
                .subscribe(CHANNEL)
                .await
                .map_err(failed("subscribing to the bus"))?;
            reader.subscribed = true;
            // Subscribed again: what was in flight may be gone.
            reader.resync = reader.position.is_some();
        }
        let at = match &mut reader.position {
            Some(at) => at,
            // The first subscription: reading starts after the newest entry. (Until this
            // succeeds the reader is not ready, and comes back here after the retry delay.)
            None => {
                let epoch = self.epoch().await?;
                let last = self.newest().await?;
                reader.position = Some(Position { last, epoch });
                return Ok(());
            }
        };
        if reader.resync {
            let state_lost = self.stream_lost(at).await?;
            tracing::info!(state_lost, "reading the bus again; resyncing");
            let resync = Inbound::Resync { state_lost };
            inbound.send(resync).await.map_err(|_| Halt::CoreGone)?;
            (reader.resync, reader.behind) = (false, true);
        }
        if reader.behind {
            self.catch_up(at, inbound).await?;
            reader.behind = false;
        }
        Ok(())
    }

    /// Reads the entries after the last one taken, page by page, until the newest.
    async fn catch_up(
        &self,
        at: &mut Position,
        inbound: &mpsc::Sender<Inbound>,
    ) -> Result<(), Halt> {
        'pages: loop {
            let entries: Vec<(String, HashMap<String, Bytes>)> = self
                .client
                .xrange(STREAM, format!("({}", at.last), "+", Some(READ_COUNT))
                .await
                .map_err(failed("reading the bus"))?;
            let read = entries.len();
            for (id, fields) in entries {
                // An entry without one was written by a pod of the previous version: chained.
                let chained = fields
                    .get("p")
                    .is_none_or(|p| p.as_ref() == at.last.as_bytes());
                if !chained {
                    // The entries between were trimmed away, or lost with Valkey's state.
                    let state_lost = self.stream_lost(at).await?;
                    tracing::warn!(
                        state_lost,
                        "entries of the bus were lost to this reader; resyncing"
                    );
                    let resync = Inbound::Resync { state_lost };
                    inbound.send(resync).await.map_err(|_| Halt::CoreGone)?;
                    if state_lost {
                        // A new stream: read it from its start (`at` was moved there).
                        continue 'pages;
                    }
                }
                at.last = id;
                let (Some(pod), Some(envelopes)) = (fields.get("pod"), fields.get("e")) else {
                    continue;
                };
                if !self.hand_over(pod, envelopes, inbound).await {
                    return Err(Halt::CoreGone);
                }
            }
            if read < READ_COUNT as usize {
                return Ok(());
            }
        }
    }

    /// Hands an entry's envelopes to the core, unless this pod published them (the core
    /// delivered those itself). False when the core stopped listening.
    async fn hand_over(
        &self,
        pod: &[u8],
        envelopes: &[u8],
        inbound: &mpsc::Sender<Inbound>,
    ) -> bool {
        if pod == self.instance.as_bytes() {
            return true;
        }
        let envelopes: Vec<Envelope> = serde_json::from_slice(envelopes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "undecodable bus entry");
            Vec::new()
        });
        for envelope in envelopes {
            if inbound.send(Inbound::Envelope(envelope)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Whether Valkey lost the stream since `at` was taken; if so, reading starts over on the
    /// new one, from its first entry. A stream whose newest entry is before the last one taken
    /// went back (Valkey restored from a snapshot, or a promoted replica): its next entries could
    /// have ids already taken, so reading goes on from its newest.
    async fn stream_lost(&self, at: &mut Position) -> Result<bool, BusError> {
        let epoch = self.epoch().await?;
        if epoch != at.epoch {
            *at = Position {
                last: "0-0".into(),
                epoch,
            };
            return Ok(true);
        }
        let newest = self.newest().await?;
        if id_after(&at.last, &newest) {
            at.last = newest;
            return Ok(true);
        }
        Ok(false)
    }

    /// The newest entry's id ("0-0" before the first).
    async fn newest(&self) -> Result<String, BusError> {
        let newest: Vec<(String, HashMap<String, Bytes>)> = self
            .client
            .xrevrange(STREAM, "+", "-", Some(1))
            .await
            .map_err(failed("reading the bus"))?;
        Ok(newest
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_taken_only_right_after_the_last_one() {
        assert_eq!(next("5-0", "5-0", "6-0"), Next::Take);
        assert_eq!(next("5-0", "5-1", "6-0"), Next::Missed);
        assert_eq!(next("5-0", "4-0", "5-0"), Next::Seen);
        assert_eq!(next("5-0", "3-0", "4-0"), Next::Seen);
        // The first entry of a stream follows "0-0".
        assert_eq!(next("0-0", "0-0", "1-0"), Next::Take);
    }

    #[test]
    fn a_push_keeps_whatever_the_pod_name_holds() {
        let push = Push::parse(b"1-0\n2-0\n[{\"a\":1}]\npod\nwith\nbreaks").unwrap();
        assert_eq!((push.prev, push.id), ("1-0", "2-0"));
        assert_eq!(push.envelopes, b"[{\"a\":1}]");
        assert_eq!(push.pod, b"pod\nwith\nbreaks");
        assert!(Push::parse(b"1-0\n2-0").is_none());
    }
}
