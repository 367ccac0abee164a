//! What replicas share while they run, behind the core's ports: the [`Bus`](crate::core::ports::Bus)
//! (moving envelopes between pods), [`Presence`](crate::core::ports::Presence) (nickname claims,
//! who is in which room) and [`Sessions`](crate::core::ports::Sessions) (HTTP sessions).
//!
//! Implementations: [`local::LocalBus`] (one process: `cargo run`, unit tests) and
//! [`valkey::ValkeyBus`] (N replicas). Neither reads the store nor calls into the core: they move
//! bytes and keep shared state; the core repairs what they lose.

pub mod local;
pub mod valkey;
