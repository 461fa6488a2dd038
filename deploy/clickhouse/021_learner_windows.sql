-- What each learning cycle read, aggregated per (clustering, cluster, model, policy): the
-- learner's pre-aggregated history for dashboards and reports (margins, traffic shares, cost
-- and reward over time). One set of rows per snapshot version; a cycle that crashed before its
-- commit point and ran again rewrites the rows of the same version (ReplacingMergeTree).
CREATE TABLE IF NOT EXISTS learner_windows
(
    version      UInt64,
    since_ms     Int64,
    until_ms     Int64,
    clustering   UInt32,
    cluster      UInt32,
    model        LowCardinality(String),
    policy       LowCardinality(String),
    decisions    UInt64,
    cost_usd     Float64,
    margin_sum   Float64,
    rewards      Float64,
    reward_sum   Float64,
    written_ms   Int64 DEFAULT toUnixTimestamp64Milli(now64(3))
)
ENGINE = ReplacingMergeTree(written_ms)
ORDER BY (version, clustering, cluster, model, policy);

-- Changes the learner detected and what it did: re-clustering on margin decay, fading a
-- model's evidence in a cluster when its reward fell.
CREATE TABLE IF NOT EXISTS drift_events
(
    version         UInt64,
    key             String,
    at_ms           Int64,
    clustering      UInt32,
    kind            LowCardinality(String),
    clusters        Array(UInt32),
    model           LowCardinality(String),
    old_value       Float64,
    new_value       Float64,
    action          LowCardinality(String),
    new_clustering  UInt32,
    written_ms      Int64 DEFAULT toUnixTimestamp64Milli(now64(3))
)
ENGINE = ReplacingMergeTree(written_ms)
ORDER BY (version, key);
