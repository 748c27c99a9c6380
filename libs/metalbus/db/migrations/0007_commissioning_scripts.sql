-- Commissioning scripts operators add (MAAS's node scripts of type commissioning), and which of them a machine's
-- current commissioning runs, in order, after the region's inventory script. A script a commissioning machine has
-- chosen cannot be deleted until that commissioning ends (the region refuses it).
CREATE TABLE commissioning_scripts (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    content     text NOT NULL CHECK (content LIKE '#!%'),
    description text NOT NULL DEFAULT '',
    timeout_s   integer NOT NULL CHECK (timeout_s BETWEEN 1 AND 86400),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE machines ADD COLUMN commissioning_scripts text[] NOT NULL DEFAULT '{}';
