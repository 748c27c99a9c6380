"""Unit tests of the api: no NATS, no PostgreSQL."""
