//! Who a session is: opening and closing sessions, claiming and changing nicknames, and what
//! happens when the pod can no longer vouch for a nickname.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Chat;
use crate::core::error::Error;
use crate::core::model::{Envelope, SessionId, SessionRecord};
use crate::core::names::Nickname;
use crate::core::outbox::{Inbox, queue};
use crate::core::ports::{BusError, Claim, Holder};
use crate::core::session::{Session, Transport, User};
use crate::telemetry::metric;

/// The most a session's close spends on presence (its room event, its nickname's release).
const CLOSE_BUDGET: Duration = Duration::from_millis(500);

impl Chat {
    /// A new, anonymous live session and the queue its events arrive in. The session's `ended`
    /// is cancelled when `stopping` is (the pod draining) or when the session is kicked.
    pub fn open(&self, transport: Transport, stopping: &CancellationToken) -> (Session, Inbox) {
        let id = SessionId::random();
        let (outbox, inbox) = queue(id, id, self.limits.send_queue);
        let session = Session::live(
            transport,
            outbox,
            self.limits.rate_per_sec,
            self.limits.rate_burst,
            stopping.child_token(),
        );
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, session.ended.clone());
        self.count_connection(transport.label(), true);
        (session, inbox)
    }

    /// Gives an anonymous live session its first nickname.
    pub async fn login(&self, session: &mut Session, raw_nick: &str) -> Result<(), Error> {
        let nick = Nickname::parse(raw_nick)?;
        let user = self.claim_user(session.id, nick, Holder::Pod).await?;
        if let Some(outbox) = &session.outbox {
            self.feeds.register_user(&user.nick, outbox);
        }
        session.user = Some(user);
        Ok(())
    }

    /// Starts an HTTP session with this nickname and stores it for every replica.
    pub async fn connect(&self, raw_nick: &str) -> Result<SessionRecord, Error> {
        let nick = Nickname::parse(raw_nick)?;
        let id = SessionId::random();
        let holder = Holder::Session(self.limits.session_idle);
        let user = self.claim_user(id, nick, holder).await?;
        let mut record = SessionRecord {
            id,
            user_id: user.id,
            nick: user.nick,
            room: None,
            seen: 0,
            revision: 0,
            joined: 0,
        };
        record.revise_from(None);
        if let Err(e) = self
            .sessions
            .create(&record, self.limits.session_idle)
            .await
        {
            self.presence.release(&record.nick, id).await;
            return Err(e.into());
        }
        Ok(record)
    }

    /// Ends a session: leaves its room (telling the others), frees its nickname and, for an HTTP
    /// session, forgets it.
    pub async fn close(&self, mut session: Session) {
        if session.outbox.is_some() {
            self.count_connection(session.transport.label(), false);
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&session.id);
        } else if let Err(e) = self.sessions.delete(session.id).await {
            tracing::warn!(error = %e, session = %session.id, "forgetting the session failed");
        }
        if let Some(user) = &session.user
            && let Some(outbox) = &session.outbox
        {
            self.feeds.unregister_user(&user.nick, outbox.id);
        }
        // Bounded: with the bus unreachable (a drain during a Valkey outage, say) the room event
        // and the release are given up on after this; the claim stops being renewed at once
        // and lapses within PRESENCE_TTL.
        let presence = async {
            self.leave_room(&mut session).await;
            if let Some(user) = session.user.take() {
                self.presence.release(&user.nick, session.id).await;
            }
        };
        if tokio::time::timeout(CLOSE_BUDGET, presence).await.is_err() {
            tracing::debug!("closing a session's presence timed out");
        }
    }

    /// What keeps the session's nickname and presence alive: its connection on this pod, or for
    /// an HTTP session, its own activity on any pod.
    pub(super) fn holder(&self, session: &Session) -> Holder {
        if session.outbox.is_some() {
            Holder::Pod
        } else {
            Holder::Session(self.limits.session_idle)
        }
    }

    async fn claim_user(
        &self,
        session: SessionId,
        nick: Nickname,
        holder: Holder,
    ) -> Result<User, Error> {
        match self.presence.claim(&nick, session, holder).await? {
            Claim::Granted => {}
            Claim::Taken => return Err(Error::NicknameInUse(nick.to_string())),
            Claim::Recovering => {
                return Err(Error::Bus(BusError::Unavailable(
                    "presence is being re-registered after an outage".into(),
                )));
            }
        }
        match self.store.upsert_user(&nick).await {
            Ok(id) => Ok(User { id, nick }),
            Err(e) => {
                self.presence.release(&nick, session).await;
                Err(e.into())
            }
        }
    }

    pub(super) async fn rename(
        &self,
        session: &mut Session,
        new: Nickname,
    ) -> Result<String, Error> {
        let old = session.user.clone().ok_or(Error::UnknownSession)?;
        let holder = self.holder(session);
        let user = self.claim_user(session.id, new.clone(), holder).await?;
        if old.nick.key() != new.key() {
            if session.outbox.is_some() {
                self.presence.release(&old.nick, session.id).await;
            } else {
                // An HTTP session gives its old name up only once the new one is saved: until
                // then the stored session still goes by it.
                session.given_up.push(old.nick.clone());
            }
        }
        if let Some(outbox) = &session.outbox {
            self.feeds.unregister_user(&old.nick, outbox.id);
            self.feeds.register_user(&new, outbox);
        }
        session.user = Some(user);
        if let Some(room) = session.room.clone() {
            self.presence
                .set_room(&new, session.id, Some(&room.name), holder)
                .await;
            self.announce(
                session,
                &room.name,
                format!("{} is now known as {new}", old.nick),
            );
        }
        Ok(format!("You are now known as {new}"))
    }

    /// Tells the pods holding a detached session's streams where it is now, and who.
    pub(super) fn publish_moved(&self, record: SessionRecord) {
        let moved = Envelope::SessionMoved(record);
        self.feeds.deliver(moved.clone());
        self.publisher.publish_all([moved]);
    }

    /// Disconnects live sessions whose nickname the presence service says this pod can no longer
    /// vouch for, until `shutdown`.
    pub async fn run_revocations(
        self: Arc<Self>,
        mut revoked: mpsc::UnboundedReceiver<SessionId>,
        shutdown: CancellationToken,
    ) {
        while let Some(Some(id)) = shutdown.run_until_cancelled(revoked.recv()).await {
            let kicked = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            if let Some(kicked) = kicked {
                metrics::counter!(metric::DROPPED, "reason" => "presence_lost").increment(1);
                kicked.cancel();
            }
        }
    }

    /// Closes HTTP sessions idle for longer than SESSION_IDLE_TIMEOUT, every `every`, until
    /// `shutdown`. Any pod may do it; the session store hands each expired session to one of them.
    pub async fn run_session_expiry(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            match self.sessions.take_expired().await {
                Ok(expired) => {
                    for record in expired {
                        tracing::info!(session = %record.id, nick = %record.nick, "HTTP session expired");
                        self.close(Session::detached(record, 0)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiring sessions failed"),
            }
        }
    }
}
