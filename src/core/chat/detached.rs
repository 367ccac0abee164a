//! Requests of HTTP sessions, which live in the shared session store rather than on a pod: each
//! request loads its session, runs, and saves what changed.
//!
//! Two requests of one session can run at once on two pods (a browser sends `/nick` and `/join`
//! together). A command that changes the session holds the session's lock while it runs and
//! saves by compare-and-set on the record's version, so neither change is lost and a session is
//! never shown under a name it gave up. Messages do not change the session and take no lock.

use uuid::Uuid;

use super::{Chat, Reply};
use crate::core::command::{self, Command, Input};
use crate::core::error::Error;
use crate::core::model::{ChatMessage, SessionId};
use crate::core::names::sanitize;
use crate::core::session::Session;
use std::time::Duration;

/// How long a request waits for another request of its session to finish.
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a lock lasts if its holder never releases it (it died mid-request).
pub(super) const LOCK_LEASE: Duration = Duration::from_secs(15);

/// Client message ids are scoped to their session: the same id from two sessions is two messages.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a55_0a3e_4d7b_9c2e_5b7d_1e0f_a4c3);

impl Chat {
    /// The HTTP session with this id, for a request that does not change it.
    pub async fn resume(&self, id: SessionId) -> Result<Session, Error> {
        let stored = self.sessions.load(id).await?.ok_or(Error::UnknownSession)?;
        Ok(Session::detached(stored.record, stored.version))
    }

    /// Runs one line for an HTTP session. A chat line's reply is its ack; `/quit` ends the session.
    pub async fn command(&self, id: SessionId, line: &str) -> Result<Reply, Error> {
        if line.len() > self.limits.max_line_bytes {
            return Err(Error::LineTooLong);
        }
        let changes_session = matches!(
            command::parse(&sanitize(line)),
            Some(Ok(Input::Command(
                Command::Nick(_)
                    | Command::Join(_)
                    | Command::Create(_)
                    | Command::Leave
                    | Command::Quit
            )))
        );
        if !changes_session {
            let mut session = self.resume(id).await?;
            let reply = self.handle(&mut session, line).await;
            self.touch_quietly(id).await;
            return reply;
        }
        let lock = self
            .sessions
            .lock(id, LOCK_WAIT, LOCK_LEASE)
            .await?
            .ok_or(Error::SessionBusy)?;
        let result = self.command_locked(id, line).await;
        self.sessions.unlock(lock).await;
        result
    }

    async fn command_locked(&self, id: SessionId, line: &str) -> Result<Reply, Error> {
        let stored = self.resume(id).await?;
        let saved_nick = stored.nick().cloned();
        let before = stored.record();
        let mut session = stored;
        let reply = self.handle(&mut session, line).await;
        let given_up = std::mem::take(&mut session.given_up);
        if let Ok(Reply::Quit(_)) = reply {
            for nick in &given_up {
                self.presence.release(nick, id).await;
            }
            self.close(session).await;
            return reply;
        }
        // Saved even after an error: a command may have changed the session before failing.
        let mut record = session.record().ok_or(Error::UnknownSession)?;
        let changed = before.as_ref() != Some(&record);
        if changed {
            record.revise_from(before.as_ref());
        }
        let saved = self
            .sessions
            .save(&record, session.version, self.limits.session_idle)
            .await;
        match saved {
            Ok(true) => {
                for nick in &given_up {
                    self.presence.release(nick, id).await;
                }
                // Its streams follow only a move that was saved: one published before a save
                // that then failed would take them where the session is not, and its next
                // keepalive back — re-showing the room from the session's join.
                if changed {
                    self.publish_moved(record);
                }
                reply
            }
            failed => {
                // The stored session still goes by its old name: the new one goes back.
                if saved_nick
                    .as_ref()
                    .is_some_and(|old| old.key() != record.nick.key())
                {
                    self.presence.release(&record.nick, id).await;
                }
                match failed {
                    Err(e) => Err(e.into()),
                    // Only if the lock lapsed mid-request: the record now says something else;
                    // the client must look again.
                    _ => {
                        tracing::warn!(session = %id, "a session changed while its lock was held");
                        Err(Error::SessionBusy)
                    }
                }
            }
        }
    }

    /// Posts a chat message for an HTTP session, its content as written (sanitised and trimmed,
    /// but never read as a command). With a client message id, a retry (on any pod)
    /// returns the original message and stores nothing.
    pub async fn post(
        &self,
        id: SessionId,
        content: &str,
        client_id: Option<&str>,
    ) -> Result<ChatMessage, Error> {
        let session = self.resume(id).await?;
        // Posted as written, a leading `/` included: commands have their own route. The limit
        // is on the content as sent, so that it is the one the API description can state.
        if content.chars().count() > self.limits.max_message_chars {
            return Err(Error::MessageTooLong);
        }
        let content = sanitize(content).trim().to_owned();
        if content.is_empty() {
            return Err(Error::EmptyMessage);
        }
        self.check_rate(&session).await?;
        let key = client_id.map(|c| Uuid::new_v5(&KEY_NAMESPACE, format!("{id}:{c}").as_bytes()));
        let ack = match (self.send(&session, content, key).await, key) {
            (Ok(ack), _) => ack,
            // A retry after the session left its room: the original, if it was stored.
            (Err(Error::NotInRoom), Some(key)) => {
                return self
                    .store
                    .message_by_key(key)
                    .await?
                    .ok_or(Error::NotInRoom);
            }
            (Err(e), _) => return Err(e),
        };
        let message = ack.committed().await?;
        // Activity keeps the session alive; but an acknowledgement earned is never taken back.
        self.touch_quietly(id).await;
        Ok(message)
    }

    /// Ends an HTTP session.
    pub async fn disconnect(&self, id: SessionId) -> Result<(), Error> {
        let lock = self
            .sessions
            .lock(id, LOCK_WAIT, LOCK_LEASE)
            .await?
            .ok_or(Error::SessionBusy)?;
        let result = match self.resume(id).await {
            Ok(session) => {
                self.close(session).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.sessions.unlock(lock).await;
        result
    }

    async fn touch_quietly(&self, id: SessionId) {
        if let Err(e) = self
            .sessions
            .touch(id, self.limits.session_idle)
            .await
            .map(drop)
        {
            tracing::warn!(error = %e, session = %id, "keeping the session alive failed");
        }
    }
}
