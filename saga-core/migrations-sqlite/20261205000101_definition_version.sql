-- The version of the saga definition an instance was started with (and is driven by).
-- Instances from before versions existed ran version 1.
ALTER TABLE saga_instances ADD COLUMN definition_version INTEGER NOT NULL DEFAULT 1;
