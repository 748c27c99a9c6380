-- The power state racks last observed for each machine (polling reports changes only), and when it changed.
ALTER TABLE machines
    ADD COLUMN power_state            text NOT NULL DEFAULT 'unknown' CHECK (power_state IN ('on', 'off', 'unknown')),
    ADD COLUMN power_state_changed_at timestamptz;
