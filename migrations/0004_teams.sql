-- Teams own appliances (and, later, key pairs and clusters); users belong to teams with
-- a role. Every existing user gets a personal team (its id and name are the user's)
-- that owns what the user owned; appliances of users deleted since get a team of
-- their own, named after the id, which admins see and manage.
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN email TEXT;

CREATE TABLE teams (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    created_at            BIGINT NOT NULL,
    -- Quotas; NULL is unlimited.
    max_appliances        BIGINT,
    max_appliance_minutes BIGINT,
    max_keypairs          BIGINT
);

CREATE TABLE memberships (
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'member', 'viewer')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE INDEX memberships_user ON memberships (user_id);

INSERT INTO teams (id, name, created_at) SELECT id, name, created_at FROM users;
INSERT INTO memberships (team_id, user_id, role, created_at)
    SELECT id, id, 'owner', created_at FROM users;
INSERT INTO teams (id, name, created_at)
    SELECT DISTINCT owner_id, 'former-' || owner_id, 0 FROM appliances
    WHERE owner_id NOT IN (SELECT id FROM users);

-- Appliances gain their team; an idempotency key (`external_id`) is unique within a
-- team, not across teams (where a clash would tell one team of another's appliance).
-- `owner_id` stays: the user who asked for the appliance.
CREATE TABLE appliances_teamed (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    team_id           TEXT NOT NULL,
    owner_id          TEXT NOT NULL,
    external_id       TEXT,
    request_hash      TEXT NOT NULL,
    state             TEXT NOT NULL,
    state_since       BIGINT NOT NULL,
    ttl_minutes       BIGINT NOT NULL,
    callback_url      TEXT,
    slot              BIGINT,
    address           TEXT,
    agent_port        BIGINT,
    cert_serial       TEXT,
    cert_not_after    BIGINT,
    launched_at       BIGINT,
    expires_at        BIGINT,
    last_heartbeat_at BIGINT,
    last_status       TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (team_id, external_id)
);

INSERT INTO appliances_teamed (id, name, team_id, owner_id, external_id, request_hash,
    state, state_since, ttl_minutes, callback_url, slot, address, agent_port, cert_serial,
    cert_not_after, launched_at, expires_at, last_heartbeat_at, last_status, created_at,
    updated_at)
SELECT id, name, owner_id, owner_id, external_id, request_hash, state, state_since,
    ttl_minutes, callback_url, slot, address, agent_port, cert_serial, cert_not_after,
    launched_at, expires_at, last_heartbeat_at, last_status, created_at, updated_at
FROM appliances;

DROP TABLE appliances;
ALTER TABLE appliances_teamed RENAME TO appliances;

CREATE UNIQUE INDEX appliances_slot ON appliances (slot) WHERE state <> 'deleted';
CREATE INDEX appliances_state ON appliances (state);
CREATE INDEX appliances_owner ON appliances (owner_id);
CREATE INDEX appliances_team ON appliances (team_id);

-- A task belongs to the team of its appliance (a ping of many: to none); its team's
-- owners read it besides its creator.
ALTER TABLE tasks ADD COLUMN team_id TEXT;
UPDATE tasks SET team_id = (SELECT team_id FROM appliances WHERE appliances.id = tasks.appliance_id);
CREATE INDEX tasks_team ON tasks (team_id);
