//! The protocol-agnostic chat core: sessions, names, commands, rooms, history and routing.
//!
//! It must not depend on sockets, axum or SQL: adapters call [`chat::Chat`], and the core reaches
//! storage and other pods only through the [`Store`](crate::store::Store) and
//! [`Bus`](crate::bus::Bus) traits.

pub mod chat;
pub mod command;
pub mod commit;
pub mod error;
pub mod history;
pub mod hub;
pub mod model;
pub mod names;
pub mod session;
pub mod stream;

pub use chat::{Chat, Limits, Reply};
pub use error::Error;
pub use session::{Session, Transport};
