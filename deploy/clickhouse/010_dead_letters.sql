-- Messages the sink could not turn into events (undecodable bytes, an unknown schema version,
-- values out of range), with the error and the original bytes. The same messages also go to
-- the dead-letter topic (turnout.dlq). letter_id is a hash of where the message was read and
-- its bytes, so a re-delivered dead letter is recognised and not stored twice.
CREATE TABLE IF NOT EXISTS dead_letters
(
    letter_id    String,
    topic        LowCardinality(String),
    partition    UInt32,
    offset       Int64,
    key          String,
    error        String,
    payload      String,
    received_at  DateTime64(3),
    ingested_ms  Int64 DEFAULT toUnixTimestamp64Milli(now64(3))
)
ENGINE = ReplacingMergeTree
ORDER BY letter_id
TTL toDateTime(received_at) + INTERVAL 30 DAY;
