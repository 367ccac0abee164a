//! Event streams for clients that cannot hold a socket open both ways (SSE): one room's events,
//! or everything an HTTP session would see, with a catch-up of what the client missed.
//!
//! A stream attaches to the live path *before* reading its catch-up from the store, so nothing
//! committed in between is missed; its [`View`] then drops the live copies of what the catch-up
//! already showed. No gap, no duplicate across the switch.

use std::sync::Arc;

use tokio::sync::watch;

use super::hub::{Hub, Inbox, Position};
use super::model::{ChatMessage, SessionId};
use super::names::RoomName;
use super::session::View;

/// What a reconnecting client missed.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// The messages after the client's last seen seq, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The room's history no longer reaches back to the client's last seq: some were removed.
    pub reset: bool,
}

pub struct EventStream {
    pub catch_up: CatchUp,
    pub inbox: Inbox,
    /// What the stream is showing; `moves` says when a followed session moved.
    pub view: View,
    pub moves: watch::Receiver<Position>,
    pub(super) _route: Route,
}

/// Removes the stream's routes from the hub when the stream is dropped (the client went away, or
/// the server is draining), whatever the reason.
pub(super) enum Route {
    Room {
        hub: Arc<Hub>,
        room: RoomName,
        stream: SessionId,
    },
    Session {
        hub: Arc<Hub>,
        session: SessionId,
        stream: SessionId,
    },
}

impl Drop for Route {
    fn drop(&mut self) {
        match self {
            Route::Room { hub, room, stream } => {
                hub.exit_room(room, *stream);
            }
            Route::Session {
                hub,
                session,
                stream,
            } => hub.unfollow(*session, *stream),
        }
    }
}
