-- The append path checks no foreign key per message. The two checks were 40% of the time
-- PostgreSQL spent on a 300-message append (an index probe and a row lock each, per row), and
-- they guarded nothing the schema does not already hold:
--   room_id: the append numbers each message from the room row it has just locked and updated,
--            in the same statement, so a message cannot name a room that is not there;
--   user_id: users are never deleted (a nickname is released in Valkey, not here), and the
--            column records who sent a message; nothing reads it. (After a restore of the
--            database, a session kept in Valkey may carry an id the restored users table no
--            longer has: the message is stored with it, where the check refused the message.)
-- Rooms are never deleted either; were that to change, deleting a room's messages goes with it.
--
-- Replicas still running the previous version append meanwhile, locking `rooms` and then
-- `messages`. Dropping a foreign key locks the referencing table and then the referenced one:
-- take `rooms` first, in the mode the drop needs there, so the two never wait on each other in
-- a cycle.
LOCK TABLE rooms IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE messages DROP CONSTRAINT messages_room_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_user_id_fkey;
