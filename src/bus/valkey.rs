//! The Valkey (Redis-protocol) `Bus`: what makes N replicas one chat server.
//!
//! - Delivery: room events on `room:<name>` channels, which each pod subscribes to while it has
//!   local members in the room; DMs on `dms` and session moves on `sessions`, which every pod
//!   hears. One subscriber connection per pod; fred re-subscribes after a reconnect.
//! - Order and gaps: pub/sub is at-most-once, but every message is durable in the store with its
//!   room's seq. Each pod remembers the last seq it delivered per room; a message after a jump
//!   waits briefly for the missing seqs (replicas publish concurrently, so they are usually just
//!   behind), then the gap is filled from the store (a lost publish, a Valkey restart, a lagging
//!   receiver); after a reconnect every watched room is caught up. No silent loss, no reordering.
//!   A message this pod committed reaches its own members at once when it is next in order,
//!   without the round trip through Valkey.
//! - Presence: one hash per pod (`presence:<instance>`: nick -> room) and nickname claims
//!   (`nick:<name>`, SET NX), all with PRESENCE_TTL refreshed by a heartbeat, so a pod that dies
//!   takes its connections' users with it within PRESENCE_TTL. HTTP sessions belong to no pod:
//!   their presence is in `presence:sessions` and their claims live as long as the session,
//!   renewed by whichever pod serves it, until the session is closed or expires.
//! - HTTP sessions: `session:<id>` JSON records, plus a sorted set of logical expiry times that
//!   lets exactly one pod close each expired session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sequencer::Sequencer;
use super::{Bus, BusError, Holder};
use crate::core::hub::Hub;
use crate::core::model::{Broadcast, ChatMessage, Envelope, Event, SessionId, SessionRecord};
use crate::core::names::{Nickname, RoomName};
use crate::store::Store;

const DMS: &str = "dms";
const SESSIONS: &str = "sessions";
const PODS: &str = "pods";
const SESSION_EXPIRY: &str = "sessions:expiry";
/// Presence of HTTP sessions (nick -> room), cluster-wide: entries leave when the session closes.
const SESSION_PRESENCE: &str = "presence:sessions";
/// Session records outlive their logical expiry by this much, so the pod that closes an expired
/// session can still read it.
const SESSION_RECORD_GRACE_SECS: i64 = 300;
/// Pub/sub messages buffered between fred's reader and this pod's delivery loop.
const BUS_BUFFER: usize = 16_384;
/// A command not answered in this long fails (the caller reports the bus unavailable); Valkey
/// answers in well under a millisecond when it is up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Most messages fetched from the store to fill one gap.
const REPAIR_LIMIT: usize = 10_000;

/// Saves a session record (KEYS[1], ARGV[1] for ARGV[2] s), schedules its expiry (KEYS[2]: score
/// ARGV[3], member ARGV[4]) and renews its nickname claim (KEYS[3], for ARGV[6] ms) if the claim
/// is still its own (ARGV[5]): one round trip, which runs after every HTTP request.
const SAVE_SESSION: &str = "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) \
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) \
    if redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('PEXPIRE', KEYS[3], ARGV[6]) end \
    return 1";

/// Deletes a key only if it still holds the caller's value (a nickname claim, say).
const DELETE_IF_OWNED: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

fn failed(doing: &'static str) -> impl FnOnce(fred::error::Error) -> BusError {
    move |e| BusError::Unavailable(format!("{doing}: {e}"))
}

/// What travels on the channels.
#[derive(Serialize, Deserialize)]
enum Wire {
    Event(Event),
    SessionState {
        session: SessionId,
        nick: Nickname,
        room: Option<RoomName>,
        seen: i64,
    },
}

#[derive(Serialize, Deserialize)]
struct Claim {
    session: SessionId,
    nick: Nickname,
}

#[derive(Serialize, Deserialize)]
struct Presence {
    nick: Nickname,
    room: Option<RoomName>,
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    record: SessionRecord,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
}

pub struct ValkeyBus {
    client: Client,
    subscriber: SubscriberClient,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    instance: String,
    presence_ttl: Duration,
    // std Mutexes: short critical sections, never held across an await.
    /// Nickname keys claimed through this pod: the heartbeat keeps them alive.
    claimed: Mutex<HashSet<String>>,
    /// Room channels this pod is subscribed to.
    subscribed: tokio::sync::Mutex<HashSet<RoomName>>,
    /// Each watched room's position, and what arrived ahead of it. Delivery to the hub happens
    /// under this lock, so messages of a room reach it in seq order whichever task hands them on.
    order: Mutex<Sequencer>,
}

/// Sleeps until `deadline`, or for ever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn room_channel(room: &RoomName) -> String {
    format!("room:{}", room.key())
}

fn nick_key(nick: &Nickname) -> String {
    claim_key(&nick.key())
}

/// The claim of the nickname whose case-folded form is `key`.
fn claim_key(key: &str) -> String {
    format!("nick:{key}")
}

/// What a nickname's key holds while `session` has it.
fn claim_value(nick: &Nickname, session: SessionId) -> String {
    serde_json::to_string(&Claim {
        session,
        nick: nick.clone(),
    })
    .expect("serializable")
}

/// How long an HTTP session's nickname claim lasts after its last activity: past the session's
/// own expiry, until the pod that closes it releases the claim.
fn session_claim_secs(idle: Duration) -> i64 {
    idle.as_secs() as i64 + SESSION_RECORD_GRACE_SECS
}

impl ValkeyBus {
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        instance: &str,
        presence_ttl: Duration,
    ) -> Result<Arc<ValkeyBus>, BusError> {
        let config = Config::from_url(url).map_err(failed("VALKEY_URL"))?;
        let mut builder = Builder::from_config(config);
        // Keep trying for ever: the pod stays up (not ready) through a Valkey outage.
        builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        builder.with_connection_config(|c| c.connection_timeout = Duration::from_secs(5));
        // Room traffic arrives in bursts; a receiver that lags behind this many messages falls
        // back to reading them from the store (correct, but slow).
        builder.with_performance_config(|c| {
            c.broadcast_channel_capacity = BUS_BUFFER;
            // Without it a command issued while Valkey is unreachable waits for the reconnect,
            // however long: a user's /list would hang, and so would a drain.
            c.default_command_timeout = COMMAND_TIMEOUT;
        });
        let client = builder
            .build()
            .map_err(failed("building the Valkey client"))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(failed("building the Valkey subscriber"))?;
        client
            .init()
            .await
            .map_err(failed("connecting to Valkey"))?;
        subscriber
            .init()
            .await
            .map_err(failed("connecting to Valkey"))?;
        subscriber.manage_subscriptions();
        subscriber
            .subscribe(vec![DMS, SESSIONS])
            .await
            .map_err(failed("subscribing"))?;
        Ok(Arc::new(ValkeyBus {
            client,
            subscriber,
            hub,
            store,
            instance: instance.to_owned(),
            presence_ttl,
            claimed: Mutex::new(HashSet::new()),
            subscribed: tokio::sync::Mutex::new(HashSet::new()),
            order: Mutex::new(Sequencer::default()),
        }))
    }

    fn presence_key(&self) -> String {
        format!("presence:{}", self.instance)
    }

    fn ttl_secs(&self) -> i64 {
        self.presence_ttl.as_secs().max(1) as i64
    }

    /// Delivers what arrives on the subscriber connection, keeps presence alive, and catches up
    /// after reconnects, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut heartbeat = tokio::time::interval(self.presence_ttl / 3);
        loop {
            let hold_ends = self.order().next_deadline();
            tokio::select! {
                // Checked first: with Valkey down every other branch can stay busy.
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_until(hold_ends) => self.fill_expired_gaps().await,
                message = messages.recv() => match message {
                    Ok(message) => self.receive(&message).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "bus receiver lagged; catching up from the store");
                        self.catch_up_all().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Ok(_) = reconnects.recv() => {
                    tracing::info!("reconnected to Valkey; catching up from the store");
                    self.catch_up_all().await;
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        tracing::warn!(error = %e, "presence heartbeat failed");
                    }
                }
            }
        }
        // Leaving cleanly: this pod's users are gone now, not in PRESENCE_TTL. One round trip;
        // with Valkey unreachable it fails after COMMAND_TIMEOUT and the entries expire anyway.
        let pipeline = self.client.pipeline();
        let _: Result<(), _> = pipeline.del(self.presence_key()).await;
        let _: Result<(), _> = pipeline.srem(PODS, self.instance.as_str()).await;
        let _: Result<Vec<Value>, _> = pipeline.all().await;
    }

    async fn receive(&self, message: &fred::types::Message) {
        let Some(payload) = message.value.as_bytes() else {
            return;
        };
        let wire: Wire = match serde_json::from_slice(payload) {
            Ok(wire) => wire,
            Err(e) => {
                return tracing::warn!(error = %e, channel = %message.channel, "undecodable bus message");
            }
        };
        match wire {
            Wire::Event(Event::Message(m)) => {
                let mut order = self.order();
                let ready = order.admit(m, Instant::now());
                self.deliver_all(&order, ready);
            }
            Wire::Event(event) => self.hub.deliver(Envelope::Event(Broadcast::new(event))),
            Wire::SessionState {
                session,
                nick,
                room,
                seen,
            } => {
                let followed = room.clone();
                self.hub.deliver(Envelope::SessionState {
                    session,
                    nick,
                    room,
                    seen,
                });
                // A stream that followed its session into another room: carry that room here,
                // from just after what the session was shown. Rewinding a room other local
                // receivers share is harmless: their views drop what they already showed.
                if let Some(room) = &followed {
                    self.order().start(room, seen);
                }
                if let Err(e) = self.sync_subscriptions().await {
                    tracing::warn!(error = %e, "updating room subscriptions failed");
                }
                if let Some(room) = &followed {
                    self.catch_up(room).await;
                }
            }
        }
    }

    fn order(&self) -> MutexGuard<'_, Sequencer> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands messages to the hub; taking the order guard proves they leave in seq order.
    fn deliver_all(&self, _order: &MutexGuard<'_, Sequencer>, messages: Vec<ChatMessage>) {
        for m in messages {
            self.hub
                .deliver(Envelope::Event(Broadcast::new(Event::Message(m))));
        }
    }

    /// Gaps that the bus did not fill within the hold: read them from the store.
    async fn fill_expired_gaps(&self) {
        let gaps = self.order().expired(Instant::now());
        for gap in gaps {
            let missing = (gap.before - gap.after - 1) as usize;
            self.fill_from_store(&gap.room, gap.after, missing).await;
        }
    }

    /// The seq of a room's newest stored message (0 when it has none or the store fails).
    async fn last_stored_seq(&self, room: &RoomName) -> i64 {
        let newest = async {
            let Some(room) = self.store.find_room(room).await? else {
                return Ok(Vec::new());
            };
            self.store.messages_before(room.id, None, 1).await
        };
        newest
            .await
            .ok()
            .and_then(|m| m.last().map(|m| m.seq))
            .unwrap_or(0)
    }

    /// Reads up to `limit` messages of `room` after `after` from the store and delivers them, with
    /// whatever was held behind them, in order. Pub/sub may have delivered some meanwhile: `fill`
    /// skips those.
    async fn fill_from_store(&self, room: &RoomName, after: i64, limit: usize) {
        let fetched = self.fetch_after(room, after, limit).await;
        let mut order = self.order();
        let ready = order.fill(room, fetched);
        self.deliver_all(&order, ready);
    }

    async fn fetch_after(&self, room: &RoomName, after: i64, limit: usize) -> Vec<ChatMessage> {
        let fetched = async {
            let room = self
                .store
                .find_room(room)
                .await?
                .ok_or_else(|| crate::store::StoreError::Unavailable("room vanished".into()))?;
            self.store
                .messages_after(room.id, after, limit.min(REPAIR_LIMIT))
                .await
        };
        match fetched.await {
            Ok(messages) => {
                if !messages.is_empty() {
                    tracing::info!(%room, after, filled = messages.len(), "filled a gap from the store");
                }
                messages
            }
            Err(e) => {
                tracing::warn!(error = %e, %room, after, "could not fill a gap from the store");
                Vec::new()
            }
        }
    }

    /// After a reconnect or a lag: deliver whatever every watched room missed.
    async fn catch_up_all(&self) {
        let rooms = self.order().rooms();
        for room in rooms {
            self.catch_up(&room).await;
        }
    }

    /// Delivers what the store has of `room` after the last seq this pod delivered.
    async fn catch_up(&self, room: &RoomName) {
        let Some(last) = self.order().position(room) else {
            return;
        };
        self.fill_from_store(room, last, REPAIR_LIMIT).await;
    }

    async fn heartbeat(&self) -> Result<(), BusError> {
        let ttl = self.ttl_secs();
        let claimed: Vec<String> = self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let pipeline = self.client.pipeline();
        let _: () = pipeline
            .sadd(PODS, self.instance.as_str())
            .await
            .map_err(failed("heartbeat"))?;
        let _: () = pipeline
            .expire(self.presence_key(), ttl, None)
            .await
            .map_err(failed("heartbeat"))?;
        for key in claimed {
            let _: () = pipeline
                .expire(key, ttl, None)
                .await
                .map_err(failed("heartbeat"))?;
        }
        let _: Vec<Value> = pipeline.all().await.map_err(failed("heartbeat"))?;
        Ok(())
    }

    /// Subscribes to the rooms with local members and drops the others.
    async fn sync_subscriptions(&self) -> Result<(), BusError> {
        let wanted: HashSet<RoomName> = self.hub.local_rooms().into_iter().collect();
        let mut subscribed = self.subscribed.lock().await;
        let add: Vec<RoomName> = wanted.difference(&subscribed).cloned().collect();
        let drop: Vec<RoomName> = subscribed.difference(&wanted).cloned().collect();
        if !add.is_empty() {
            // The newest stored seq *before* subscribing, then a catch-up after: whatever was
            // committed while the subscription was being set up is read from the store, and the
            // pub/sub copies of it are dropped by seq.
            let mut baselines = Vec::new();
            for room in &add {
                baselines.push((room.clone(), self.last_stored_seq(room).await));
            }
            let channels: Vec<String> = add.iter().map(room_channel).collect();
            self.subscriber
                .subscribe(channels)
                .await
                .map_err(failed("subscribing to a room"))?;
            for (room, last) in baselines {
                self.order().start_unless_known(&room, last);
                self.catch_up(&room).await;
            }
        }
        if !drop.is_empty() {
            let channels: Vec<String> = drop.iter().map(room_channel).collect();
            self.subscriber
                .unsubscribe(channels)
                .await
                .map_err(failed("unsubscribing from a room"))?;
            let mut order = self.order();
            drop.iter().for_each(|room| order.forget(room));
        }
        *subscribed = wanted;
        Ok(())
    }

    /// Every pod's presence entries.
    async fn everyone(&self) -> Result<Vec<Presence>, BusError> {
        let pods: Vec<String> = self
            .client
            .smembers(PODS)
            .await
            .map_err(failed("listing pods"))?;
        let mut everyone = Vec::new();
        for pod in pods {
            let entries: HashMap<String, String> = self
                .client
                .hgetall(format!("presence:{pod}"))
                .await
                .map_err(failed("reading presence"))?;
            if entries.is_empty() && pod != self.instance {
                // Its presence expired: the pod is gone.
                let _: () = self
                    .client
                    .srem(PODS, pod.as_str())
                    .await
                    .map_err(failed("forgetting a pod"))?;
            }
            everyone.extend(
                entries
                    .values()
                    .filter_map(|v| serde_json::from_str::<Presence>(v).ok()),
            );
        }
        everyone.extend(self.session_presence().await?);
        Ok(everyone)
    }

    /// HTTP sessions' presence. An entry whose nickname claim has lapsed belongs to a session
    /// that ended without being closed (every pod down past its expiry): it is dropped here.
    async fn session_presence(&self) -> Result<Vec<Presence>, BusError> {
        let entries: Vec<(String, String)> = self
            .client
            .hgetall::<HashMap<String, String>, _>(SESSION_PRESENCE)
            .await
            .map_err(failed("reading presence"))?
            .into_iter()
            .collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let claims: Vec<Option<String>> = self
            .client
            .mget(
                entries
                    .iter()
                    .map(|(key, _)| claim_key(key))
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(failed("reading presence"))?;
        let mut present = Vec::new();
        for ((key, entry), claim) in entries.into_iter().zip(claims) {
            if claim.is_some() {
                present.extend(serde_json::from_str::<Presence>(&entry).ok());
            } else {
                let _: i64 = self
                    .client
                    .hdel(SESSION_PRESENCE, key)
                    .await
                    .map_err(failed("dropping stale presence"))?;
            }
        }
        Ok(present)
    }

    async fn set_presence(
        &self,
        nick: &Nickname,
        room: Option<&RoomName>,
        holder: Holder,
    ) -> Result<(), BusError> {
        let entry = serde_json::to_string(&Presence {
            nick: nick.clone(),
            room: room.cloned(),
        })
        .expect("serializable");
        if let Holder::Session(_) = holder {
            let _: () = self
                .client
                .hset(SESSION_PRESENCE, (nick.key(), entry))
                .await
                .map_err(failed("updating presence"))?;
            return Ok(());
        }
        let key = self.presence_key();
        let _: () = self
            .client
            .hset(&key, (nick.key(), entry))
            .await
            .map_err(failed("updating presence"))?;
        let _: () = self
            .client
            .expire(&key, self.ttl_secs(), None)
            .await
            .map_err(failed("updating presence"))?;
        let _: () = self
            .client
            .sadd(PODS, self.instance.as_str())
            .await
            .map_err(failed("updating presence"))?;
        Ok(())
    }
}

#[async_trait]
impl Bus for ValkeyBus {
    async fn ping(&self) -> Result<(), BusError> {
        let _: String = self
            .client
            .ping(None)
            .await
            .map_err(failed("pinging Valkey"))?;
        Ok(())
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let (channel, wire) = match envelope {
            Envelope::Event(broadcast) => match &broadcast.event {
                Event::Message(m) => {
                    // This pod's own members get it now instead of after a round trip through
                    // Valkey; the copy that comes back on the subscription is then a repeat.
                    let mut order = self.order();
                    let ready = order.admit_own(m.clone());
                    self.deliver_all(&order, ready);
                    drop(order);
                    (room_channel(&m.room), Wire::Event(broadcast.event.clone()))
                }
                Event::Room { room, .. } => {
                    (room_channel(room), Wire::Event(broadcast.event.clone()))
                }
                Event::Dm { .. } => (DMS.to_owned(), Wire::Event(broadcast.event.clone())),
                Event::Notice(_) => return Ok(()),
            },
            Envelope::SessionState {
                session,
                nick,
                room,
                seen,
            } => (
                SESSIONS.to_owned(),
                Wire::SessionState {
                    session,
                    nick,
                    room,
                    seen,
                },
            ),
        };
        let payload = serde_json::to_vec(&wire).expect("serializable");
        let _: i64 = self
            .client
            .publish(channel, payload)
            .await
            .map_err(failed("publishing"))?;
        Ok(())
    }

    async fn watch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        self.sync_subscriptions().await
    }

    async fn unwatch_room(&self, _room: &RoomName) -> Result<(), BusError> {
        self.sync_subscriptions().await
    }

    async fn claim_nick(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<bool, BusError> {
        let key = nick_key(nick);
        let claim = claim_value(nick, session);
        let ttl = Some(Expiration::EX(match holder {
            Holder::Pod => self.ttl_secs(),
            Holder::Session(idle) => session_claim_secs(idle),
        }));
        let set: Option<String> = self
            .client
            .set(
                &key,
                claim.as_str(),
                ttl.clone(),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(failed("claiming a nickname"))?;
        if set.is_none() {
            // Taken; by this same session (a change of spelling) is fine.
            let current: Option<String> = self
                .client
                .get(&key)
                .await
                .map_err(failed("claiming a nickname"))?;
            let owner = current
                .and_then(|c| serde_json::from_str::<Claim>(&c).ok())
                .map(|c| c.session);
            if owner != Some(session) {
                return Ok(false);
            }
            let _: () = self
                .client
                .set(&key, claim.as_str(), ttl, None, false)
                .await
                .map_err(failed("claiming a nickname"))?;
        }
        if holder == Holder::Pod {
            self.claimed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
        self.set_presence(nick, None, holder).await?;
        Ok(true)
    }

    async fn release_nick(&self, nick: &Nickname, session: SessionId) -> Result<(), BusError> {
        let key = nick_key(nick);
        let current: Option<String> = self
            .client
            .get(&key)
            .await
            .map_err(failed("releasing a nickname"))?;
        if let Some(current) = current
            && serde_json::from_str::<Claim>(&current).is_ok_and(|c| c.session == session)
        {
            let _: i64 = self
                .client
                .eval(DELETE_IF_OWNED, vec![key.clone()], vec![current])
                .await
                .map_err(failed("releasing a nickname"))?;
            for presence in [self.presence_key().as_str(), SESSION_PRESENCE] {
                let _: i64 = self
                    .client
                    .hdel(presence, nick.key())
                    .await
                    .map_err(failed("releasing a nickname"))?;
            }
        }
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        Ok(())
    }

    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError> {
        let claim: Option<String> = self
            .client
            .get(nick_key(nick))
            .await
            .map_err(failed("looking up a nickname"))?;
        Ok(claim
            .and_then(|c| serde_json::from_str::<Claim>(&c).ok())
            .map(|c| c.nick))
    }

    async fn online_users(&self) -> Result<Vec<Nickname>, BusError> {
        Ok(self.everyone().await?.into_iter().map(|p| p.nick).collect())
    }

    async fn enter_room(
        &self,
        room: &RoomName,
        nick: &Nickname,
        holder: Holder,
    ) -> Result<(), BusError> {
        self.set_presence(nick, Some(room), holder).await
    }

    async fn exit_room(
        &self,
        _room: &RoomName,
        nick: &Nickname,
        holder: Holder,
    ) -> Result<(), BusError> {
        self.set_presence(nick, None, holder).await
    }

    async fn room_members(&self, room: &RoomName) -> Result<Vec<Nickname>, BusError> {
        Ok(self
            .everyone()
            .await?
            .into_iter()
            .filter(|p| p.room.as_ref() == Some(room))
            .map(|p| p.nick)
            .collect())
    }

    async fn room_counts(&self) -> Result<HashMap<RoomName, usize>, BusError> {
        let mut counts = HashMap::new();
        for room in self.everyone().await?.into_iter().filter_map(|p| p.room) {
            *counts.entry(room).or_insert(0) += 1;
        }
        Ok(counts)
    }

    async fn save_session(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError> {
        let expires = OffsetDateTime::now_utc() + ttl;
        let stored = serde_json::to_string(&StoredSession {
            record: record.clone(),
            expires,
        })
        .expect("serializable");
        let id = record.id.to_string();
        // The nickname stays claimed as long as the session lives, whichever pod serves it
        // (unless it was released meanwhile: then the claim is left alone).
        let _: i64 = self
            .client
            .eval(
                SAVE_SESSION,
                vec![
                    format!("session:{id}"),
                    SESSION_EXPIRY.to_owned(),
                    nick_key(&record.nick),
                ],
                vec![
                    stored,
                    (ttl.as_secs() as i64 + SESSION_RECORD_GRACE_SECS).to_string(),
                    expires.unix_timestamp().to_string(),
                    id,
                    claim_value(&record.nick, record.id),
                    (session_claim_secs(ttl) * 1000).to_string(),
                ],
            )
            .await
            .map_err(failed("saving a session"))?;
        Ok(())
    }

    async fn load_session(&self, id: SessionId) -> Result<Option<SessionRecord>, BusError> {
        let stored: Option<String> = self
            .client
            .get(format!("session:{id}"))
            .await
            .map_err(failed("loading a session"))?;
        let stored = stored.and_then(|s| serde_json::from_str::<StoredSession>(&s).ok());
        Ok(stored
            .filter(|s| s.expires > OffsetDateTime::now_utc())
            .map(|s| s.record))
    }

    async fn touch_session(&self, id: SessionId, ttl: Duration) -> Result<bool, BusError> {
        match self.load_session(id).await? {
            Some(record) => self.save_session(&record, ttl).await.map(|()| true),
            None => Ok(false),
        }
    }

    async fn delete_session(&self, id: SessionId) -> Result<(), BusError> {
        let _: i64 = self
            .client
            .del(format!("session:{id}"))
            .await
            .map_err(failed("deleting a session"))?;
        let _: i64 = self
            .client
            .zrem(SESSION_EXPIRY, id.to_string())
            .await
            .map_err(failed("deleting a session"))?;
        Ok(())
    }

    async fn take_expired_sessions(&self) -> Result<Vec<SessionRecord>, BusError> {
        let now = OffsetDateTime::now_utc().unix_timestamp() as f64;
        let due: Vec<String> = self
            .client
            .zrangebyscore(SESSION_EXPIRY, f64::NEG_INFINITY, now, false, None)
            .await
            .map_err(failed("expiring sessions"))?;
        let mut expired = Vec::new();
        for id in due {
            // ZREM succeeds for one pod only: that pod closes the session.
            let won: i64 = self
                .client
                .zrem(SESSION_EXPIRY, id.as_str())
                .await
                .map_err(failed("expiring sessions"))?;
            let stored: Option<String> = self
                .client
                .get(format!("session:{id}"))
                .await
                .map_err(failed("expiring sessions"))?;
            if won == 1
                && let Some(stored) =
                    stored.and_then(|s| serde_json::from_str::<StoredSession>(&s).ok())
            {
                let _: i64 = self
                    .client
                    .del(format!("session:{id}"))
                    .await
                    .map_err(failed("expiring sessions"))?;
                expired.push(stored.record);
            }
        }
        Ok(expired)
    }
}
