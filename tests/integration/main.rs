//! The integration suite: one binary, so it builds once. Each test starts its own server on
//! loopback port 0 (and, where it needs them, its own throwaway PostgreSQL / Valkey).

mod abuse;
mod api_description;
mod browser;
mod cluster;
mod faults;
mod helpers;
mod http;
mod http_client;
mod operability;
mod postgres;
mod presence;
mod services;
mod sessions;
mod tcp_commands;
mod tcp_limits;
mod tcp_process;
