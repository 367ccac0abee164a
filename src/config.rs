//! Configuration: built-in defaults < an optional TOML file (`CONFIG_FILE`) < environment
//! variables, with the names of SPEC §6. A bad value stops start-up with one line naming the
//! setting. A leaf: it imports nothing of the app; `app` turns it into each part's settings.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address both listeners bind; tests use 127.0.0.1.
    pub bind_address: IpAddr,
    pub tcp_port: u16,
    pub http_port: u16,
    pub instance_id: String,
    pub log_level: String,
    pub log_format: LogFormat,
    pub history_size: usize,
    pub max_line_bytes: usize,
    pub max_message_chars: usize,
    pub rate_limit_per_sec: NonZeroU32,
    pub rate_limit_burst: NonZeroU32,
    pub send_queue_lines: usize,
    /// After a netcat connection or event stream is written messages, how long what follows is
    /// gathered into one write (0: each as soon as it comes). Spends latency on a busy
    /// connection for CPU.
    pub write_coalesce_ms: u64,
    pub max_connections: usize,
    pub connect_rate_per_sec: NonZeroU32,
    pub nick_timeout_secs: u64,
    /// Idle time before a client socket (netcat or HTTP) is probed (TCP keepalive); a peer that
    /// vanished without closing is dropped about twice this later.
    pub tcp_keepalive_secs: u64,
    /// How long an HTTP connection may wait for its next request.
    pub http_idle_timeout_secs: u64,
    /// How long a request head may take to arrive, from its first byte.
    pub http_head_timeout_secs: u64,
    /// How long a response may make no progress into a client's socket before the connection
    /// is dropped (a client that stopped reading).
    pub http_write_timeout_secs: u64,
    pub session_idle_timeout_secs: u64,
    pub presence_ttl_secs: u64,
    pub retention_per_room: usize,
    pub shutdown_grace_secs: u64,
    pub db_pool_size: u32,
    pub db_acquire_timeout_secs: u64,
    /// The longest one database statement may run (and a hung call counts as failed).
    pub db_statement_timeout_secs: u64,
    /// Most messages stored per group-commit round trip (1 disables batching; for benchmarks).
    pub commit_batch_max: usize,
    /// Consecutive database failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before probing.
    pub breaker_open_secs: u64,
    /// Callers waiting on the database beyond which the breaker counts failures (and opens).
    pub breaker_max_waiting: usize,
    /// How long start-up waits for PostgreSQL and Valkey to answer before giving up.
    pub startup_wait_secs: u64,
    pub database_url: Option<String>,
    pub valkey_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_address: IpAddr::from([0, 0, 0, 0]),
            tcp_port: 9001,
            http_port: 3001,
            instance_id: hostname(),
            log_level: "info".into(),
            log_format: LogFormat::Pretty,
            history_size: 10,
            max_line_bytes: 4096,
            max_message_chars: 2000,
            rate_limit_per_sec: NonZeroU32::new(20).expect("non-zero"),
            rate_limit_burst: NonZeroU32::new(40).expect("non-zero"),
            send_queue_lines: 1024,
            write_coalesce_ms: 0,
            max_connections: 10_000,
            connect_rate_per_sec: NonZeroU32::new(1000).expect("non-zero"),
            nick_timeout_secs: 60,
            tcp_keepalive_secs: 30,
            // Longer than the keep-alive of the proxies in front (ingress-nginx keeps idle
            // upstream connections 60 s), so that they close first: a request a proxy sends just
            // as this side closes would fail.
            http_idle_timeout_secs: 75,
            http_head_timeout_secs: 10,
            http_write_timeout_secs: 30,
            session_idle_timeout_secs: 1800,
            presence_ttl_secs: 30,
            retention_per_room: 10_000,
            shutdown_grace_secs: 20,
            db_pool_size: 16,
            db_acquire_timeout_secs: 2,
            db_statement_timeout_secs: 5,
            commit_batch_max: 512,
            breaker_failures: 5,
            breaker_open_secs: 5,
            breaker_max_waiting: 256,
            startup_wait_secs: 60,
            database_url: None,
            valkey_url: None,
        }
    }
}

/// The longest WRITE_COALESCE_MS: past a few tens of milliseconds a user sees the wait, and a
/// queue must hold all a room sends meanwhile (SEND_QUEUE_LINES in 100 ms: 10,240 msg/s).
const MAX_WRITE_COALESCE_MS: u64 = 100;

/// The environment variables read, besides `CONFIG_FILE`; each maps to the field of that name.
const ENV_KEYS: &[&str] = &[
    "BIND_ADDRESS",
    "TCP_PORT",
    "HTTP_PORT",
    "INSTANCE_ID",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HISTORY_SIZE",
    "MAX_LINE_BYTES",
    "MAX_MESSAGE_CHARS",
    "RATE_LIMIT_PER_SEC",
    "RATE_LIMIT_BURST",
    "SEND_QUEUE_LINES",
    "WRITE_COALESCE_MS",
    "MAX_CONNECTIONS",
    "CONNECT_RATE_PER_SEC",
    "NICK_TIMEOUT_SECS",
    "TCP_KEEPALIVE_SECS",
    "HTTP_IDLE_TIMEOUT_SECS",
    "HTTP_HEAD_TIMEOUT_SECS",
    "HTTP_WRITE_TIMEOUT_SECS",
    "SESSION_IDLE_TIMEOUT_SECS",
    "PRESENCE_TTL_SECS",
    "RETENTION_PER_ROOM",
    "SHUTDOWN_GRACE_SECS",
    "DB_POOL_SIZE",
    "DB_ACQUIRE_TIMEOUT_SECS",
    "DB_STATEMENT_TIMEOUT_SECS",
    "COMMIT_BATCH_MAX",
    "BREAKER_FAILURES",
    "BREAKER_OPEN_SECS",
    "BREAKER_MAX_WAITING",
    "STARTUP_WAIT_SECS",
    "DATABASE_URL",
    "VALKEY_URL",
];

/// A configuration error, already worded as the one line start-up prints.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads the configuration from the process environment.
    pub fn load() -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment())
    }

    fn figment() -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Ok(path) = std::env::var("CONFIG_FILE") {
            figment = figment.merge(Toml::file_exact(path));
        }
        // RUST_LOG and REDIS_URL are accepted aliases; the SPEC names win when both are set.
        figment
            .merge(Env::raw().only(&["RUST_LOG"]).map(|_| "log_level".into()))
            .merge(Env::raw().only(&["REDIS_URL"]).map(|_| "valkey_url".into()))
            .merge(
                Env::raw()
                    .only(ENV_KEYS)
                    .map(|k| k.as_str().to_ascii_lowercase().into()),
            )
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| {
            let setting = e
                .path
                .last()
                .map(|p| p.to_ascii_uppercase())
                .unwrap_or_default();
            let from = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            ConfigError(format!("{setting}{from}: {}", e.kind))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("HISTORY_SIZE", self.history_size),
            ("MAX_LINE_BYTES", self.max_line_bytes),
            ("MAX_MESSAGE_CHARS", self.max_message_chars),
            ("SEND_QUEUE_LINES", self.send_queue_lines),
            ("MAX_CONNECTIONS", self.max_connections),
            ("RETENTION_PER_ROOM", self.retention_per_room),
            ("COMMIT_BATCH_MAX", self.commit_batch_max),
            ("BREAKER_FAILURES", self.breaker_failures as usize),
            ("BREAKER_MAX_WAITING", self.breaker_max_waiting),
            ("NICK_TIMEOUT_SECS", self.nick_timeout_secs as usize),
            (
                "SESSION_IDLE_TIMEOUT_SECS",
                self.session_idle_timeout_secs as usize,
            ),
            ("PRESENCE_TTL_SECS", self.presence_ttl_secs as usize),
            ("SHUTDOWN_GRACE_SECS", self.shutdown_grace_secs as usize),
            ("DB_POOL_SIZE", self.db_pool_size as usize),
            (
                "DB_ACQUIRE_TIMEOUT_SECS",
                self.db_acquire_timeout_secs as usize,
            ),
            ("BREAKER_OPEN_SECS", self.breaker_open_secs as usize),
            (
                "DB_STATEMENT_TIMEOUT_SECS",
                self.db_statement_timeout_secs as usize,
            ),
            ("TCP_KEEPALIVE_SECS", self.tcp_keepalive_secs as usize),
            (
                "HTTP_IDLE_TIMEOUT_SECS",
                self.http_idle_timeout_secs as usize,
            ),
            (
                "HTTP_HEAD_TIMEOUT_SECS",
                self.http_head_timeout_secs as usize,
            ),
            (
                "HTTP_WRITE_TIMEOUT_SECS",
                self.http_write_timeout_secs as usize,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{name}: must be at least 1")));
        }
        if self.write_coalesce_ms > MAX_WRITE_COALESCE_MS {
            return Err(ConfigError(format!(
                "WRITE_COALESCE_MS: must be at most {MAX_WRITE_COALESCE_MS}"
            )));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError(format!("LOG_LEVEL: {e}")));
        }
        let schemes = [
            (
                "DATABASE_URL",
                &self.database_url,
                &["postgres", "postgresql"][..],
            ),
            (
                "VALKEY_URL",
                &self.valkey_url,
                &["redis", "rediss", "valkey", "valkeys"][..],
            ),
        ];
        for (name, url, allowed) in schemes {
            let Some(url) = url else { continue };
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !scheme.is_some_and(|s| allowed.contains(&s)) {
                let allowed = allowed.join("://, ");
                return Err(ConfigError(format!(
                    "{name}: expected a URL starting {allowed}://"
                )));
            }
        }
        Ok(())
    }

    /// Every setting with its default, for `--help`.
    pub fn settings_help() -> String {
        let defaults = serde_json::to_value(Config::default()).expect("the defaults serialize");
        let mut help = String::from(
            "Settings (environment variables; CONFIG_FILE names an optional TOML file with the \
             same keys in lower case; RUST_LOG and REDIS_URL are accepted aliases):\n",
        );
        for key in ENV_KEYS {
            let default = match &defaults[key.to_ascii_lowercase()] {
                serde_json::Value::Null => "unset".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            help.push_str(&format!("  {key:<28} {default}\n"));
        }
        help
    }

    pub fn write_coalesce(&self) -> Duration {
        Duration::from_millis(self.write_coalesce_ms)
    }

    pub fn nick_timeout(&self) -> Duration {
        Duration::from_secs(self.nick_timeout_secs)
    }

    pub fn tcp_keepalive(&self) -> Duration {
        Duration::from_secs(self.tcp_keepalive_secs)
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs)
    }

    pub fn db_statement_timeout(&self) -> Duration {
        Duration::from_secs(self.db_statement_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The pod name in Kubernetes, the machine name elsewhere.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "baby-discord".into())
}

#[cfg(test)]
// figment's Jail fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn environment_overrides_toml_which_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("chat.toml", "tcp_port = 7000\nhttp_port = 7001\n")?;
            jail.set_env("CONFIG_FILE", "chat.toml");
            jail.set_env("HTTP_PORT", "8001");
            jail.set_env("REDIS_URL", "redis://127.0.0.1:6379");
            let config = Config::load().expect("valid");
            assert_eq!(config.tcp_port, 7000);
            assert_eq!(config.http_port, 8001);
            assert_eq!(config.history_size, 10);
            assert_eq!(config.valkey_url.as_deref(), Some("redis://127.0.0.1:6379"));
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        Jail::expect_with(|jail| {
            jail.set_env("TCP_PORT", "ninety");
            let error = Config::load().unwrap_err().to_string();
            assert!(
                error.starts_with("invalid configuration: TCP_PORT"),
                "{error}"
            );
            jail.set_env("TCP_PORT", "9001");
            jail.set_env("MAX_LINE_BYTES", "0");
            assert_eq!(
                Config::load().unwrap_err().to_string(),
                "invalid configuration: MAX_LINE_BYTES: must be at least 1"
            );
            jail.set_env("MAX_LINE_BYTES", "4096");
            // A zero duration would close every client at once, expire every session at once or
            // stop the presence heartbeat: it is refused, not served.
            for setting in [
                "NICK_TIMEOUT_SECS",
                "SESSION_IDLE_TIMEOUT_SECS",
                "PRESENCE_TTL_SECS",
                "SHUTDOWN_GRACE_SECS",
                "DB_POOL_SIZE",
                "DB_ACQUIRE_TIMEOUT_SECS",
                "BREAKER_OPEN_SECS",
            ] {
                jail.set_env(setting, "0");
                assert_eq!(
                    Config::load().unwrap_err().to_string(),
                    format!("invalid configuration: {setting}: must be at least 1")
                );
                jail.set_env(setting, "1");
            }
            // Gathering a netcat user's messages for seconds would read as a stall.
            jail.set_env("WRITE_COALESCE_MS", "101");
            assert_eq!(
                Config::load().unwrap_err().to_string(),
                "invalid configuration: WRITE_COALESCE_MS: must be at most 100"
            );
            jail.set_env("WRITE_COALESCE_MS", "10");
            jail.set_env("LOG_LEVEL", "info,baby_discord=loud");
            let error = Config::load().unwrap_err().to_string();
            assert!(
                error.starts_with("invalid configuration: LOG_LEVEL: "),
                "{error}"
            );
            jail.set_env("LOG_LEVEL", "info,baby_discord=debug");
            jail.set_env("DATABASE_URL", "localhost:5432/chat");
            let error = Config::load().unwrap_err().to_string();
            assert!(
                error.starts_with("invalid configuration: DATABASE_URL: "),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_help_lists_every_setting_with_its_default() {
        let help = Config::settings_help();
        for key in ENV_KEYS {
            assert!(
                help.contains(&format!("  {key} ")),
                "{key} missing from {help}"
            );
        }
        assert!(
            help.contains("  MAX_CONNECTIONS              10000\n"),
            "{help}"
        );
        assert!(
            help.contains("  DATABASE_URL                 unset\n"),
            "{help}"
        );
    }
}
