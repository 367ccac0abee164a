-- no-transaction
-- Unique keys, built without locking out writers on a table that may already be large — which
-- needs a migration of its own, outside a transaction, and of one statement. Should a build be
-- interrupted, PostgreSQL leaves an invalid index behind and this migration fails the next time
-- (the index exists) rather than accept it: `DROP INDEX CONCURRENTLY messages_key` and start the
-- server again to build it anew.
CREATE UNIQUE INDEX CONCURRENTLY messages_key ON messages (key);
