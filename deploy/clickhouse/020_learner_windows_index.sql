-- The learner reads only what arrived since its watermark. Ids are UUIDv7, so the primary keys
-- already sort by time; these minmax indexes let a window query skip every older granule, and
-- find the feedback of recently arrived decisions (feedback that overtook its decision).
ALTER TABLE decisions ADD INDEX IF NOT EXISTS idx_decisions_ingested ingested_ms TYPE minmax GRANULARITY 1;
ALTER TABLE decisions MATERIALIZE INDEX idx_decisions_ingested;
ALTER TABLE feedback ADD INDEX IF NOT EXISTS idx_feedback_ingested ingested_ms TYPE minmax GRANULARITY 1;
ALTER TABLE feedback MATERIALIZE INDEX idx_feedback_ingested;
ALTER TABLE feedback ADD INDEX IF NOT EXISTS idx_feedback_decision decision_id TYPE minmax GRANULARITY 1;
ALTER TABLE feedback MATERIALIZE INDEX idx_feedback_decision;
