-- The language of a decision's prompt (ISO 639-1, '' when not detected; learner/language.py):
-- what the language rules matched, counted per language on the dashboard. LowCardinality: a
-- few dozen values at most.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS language LowCardinality(String) DEFAULT '';
