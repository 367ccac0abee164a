//! Feeding a receiver from a position: at once from the ring when it reaches back that far, else
//! as a member *behind*, brought level by a catch-up from the store — page by page, each page
//! checked for contiguity, read only once the receiver's queue has room for it — then live. A
//! member that falls behind because what a gap held came all at once is brought level the same
//! way. Also where streams following an HTTP session are moved into its new room.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::room::{Attach, CaughtUp};
use super::{Inner, PACE_LIMIT, PAGE, backoff, lock};
use crate::core::model::{Delivery, Position, Room, SessionId, SessionRecord};
use crate::core::outbox::Outbox;
use crate::core::ports::StoreError;

/// How often a catch-up waiting for room looks whether its receiver is still behind.
const MOMENT: Duration = Duration::from_millis(100);

/// A receiver to feed from a position, and the route that must still lead to it when it
/// becomes a member of the room.
#[derive(Clone)]
pub(super) struct Reader {
    pub outbox: Outbox,
    /// For a stream following its session: the stream's generation when this feeding began. A
    /// move of the session since makes it stale.
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
        if !self.wanted(&reader) {
            return Ok(());
        }
        // Asked again under the feed's lock: a move of a following stream's session takes that
        // lock to leave the room, so the stream joins the feed before that leave or not at all.
        let attached = self
            .enter(room, |feed| {
                self.wanted(&reader)
                    .then(|| feed.attach(reader.outbox.clone(), cursor))
            })
            .await?;
        match attached {
            Some(Attach::Live) => {}
            Some(Attach::Behind(turn)) => self.bring_up(room, vec![(reader.outbox.id, turn)]),
            None => self.forget_if_empty(&room.name),
        }
        Ok(())
    }

    /// Whether `reader` still wants to be fed.
    fn wanted(&self, reader: &Reader) -> bool {
        reader.outbox.is_open()
            && reader.follows.is_none_or(|generation| {
                let directory = lock(&self.directory);
                directory.generation(reader.outbox.session, reader.outbox.id) == Some(generation)
            })
    }

    /// Starts a catch-up for each member of `room` that is behind, with its turn.
    pub(super) fn bring_up(self: &Arc<Self>, room: &Room, behind: Vec<(SessionId, u64)>) {
        for (id, turn) in behind {
            let inner = self.clone();
            let room = room.clone();
            self.tasks
                .spawn(async move { inner.catch_up(room, id, turn).await }.in_current_span());
        }
    }

    /// Reads what member `id` of `room` missed from the store and offers it, a page at a time,
    /// until it is level — for as long as it is a member, behind under this `turn` (the number
    /// of this catch-up, not a read permit). A page is read only once the receiver's queue can
    /// take it whole, so nothing waits while holding a page; a receiver that does not make that
    /// room within `PACE_LIMIT` is too slow and leaves the room. Each page read takes a turn: at most `MAX_CATCH_UPS` read at once on a
    /// pod, so a long catch-up never keeps another waiting longer than their pages.
    async fn catch_up(self: Arc<Self>, room: Room, id: SessionId, turn: u64) {
        let mut delays = backoff();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let Some(cell) = self.cell(&room.name) else {
                return;
            };
            let Some((outbox, cursor)) = cell.feed().behind(id, turn) else {
                return;
            };
            // A page is half its queue (or PAGE): read once it can be offered whole.
            let n = (outbox.capacity() / 2).clamp(1, PAGE);
            if outbox.room_to_offer() < n {
                let deadline = Instant::now() + PACE_LIMIT;
                // Looked at again every moment: it may leave the room (or go) meanwhile, and
                // then it is not this catch-up's to cut off.
                while outbox.room_to_offer() < n {
                    outbox.wait_for_room(n, MOMENT).await;
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    if !outbox.is_open() || cell.feed().behind(id, turn).is_none() {
                        self.leave_if_behind(&room.name, id, turn);
                        return;
                    }
                    if Instant::now() >= deadline {
                        outbox.cut_off();
                        self.leave_if_behind(&room.name, id, turn);
                        return;
                    }
                }
            }
            drop(outbox);
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
            let step = cell.feed().catch_up(id, turn, cursor, page);
            match step {
                CaughtUp::Level => return,
                CaughtUp::Gone => {
                    self.forget_if_empty(&room.name);
                    return;
                }
                // Its queue filled meanwhile (a DM, an event): it waits for room above.
                CaughtUp::After(_) => delays = backoff(),
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
                self.leave(&old, outbox.id);
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
