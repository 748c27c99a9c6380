-- Rack controllers and the services each one runs, as announced over the bus.
CREATE TABLE racks (
    rack_id     text PRIMARY KEY CHECK (rack_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    first_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rack_services (
    rack_id              text NOT NULL REFERENCES racks (rack_id) ON DELETE CASCADE,
    service              text NOT NULL CHECK (service IN ('rack-dhcp', 'rack-tftp', 'rack-power', 'rack-proxy')),
    hostname             text NOT NULL,
    version              text NOT NULL,
    heartbeat_interval_s double precision NOT NULL CHECK (heartbeat_interval_s > 0),
    first_seen           timestamptz NOT NULL DEFAULT now(),
    last_seen            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rack_id, service)
);
