-- What a decision record is (feedback/events.py Purpose): '' for routed traffic, 'shadow' for a
-- call to the reference model made off the request path (service/shadow.py), 'judge' for a call
-- that graded an answer (service/judge.py). Both name the decision they are about in
-- parent_decision_id. The learner's window queries, the usage means, budgets and off-policy
-- evaluation read only purpose = ''; the leakage and calibration reports read the rest.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS purpose LowCardinality(String) DEFAULT '';
