-- Decisions and feedback as they arrive, one row per event. ReplacingMergeTree ordered by the
-- id makes a re-delivered event collapse into one row; queries also deduplicate explicitly,
-- since merges are eventual.
CREATE TABLE IF NOT EXISTS decisions
(
    event_id          String,
    decision_id       String,
    schema_version    UInt16,
    ts                DateTime64(3),
    tenant            LowCardinality(String),
    user              String,
    policy            LowCardinality(String),
    requested_model   LowCardinality(String),
    snapshot_version  UInt64,
    clustering        UInt32,
    cluster           UInt32,
    margin            Float32,
    arm               LowCardinality(String),
    propensity        Float64,
    model             LowCardinality(String),
    status            LowCardinality(String),
    fallbacks         UInt8,
    errors            Array(String),
    prompt_hash       String,
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    cost_usd          Float64,
    latency_ms        Float64,
    stream            Bool,
    embedding         Array(Float32),
    prompt_text       String,
    ingested_ms       Int64 DEFAULT toUnixTimestamp64Milli(now64(3))
)
ENGINE = ReplacingMergeTree
ORDER BY decision_id;

CREATE TABLE IF NOT EXISTS feedback
(
    event_id        String,
    decision_id     String,
    schema_version  UInt16,
    ts              DateTime64(3),
    reward          Float64,
    kind            LowCardinality(String),
    tenant          LowCardinality(String),
    user            String,
    rating          LowCardinality(String),
    comment         String,
    ingested_ms     Int64 DEFAULT toUnixTimestamp64Milli(now64(3))
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS snapshots
(
    version        UInt64,
    parent         UInt64,
    created_at     DateTime64(3),
    reason         LowCardinality(String),
    body           String
)
ENGINE = ReplacingMergeTree
ORDER BY version;
