-- SSH key pairs of teams: the public half only (a generated private key is returned once
-- and never stored). An appliance created with one keeps a copy of its public key, so
-- deleting the key pair later changes nothing on appliances that have it.
CREATE TABLE keypairs (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (team_id, name)
);

ALTER TABLE appliances ADD COLUMN keypair_id TEXT;
ALTER TABLE appliances ADD COLUMN authorized_key TEXT;
