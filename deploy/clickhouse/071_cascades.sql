-- A cascade (learner/cascade.py): on a request's record, whether the gate rejected the cheap
-- answer and the strong model answered (summed per cluster into the cascade's escalation rate);
-- on the request's and each attempt's record, the gate's verdict ("pass", or why it rejected).
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS escalated Bool DEFAULT false;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS gate LowCardinality(String) DEFAULT '';
