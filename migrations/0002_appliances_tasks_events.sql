-- Appliances, their lifecycle events and webhook deliveries, and durable tasks.
-- Portable SQL (SQLite and PostgreSQL). Times are Unix seconds; `seq` orders events
-- (microseconds, strictly increasing per controller).
CREATE TABLE appliances (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    owner_id          TEXT NOT NULL,
    external_id       TEXT UNIQUE,
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
    updated_at        BIGINT NOT NULL
);

-- A loopback slot belongs to one appliance until it is deleted.
CREATE UNIQUE INDEX appliances_slot ON appliances (slot) WHERE state <> 'deleted';
CREATE INDEX appliances_state ON appliances (state);
CREATE INDEX appliances_owner ON appliances (owner_id);

CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    seq          BIGINT NOT NULL,
    appliance_id TEXT NOT NULL,
    kind         TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    detail       TEXT,
    at           BIGINT NOT NULL
);

CREATE INDEX events_appliance ON events (appliance_id, seq);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    appliance_id    TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    created_at      BIGINT NOT NULL
);

CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    appliance_id TEXT,
    owner_id     TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    request      TEXT NOT NULL,
    result       TEXT,
    problem      TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT
);

-- One unfinished task per appliance: operations on an appliance never overlap.
CREATE UNIQUE INDEX tasks_one_per_appliance ON tasks (appliance_id)
    WHERE appliance_id IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX tasks_queue ON tasks (state, created_at);
CREATE INDEX tasks_owner ON tasks (owner_id);
