//! Chat lines and direct messages.

use time::OffsetDateTime;

use super::Chat;
use crate::core::commit::Ack;
use crate::core::error::Error;
use crate::core::model::{Envelope, MessageKey, NewMessage};
use crate::core::names::Nickname;
use crate::core::session::Session;
use crate::telemetry::metric;

impl Chat {
    /// Queues a chat message for the session's room; the ack resolves once it is committed. A
    /// `key` makes a retry of the same send idempotent; without one the message gets its own.
    pub(super) async fn send(
        &self,
        session: &Session,
        content: String,
        key: Option<MessageKey>,
    ) -> Result<Ack, Error> {
        let (Some(user), Some(room)) = (&session.user, &session.room) else {
            return Err(Error::NotInRoom);
        };
        if content.chars().count() > self.limits.max_message_chars {
            return Err(Error::MessageTooLong);
        }
        metrics::counter!(metric::MESSAGES, "transport" => session.transport.label()).increment(1);
        let message = NewMessage {
            key: key.unwrap_or_else(uuid::Uuid::new_v4),
            client_keyed: key.is_some(),
            room_id: room.id,
            room: room.name.clone(),
            user_id: user.id,
            user: user.nick.clone(),
            content,
            created_at: OffsetDateTime::now_utc(),
        };
        Ok(self.committer.submit(message).await)
    }

    /// Sends a direct message: it reaches the recipient's receivers on every pod, or the sender is
    /// told it could not.
    pub(super) async fn dm(
        &self,
        session: &Session,
        to: Nickname,
        content: String,
    ) -> Result<String, Error> {
        let from = session.nick().ok_or(Error::UnknownSession)?.clone();
        if content.chars().count() > self.limits.max_message_chars {
            return Err(Error::MessageTooLong);
        }
        if from == to {
            return Err(Error::DmToSelf);
        }
        let to = self
            .presence
            .find_online(&to)
            .await?
            .ok_or(Error::UnknownUser(to.to_string()))?;
        let reply = format!("[DM to {to}] {content}");
        let dm = Envelope::Dm { from, to, content };
        self.publisher.publish_confirmed(dm.clone()).await?;
        self.feeds.deliver(dm);
        Ok(reply)
    }
}
