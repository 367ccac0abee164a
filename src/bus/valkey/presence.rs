//! Nickname claims and room presence, cluster-wide.
//!
//! - A claim is `nick:<name>` = `<session>|<nick>`. A TCP user's claim lives PRESENCE_TTL and is
//!   renewed by its pod's heartbeat, so it goes within PRESENCE_TTL of its pod's death; an HTTP
//!   session's lives as long as the session.
//! - Presence is one hash per pod (`presence:<pod>`: nick → room), rewritten whole from the pod's
//!   own state by every heartbeat, and `presence:sessions` for HTTP sessions.
//! - After Valkey lost its state (a restart: its epoch marker is gone, or not the one pods knew)
//!   or went unrenewed for PRESENCE_TTL (a long outage, a pause), the first heartbeat — or the
//!   first claim — opens a recovery window of PRESENCE_TTL during which new claims wait: every
//!   live user's claim is back before anyone else can take the name. A pod that has just started
//!   (it knows no epoch) opens none, so a new cluster serves at once.
//! - Lease discipline: a pod that could not renew its claims for nearly PRESENCE_TTL can no longer
//!   vouch for them (others may be about to see them expire): it disconnects those users rather
//!   than let two sessions hold one name.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ValkeyBus, failed};
use crate::core::model::SessionId;
use crate::core::names::{Nickname, RoomName};
use crate::core::ports::{BusError, Claim, Holder, Presence};

const PODS: &str = "pods";
/// Presence of HTTP sessions (nick -> room), cluster-wide: entries leave when the session closes.
const SESSION_PRESENCE: &str = "presence:sessions";
/// When any pod last renewed its presence (milliseconds, Valkey's clock).
const BEAT: &str = "presence:beat";
/// A random id of the presence state's incarnation: missing, or another than a pod knew, means
/// Valkey lost the claims.
const EPOCH: &str = "presence:epoch";
/// Present while live users re-register after Valkey lost their claims.
const RECOVERING: &str = "presence:recovering";
/// An HTTP session's claim outlives its logical expiry by this much, so the pod that closes it
/// can still release it.
pub(super) const SESSION_GRACE: Duration = Duration::from_secs(300);

/// Claims `KEYS[1]` for session `ARGV[3]` (value `ARGV[1]`, for `ARGV[2]` ms): 1 granted, 0 taken,
/// -1 recovering. Opens the recovery window first if the presence state is gone (no epoch
/// `KEYS[4]`; a new one is `ARGV[6]`) or nobody renewed presence for `ARGV[4]` ms. A claim made
/// again by a session that held it before (`ARGV[7]` is `again`) does not wait out the window.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         local lost = false
         if not redis.call('GET', KEYS[4]) then
           redis.call('SET', KEYS[4], ARGV[6])
           lost = true
         end
         local beat = tonumber(redis.call('GET', KEYS[2]) or '0')
         if lost or now - beat > tonumber(ARGV[4]) then
           redis.call('SET', KEYS[3], '1', 'PX', ARGV[5], 'NX')
           redis.call('SET', KEYS[2], tostring(now))
         end
         local current = redis.call('GET', KEYS[1])
         if current then
           if string.sub(current, 1, string.len(ARGV[3]) + 1) == ARGV[3] .. '|' then
             redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
             return 1
           end
           return 0
         end
         if ARGV[7] ~= 'again' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
         return 1",
    )
});

/// Releases claim `KEYS[1]` if session `ARGV[1]` holds it, and its presence entry `ARGV[2]` in
/// the hashes `KEYS[2..]` (the pod's, the HTTP sessions', and a heartbeat's staging hash).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local current = redis.call('GET', KEYS[1])
         if current and string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
           redis.call('DEL', KEYS[1])
           for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[2]) end
         end
         return 1",
    )
});

/// One slice of a pod's heartbeat (see [`ValkeyBus::heartbeat`]). Opens the recovery window
/// when the presence state was lost since this pod last saw it (the epoch `KEYS[5]` is gone or
/// not `ARGV[7]`, the one it knew; a new one is `ARGV[8]`) or when it has users (`ARGV[5]`) and
/// nobody renewed presence for `ARGV[1]` ms. Then marks presence renewed, renews or re-registers
/// its `ARGV[6]` claims (keys `KEYS[6..]`, values `ARGV[10..]`) and writes the presence entry of
/// each claim it still holds (the field/value pairs after them) into the heartbeat's staging hash
/// `KEYS[3]`. The last slice (`ARGV[9]` is `last`) puts the staging hash in place of the pod's
/// presence hash `KEYS[6 + claims]`. Returns the epoch followed by the claims another session
/// holds now.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         local open = false
         local epoch = redis.call('GET', KEYS[5])
         if not epoch then
           epoch = ARGV[8]
           redis.call('SET', KEYS[5], epoch)
           open = ARGV[7] ~= ''
         elseif ARGV[7] ~= '' and ARGV[7] ~= epoch then
           open = true
         end
         local beat = tonumber(redis.call('GET', KEYS[1]) or '0')
         if ARGV[5] == '1' and now - beat > tonumber(ARGV[1]) then open = true end
         if open then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'NX') end
         redis.call('SET', KEYS[1], tostring(now))
         local claims = tonumber(ARGV[6])
         local result = {epoch}
         for i = 1, claims do
           local key, value = KEYS[5 + i], ARGV[9 + i]
           local current = redis.call('GET', key)
           if current == value or not current then
             redis.call('SET', key, value, 'PX', ARGV[3])
             local field = 8 + claims + 2 * i
             redis.call('HSET', KEYS[3], ARGV[field], ARGV[field + 1])
           else
             table.insert(result, key)
           end
         end
         redis.call('PEXPIRE', KEYS[3], ARGV[3])
         if ARGV[9] == 'last' then
           local presence = KEYS[6 + claims]
           if redis.call('EXISTS', KEYS[3]) == 1 then
             redis.call('RENAME', KEYS[3], presence)
             redis.call('PEXPIRE', presence, ARGV[3])
           else
             redis.call('DEL', presence)
           end
         end
         redis.call('SADD', KEYS[4], ARGV[4])
         return result",
    )
});

/// Claims renewed per heartbeat script: what one script allocates (its keys and arguments, here
/// and in the client) and how long it holds Valkey are bounded by this, however many users a pod
/// has (10,000 in one script measured ~0.8 KB per connection of lasting heap high-water).
const CLAIMS_PER_SLICE: usize = 500;

#[derive(Serialize, Deserialize)]
struct Entry {
    nick: Nickname,
    room: Option<RoomName>,
}

/// A claim this pod renews.
struct Held {
    session: SessionId,
    nick: Nickname,
    room: Option<RoomName>,
}

#[derive(Default)]
pub(super) struct Local {
    /// This pod's TCP users' claims, by claim key.
    claims: HashMap<String, Held>,
    /// Releases that failed (Valkey unreachable), retried by the heartbeat.
    releases: Vec<(Nickname, SessionId)>,
    /// When the last heartbeat that succeeded began.
    renewed: Option<Instant>,
    /// The presence state's epoch as of this pod's last heartbeat; `None` before the first.
    epoch: Option<String>,
    /// While a heartbeat runs: the hash it is building to replace this pod's presence hash, where
    /// entries written and removed meanwhile must be written and removed too.
    staging: Option<String>,
}

pub(super) fn claim_key(nick: &Nickname) -> String {
    format!("nick:{}", nick.key())
}

/// What a nickname's key holds while `session` has it.
pub(super) fn claim_value(nick: &Nickname, session: SessionId) -> String {
    format!("{session}|{nick}")
}

fn entry(nick: &Nickname, room: Option<&RoomName>) -> String {
    serde_json::to_string(&Entry {
        nick: nick.clone(),
        room: room.cloned(),
    })
    .expect("serializable")
}

impl ValkeyBus {
    fn presence_key(&self) -> String {
        format!("presence:{}", self.instance)
    }

    fn ttl_ms(&self) -> u64 {
        self.presence_ttl.as_millis().max(1000) as u64
    }

    /// Renews this pod's claims and rewrites its presence hash, a slice of claims per script (see
    /// [`HEARTBEAT`]); then retries releases that failed before. The entries go to a staging hash
    /// that the last slice puts in place, so nobody reads a half-written presence; an entry
    /// written meanwhile goes to both (see [`Self::write_entry`]). Each slice reads the claims as
    /// they are when it is sent, and checks the epoch the previous one saw.
    pub(super) async fn heartbeat(&self) -> Result<(), BusError> {
        let began = Instant::now();
        let (keys, staging) = {
            let mut local = self.lock_local();
            // Named afresh each time: a hash left by a heartbeat cut short (by a crash, say, of a
            // pod that comes back under the same name) must not be put in place by another.
            let staging = format!(
                "{}:next:{}",
                self.presence_key(),
                uuid::Uuid::new_v4().simple()
            );
            local.staging = Some(staging.clone());
            let keys: Vec<String> = local.claims.keys().cloned().collect();
            (keys, staging)
        };
        let mut slices = keys.chunks(CLAIMS_PER_SLICE);
        let mut renewed = Ok(());
        // One slice even with no claims: it marks presence renewed and empties the presence hash.
        let mut slice: Option<&[String]> = Some(slices.next().unwrap_or(&[]));
        while let Some(keys) = slice {
            slice = slices.next();
            renewed = self.renew(keys, &staging, slice.is_none()).await;
            if renewed.is_err() {
                break;
            }
        }
        {
            let mut local = self.lock_local();
            local.staging = None;
            if renewed.is_ok() {
                local.renewed = Some(began);
            }
        }
        renewed?;
        let mut pending = std::mem::take(&mut self.lock_local().releases);
        // One failure means Valkey is not answering: keep the rest for the next heartbeat rather
        // than wait out a timeout for each.
        let mut failed_once = false;
        for (nick, session) in pending.drain(..) {
            if failed_once || self.try_release(&nick, session).await.is_err() {
                failed_once = true;
                self.lock_local().releases.push((nick, session));
            }
        }
        Ok(())
    }

    /// Runs one slice of the heartbeat over the claims `keys` this pod still holds; revokes those
    /// another session took meanwhile, and queues for release those released while it ran.
    async fn renew(&self, keys: &[String], staging: &str, last: bool) -> Result<(), BusError> {
        let (held, known) = {
            let local = self.lock_local();
            let held: Vec<(&String, Nickname, SessionId, Option<RoomName>)> = keys
                .iter()
                .filter_map(|key| {
                    let h = local.claims.get(key)?;
                    Some((key, h.nick.clone(), h.session, h.room.clone()))
                })
                .collect();
            (held, local.epoch.clone().unwrap_or_default())
        };
        let ttl = self.ttl_ms();
        let mut script_keys = vec![
            BEAT.to_owned(),
            RECOVERING.to_owned(),
            staging.to_owned(),
            PODS.to_owned(),
            EPOCH.to_owned(),
        ];
        script_keys.extend(held.iter().map(|(key, ..)| (*key).clone()));
        script_keys.push(self.presence_key());
        let mut args: Vec<String> = vec![
            ttl.to_string(),
            ttl.to_string(),
            ttl.to_string(),
            self.instance.clone(),
            if keys.is_empty() { "0" } else { "1" }.to_owned(),
            held.len().to_string(),
            known,
            uuid::Uuid::new_v4().simple().to_string(),
            if last { "last" } else { "more" }.to_owned(),
        ];
        args.extend(
            held.iter()
                .map(|(_, nick, session, _)| claim_value(nick, *session)),
        );
        for (_, nick, _, room) in &held {
            args.push(nick.key());
            args.push(entry(nick, room.as_ref()));
        }
        let mut answer: Vec<String> = HEARTBEAT
            .evalsha_with_reload(&self.client, script_keys, args)
            .await
            .map_err(failed("heartbeat"))?;
        let lost = answer.split_off(1.min(answer.len()));
        let revoked = {
            let mut local = self.lock_local();
            local.epoch = answer.pop();
            // Taken by another session: revoked, unless the claim changed hands on this pod since.
            let mut revoked = Vec::new();
            for key in &lost {
                let was = held.iter().find(|(k, ..)| *k == key).map(|h| h.2);
                if local
                    .claims
                    .get(key)
                    .is_some_and(|h| Some(h.session) == was)
                    && let Some(h) = local.claims.remove(key)
                {
                    revoked.push(h.session);
                }
            }
            // Released while the slice ran: it may have re-registered them; release again.
            let released = held.iter().filter(|(key, _, session, _)| {
                local.claims.get(*key).is_none_or(|h| h.session != *session)
            });
            let released: Vec<(Nickname, SessionId)> = released
                .map(|(_, nick, session, _)| (nick.clone(), *session))
                .collect();
            local.releases.extend(released);
            revoked
        };
        for session in revoked {
            tracing::warn!(%session, "a live user's nickname was taken while presence was down; disconnecting it");
            self.revoke(session);
        }
        Ok(())
    }

    fn revoke(&self, session: SessionId) {
        if let Some(revoked) = self
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = revoked.send(session);
        }
    }

    /// Heartbeats every PRESENCE_TTL/3 (at once after a reconnect) and watches the lease, until
    /// `shutdown`. The lease is watched on its own: a heartbeat waiting out a timeout must not
    /// keep it from noticing.
    pub(super) async fn keep_presence(self: Arc<Self>, shutdown: CancellationToken) {
        // Claims must be given up this long before they could expire elsewhere.
        let margin = (self.presence_ttl / 6).max(Duration::from_millis(500));
        let watch = async {
            let mut lease = tokio::time::interval(Duration::from_millis(250));
            while shutdown.run_until_cancelled(lease.tick()).await.is_some() {
                self.check_lease(margin);
            }
        };
        let beat = async {
            let mut beat = tokio::time::interval(self.presence_ttl / 3);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reconnects = self.client.reconnect_rx();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = beat.tick() => {}
                    Ok(_) = reconnects.recv() => tracing::info!("reconnected to Valkey; re-registering presence"),
                }
                // A drain does not wait for a heartbeat: with Valkey unreachable each of its
                // calls takes the command timeout, and the pod's presence goes with it anyway
                // (a staging hash left half-written expires).
                match shutdown.run_until_cancelled(self.heartbeat()).await {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "presence heartbeat failed"),
                    Some(Ok(())) => {}
                }
            }
        };
        tokio::join!(watch, beat);
    }

    /// Disconnects this pod's users when their claims may be about to expire unrenewed.
    fn check_lease(&self, margin: Duration) {
        let revoked: Vec<SessionId> = {
            let mut local = self.lock_local();
            let Some(renewed) = local.renewed else { return };
            if local.claims.is_empty() || renewed.elapsed() + margin < self.presence_ttl {
                return;
            }
            tracing::warn!(
                users = local.claims.len(),
                "presence not renewed for {:?}: disconnecting this pod's users, whose nicknames may soon be free",
                renewed.elapsed()
            );
            local.claims.drain().map(|(_, held)| held.session).collect()
        };
        for session in revoked {
            self.revoke(session);
        }
    }

    /// On shutdown: this pod's users are gone now, not in PRESENCE_TTL. One round trip; with
    /// Valkey unreachable it fails after the command timeout and the entries expire anyway.
    pub(super) async fn leave(&self) {
        let pipeline = self.client.pipeline();
        let _: Result<(), _> = pipeline.del(self.presence_key()).await;
        let _: Result<(), _> = pipeline.srem(PODS, self.instance.as_str()).await;
        let _: Result<Vec<Value>, _> = pipeline.all().await;
    }

    async fn try_release(&self, nick: &Nickname, session: SessionId) -> Result<(), BusError> {
        let mut keys = vec![
            claim_key(nick),
            self.presence_key(),
            SESSION_PRESENCE.to_owned(),
        ];
        // A heartbeat under way may already have written the entry into the hash it will put in
        // place of the live one.
        keys.extend(self.lock_local().staging.clone());
        let _: i64 = RELEASE
            .evalsha_with_reload(&self.client, keys, vec![session.to_string(), nick.key()])
            .await
            .map_err(failed("releasing a nickname"))?;
        Ok(())
    }

    /// Every pod's presence entries, and the HTTP sessions'.
    async fn everyone(&self) -> Result<Vec<Entry>, BusError> {
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
                    .filter_map(|v| serde_json::from_str::<Entry>(v).ok()),
            );
        }
        everyone.extend(self.session_presence().await?);
        Ok(everyone)
    }

    /// HTTP sessions' presence. An entry whose claim has lapsed belongs to a session that ended
    /// without being closed (every pod down past its expiry): it is dropped here.
    async fn session_presence(&self) -> Result<Vec<Entry>, BusError> {
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
                    .map(|(key, _)| format!("nick:{key}"))
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(failed("reading presence"))?;
        let mut present = Vec::new();
        for ((key, entry), claim) in entries.into_iter().zip(claims) {
            if claim.is_some() {
                present.extend(serde_json::from_str::<Entry>(&entry).ok());
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
}

#[async_trait]
impl Presence for ValkeyBus {
    async fn claim(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<Claim, BusError> {
        self.claim_as(nick, session, holder, false).await
    }

    async fn reclaim(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
    ) -> Result<Claim, BusError> {
        self.claim_as(nick, session, holder, true).await
    }
    async fn release(&self, nick: &Nickname, session: SessionId) {
        {
            let mut local = self.lock_local();
            let key = claim_key(nick);
            if local.claims.get(&key).is_some_and(|h| h.session == session) {
                // No longer renewed, from now: even if the release below fails, it lapses.
                local.claims.remove(&key);
            }
        }
        if let Err(e) = self.try_release(nick, session).await {
            tracing::warn!(error = %e, %nick, "releasing a nickname failed; retrying with the heartbeat");
            self.lock_local().releases.push((nick.clone(), session));
        }
    }

    async fn set_room(
        &self,
        nick: &Nickname,
        session: SessionId,
        room: Option<&RoomName>,
        holder: Holder,
    ) {
        if holder == Holder::Pod {
            let mut local = self.lock_local();
            match local.claims.get_mut(&claim_key(nick)) {
                Some(held) if held.session == session => held.room = room.cloned(),
                _ => return,
            }
        }
        self.write_entry(nick, room, holder).await;
    }

    async fn find_online(&self, nick: &Nickname) -> Result<Option<Nickname>, BusError> {
        let claim: Option<String> = self
            .client
            .get(claim_key(nick))
            .await
            .map_err(failed("looking up a nickname"))?;
        Ok(claim
            .and_then(|c| c.split_once('|').map(|(_, nick)| nick.to_owned()))
            .and_then(|n| Nickname::parse(&n).ok()))
    }

    async fn online_users(&self) -> Result<Vec<Nickname>, BusError> {
        Ok(self.everyone().await?.into_iter().map(|p| p.nick).collect())
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

    fn revoked(&self) -> mpsc::UnboundedReceiver<SessionId> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

impl ValkeyBus {
    /// A claim (see [`CLAIM`]); `again` for a session that held it before the state was lost.
    async fn claim_as(
        &self,
        nick: &Nickname,
        session: SessionId,
        holder: Holder,
        again: bool,
    ) -> Result<Claim, BusError> {
        let key = claim_key(nick);
        let ttl = match holder {
            Holder::Pod => self.ttl_ms(),
            Holder::Session(idle) => (idle + SESSION_GRACE).as_millis() as u64,
        };
        let granted: i64 = CLAIM
            .evalsha_with_reload(
                &self.client,
                vec![
                    key.clone(),
                    BEAT.to_owned(),
                    RECOVERING.to_owned(),
                    EPOCH.to_owned(),
                ],
                vec![
                    claim_value(nick, session),
                    ttl.to_string(),
                    session.to_string(),
                    self.ttl_ms().to_string(),
                    self.ttl_ms().to_string(),
                    uuid::Uuid::new_v4().simple().to_string(),
                    if again { "again" } else { "new" }.to_owned(),
                ],
            )
            .await
            .map_err(failed("claiming a nickname"))?;
        let claim = match granted {
            1 => Claim::Granted,
            0 => return Ok(Claim::Taken),
            _ => return Ok(Claim::Recovering),
        };
        match holder {
            Holder::Pod => {
                let room = {
                    let mut local = self.lock_local();
                    // A respelling of the same name keeps its room.
                    let room = local.claims.get(&key).and_then(|h| h.room.clone());
                    local.claims.insert(
                        key,
                        Held {
                            session,
                            nick: nick.clone(),
                            room: room.clone(),
                        },
                    );
                    room
                };
                self.write_entry(nick, room.as_ref(), holder).await;
            }
            Holder::Session(_) => self.write_entry(nick, None, holder).await,
        }
        Ok(claim)
    }

    /// Writes one presence entry now. Best effort: a pod's entries are rewritten by every
    /// heartbeat anyway, and an HTTP session's by its next request.
    async fn write_entry(&self, nick: &Nickname, room: Option<&RoomName>, holder: Holder) {
        let hash = match holder {
            Holder::Pod => self.presence_key(),
            Holder::Session(_) => SESSION_PRESENCE.to_owned(),
        };
        let pipeline = self.client.pipeline();
        let field = (nick.key(), entry(nick, room));
        let ttl = self.ttl_ms() as i64;
        // A heartbeat is building the hash that will replace the live one: the entry goes there
        // first, so that whenever the heartbeat puts it in place the entry is in one or the other.
        let staging = match holder {
            Holder::Pod => self.lock_local().staging.clone(),
            Holder::Session(_) => None,
        };
        if let Some(staging) = staging {
            let _: Result<(), _> = pipeline.hset(&staging, field.clone()).await;
            let _: Result<(), _> = pipeline.pexpire(&staging, ttl, None).await;
        }
        let _: Result<(), _> = pipeline.hset(&hash, field).await;
        if holder == Holder::Pod {
            let _: Result<(), _> = pipeline.pexpire(&hash, ttl, None).await;
            let _: Result<(), _> = pipeline.sadd(PODS, self.instance.as_str()).await;
        }
        if let Err(e) = pipeline.all::<Vec<Value>>().await {
            tracing::debug!(error = %e, %nick, "writing presence failed; the heartbeat will");
        }
    }
}
