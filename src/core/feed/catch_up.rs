//! Feeding a receiver from a position: at once from the ring when it reaches back that far, else
//! after a catch-up from the store — page by page, each page checked for contiguity, queued only
//! as fast as the receiver takes it — then live. Also where streams following an HTTP session
//! are moved into its new room.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::room::Attach;
use super::{Inner, PACE_LIMIT, PAGE, backoff, lock};
use crate::core::model::{Broadcast, ChatMessage, Delivery, Position, Room, SessionRecord};
use crate::core::outbox::Outbox;
use crate::core::ports::StoreError;

/// Room a catch-up leaves in the receiver's queue for what else comes meanwhile (a DM, a move,
/// the first live messages after the hand-over).
const HEADROOM: usize = 64;

/// A receiver fed from a position, and the route that must still lead to it whenever something
/// is queued for it.
#[derive(Clone)]
pub(super) struct Reader {
    pub outbox: Outbox,
    /// For a stream following its session: the stream's generation when this feeding began. A
    /// move of the session since makes whatever this feeding would still queue stale.
    pub follows: Option<u64>,
}

impl Inner {
    /// Feeds `reader` live from after `cursor`, after a catch-up in the background if the ring
    /// does not reach back that far.
    pub(super) async fn attach(
        self: Arc<Self>,
        room: &Room,
        reader: Reader,
        cursor: i64,
    ) -> Result<(), StoreError> {
        let Some(from) = self.attach_now(room, &reader, cursor).await? else {
            return Ok(());
        };
        let inner = self.clone();
        let room = room.clone();
        self.tasks
            .spawn(async move { inner.catch_up(room, reader, from).await }.in_current_span());
        Ok(())
    }

    /// Whether `reader` still wants what is being fed to it.
    fn wanted(&self, reader: &Reader) -> bool {
        reader.outbox.is_open()
            && reader.follows.is_none_or(|generation| {
                let directory = lock(&self.directory);
                directory.generation(reader.outbox.session, reader.outbox.id) == Some(generation)
            })
    }

    /// Queues `deliveries` for `reader` if it still wants them, in one step with asking, under
    /// the directory's lock: a move of its session comes wholly before (nothing is queued) or
    /// after (what is queued comes before the move's notice). False when nothing was queued, or
    /// the receiver is gone or too slow.
    fn queue_if_wanted(&self, reader: &Reader, deliveries: &[Delivery]) -> bool {
        let outbox = &reader.outbox;
        let directory = reader.follows.map(|g| (g, lock(&self.directory)));
        if let Some((generation, directory)) = &directory
            && directory.generation(outbox.session, outbox.id) != Some(*generation)
        {
            return false;
        }
        deliveries.iter().all(|d| outbox.push(d.clone()))
    }

    /// One attempt: `None` when attached (or no longer wanted), else where a catch-up must start.
    async fn attach_now(
        &self,
        room: &Room,
        reader: &Reader,
        cursor: i64,
    ) -> Result<Option<i64>, StoreError> {
        if !self.wanted(reader) {
            return Ok(None);
        }
        // Asked again under the feed's lock: a move of a following stream's session takes that
        // lock to leave the room, so the stream joins the feed before that leave or not at all.
        let attached = self
            .enter(room, |feed| {
                self.wanted(reader)
                    .then(|| feed.attach(reader.outbox.clone(), cursor))
            })
            .await?;
        Ok(match attached {
            Some(Attach::CatchUpFrom(from)) => Some(from),
            Some(Attach::Live) => None,
            None => {
                self.forget_if_empty(&room.name);
                None
            }
        })
    }

    /// Reads what `reader` missed after `cursor` from the store and queues it, a page at a time,
    /// then attaches it live. A page is read only once the receiver's queue has room for it, so
    /// nothing waits while holding a page; a receiver that makes no room within `PACE_LIMIT` is
    /// too slow and is cut off. Each page read takes a turn: at most `MAX_CATCH_UPS` read at
    /// once on a pod, so a long catch-up never keeps another waiting longer than their pages.
    async fn catch_up(self: Arc<Self>, room: Room, reader: Reader, mut cursor: i64) {
        let outbox = &reader.outbox;
        // Half its queue at most: a page queued at once never fills it.
        let n = (outbox.capacity() / 2).clamp(1, PAGE);
        let headroom = HEADROOM.min(outbox.capacity() / 4);
        let mut delays = backoff();
        loop {
            if !self.wanted(&reader) || self.shutdown.is_cancelled() {
                return;
            }
            if !outbox.wait_for_room(n + headroom, PACE_LIMIT).await {
                return;
            }
            let read = {
                let Ok(_turn) = self.catch_ups.acquire().await else {
                    return;
                };
                self.store.messages_after(room.id, cursor, n).await
            };
            let page = match read {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, room = %room.name, "catch-up read failed; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                    continue;
                }
            };
            let progressed = !page.is_empty();
            let after = cursor;
            if let Some(last) = page.last() {
                cursor = last.seq;
            }
            if !self.queue_if_wanted(&reader, &page_deliveries(&room, after, page)) {
                return;
            }
            match self.attach_now(&room, &reader, cursor).await {
                Ok(None) => return,
                Ok(Some(from)) => {
                    cursor = from;
                    if !progressed {
                        // The feed is ahead of the store (a restore took messages back): the
                        // probe rewinds it; until then, do not spin.
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, room = %room.name, "a catch-up could not attach; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// A followed session moved: its streams here leave the old room and follow into the new one
    /// — retrying, while they are still wanted there, if the new room cannot be read right now.
    pub(super) fn move_followers(self: Arc<Self>, record: SessionRecord) {
        let moved = lock(&self.directory).moved(&record);
        let (room, seen) = (record.room, record.seen);
        for (outbox, old, generation) in moved {
            if let Some(old) = old {
                let mut rooms = lock(&self.rooms);
                if let Some(cell) = rooms.get(&old)
                    && cell.feed().leave(outbox.id)
                {
                    rooms.remove(&old);
                }
            }
            let position = Position {
                room: room.as_ref().map(|r| r.name.clone()),
                seen,
            };
            if !outbox.push(Delivery::moved(position)) {
                continue;
            }
            let Some(room) = room.clone() else { continue };
            let inner = self.clone();
            let reader = Reader {
                outbox,
                follows: Some(generation),
            };
            let follow = async move {
                let mut delays = backoff();
                loop {
                    let still = inner.wanted(&reader);
                    match inner.clone().attach(&room, reader.clone(), seen).await {
                        Ok(()) => return,
                        Err(_) if !still || inner.shutdown.is_cancelled() => return,
                        Err(e) => {
                            tracing::warn!(error = %e, room = %room.name, "a stream could not follow its session yet; retrying");
                            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5)))
                                .await;
                        }
                    }
                }
            };
            self.tasks.spawn(follow.in_current_span());
        }
    }
}

/// What a page read after `after` queues: a reset first when it does not start right after
/// `after` (retention took what is in between), then its messages.
fn page_deliveries(room: &Room, after: i64, page: Vec<ChatMessage>) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(page.len() + 1);
    if let Some(first) = page.first().map(|m| m.seq)
        && first != after + 1
    {
        deliveries.push(Delivery::reset(room.name.clone(), first));
    }
    deliveries.extend(
        page.into_iter()
            .map(|m| Delivery::Event(Broadcast::message(m))),
    );
    deliveries
}
