-- Service accounts: integrations on `api` listeners, each a client certificate subject
-- mapped to one team with a team role. `cert_serial` is set when the controller issued
-- the certificate (revoked when the account is deleted).
CREATE TABLE service_accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    team_id     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'member', 'viewer')),
    subject     TEXT NOT NULL UNIQUE,
    cert_serial TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE INDEX service_accounts_team ON service_accounts (team_id);
