-- Every message carries a key that identifies it across retries: a client's retry (the same
-- clientMessageId) or the server's own, after the outcome of an append was lost, finds the
-- message by its key instead of storing it twice. Rows from before have none.
ALTER TABLE messages ADD COLUMN key UUID;
