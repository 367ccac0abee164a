//! The protocol-agnostic chat core: sessions, names, commands, rooms, and delivery — each room's
//! order, gap repair, catch-up, history ring and fan-out.
//!
//! It knows no sockets, axum, SQL or Valkey. Adapters call [`Chat`]; the core reaches storage and
//! other pods only through the traits of [`ports`], which `store` and `bus` implement below it.
//! Data flows one way: adapter → [`Chat`] → [`commit`] (store, then this pod's [`feed`]s and the
//! bus) → every pod's feeds → receivers' [`outbox`]es → adapter writers.

pub mod chat;
pub mod command;
pub mod commit;
pub mod error;
pub mod feed;
pub mod model;
pub mod names;
pub mod outbox;
pub mod ports;
pub mod session;

pub use chat::{Chat, EventStream, Limits, Ports, Reply, Resume};
pub use error::Error;
pub use session::{Session, Show, Transport};
