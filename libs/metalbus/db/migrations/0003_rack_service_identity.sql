-- Each rack service gets its own identity when it registers with the shared secret: a token whose SHA-256 is
-- kept here. Heartbeats must carry it; a service that cannot prove it is asked to register again.
ALTER TABLE rack_services ADD COLUMN token_sha256 text;
