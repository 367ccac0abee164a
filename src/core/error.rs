//! The core's one error type. Its `Display` is the user-facing text that follows `Error: ` on TCP
//! and fills `"error"` in the HTTP envelope; adapters choose the framing and status, never the words.

use super::names::NameError;
use super::ports::{BusError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unknown command: {0}. Type /help for available commands")]
    UnknownCommand(String),
    #[error("Missing argument. Usage: {0}")]
    MissingArgument(&'static str),
    #[error("{0}")]
    InvalidName(#[from] NameError),
    #[error("Nickname already in use: {0}")]
    NicknameInUse(String),
    #[error("Room already exists: {0}")]
    RoomExists(String),
    #[error("No such room: {0}")]
    NoSuchRoom(String),
    #[error("You are not in a room. Use /join <room> or /create <room>")]
    NotInRoom,
    #[error("User not found or offline: {0}")]
    UnknownUser(String),
    #[error("Unknown or expired session")]
    UnknownSession,
    #[error("You cannot send a direct message to yourself")]
    DmToSelf,
    #[error("Message too long")]
    MessageTooLong,
    /// `POST /api/message` with nothing to show once blanks and control characters are gone.
    #[error("Message is empty")]
    EmptyMessage,
    #[error("Rate limit exceeded")]
    RateLimited,
    #[error("Line too long")]
    LineTooLong,
    #[error("Server is full")]
    ServerFull,
    /// The pod's connect-rate limit shed this connection (a reconnect storm).
    #[error("Too many connections, try again later")]
    TooManyConnections,
    /// The store failed or is shedding load: nothing was done. The cause is logged where this
    /// becomes a reply.
    #[error("Service temporarily unavailable")]
    Store(StoreError),
    /// A message may or may not have been stored: the database stopped answering mid-commit and
    /// could not be asked afterwards. A retry with the same client message id is safe.
    #[error("Could not confirm that the message was stored; it may have been")]
    Unconfirmed(StoreError),
    /// Another request of the same HTTP session is changing it; this one did nothing.
    #[error("Another request of this session is in progress; try again")]
    SessionBusy,
    /// The bus (presence, delivery between pods) failed.
    #[error("Service temporarily unavailable")]
    Bus(#[from] BusError),
    /// The server is shutting down and no longer takes new work.
    #[error("Server is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Ambiguous(_) => Error::Unconfirmed(e),
            e => Error::Store(e),
        }
    }
}

// Tests compare errors by what the user would read.
#[cfg(test)]
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}
