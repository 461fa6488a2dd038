-- A failed attempt of a request is a decision row of its own (policy 'failover', status 'error')
-- carrying the model that failed; parent_decision_id links it to the request's decision.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS parent_decision_id String DEFAULT '';
