//! The PostgreSQL `Store` (sqlx, runtime-checked queries so that building needs no database).
//!
//! Durability: `append_messages` is one statement in its own transaction; when it returns, the
//! batch is committed. Ordering: each room's `last_seq` counter is bumped in that same statement
//! under the room's row lock, so seqs are gapless and follow commit order across every replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Postgres, SqlSafeStr};
use time::OffsetDateTime;

use super::{Store, StoreError};
use crate::core::model::{ChatMessage, NewMessage, Room, UserId};
use crate::core::names::{Nickname, RoomName};
use crate::telemetry::metric;

/// The schema, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The connection messages are appended on, kept from one batch to the next.
    ///
    /// sqlx hands out idle connections first in, first out, so a pod's stream of small commits
    /// would rotate over every connection of its pool: with three pods, thirty PostgreSQL
    /// processes taking turns, each woken with cold caches. One warm backend per pod does the
    /// same commits for less than half the CPU (docs/BENCHMARKS.md §6). Commits come from one
    /// task at a time, so the lock is not contended.
    ///
    /// The connection commits without waiting for the disk (`synchronous_commit = off`) and then
    /// waits for it in a second, empty transaction ([`FLUSH`]). Numbering a room's messages locks
    /// its row until commit; with a synchronous commit every pod writing to a room would wait for
    /// the others' disk flushes one after another. This way the lock is held for microseconds and
    /// the pods' flushes overlap, one fsync covering several of them. Nothing is acknowledged or
    /// published before its flush. What the split allows is a reader (a gap fill, a history read)
    /// seeing a message a fraction of a millisecond before it is on disk: a PostgreSQL crash in
    /// that window could take back a message someone read, never one that was acknowledged.
    /// Because of the setting the connection never goes back to the pool.
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
}

struct Writer {
    conn: PoolConnection<Postgres>,
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

/// Waits until everything this connection committed is on disk: committing a transaction that
/// holds a transaction id writes a commit record and, with `synchronous_commit = on`, flushes the
/// WAL up to it, and so past every earlier commit. Simple-query protocol: one round trip.
const FLUSH: &str = "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id(); COMMIT";

/// Numbers and inserts a batch in one statement: locks the batch's rooms in id order (two
/// writers never wait on each other in a cycle), bumps each room's counter by its message count,
/// numbers the messages of each room in batch order from the old counter, inserts them.
const APPEND: &str = "WITH input AS (
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
                  WITH ORDINALITY AS t (room_id, user_id, nickname, content, created_at, ord)
     ),
     locked AS (
         SELECT id FROM rooms WHERE id IN (SELECT room_id FROM input) ORDER BY id FOR UPDATE
     ),
     counts AS (
         SELECT room_id, count(*) AS n FROM input GROUP BY room_id
     ),
     bumped AS (
         UPDATE rooms r SET last_seq = r.last_seq + c.n
         FROM counts c, locked l
         WHERE r.id = c.room_id AND l.id = c.room_id
         RETURNING r.id, r.last_seq - c.n AS base
     )
     INSERT INTO messages (room_id, seq, user_id, nickname, content, created_at)
     SELECT i.room_id,
            b.base + row_number() OVER (PARTITION BY i.room_id ORDER BY i.ord),
            i.user_id, i.nickname, i.content, i.created_at
     FROM input i JOIN bumped b ON b.id = i.room_id
     ORDER BY i.ord
     RETURNING id, room_id, seq";

impl PgStore {
    /// Connects a pool of `size` connections; a caller waits at most `acquire_timeout` for one.
    pub async fn connect(
        url: &str,
        size: u32,
        acquire_timeout: Duration,
    ) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(acquire_timeout)
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
            .connect(url)
            .await
            .map_err(failed("connecting to PostgreSQL"))?;
        Ok(PgStore {
            pool,
            writer: Arc::default(),
        })
    }

    /// The appending connection: the one kept, if it is still alive, or a fresh one from the pool.
    async fn writer<'a>(&self, held: &'a mut Option<Writer>) -> Result<&'a mut Writer, StoreError> {
        if let Some(writer) = held
            && writer.last_used.elapsed() > IDLE_BEFORE_PING
            && writer.conn.ping().await.is_err()
        {
            *held = None;
        }
        let writer = match held {
            Some(writer) => writer,
            None => held.insert(Writer {
                conn: self
                    .appending_connection()
                    .await
                    .map_err(failed("storing messages"))?,
                last_used: Instant::now(),
            }),
        };
        Ok(writer)
    }

    /// A connection from the pool set up for appending: asynchronous commits, [`APPEND`]
    /// prepared. Closed when dropped, so the setting never reaches another user of the pool.
    async fn appending_connection(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        sqlx::raw_sql("SET synchronous_commit = off")
            .execute(&mut *conn)
            .await?;
        (&mut *conn).prepare(APPEND.into_sql_str()).await?;
        Ok(conn)
    }

    /// Applies pending migrations. sqlx holds a PostgreSQL advisory lock meanwhile, so replicas
    /// starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating: {e}")))
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
        let room_ids: Vec<i64> = batch.iter().map(|m| m.room_id).collect();
        let user_ids: Vec<i64> = batch.iter().map(|m| m.user_id).collect();
        let nicks: Vec<&str> = batch.iter().map(|m| m.user.as_str()).collect();
        let contents: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
        let times: Vec<OffsetDateTime> = batch.iter().map(|m| m.created_at).collect();
        let mut held = self.writer.lock().await;
        let writer = self.writer(&mut held).await?;
        let conn = &mut writer.conn;
        let inserted = async {
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(APPEND)
                .bind(&room_ids)
                .bind(&user_ids)
                .bind(&nicks)
                .bind(&contents)
                .bind(&times)
                .fetch_all(&mut **conn)
                .await?;
            sqlx::raw_sql(FLUSH).execute(&mut **conn).await?;
            Ok::<_, sqlx::Error>(rows)
        }
        .await;
        match inserted {
            Ok(inserted) => {
                writer.last_used = Instant::now();
                number_batch(batch, inserted)
            }
            Err(e) => {
                // The connection may be what failed; it is closed, the next batch starts on a
                // fresh one.
                *held = None;
                Err(failed("storing messages")(e))
            }
        }
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
}

/// Pairs each message of the batch with its stored (id, room, seq). RETURNING promises no order,
/// but within a room the seqs were given in batch order, from the room's lowest new seq up.
fn number_batch(
    batch: &[NewMessage],
    inserted: Vec<(i64, i64, i64)>,
) -> Result<Vec<ChatMessage>, StoreError> {
    let mismatch = || {
        StoreError::Unavailable(format!(
            "stored {} rows for a batch of {}",
            inserted.len(),
            batch.len()
        ))
    };
    if inserted.len() != batch.len() {
        return Err(mismatch());
    }
    let mut next_seq: HashMap<i64, i64> = HashMap::new();
    let mut ids: HashMap<(i64, i64), i64> = HashMap::with_capacity(inserted.len());
    for &(id, room_id, seq) in &inserted {
        let lowest = next_seq.entry(room_id).or_insert(seq);
        *lowest = (*lowest).min(seq);
        ids.insert((room_id, seq), id);
    }
    let mut stored = Vec::with_capacity(batch.len());
    for new in batch {
        let seq = next_seq.get_mut(&new.room_id).ok_or_else(mismatch)?;
        let id = *ids.get(&(new.room_id, *seq)).ok_or_else(mismatch)?;
        stored.push(ChatMessage::stored(new.clone(), id, *seq));
        *seq += 1;
    }
    Ok(stored)
}
