//! HTTP sessions: `session:<id>` hashes — the record (`r`), its version (`v`), its logical
//! expiry (`e`), and what keeps its nickname claim and presence entry alive — plus a sorted set
//! of expiries that hands each expired session to exactly one pod. Saves are compare-and-set on
//! the version; commands that change a session hold `session:<id>:lock`; its rate-limit
//! allowance is `session:<id>:rate`.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use governor::Quota;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::presence::{SESSION_GRACE, claim_key, claim_value};
use super::{ValkeyBus, failed};
use crate::core::model::{SessionId, SessionRecord};
use crate::core::ports::{BusError, SessionLock, Sessions, Stored};

const SESSION_EXPIRY: &str = "sessions:expiry";
const SESSION_PRESENCE: &str = "presence:sessions";

/// Writes session `KEYS[1]` if its version is `ARGV[2]` (any, when `ARGV[2]` is empty: a new
/// session) and — when `ARGV[10]` is set (a restore) — it holds no record of a revision at least
/// `ARGV[11]`'s; schedules its expiry, renews its claim and presence entry. 1 saved, 0 conflict.
/// ARGV: record, version, expires ms, key ttl ms, id, claim value, claim ttl ms, nick field,
/// presence entry, restore, the record's revision. KEYS: session, expiry set, claim, session
/// presence. (A record written by a release before revisions has none: it counts as 0.)
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local v = redis.call('HGET', KEYS[1], 'v')
         if ARGV[2] ~= '' and (not v or tonumber(v) ~= tonumber(ARGV[2])) then return 0 end
         if ARGV[10] ~= '' and v then
           local held = cjson.decode(redis.call('HGET', KEYS[1], 'r') or '{}').revision or 0
           if held >= tonumber(ARGV[11]) then return 0 end
         end
         local next = (v and tonumber(v) or 0) + 1
         redis.call('HSET', KEYS[1], 'r', ARGV[1], 'v', tostring(next), 'e', ARGV[3],
                    'c', KEYS[3], 'cv', ARGV[6], 'f', ARGV[8], 'p', ARGV[9])
         redis.call('PEXPIRE', KEYS[1], ARGV[4])
         redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
         if redis.call('GET', KEYS[3]) == ARGV[6] then redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
         redis.call('HSET', KEYS[4], ARGV[8], ARGV[9])
         return 1",
    )
});

/// Pushes live session `KEYS[1]`'s expiry to `ARGV[2]` (now: `ARGV[1]`), with its claim and
/// presence entry. Returns its record, or false when it is unknown or expired. ARGV: now ms,
/// expires ms, key ttl ms, id, claim ttl ms. KEYS: session, expiry set, session presence.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local e = redis.call('HGET', KEYS[1], 'e')
         if not e or tonumber(e) <= tonumber(ARGV[1]) then return 0 end
         redis.call('HSET', KEYS[1], 'e', ARGV[2])
         redis.call('PEXPIRE', KEYS[1], ARGV[3])
         redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
         local fields = redis.call('HMGET', KEYS[1], 'c', 'cv', 'f', 'p')
         if fields[1] and redis.call('GET', fields[1]) == fields[2] then
           redis.call('PEXPIRE', fields[1], ARGV[5])
         end
         if fields[3] then redis.call('HSET', KEYS[3], fields[3], fields[4]) end
         return redis.call('HGET', KEYS[1], 'r')",
    )
});

/// Takes session `KEYS[1]` (id `ARGV[2]`) off the expiry schedule `KEYS[2]` and deletes it, if
/// it is due by `ARGV[1]` and no other pod took it; returns its record then. A session touched
/// since it was found due stays, rescheduled.
static TAKE_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return false end
         local e = redis.call('HGET', KEYS[1], 'e')
         if e and tonumber(e) > tonumber(ARGV[1]) then
           redis.call('ZADD', KEYS[2], e, ARGV[2])
           return false
         end
         redis.call('ZREM', KEYS[2], ARGV[2])
         local r = redis.call('HGET', KEYS[1], 'r')
         redis.call('DEL', KEYS[1])
         return r",
    )
});

/// Takes one request from the allowance `KEYS[1]` (GCRA: the key holds the theoretical arrival
/// time, in µs of the server's clock, which every pod shares). ARGV: emission interval µs,
/// tolerance µs (interval × (burst − 1)). 1 allowed, 0 refused. `%.0f`, not tostring: Lua 5.1
/// would print a µs timestamp with an exponent and lose its last digits.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "local t = redis.call('TIME')
         local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
         local tat = tonumber(redis.call('GET', KEYS[1])) or now
         if tat < now then tat = now end
         if tat - now > tonumber(ARGV[2]) then return 0 end
         local next = tat + tonumber(ARGV[1])
         redis.call('SET', KEYS[1], string.format('%.0f', next),
                    'PX', math.floor((next - now) / 1000) + 1)
         return 1",
    )
});

/// Deletes `KEYS[1]` if it still holds `ARGV[1]` (a lock's token).
static DELETE_IF_OWNED: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
         return 0",
    )
});

fn session_key(id: SessionId) -> String {
    format!("session:{id}")
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What a write of a session may replace.
enum Replacing {
    /// Whatever is there (a new session).
    Anything,
    /// Only the stored version it was loaded at (a compare-and-set save).
    Version(u64),
    /// Only nothing, or a record of an older revision (a restore).
    Older,
}

impl ValkeyBus {
    async fn write_session(
        &self,
        record: &SessionRecord,
        replacing: Replacing,
        ttl: Duration,
    ) -> Result<bool, BusError> {
        let (version, restore) = match replacing {
            Replacing::Anything => (String::new(), ""),
            Replacing::Version(v) => (v.to_string(), ""),
            Replacing::Older => (String::new(), "1"),
        };
        let expires = now_ms() + ttl.as_millis() as i64;
        let presence = serde_json::json!({ "nick": record.nick, "room": record.room.as_ref().map(|r| &r.name) });
        let saved: i64 = SAVE
            .evalsha_with_reload(
                &self.client,
                vec![
                    session_key(record.id),
                    SESSION_EXPIRY.to_owned(),
                    claim_key(&record.nick),
                    SESSION_PRESENCE.to_owned(),
                ],
                vec![
                    serde_json::to_string(record).expect("serializable"),
                    version,
                    expires.to_string(),
                    (ttl + SESSION_GRACE).as_millis().to_string(),
                    record.id.to_string(),
                    claim_value(&record.nick, record.id),
                    (ttl + SESSION_GRACE).as_millis().to_string(),
                    record.nick.key(),
                    presence.to_string(),
                    restore.to_owned(),
                    record.revision.to_string(),
                ],
            )
            .await
            .map_err(failed("saving a session"))?;
        Ok(saved == 1)
    }
}

#[async_trait]
impl Sessions for ValkeyBus {
    async fn create(&self, record: &SessionRecord, ttl: Duration) -> Result<(), BusError> {
        self.write_session(record, Replacing::Anything, ttl)
            .await
            .map(drop)
    }

    async fn restore(&self, record: &SessionRecord, ttl: Duration) -> Result<bool, BusError> {
        self.write_session(record, Replacing::Older, ttl).await
    }

    async fn load(&self, id: SessionId) -> Result<Option<Stored>, BusError> {
        let (record, version, expires): (Option<String>, Option<u64>, Option<i64>) = self
            .client
            .hmget(session_key(id), vec!["r", "v", "e"])
            .await
            .map_err(failed("loading a session"))?;
        let (Some(record), Some(version), Some(expires)) = (record, version, expires) else {
            return Ok(None);
        };
        if expires <= now_ms() {
            return Ok(None);
        }
        Ok(serde_json::from_str(&record)
            .ok()
            .map(|record| Stored { record, version }))
    }

    async fn save(
        &self,
        record: &SessionRecord,
        version: u64,
        ttl: Duration,
    ) -> Result<bool, BusError> {
        self.write_session(record, Replacing::Version(version), ttl)
            .await
    }

    async fn touch(&self, id: SessionId, ttl: Duration) -> Result<Option<SessionRecord>, BusError> {
        let now = now_ms();
        let touched: Option<String> = TOUCH
            .evalsha_with_reload(
                &self.client,
                vec![
                    session_key(id),
                    SESSION_EXPIRY.to_owned(),
                    SESSION_PRESENCE.to_owned(),
                ],
                vec![
                    now.to_string(),
                    (now + ttl.as_millis() as i64).to_string(),
                    (ttl + SESSION_GRACE).as_millis().to_string(),
                    id.to_string(),
                    (ttl + SESSION_GRACE).as_millis().to_string(),
                ],
            )
            .await
            .map_err(failed("keeping a session alive"))?;
        Ok(touched.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn delete(&self, id: SessionId) -> Result<(), BusError> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline
            .del(session_key(id))
            .await
            .map_err(failed("deleting a session"))?;
        let _: () = pipeline
            .zrem(SESSION_EXPIRY, id.to_string())
            .await
            .map_err(failed("deleting a session"))?;
        let _: Vec<Value> = pipeline.all().await.map_err(failed("deleting a session"))?;
        Ok(())
    }

    async fn lock(
        &self,
        id: SessionId,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<SessionLock>, BusError> {
        let key = format!("{}:lock", session_key(id));
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let taken: Option<String> = self
                .client
                .set(
                    &key,
                    token.as_str(),
                    Some(Expiration::PX(lease.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(failed("locking a session"))?;
            if taken.is_some() {
                return Ok(Some(SessionLock { session: id, token }));
            }
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn unlock(&self, lock: SessionLock) {
        let key = format!("{}:lock", session_key(lock.session));
        let released: Result<i64, _> = DELETE_IF_OWNED
            .evalsha_with_reload(&self.client, vec![key], vec![lock.token])
            .await;
        if let Err(e) = released {
            // It lapses after its lease.
            tracing::warn!(error = %e, session = %lock.session, "unlocking a session failed");
        }
    }

    async fn take_expired(&self) -> Result<Vec<SessionRecord>, BusError> {
        let now = now_ms();
        let due: Vec<String> = self
            .client
            .zrangebyscore(SESSION_EXPIRY, f64::NEG_INFINITY, now as f64, false, None)
            .await
            .map_err(failed("expiring sessions"))?;
        let mut expired = Vec::new();
        for id in due {
            let record: Option<String> = TAKE_EXPIRED
                .evalsha_with_reload(
                    &self.client,
                    vec![format!("session:{id}"), SESSION_EXPIRY.to_owned()],
                    vec![now.to_string(), id],
                )
                .await
                .map_err(failed("expiring sessions"))?;
            expired.extend(record.and_then(|r| serde_json::from_str(&r).ok()));
        }
        Ok(expired)
    }

    async fn spend(&self, id: SessionId, quota: Quota) -> Result<bool, BusError> {
        let interval = quota.replenish_interval().as_micros();
        let tolerance = interval * u128::from(quota.burst_size().get() - 1);
        let allowed: i64 = SPEND
            .evalsha_with_reload(
                &self.client,
                vec![format!("{}:rate", session_key(id))],
                vec![interval.to_string(), tolerance.to_string()],
            )
            .await
            .map_err(failed("checking a session's rate limit"))?;
        Ok(allowed == 1)
    }
}
