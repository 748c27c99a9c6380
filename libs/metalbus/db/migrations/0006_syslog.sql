-- Syslog lines machines sent to a rack, relayed to the region. A line is attributed to the machine whose boot MAC
-- held a bound lease on its source address when the region stored it (system_id NULL: nobody's).
-- Retention: the intake keeps the newest lines per machine (and per "nobody") up to a cap, deleting older ones in
-- the same transaction, so the table is bounded without a reaper.
CREATE TABLE syslog_lines (
    line_id         bigserial PRIMARY KEY,
    system_id       text REFERENCES machines (system_id) ON DELETE CASCADE,
    rack_id         text NOT NULL,
    source_ip       inet NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    format          text NOT NULL CHECK (format IN ('rfc3164', 'rfc5424', 'raw')),
    facility        smallint CHECK (facility BETWEEN 0 AND 23),
    severity        smallint CHECK (severity BETWEEN 0 AND 7),
    hostname        text,
    app_name        text,
    proc_id         text,
    msg_id          text,
    logged_at       timestamptz,
    structured_data text,
    text            text NOT NULL,
    raw             text
);
-- "The lines of a machine by time" (NULL system_id: the unattributed lines), and the retention cut.
CREATE INDEX syslog_lines_by_machine_time ON syslog_lines (system_id, received_at, line_id);
