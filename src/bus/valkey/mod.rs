//! The Valkey (Redis-protocol) bus, presence and session store: what makes N replicas one chat
//! server.
//!
//! - [`stream`]: envelopes travel on one Valkey stream (`bus`, capped), each entry also pushed to
//!   every pod over pub/sub with the id of the entry before it. A pod that finds it missed some
//!   (it fell behind or reconnected) reads them back from the stream, from its last entry id;
//!   when entries may have been lost (a Valkey restart, a trim past the reader) the core is told
//!   to resync, and repairs from the sources of truth.
//! - [`presence`]: nickname claims (`nick:<name>`) and who is in which room, renewed by a
//!   heartbeat that rewrites this pod's whole state, so that it comes back after an outage; a
//!   recovery window keeps newcomers from taking live users' names meanwhile.
//! - [`sessions`]: HTTP session records, versioned for compare-and-set, with per-session locks
//!   and an expiry schedule that hands each expired session to exactly one pod.
//!
//! It never reads the store and never calls into the core.

mod presence;
mod sessions;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::model::SessionId;
use crate::core::ports::{BusError, Inbound};
use presence::Local;

/// A command not answered in this long fails (the caller reports the bus unavailable); Valkey
/// answers in well under a millisecond when it is up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

fn failed(doing: &'static str) -> impl FnOnce(fred::error::Error) -> BusError {
    move |e| BusError::Unavailable(format!("{doing}: {e}"))
}

pub struct ValkeyBus {
    /// Commands, pipelined on one connection.
    client: Client,
    /// The bus's subscription: a subscribed connection takes no other commands.
    reader: Client,
    instance: String,
    presence_ttl: Duration,
    /// This pod's claims and presence entries: what the heartbeat writes back every time.
    local: Mutex<Local>,
    inbound: Mutex<Option<mpsc::Sender<Inbound>>>,
    revoked: Mutex<Option<mpsc::UnboundedSender<SessionId>>>,
}

/// A client; `pushes`: how many pub/sub messages it holds for a slow taker (fred's default, 32,
/// for one that subscribes to nothing).
fn new_client(url: &str, pushes: Option<usize>) -> Result<Client, BusError> {
    let config = Config::from_url(url).map_err(failed("VALKEY_URL"))?;
    let mut builder = Builder::from_config(config);
    // Keep trying for ever: the pod stays up (not ready) through a Valkey outage.
    builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    builder.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(5);
        if pushes.is_some() {
            // A subscribed connection sends nothing: without keepalives, one cut off without a
            // reset would wait for pushes for ever (the probe would still find the entries).
            // With the kernel's 9 probes, a dead one is dropped, and renewed, within ~25 s.
            c.tcp.keepalive = Some(
                fred::socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(5))
                    .with_interval(Duration::from_secs(2)),
            );
        }
    });
    // Without it a command issued while Valkey is unreachable waits for the reconnect, however
    // long: a user's /list would hang, and so would a drain.
    builder.with_performance_config(|c| {
        c.default_command_timeout = COMMAND_TIMEOUT;
        if let Some(pushes) = pushes {
            c.broadcast_channel_capacity = pushes;
        }
    });
    builder
        .build()
        .map_err(failed("building the Valkey client"))
}

impl ValkeyBus {
    pub async fn connect(
        url: &str,
        instance: &str,
        presence_ttl: Duration,
    ) -> Result<Arc<ValkeyBus>, BusError> {
        let client = new_client(url, None)?;
        let reader = new_client(url, Some(stream::PUSH_BUFFER))?;
        client
            .init()
            .await
            .map_err(failed("connecting to Valkey"))?;
        reader
            .init()
            .await
            .map_err(failed("connecting to Valkey"))?;
        let bus = Arc::new(ValkeyBus {
            client,
            reader,
            instance: instance.to_owned(),
            presence_ttl,
            local: Mutex::new(Local::default()),
            inbound: Mutex::new(None),
            revoked: Mutex::new(None),
        });
        // Present before serving anyone: this pod's heartbeat is what tells a fresh Valkey from
        // one that lost live users' claims.
        bus.heartbeat().await?;
        Ok(bus)
    }

    /// Reads the stream, renews presence and retries failed releases, until `shutdown`; then
    /// removes this pod's presence.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::join!(
            self.clone().read_stream(shutdown.clone()),
            self.clone().keep_presence(shutdown.clone()),
        );
        self.leave().await;
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}
