//! Baby Discord: a chat server for netcat and browsers at once.
//!
//! A tour, from the inside out:
//! - [`core`]: the protocol-agnostic chat — names, commands, sessions, each room's order, history,
//!   fan-out. It knows no sockets; it reaches storage and the other replicas only through the
//!   traits of [`core::ports`].
//! - [`store`]: what survives restarts (in memory, or PostgreSQL).
//! - [`bus`]: what replicas share live (in process, or Valkey).
//! - [`adapters`]: the TCP line protocol and HTTP + SSE: bytes in, calls on the core, bytes out.
//! - [`app`]: wires one of each together, runs it, drains it on shutdown.
//! - [`config`], [`telemetry`]: settings in, logs and metrics out.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod bus;
pub mod config;
pub mod core;
pub mod store;
pub mod telemetry;
