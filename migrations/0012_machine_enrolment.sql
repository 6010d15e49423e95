-- Machines a cloud backend makes join by enrolment with a token issued for their
-- appliance alone: accepted, the enrolment completes that appliance's record instead of
-- recording a new one.
ALTER TABLE enrolment_tokens ADD COLUMN appliance_id TEXT;
CREATE INDEX enrolment_tokens_appliance ON enrolment_tokens (appliance_id);
