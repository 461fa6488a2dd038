-- Exactly-once storage across sink replicas (feedback/clickhouse_dedup.py). Each insert of the
-- sink is one block per Kafka partition with an insert_deduplication_token named after the
-- block's first event: two replicas that race on the same re-delivered records send the same
-- token, and ClickHouse keeps the first block and drops the other, atomically on the server.
-- A non-replicated MergeTree remembers tokens only with this window (a Replicated table has
-- its own replicated_deduplication_window). insert_id says which insert wrote a row, so the
-- writer whose block was dropped can tell and store what the winner's block did not hold.
ALTER TABLE decisions MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE feedback MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE dead_letters MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS insert_id String DEFAULT '';
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS insert_id String DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS insert_id String DEFAULT '';
