-- The region's model: machines and their lifecycle, subnets and leases, boot resources, metadata tokens,
-- commissioning results and inventory, the event outbox and idempotency keys.

CREATE TABLE region_settings (
    name  text PRIMARY KEY,
    value jsonb NOT NULL
);
INSERT INTO region_settings (name, value) VALUES
    ('enlistment_enabled', 'true'),
    ('commissioning_timeout_s', '1800');

-- Racks report the networks their interfaces sit on (address with prefix, e.g. 10.20.0.2/24).
ALTER TABLE rack_services ADD COLUMN interfaces inet[] NOT NULL DEFAULT '{}';

CREATE TABLE machines (
    system_id              text PRIMARY KEY CHECK (system_id ~ '^[a-z0-9]{6}$'),
    hostname               text NOT NULL UNIQUE,
    status                 text NOT NULL,
    previous_status        text,
    status_reason          text,
    architecture           text NOT NULL,
    boot_mac               macaddr UNIQUE,
    power_type             text NOT NULL DEFAULT 'manual',
    power_parameters       jsonb NOT NULL DEFAULT '{}',
    bmc_address            inet,
    boot_purpose           text NOT NULL DEFAULT 'local',
    created_at             timestamptz NOT NULL DEFAULT now(),
    status_changed_at      timestamptz NOT NULL DEFAULT now(),
    commissioning_deadline timestamptz,
    CHECK ((status = 'commissioning') = (commissioning_deadline IS NOT NULL))
);
CREATE INDEX machines_commissioning_deadline ON machines (commissioning_deadline) WHERE status = 'commissioning';

-- BMC secrets live apart from the machine row: nothing that reads machines can leak them.
CREATE TABLE machine_power_secrets (
    system_id text PRIMARY KEY REFERENCES machines (system_id) ON DELETE CASCADE,
    secrets   jsonb NOT NULL
);

CREATE TABLE machine_interfaces (
    system_id  text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    name       text NOT NULL,
    mac        macaddr NOT NULL,
    link_up    boolean NOT NULL DEFAULT false,
    speed_mbps integer,
    PRIMARY KEY (system_id, name)
);
-- A PXE boot from any NIC of a known machine must find that machine, not enlist a new one.
CREATE INDEX machine_interfaces_by_mac ON machine_interfaces (mac);

CREATE TABLE subnets (
    subnet_id     bigserial PRIMARY KEY,
    cidr          cidr NOT NULL UNIQUE,
    gateway       inet,
    dns_servers   inet[] NOT NULL DEFAULT '{}',
    dynamic_start inet,
    dynamic_end   inet,
    managed       boolean NOT NULL DEFAULT true,
    lease_time_s  integer NOT NULL DEFAULT 600 CHECK (lease_time_s > 0),
    domain        text NOT NULL DEFAULT 'maas.internal',
    CHECK ((dynamic_start IS NULL) = (dynamic_end IS NULL)),
    CHECK (dynamic_start IS NULL OR (dynamic_start << cidr AND dynamic_end << cidr AND dynamic_start <= dynamic_end)),
    -- One address space: a link address or a lease address selects at most one subnet.
    CONSTRAINT subnets_do_not_overlap EXCLUDE USING gist (cidr inet_ops WITH &&)
);

CREATE TABLE reserved_ips (
    subnet_id bigint NOT NULL REFERENCES subnets (subnet_id) ON DELETE CASCADE,
    ip        inet NOT NULL,
    PRIMARY KEY (subnet_id, ip)
);

CREATE TABLE leases (
    lease_id   bigserial PRIMARY KEY,
    subnet_id  bigint NOT NULL REFERENCES subnets (subnet_id) ON DELETE CASCADE,
    ip         inet NOT NULL,
    mac        macaddr NOT NULL,
    rack_id    text NOT NULL,
    state      text NOT NULL CHECK (state IN ('offered', 'bound', 'released', 'declined', 'expired')),
    hostname   text,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The guarantee: at any moment an address has at most one holder (an offer, a binding or a quarantine),
-- whichever rack and replica asked. Stale rows must be moved to 'expired' before the address is reused.
CREATE UNIQUE INDEX leases_one_holder_per_ip ON leases (ip) WHERE state IN ('offered', 'bound', 'declined');
CREATE UNIQUE INDEX leases_one_active_per_mac ON leases (subnet_id, mac) WHERE state IN ('offered', 'bound');
CREATE INDEX leases_history_by_mac ON leases (mac, updated_at DESC);
-- Finding stale holders to expire, and the held addresses of one subnet.
CREATE INDEX leases_holders_by_expiry ON leases (subnet_id, expires_at) WHERE state IN ('offered', 'bound', 'declined');

CREATE TABLE boot_resources (
    architecture  text NOT NULL,
    purpose       text NOT NULL,
    kernel        text NOT NULL,
    initrd        text NOT NULL,
    squashfs      text,
    kernel_params text NOT NULL DEFAULT '',
    PRIMARY KEY (architecture, purpose)
);

-- OAuth PLAINTEXT credentials per machine. The secret is kept as issued: boot configs carry it to the machine.
CREATE TABLE metadata_tokens (
    token_key         text PRIMARY KEY,
    consumer_key      text NOT NULL,
    token_secret      text NOT NULL,
    system_id         text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,
    revoked_at        timestamptz
);
CREATE INDEX metadata_tokens_by_machine ON metadata_tokens (system_id);

CREATE TABLE commissioning_results (
    result_id   bigserial PRIMARY KEY,
    system_id   text NOT NULL REFERENCES machines (system_id) ON DELETE CASCADE,
    name        text NOT NULL,
    exit_status integer NOT NULL,
    stdout      text NOT NULL DEFAULT '',
    stderr      text NOT NULL DEFAULT '',
    result      jsonb,
    runtime_s   double precision,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commissioning_results_by_machine ON commissioning_results (system_id, recorded_at);

CREATE TABLE hardware_inventory (
    system_id       text PRIMARY KEY REFERENCES machines (system_id) ON DELETE CASCADE,
    cpu_model       text NOT NULL,
    cpu_count       integer NOT NULL,
    cpu_speed_mhz   integer,
    memory_mib      integer NOT NULL,
    block_devices   jsonb NOT NULL DEFAULT '[]',
    interfaces      jsonb NOT NULL DEFAULT '[]',
    lldp_neighbours jsonb NOT NULL DEFAULT '[]',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The outbox: events are written in the same transaction as the change they describe, then published to
-- JetStream (with the sequence as Nats-Msg-Id, so a re-publish after a crash is deduplicated).
CREATE TABLE events (
    sequence     bigserial PRIMARY KEY,
    subject      text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX events_unpublished ON events (sequence) WHERE published_at IS NULL;

-- A command repeated with the same key is applied once; the stored reply answers the repeats.
CREATE TABLE idempotency_keys (
    key        text PRIMARY KEY,
    subject    text NOT NULL,
    reply      jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
