"""Typed message contracts (pydantic v2) for every NATS subject; one module per area."""
