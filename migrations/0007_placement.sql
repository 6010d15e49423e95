-- What an appliance is made of and where it was placed (usage and invoices count by
-- them). Appliances from before were all made by the process backend's one template.
ALTER TABLE appliances ADD COLUMN template TEXT;
ALTER TABLE appliances ADD COLUMN image TEXT;
ALTER TABLE appliances ADD COLUMN flavor TEXT;
ALTER TABLE appliances ADD COLUMN network TEXT;
ALTER TABLE appliances ADD COLUMN region TEXT;
UPDATE appliances SET template = 'process', flavor = 'default', network = 'loopback',
    region = 'local';
CREATE INDEX appliances_region ON appliances (region);

-- One row per region, locked while a create counts the region's appliances, so two
-- creates cannot both take its last place.
CREATE TABLE region_locks (
    name TEXT PRIMARY KEY
);
