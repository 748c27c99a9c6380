"""The embedded stack: nats-server, PostgreSQL, the region replicas, the api and one rack on one machine."""
