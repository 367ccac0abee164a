-- Users, rooms, memberships and messages. Names are unique case-insensitively (SPEC §3), so the
-- unique indexes are on lower(name); the spelling a user chose is kept as typed.

CREATE TABLE users (
    id          BIGSERIAL PRIMARY KEY,
    nickname    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_nickname_key ON users (lower(nickname));

CREATE TABLE rooms (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    -- The seq of the room's newest message. Incremented in the statement that inserts messages,
    -- under the row lock, so seqs are gapless and ordered by commit across every writer.
    last_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rooms_name_key ON rooms (lower(name));

CREATE TABLE room_members (
    room_id     BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE messages (
    id          BIGSERIAL PRIMARY KEY,
    room_id     BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    user_id     BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- The author's nickname when the message was sent: history shows what the room saw.
    nickname    TEXT NOT NULL,
    content     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    -- Serves "the last N of a room", "before seq X" and "after seq X" as index range scans.
    CONSTRAINT messages_room_seq_key UNIQUE (room_id, seq)
);
CREATE INDEX messages_created_at_idx ON messages (created_at);
