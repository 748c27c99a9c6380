-- API keys for the HTTP API. A key is mb_<key_id>_<secret>: the region keeps the key id and the SHA-256 of the
-- secret, never the secret itself, so a copy of this table lets nobody in.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{8}$'),
    name          text NOT NULL,
    secret_sha256 text NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Machine listing is ordered by (hostname, system_id) and paged; the filters (status, architecture) lead the
-- index whose order they keep, so a page is an index range read, not a sort of every machine.
CREATE INDEX machines_by_hostname ON machines (hostname, system_id);
CREATE INDEX machines_by_status ON machines (status, hostname, system_id);
CREATE INDEX machines_by_architecture ON machines (architecture, hostname, system_id);
