-- A turn of a conversation (service/conversations.py): the conversation's id, the turn's number
-- (1 for the first, 0 outside any conversation), and whether it was kept on the model of the turn
-- before (sticky: propensity 1, left out of off-policy evaluation like a rule's decision).
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS conversation_id String DEFAULT '';
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS turn UInt32 DEFAULT 0;
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS sticky Bool DEFAULT false;
