//! Feeding a receiver from a position: at once from the ring when it reaches back that far, else
//! after a catch-up from the store — page by page, each page checked for contiguity, queued only
//! as fast as the receiver takes it — then live. Also where streams following an HTTP session
//! are moved into its new room.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::room::Attach;
use super::{Inner, PACE_LIMIT, PAGE, backoff, lock};
use crate::core::model::{Broadcast, Delivery, Position, Room, SessionRecord};
use crate::core::outbox::Outbox;
use crate::core::ports::StoreError;

/// Room a catch-up leaves in the receiver's queue for what else comes meanwhile (a DM, a move,
/// the first live messages after the hand-over).
const HEADROOM: usize = 64;

impl Inner {
    /// Feeds `member` live from after `cursor`, after a catch-up in the background if the ring
    /// does not reach back that far. `wanted` says whether the receiver still wants it.
    pub(super) async fn attach(
        self: Arc<Self>,
        room: &Room,
        member: Outbox,
        cursor: i64,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        let Some(from) = self.attach_now(room, &member, cursor, &wanted).await? else {
            return Ok(());
        };
        let inner = self.clone();
        let room = room.clone();
        self.tasks.spawn(
            async move { inner.catch_up(room, member, from, wanted).await }.in_current_span(),
        );
        Ok(())
    }

    /// One attempt: `None` when attached (or no longer wanted), else where a catch-up must start.
    async fn attach_now(
        &self,
        room: &Room,
        member: &Outbox,
        cursor: i64,
        wanted: &(impl Fn() -> bool + Send + Sync),
    ) -> Result<Option<i64>, StoreError> {
        // Asked before any lock is taken: it reads the directory.
        if !wanted() {
            return Ok(None);
        }
        let attached = self
            .enter(room, |feed| feed.attach(member.clone(), cursor))
            .await?;
        Ok(match attached {
            Attach::Live => None,
            Attach::CatchUpFrom(from) => Some(from),
        })
    }

    /// Reads what `member` missed after `cursor` from the store and queues it, then attaches it
    /// live. At most `MAX_CATCH_UPS` run at once on a pod; a receiver that does not make room in
    /// its queue within `PACE_LIMIT` is too slow and is cut off, freeing its turn.
    async fn catch_up(
        self: Arc<Self>,
        room: Room,
        member: Outbox,
        mut cursor: i64,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let Ok(_turn) = self.catch_ups.acquire().await else {
            return;
        };
        let mut delays = backoff();
        loop {
            if !wanted() || self.shutdown.is_cancelled() {
                return;
            }
            let page = match self.store.messages_after(room.id, cursor, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, room = %room.name, "catch-up read failed; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                    continue;
                }
            };
            let progressed = !page.is_empty();
            if !self
                .queue_page(&room, &member, cursor, page, &mut cursor)
                .await
            {
                return;
            }
            match self.attach_now(&room, &member, cursor, &wanted).await {
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

    /// Queues one page read after `after`, in pieces the receiver's queue has room for. A page
    /// that does not start right after `after` means retention took what is in between: the
    /// receiver is told so first. False when the receiver is gone or too slow.
    async fn queue_page(
        &self,
        room: &Room,
        member: &Outbox,
        after: i64,
        page: Vec<crate::core::model::ChatMessage>,
        cursor: &mut i64,
    ) -> bool {
        let piece = (member.capacity() / 2).max(1);
        let headroom = HEADROOM.min(member.capacity() / 4);
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(page.len() + 1);
        if let Some(first) = page.first().map(|m| m.seq)
            && first != after + 1
        {
            deliveries.push(Delivery::reset(room.name.clone(), first));
        }
        if let Some(last) = page.last() {
            *cursor = last.seq;
        }
        deliveries.extend(
            page.into_iter()
                .map(|m| Delivery::Event(Broadcast::message(m))),
        );
        for chunk in deliveries.chunks(piece) {
            if !member
                .wait_for_room(chunk.len() + headroom, PACE_LIMIT)
                .await
            {
                return false;
            }
            if !chunk.iter().all(|d| member.push(d.clone())) {
                return false;
            }
        }
        true
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
            let follow = async move {
                let mut delays = backoff();
                loop {
                    let wanted = inner.clone().follower_wanted(outbox.clone(), generation);
                    let still = wanted();
                    match inner
                        .clone()
                        .attach(&room, outbox.clone(), seen, wanted)
                        .await
                    {
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

    /// Whether a follower is still there and has not moved on since `generation`.
    pub(super) fn follower_wanted(
        self: Arc<Self>,
        outbox: Outbox,
        generation: u64,
    ) -> impl Fn() -> bool + Send + Sync + 'static {
        move || {
            outbox.is_open()
                && lock(&self.directory).generation(outbox.session, outbox.id) == Some(generation)
        }
    }
}
