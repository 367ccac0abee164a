//! The PostgreSQL `Store` (sqlx, runtime-checked queries so that building needs no database).
//!
//! Durability: `append_messages` is one statement committed synchronously — when it returns, the
//! batch's WAL is on disk, and only then does anyone see, read or get acknowledged any of it
//! (PostgreSQL makes a synchronous commit visible after its flush). Ordering: each room's
//! `last_seq` counter is bumped in that same statement under the room's row lock, so seqs are
//! gapless and follow commit order across every replica. Idempotence: every message carries a
//! key, unique in the table; a key already stored is not stored again.
//!
//! An append whose outcome is lost (the connection broke or hung mid-statement) is resolved
//! before anyone is answered: the old backend is terminated — so it can no longer commit — and
//! the batch's keys are looked up. Only if the database cannot be asked at all is the outcome
//! reported as unknown.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Postgres, SqlSafeStr};
use time::OffsetDateTime;

use crate::core::model::{ChatMessage, MessageKey, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};
use crate::core::ports::{RoomTail, Store, StoreError};
use crate::telemetry::metric;

/// The schema, embedded at build time.
/// The migrations, run without sqlx's own lock (see [`PgStore::migrate`]).
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator
});
/// The advisory lock held while migrating (any fixed number; this one spells "babydisc").
const MIGRATION_LOCK: i64 = 0x6261_6279_6469_7363;
/// How often a replica waiting to migrate tries the lock again.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(200);

/// How long one statement may run, on the server (`statement_timeout`) and here.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub acquire: Duration,
    pub statement: Duration,
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    timeouts: Timeouts,
    /// The connection messages are appended on, kept from one batch to the next.
    ///
    /// sqlx hands out idle connections first in, first out, so a pod's stream of small commits
    /// would rotate over every connection of its pool: with three pods, thirty PostgreSQL
    /// processes taking turns, each woken with cold caches. One warm backend per pod does the
    /// same commits for less than half the CPU (docs/BENCHMARKS.md §6). Commits come from one
    /// task at a time, so the lock is not contended.
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
}

struct Writer {
    conn: PoolConnection<Postgres>,
    /// Its backend's process id: what is terminated when an append's outcome is lost.
    pid: i32,
    last_used: Instant,
}

/// Maps a driver error to a store error, saying what was being done.
fn failed(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("{doing}: {e}"))
}

#[derive(sqlx::FromRow)]
struct RoomRow {
    id: i64,
    name: String,
    created_at: OffsetDateTime,
}

impl TryFrom<RoomRow> for Room {
    type Error = StoreError;
    fn try_from(row: RoomRow) -> Result<Room, StoreError> {
        Ok(Room {
            id: row.id,
            name: RoomName::parse(&row.name)
                .map_err(|e| StoreError::Unavailable(format!("room {}: {e}", row.id)))?,
            created_at: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: i64,
    room: String,
    seq: i64,
    nickname: String,
    content: String,
    created_at: OffsetDateTime,
}

impl TryFrom<MessageRow> for ChatMessage {
    type Error = StoreError;
    fn try_from(row: MessageRow) -> Result<ChatMessage, StoreError> {
        let corrupt = |e| StoreError::Unavailable(format!("message {}: {e}", row.id));
        Ok(ChatMessage {
            id: row.id,
            room: RoomName::parse(&row.room).map_err(corrupt)?,
            seq: row.seq,
            user: Nickname::parse(&row.nickname).map_err(corrupt)?,
            content: row.content,
            created_at: row.created_at,
        })
    }
}

fn rows<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

/// A pooled connection idle for longer than this is pinged before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);
/// How long an append's lost outcome is looked for (the database may be restarting).
const RESOLVE_FOR: Duration = Duration::from_secs(15);

/// Numbers and inserts a batch in one statement, and answers with every message of the batch as
/// stored — new or already there. Messages whose key is stored already are left as they are;
/// the rooms of the rest are locked in id order (two writers never wait on each other in a
/// cycle), each room's counter is bumped by its message count, and the messages of each room are
/// numbered in batch order from the old counter and inserted. The rows that existed are read in
/// the same snapshot, so the answer is complete or the statement failed.
///
/// The statement is prepared once per connection and runs on one generic plan, costed with the
/// statistics of that moment. Made on a small table (a fresh database), a plan that read the
/// stored keys by a sequential scan of `messages` stayed while the table grew, each append
/// scanning all of it. So the lookup is a lateral subquery (`OFFSET 0` keeps it from being
/// flattened into a join): one probe of the unique key index per message; and the appending
/// connection disables sequential scans, which a table analysed while tiny would still invite.
const APPEND: &str = "WITH input AS (
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                              $6::timestamptz[])
                  WITH ORDINALITY AS t (key, room_id, user_id, nickname, content, created_at, ord)
     ),
     existing AS (
         SELECT m.* FROM input i CROSS JOIN LATERAL (
             SELECT m.key, m.id, m.room_id, m.seq, m.nickname, m.content, m.created_at
             FROM messages m WHERE m.key = i.key OFFSET 0
         ) m
     ),
     fresh AS (
         SELECT i.* FROM input i WHERE i.key NOT IN (SELECT key FROM existing)
     ),
     locked AS (
         SELECT id FROM rooms WHERE id IN (SELECT room_id FROM fresh) ORDER BY id FOR UPDATE
     ),
     counts AS (
         SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id
     ),
     bumped AS (
         UPDATE rooms r SET last_seq = r.last_seq + c.n
         FROM counts c, locked l
         WHERE r.id = c.room_id AND l.id = c.room_id
         RETURNING r.id, r.last_seq - c.n AS base
     ),
     inserted AS (
         INSERT INTO messages (key, room_id, seq, user_id, nickname, content, created_at)
         SELECT f.key, f.room_id,
                b.base + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord),
                f.user_id, f.nickname, f.content, f.created_at
         FROM fresh f JOIN bumped b ON b.id = f.room_id
         ORDER BY f.ord
         RETURNING key, id, room_id, seq, nickname, content, created_at
     ),
     answer AS (SELECT * FROM inserted UNION ALL SELECT * FROM existing)
     SELECT a.key, a.id, r.name AS room, a.seq, a.nickname, a.content, a.created_at
     FROM answer a JOIN rooms r ON r.id = a.room_id";

/// The stored messages with these keys.
const BY_KEY: &str =
    "SELECT m.key, m.id, r.name AS room, m.seq, m.nickname, m.content, m.created_at
     FROM messages m JOIN rooms r ON r.id = m.room_id WHERE m.key = ANY($1)";

/// A stored message with its key.
#[derive(sqlx::FromRow)]
struct KeyedRow {
    key: MessageKey,
    #[sqlx(flatten)]
    message: MessageRow,
}

/// What became of an append.
enum Appended {
    /// Every message of the batch, as stored.
    Stored(Vec<KeyedRow>),
    /// Not stored: PostgreSQL answered with an error, or was never reached.
    Refused(StoreError),
    /// Not stored: a retry of one of its keys committed first on another pod (the unique key
    /// index rolled this one back). Trying again finds it stored.
    KeyRace,
    /// The statement went out and the connection broke or hung: backend `.0` may have committed.
    Unknown(i32),
}

impl PgStore {
    /// Connects a pool of `size` connections: a caller waits at most `timeouts.acquire` for one,
    /// and no statement runs longer than `timeouts.statement`.
    pub async fn connect(url: &str, size: u32, timeouts: Timeouts) -> Result<PgStore, StoreError> {
        let statement_ms = timeouts.statement.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(failed("DATABASE_URL"))?
            .application_name("baby-discord")
            // A statement (or a transaction left idle) never holds a backend and its locks for
            // longer than this, whatever happened to the client.
            .options([
                ("statement_timeout", statement_ms.as_str()),
                ("idle_in_transaction_session_timeout", statement_ms.as_str()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(timeouts.acquire)
            // sqlx pings every connection before handing it out: a round trip on the commit path
            // of every message. Ping only connections that sat idle (PostgreSQL may have
            // restarted meanwhile); a busy one that broke fails its query like any store error.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(failed("connecting to PostgreSQL"))?;
        Ok(PgStore {
            pool,
            timeouts,
            writer: Arc::default(),
        })
    }

    /// The appending connection: the one kept, if it is still alive, or a fresh one from the pool.
    async fn writer<'a>(&self, held: &'a mut Option<Writer>) -> Result<&'a mut Writer, StoreError> {
        if let Some(writer) = held
            && writer.last_used.elapsed() > IDLE_BEFORE_PING
            && !matches!(
                tokio::time::timeout(self.timeouts.statement, writer.conn.ping()).await,
                Ok(Ok(()))
            )
        {
            *held = None;
        }
        let writer = match held {
            Some(writer) => writer,
            None => {
                let setup =
                    tokio::time::timeout(self.timeouts.statement, self.appending_connection());
                let (conn, pid) = setup
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("opening the appending connection timed out".into())
                    })?
                    .map_err(failed("storing messages"))?;
                held.insert(Writer {
                    conn,
                    pid,
                    last_used: Instant::now(),
                })
            }
        };
        Ok(writer)
    }

    /// A connection from the pool set up for appending: [`APPEND`] prepared, its backend's pid
    /// known. It stays out of the pool; closed when dropped.
    async fn appending_connection(&self) -> Result<(PoolConnection<Postgres>, i32), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        // Planning the statement costs more than running it on a small batch, so the connection
        // plans it once — and that plan must not scan a table, whatever the statistics said
        // when it was made (see APPEND): every table it reads has the index it needs.
        let (pid, _, _): (i32, String, String) = sqlx::query_as(
            "SELECT pg_backend_pid(),
                    set_config('plan_cache_mode', 'force_generic_plan', false),
                    set_config('enable_seqscan', 'off', false)",
        )
        .fetch_one(&mut *conn)
        .await?;
        (&mut *conn).prepare(APPEND.into_sql_str()).await?;
        Ok((conn, pid))
    }

    /// Appends on the kept connection.
    async fn try_append(&self, batch: &[NewMessage]) -> Appended {
        let keys: Vec<MessageKey> = batch.iter().map(|m| m.key).collect();
        let room_ids: Vec<i64> = batch.iter().map(|m| m.room_id).collect();
        let user_ids: Vec<i64> = batch.iter().map(|m| m.user_id).collect();
        let nicks: Vec<&str> = batch.iter().map(|m| m.user.as_str()).collect();
        let contents: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
        let times: Vec<OffsetDateTime> = batch.iter().map(|m| m.created_at).collect();
        let mut held = self.writer.lock().await;
        let writer = match self.writer(&mut held).await {
            Ok(writer) => writer,
            Err(e) => return Appended::Refused(e),
        };
        let pid = writer.pid;
        let query = sqlx::query_as(APPEND)
            .bind(&keys)
            .bind(&room_ids)
            .bind(&user_ids)
            .bind(&nicks)
            .bind(&contents)
            .bind(&times)
            .fetch_all(&mut *writer.conn);
        match tokio::time::timeout(self.timeouts.statement, query).await {
            Ok(Ok(rows)) => {
                writer.last_used = Instant::now();
                Appended::Stored(rows)
            }
            Ok(Err(e)) => {
                // The connection may be what failed: the next batch starts on a fresh one.
                *held = None;
                match &e {
                    sqlx::Error::Database(db) if db.constraint() == Some("messages_key") => {
                        Appended::KeyRace
                    }
                    // PostgreSQL answered with an error: the statement's transaction did not
                    // commit (a commit that has flushed cannot fail with an error; it would be a
                    // PANIC) — a connection terminated by a shutdown, say.
                    sqlx::Error::Database(_) => {
                        Appended::Refused(StoreError::Unavailable(format!("storing messages: {e}")))
                    }
                    // The connection broke mid-statement: it may have committed.
                    _ => {
                        tracing::warn!(error = %e, "an append failed mid-statement; resolving it");
                        Appended::Unknown(pid)
                    }
                }
            }
            Err(_) => {
                *held = None;
                tracing::warn!("an append timed out; resolving it");
                Appended::Unknown(pid)
            }
        }
    }

    /// Settles an append whose outcome was lost: terminates the backend that ran it (so it cannot
    /// commit later), then reads which of the batch's keys are stored. Retries while the database
    /// is unreachable, up to [`RESOLVE_FOR`].
    async fn resolve(&self, pid: i32, keys: &[MessageKey]) -> Result<Vec<KeyedRow>, StoreError> {
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_total_delay(Some(RESOLVE_FOR))
            .without_max_times()
            .build();
        loop {
            let attempt = tokio::time::timeout(self.timeouts.statement, async {
                let mut conn = self.pool.acquire().await?;
                // Waits (up to 5 s) for it to exit; false when it is gone already.
                let _: Option<bool> = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                    .bind(pid)
                    .fetch_one(&mut *conn)
                    .await?;
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(&mut *conn)
                .await?;
                if alive {
                    return Err(sqlx::Error::Protocol(format!(
                        "backend {pid} is still running"
                    )));
                }
                sqlx::query_as(BY_KEY)
                    .bind(keys)
                    .fetch_all(&mut *conn)
                    .await
            })
            .await;
            match attempt {
                Ok(Ok(found)) => {
                    tracing::info!(
                        stored = found.len(),
                        of = keys.len(),
                        "resolved an append whose outcome was lost"
                    );
                    return Ok(found);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "resolving a lost append failed; retrying")
                }
                Err(_) => tracing::warn!("resolving a lost append timed out; retrying"),
            }
            match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(StoreError::Ambiguous(format!(
                        "the database did not answer for {}s after an append was sent",
                        RESOLVE_FOR.as_secs()
                    )));
                }
            }
        }
    }

    /// Applies pending migrations under a PostgreSQL advisory lock, so that replicas starting
    /// together apply each migration once.
    ///
    /// The lock is taken by polling `pg_try_advisory_lock`, not by sqlx's blocking
    /// `pg_advisory_lock`: a replica blocked in that call is a transaction in progress, which
    /// `CREATE INDEX CONCURRENTLY` (migration 0003) waits for while holding the lock it waits on
    /// — a deadlock PostgreSQL breaks by failing the waiters' start-up. Between attempts a waiter
    /// runs no statement at all.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("migrating: {e}"));
        let mut conn = self.pool.acquire().await.map_err(|e| failed(&e))?;
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| failed(&e))?;
            if locked {
                break;
            }
            tokio::time::sleep(MIGRATION_LOCK_POLL).await;
        }
        let migrated = MIGRATOR.run(&mut *conn).await.map_err(|e| failed(&e));
        // Released with the session too, should this fail (the connection is then closed).
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            conn.close_on_drop();
        }
        migrated
    }

    /// Opens the appending connection and prepares its statement, so that the first messages
    /// after start-up do not queue behind a connection set-up and a statement parse.
    pub async fn open_writer(&self) -> Result<(), StoreError> {
        let mut held = self.writer.lock().await;
        self.writer(&mut held).await.map(drop)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Publishes `chat_db_pool_connections{state}` every second until `shutdown`.
    pub async fn run_pool_gauges(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while shutdown.run_until_cancelled(every.tick()).await.is_some() {
            let (size, idle) = (self.pool.size() as f64, self.pool.num_idle() as f64);
            metrics::gauge!(metric::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
            metrics::gauge!(metric::DB_POOL_CONNECTIONS, "state" => "active").set(size - idle);
            metrics::gauge!(metric::DB_POOL_CONNECTIONS, "state" => "max")
                .set(self.pool.options().get_max_connections() as f64);
        }
    }

    /// Deletes at most `batch` messages that are more than `keep` behind their room's newest.
    /// Returns how many it deleted; a short, bounded transaction each time.
    pub async fn prune(&self, keep: usize, batch: usize) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM messages WHERE id IN (
                 SELECT m.id FROM rooms r
                 JOIN messages m ON m.room_id = r.id AND m.seq <= r.last_seq - $1
                 LIMIT $2)",
        )
        .bind(keep as i64)
        .bind(batch as i64)
        .execute(&self.pool)
        .await
        .map_err(failed("pruning old messages"))?;
        Ok(deleted.rows_affected())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(failed("pinging PostgreSQL"))?;
        Ok(())
    }

    async fn upsert_user(&self, nick: &Nickname) -> Result<UserId, StoreError> {
        // DO UPDATE (not NOTHING) so that RETURNING yields the row either way; it also records
        // the spelling most recently used.
        sqlx::query_scalar(
            "INSERT INTO users (nickname) VALUES ($1)
             ON CONFLICT ((lower(nickname))) DO UPDATE SET nickname = EXCLUDED.nickname
             RETURNING id",
        )
        .bind(nick.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(failed("saving the user"))
    }

    async fn create_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        let row: Option<RoomRow> = sqlx::query_as(
            "INSERT INTO rooms (name) VALUES ($1) ON CONFLICT ((lower(name))) DO NOTHING
             RETURNING id, name, created_at",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("creating the room"))?;
        row.map(Room::try_from).transpose()
    }

    async fn find_room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        let row: Option<RoomRow> =
            sqlx::query_as("SELECT id, name, created_at FROM rooms WHERE lower(name) = lower($1)")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(failed("finding the room"))?;
        row.map(Room::try_from).transpose()
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        let found: Vec<RoomRow> =
            sqlx::query_as("SELECT id, name, created_at FROM rooms ORDER BY lower(name)")
                .fetch_all(&self.pool)
                .await
                .map_err(failed("listing rooms"))?;
        rows(found)
    }

    async fn add_member(&self, room_id: i64, user_id: UserId) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(failed("recording the membership"))?;
        Ok(())
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<ChatMessage>, StoreError> {
        let keys: Vec<MessageKey> = batch.iter().map(|m| m.key).collect();
        let mut outcome = self.try_append(batch).await;
        if let Appended::KeyRace = outcome {
            // The racing transaction has committed by now: this time its key is found.
            outcome = self.try_append(batch).await;
        }
        let rows = match outcome {
            Appended::Stored(rows) => rows,
            Appended::Refused(e) => return Err(e),
            Appended::KeyRace => {
                return Err(StoreError::Unavailable(
                    "storing messages: a key raced twice".into(),
                ));
            }
            Appended::Unknown(pid) => self.resolve(pid, &keys).await?,
        };
        let mut by_key: HashMap<MessageKey, MessageRow> =
            rows.into_iter().map(|row| (row.key, row.message)).collect();
        if by_key.len() < keys.len() {
            // Resolved: the batch's new messages were not stored (a statement is all or none).
            // The messages found were stored earlier, by another attempt: they cannot be told
            // apart from the rest here, so the whole batch is reported not stored; a retry with
            // its key returns each stored one.
            return Err(StoreError::Unavailable(format!(
                "{} of {} messages were not stored",
                keys.len() - by_key.len(),
                keys.len()
            )));
        }
        // Each message as stored — also one a retry found stored already, in whatever room and
        // words it had then.
        keys.iter()
            .map(|key| by_key.remove(key).map(ChatMessage::try_from).transpose())
            .collect::<Result<Option<Vec<_>>, _>>()?
            .ok_or_else(|| StoreError::Unavailable("a key appeared twice in one batch".into()))
    }

    async fn messages_before(
        &self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut found: Vec<MessageRow> = sqlx::query_as(
            "SELECT m.id, r.name AS room, m.seq, m.nickname, m.content, m.created_at
             FROM messages m JOIN rooms r ON r.id = m.room_id
             WHERE m.room_id = $1 AND m.seq < $2
             ORDER BY m.seq DESC LIMIT $3",
        )
        .bind(room_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading history"))?;
        found.reverse();
        rows(found)
    }

    async fn message_by_key(&self, key: MessageKey) -> Result<Option<ChatMessage>, StoreError> {
        let found: Vec<KeyedRow> = sqlx::query_as(BY_KEY)
            .bind([key])
            .fetch_all(&self.pool)
            .await
            .map_err(failed("reading a message by its key"))?;
        found
            .into_iter()
            .next()
            .map(|row| ChatMessage::try_from(row.message))
            .transpose()
    }

    async fn messages_after(
        &self,
        room_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let found: Vec<MessageRow> = sqlx::query_as(
            "SELECT m.id, r.name AS room, m.seq, m.nickname, m.content, m.created_at
             FROM messages m JOIN rooms r ON r.id = m.room_id
             WHERE m.room_id = $1 AND m.seq > $2
             ORDER BY m.seq LIMIT $3",
        )
        .bind(room_id)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading messages"))?;
        rows(found)
    }

    /// The cluster's system identifier (a restore into another cluster changes it), its timeline
    /// (a point-in-time recovery or a promoted standby starts a new one) and the database's oid
    /// (a dump restored into a new database).
    async fn epoch(&self) -> Result<String, StoreError> {
        let (system, timeline, database): (i64, i32, i64) = sqlx::query_as(
            "SELECT (SELECT system_identifier FROM pg_control_system()),
                    (SELECT timeline_id FROM pg_control_checkpoint()),
                    (SELECT oid::bigint FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(failed("reading the store's epoch"))?;
        Ok(format!("{system:x}.{timeline}.{database}"))
    }

    async fn room_tails(&self, room_ids: &[i64]) -> Result<Vec<RoomTail>, StoreError> {
        let tails: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT r.id, r.last_seq,
                    coalesce((SELECT min(m.seq) FROM messages m WHERE m.room_id = r.id), r.last_seq + 1)
             FROM rooms r WHERE r.id = ANY($1)",
        )
        .bind(room_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading rooms' tails"))?;
        Ok(tails
            .into_iter()
            .map(|(room_id, last_seq, first_seq)| RoomTail {
                room_id,
                last_seq,
                first_seq,
            })
            .collect())
    }
}
