//! `archive` and `replay`: moving old messages out of PostgreSQL into JSON files and back.
//!
//! File form (SPEC §5), one file per room and run:
//! `{"room","archived_at","messages":[{"id","seq","user","content","created_at"}]}`.
//! `seq` is an addition to the SPEC form: it lets replay put each message back in its place.
//! Archive writes and syncs the file before deleting anything; replay is idempotent (a message
//! already present, by id or by room and seq, is skipped).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::postgres::PgStore;
use crate::core::names::RoomName;
use crate::core::ports::Store;

#[derive(Debug, Serialize, Deserialize)]
pub struct ArchiveFile {
    pub room: String,
    #[serde(with = "time::serde::rfc3339")]
    pub archived_at: OffsetDateTime,
    pub messages: Vec<ArchivedMessage>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArchivedMessage {
    pub id: i64,
    pub seq: i64,
    pub user: String,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Moves every message created before `cutoff` into `dir`, one file per room. Returns the files.
pub async fn archive(
    store: &PgStore,
    cutoff: OffsetDateTime,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let archived_at = OffsetDateTime::now_utc();
    let mut files = Vec::new();
    for room in store.list_rooms().await? {
        let messages: Vec<ArchivedMessage> = sqlx::query_as(
            "SELECT id, seq, nickname AS user, content, created_at FROM messages
             WHERE room_id = $1 AND created_at < $2 ORDER BY seq",
        )
        .bind(room.id)
        .bind(cutoff)
        .fetch_all(store.pool())
        .await
        .context("reading messages to archive")?;
        let Some(last_seq) = messages.last().map(|m| m.seq) else {
            continue;
        };
        let count = messages.len();
        let path = dir.join(format!(
            "{}-{}.json",
            room.name.key(),
            archived_at.unix_timestamp()
        ));
        let file = ArchiveFile {
            room: room.name.to_string(),
            archived_at,
            messages,
        };
        write_synced(&path, &serde_json::to_vec_pretty(&file)?)?;
        // Only what was written: messages of the same age committed meanwhile have higher seqs.
        sqlx::query("DELETE FROM messages WHERE room_id = $1 AND created_at < $2 AND seq <= $3")
            .bind(room.id)
            .bind(cutoff)
            .bind(last_seq)
            .execute(store.pool())
            .await
            .context("deleting archived messages")?;
        tracing::info!(room = %room.name, messages = count, file = %path.display(), "archived");
        files.push(path);
    }
    Ok(files)
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Puts an archive file's messages back (creating the room if it is gone). Returns how many were
/// inserted; running it twice inserts nothing the second time.
pub async fn replay(store: &PgStore, path: &Path) -> anyhow::Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ArchiveFile =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let name = RoomName::parse(&file.room).with_context(|| format!("room {:?}", file.room))?;
    let room = match store.find_room(&name).await? {
        Some(room) => room,
        None => store
            .create_room(&name)
            .await?
            .context("the room appeared meanwhile; run again")?,
    };
    let ids: Vec<i64> = file.messages.iter().map(|m| m.id).collect();
    let seqs: Vec<i64> = file.messages.iter().map(|m| m.seq).collect();
    let users: Vec<&str> = file.messages.iter().map(|m| m.user.as_str()).collect();
    let contents: Vec<&str> = file.messages.iter().map(|m| m.content.as_str()).collect();
    let times: Vec<OffsetDateTime> = file.messages.iter().map(|m| m.created_at).collect();
    let mut tx = store.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO messages (id, room_id, seq, user_id, nickname, content, created_at)
         SELECT t.id, $1, t.seq, (SELECT u.id FROM users u WHERE lower(u.nickname) = lower(t.nickname)),
                t.nickname, t.content, t.created_at
         FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[])
              AS t (id, seq, nickname, content, created_at)
         ON CONFLICT DO NOTHING",
    )
    .bind(room.id)
    .bind(&ids)
    .bind(&seqs)
    .bind(&users)
    .bind(&contents)
    .bind(&times)
    .execute(&mut *tx)
    .await
    .context("inserting replayed messages")?
    .rows_affected();
    // Keep the counters ahead of what now exists, or new messages would collide with replayed ones.
    sqlx::query("UPDATE rooms SET last_seq = GREATEST(last_seq, (SELECT coalesce(max(seq), 0) FROM messages WHERE room_id = $1)) WHERE id = $1")
        .bind(room.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('messages', 'id'),
                       GREATEST((SELECT coalesce(max(id), 1) FROM messages), (SELECT last_value FROM messages_id_seq)))",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(room = %room.name, inserted, of = file.messages.len(), "replayed");
    Ok(inserted)
}
