//! What must survive a restart — users, rooms, memberships, messages — behind the core's
//! [`Store`](crate::core::ports::Store) port.
//!
//! Implementations: [`postgres::PgStore`] (production) and [`memory::MemoryStore`] (unit tests
//! and `cargo run` without a database); [`breaker::BreakerStore`] guards the first. Also the
//! retention job and the `archive`/`replay` commands, which are PostgreSQL's own.

pub mod archive;
pub mod breaker;
pub mod memory;
pub mod postgres;
pub mod retention;
