-- Clusters of a team's appliances (seed 000's racks; Octavia's topologies): appliances
-- join one at create; the active member is recorded when the first one joins. A task
-- on a cluster (a write to every member, the cluster's destroy) has no appliance, so it
-- names its team itself.
CREATE TABLE clusters (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    topology   TEXT NOT NULL CHECK (topology IN ('SINGLE', 'ACTIVE_STANDBY')),
    active_id  TEXT,
    -- Being deleted: no appliance joins it any more.
    deleting   BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (team_id, name)
);

ALTER TABLE appliances ADD COLUMN cluster_id TEXT;
CREATE INDEX appliances_cluster ON appliances (cluster_id);
