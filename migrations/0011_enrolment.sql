-- Appliances the controller did not spawn join by enrolment (seed 001's minion keys).
-- Each appliance names the backend that serves it; those made before are `process`.
ALTER TABLE appliances ADD COLUMN backend TEXT NOT NULL DEFAULT 'process';
-- An enrolled appliance's public key (SubjectPublicKeyInfo, base64): its certificate
-- is renewed for the key it keeps, which never leaves it.
ALTER TABLE appliances ADD COLUMN public_key TEXT;

-- One-time tokens an admin issues for a team; only their hash is kept.
CREATE TABLE enrolment_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    team_id     TEXT NOT NULL,
    auto_accept BIGINT NOT NULL DEFAULT 0,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Requests to join: pending until accepted (at once, or by an admin) or rejected.
CREATE TABLE enrolments (
    id             TEXT PRIMARY KEY,
    token_id       TEXT NOT NULL,
    team_id        TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),
    name           TEXT NOT NULL,
    address        TEXT NOT NULL,
    agent_port     BIGINT NOT NULL,
    peer_address   TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    key_algorithm  TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    appliance_id   TEXT,
    certificate    TEXT,
    created_at     BIGINT NOT NULL,
    decided_at     BIGINT,
    decided_by     TEXT
);

CREATE INDEX enrolments_state ON enrolments (state);
