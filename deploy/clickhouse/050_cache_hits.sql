-- A response-cache hit is a decision row of its own (policy, arm and model 'cache', cost 0);
-- source_decision_id names the decision whose stored answer it served.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS source_decision_id String DEFAULT '';
