//! The ways in: each adapter turns bytes into calls on [`Chat`](crate::core::Chat) and events back
//! into bytes. They hold no chat logic.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use socket2::{SockRef, TcpKeepalive};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::core::Error;
use crate::telemetry::metric;

pub mod http;
pub mod tcp;

/// The pod's budget of long-lived connections: netcat connections and event streams draw on one
/// pool of MAX_CONNECTIONS and one rate of CONNECT_RATE_PER_SEC (SPEC §3) — after a pod drains,
/// its browsers reconnect elsewhere as its netcat users do, and a storm of either is shed. A slot
/// is held until its permit drops.
#[derive(Clone)]
pub struct Slots {
    open: Arc<Semaphore>,
    rate: Arc<DefaultDirectRateLimiter>,
}

impl Slots {
    pub fn new(max: usize, per_sec: NonZeroU32) -> Self {
        Slots {
            open: Arc::new(Semaphore::new(max)),
            rate: Arc::new(DefaultDirectRateLimiter::direct(Quota::per_second(per_sec))),
        }
    }

    /// A slot for a new connection or stream; refused (and counted) past the rate or when the
    /// pod is full.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, Error> {
        let refused = |reason: &'static str, error| {
            metrics::counter!(metric::DROPPED, "reason" => reason).increment(1);
            error
        };
        if self.rate.check().is_err() {
            return Err(refused("connect_rate", Error::TooManyConnections));
        }
        self.open
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused("server_full", Error::ServerFull))
    }
}

/// Counts the chat messages a connection or stream writes, and how long after they were
/// accepted. Its handles are looked up once, when the connection opens: a lookup (labels hashed,
/// the registry searched) per write was ~1.5 % of the server's CPU at low rates (BENCHMARKS §15).
pub(crate) struct Delivered {
    count: metrics::Counter,
    latency: metrics::Histogram,
}

impl Delivered {
    pub fn new(transport: &'static str) -> Self {
        Delivered {
            count: metrics::counter!(metric::DELIVERIES, "transport" => transport),
            latency: metrics::histogram!(metric::DELIVERY_LATENCY),
        }
    }

    /// A message accepted at `accepted`, written at `now`.
    pub fn message(&self, accepted: OffsetDateTime, now: OffsetDateTime) {
        self.count.increment(1);
        self.latency
            .record((now - accepted).as_seconds_f64().max(0.0));
    }
}

/// WRITE_COALESCE_MS for one connection or stream: once it has written deliveries, what reaches
/// it for that long costs a place in its queue — not a wake-up and a write — and goes out in one
/// write when the time is up (BENCHMARKS §15). A connection sent nothing meanwhile stops
/// gathering, so a quiet one's next message goes out at once.
pub(crate) struct Gathering {
    window: Duration,
    /// Set while gathering; boxed, so that an idle connection carries no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Gathering {
    pub fn new(window: Duration) -> Self {
        Gathering {
            window,
            timer: None,
        }
    }

    /// Gathers what comes next, if the setting is on.
    pub fn start(&mut self) {
        if !self.window.is_zero() {
            self.timer = Some(Box::pin(tokio::time::sleep(self.window)));
        }
    }

    /// While on, the owner takes nothing from its queue until [`ended`](Self::ended).
    pub fn is_on(&self) -> bool {
        self.timer.is_some()
    }

    /// Stops gathering early; whether it was on (what it gathered is then the caller's to write).
    pub fn stop(&mut self) -> bool {
        self.timer.take().is_some()
    }

    /// Resolves when the time is up, and stops; never while off. Cancel-safe.
    pub async fn ended(&mut self) {
        match self.timer.as_mut() {
            Some(timer) => timer.await,
            None => std::future::pending().await,
        }
        self.timer = None;
    }
}

/// After a failed accept (typically out of file descriptors): back off briefly instead of
/// spinning on the listener.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Probes per keepalive period; the connection is dropped after this many go unanswered.
const KEEPALIVE_PROBES: u32 = 3;

/// Probes an idle connection after `idle`, then every third of it; after [`KEEPALIVE_PROBES`]
/// unanswered probes — or data unacknowledged as long — the kernel fails the socket, the read
/// ends, and the session closes: about `2 × idle` after the peer vanished.
pub(crate) fn keep_alive(stream: &TcpStream, idle: Duration) {
    let interval = (idle / KEEPALIVE_PROBES).max(Duration::from_secs(1));
    let probes = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    let socket = SockRef::from(stream);
    if let Err(error) = socket
        .set_tcp_keepalive(&probes)
        .and_then(|()| socket.set_tcp_user_timeout(Some(idle + interval * KEEPALIVE_PROBES)))
    {
        tracing::debug!(%error, "could not set TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Gathering;

    #[tokio::test(start_paused = true)]
    async fn a_gathering_lasts_its_window_and_stops_when_it_ends_or_is_stopped() {
        let mut off = Gathering::new(Duration::ZERO);
        off.start();
        assert!(!off.is_on(), "the setting at 0 never gathers");
        let never = tokio::time::timeout(Duration::from_secs(1), off.ended()).await;
        assert!(never.is_err(), "no gathering, no end of one");

        let mut gathering = Gathering::new(Duration::from_millis(10));
        assert!(!gathering.is_on());
        let started = Instant::now();
        gathering.start();
        assert!(gathering.is_on());
        gathering.ended().await;
        // The timer wheel counts whole milliseconds: the window, give or take its rounding.
        let lasted = started.elapsed();
        assert!(
            (Duration::from_millis(10)..Duration::from_millis(12)).contains(&lasted),
            "{lasted:?}"
        );
        assert!(!gathering.is_on());

        gathering.start();
        assert!(
            gathering.stop(),
            "what it gathered is the caller's to write"
        );
        assert!(!gathering.stop());
        assert!(!gathering.is_on());
    }
}
