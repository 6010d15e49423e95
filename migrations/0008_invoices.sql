-- Invoices of months that are over, kept as they were issued (the price list of the day,
-- the usage of the month): a later change of prices does not rewrite them. The current
-- month's draft is computed on request and not kept.
CREATE TABLE invoices (
    id        TEXT PRIMARY KEY,
    team_id   TEXT NOT NULL,
    month     TEXT NOT NULL,
    currency  TEXT NOT NULL,
    total     BIGINT NOT NULL,
    lines     TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    UNIQUE (team_id, month)
);
