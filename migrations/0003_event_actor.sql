-- Attribution: the user on whose behalf an event happened (by name), or NULL for the
-- controller's own timers and the appliance's callbacks.
ALTER TABLE events ADD COLUMN actor TEXT;
