//! `archive` and `replay`: moving old messages out of PostgreSQL into JSON files and back.
//!
//! File form (SPEC §5), one file per room and run:
//! `{"room","archived_at","messages":[{"id","seq","user","content","created_at"}]}`.
//! `seq` is an addition to the SPEC form: it lets replay put each message back in its place.
//! Archive writes and syncs the file before deleting anything; replay is idempotent (a message
//! already present, by id or by room and seq, is skipped).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::postgres::PgStore;
use crate::core::names::{Nickname, RoomName, sanitize};
use crate::core::ports::Store;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveFile {
    pub room: String,
    #[serde(with = "time::serde::rfc3339")]
    pub archived_at: OffsetDateTime,
    pub messages: Vec<ArchivedMessage>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArchivedMessage {
    pub id: i64,
    pub seq: i64,
    pub user: String,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ArchiveFile {
    /// Reads an archive file, refusing one that replay could not put back as archive wrote it:
    /// an invalid room name, an id or seq below 1, two messages with one id or one seq, an
    /// invalid nickname, or content a user could not have sent (control characters).
    pub fn parse(bytes: &[u8]) -> anyhow::Result<ArchiveFile> {
        let file: ArchiveFile = serde_json::from_slice(bytes)?;
        // Names as they were stored: valid as they are, not after trimming.
        anyhow::ensure!(
            RoomName::parse(&file.room).is_ok_and(|r| r.as_str() == file.room),
            "room {:?}: not a valid room name",
            file.room
        );
        let mut ids = HashSet::new();
        let mut seqs = HashSet::new();
        for m in &file.messages {
            let at = || format!("message {} (seq {})", m.id, m.seq);
            anyhow::ensure!(m.id >= 1 && m.seq >= 1, "{}: ids and seqs start at 1", at());
            anyhow::ensure!(ids.insert(m.id), "{}: a second message with this id", at());
            anyhow::ensure!(
                seqs.insert(m.seq),
                "{}: a second message with this seq",
                at()
            );
            anyhow::ensure!(
                Nickname::parse(&m.user).is_ok_and(|n| n.as_str() == m.user),
                "{}: user {:?} is not a valid nickname",
                at(),
                m.user
            );
            anyhow::ensure!(
                sanitize(&m.content) == m.content,
                "{}: control characters in the content",
                at()
            );
        }
        Ok(file)
    }
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
    let file = ArchiveFile::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let name = RoomName::parse(&file.room)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(messages: &str) -> String {
        format!(
            r#"{{"room":"general","archived_at":"2026-01-01T00:00:00Z","messages":[{messages}]}}"#
        )
    }

    fn message(id: i64, seq: i64, user: &str, content: &str) -> String {
        serde_json::json!({
            "id": id, "seq": seq, "user": user, "content": content,
            "created_at": "2025-12-31T23:59:59Z",
        })
        .to_string()
    }

    #[test]
    fn a_file_archive_wrote_is_read_back() {
        let two = [
            message(1, 1, "ann", "hi"),
            message(2, 2, "bob", "tab\there"),
        ]
        .join(",");
        let parsed = ArchiveFile::parse(file(&two).as_bytes()).unwrap();
        assert_eq!(parsed.messages.len(), 2);
        let again = ArchiveFile::parse(&serde_json::to_vec(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn a_file_replay_could_not_put_back_as_it_was_is_refused() {
        for bad in [
            message(0, 1, "ann", "hi"),
            message(1, -3, "ann", "hi"),
            [message(1, 1, "ann", "hi"), message(1, 2, "ann", "hi")].join(","),
            [message(1, 1, "ann", "hi"), message(2, 1, "ann", "hi")].join(","),
            message(1, 1, "not a nick", "hi"),
            message(1, 1, " ann", "hi"),
            message(1, 1, "ann", "\u{1b}[31mred"),
        ] {
            assert!(ArchiveFile::parse(file(&bad).as_bytes()).is_err(), "{bad}");
        }
        let bad_room = file("").replace("general", "two words");
        assert!(ArchiveFile::parse(bad_room.as_bytes()).is_err());
    }
}
