"""Health of the region replicas: the answer to a health query and to a replica roll call."""

from datetime import datetime

from pydantic import Field

from metalbus.contracts.base import Message, examples


class HealthQuery(Message):
    """Ask one region replica (any of the queue group) how it is."""

    model_config = examples({"schema_version": 1})


class RegionHealth(Message):
    """One replica's view: its version, whether PostgreSQL answers, and the schema migration level."""

    model_config = examples(
        {
            "schema_version": 1,
            "replica_id": "region-1",
            "version": "0.1.0",
            "database_reachable": True,
            "database_error": None,
            "migration_level": 1,
            "migration_target": 1,
            "started_at": "2026-11-25T06:00:00Z",
        }
    )

    replica_id: str
    version: str
    database_reachable: bool
    database_error: str | None = None
    migration_level: int | None = Field(default=None, description="Highest applied migration, if known.")
    migration_target: int = Field(description="Highest migration this replica ships.")
    started_at: datetime


class ReplicaRollCall(Message):
    """Sent to every region replica at once (no queue group); each one answers with a ReplicaPresent."""

    model_config = examples({"schema_version": 1})


class ReplicaPresent(Message):
    model_config = examples(
        {
            "schema_version": 1,
            "replica_id": "region-2",
            "version": "0.1.0",
            "started_at": "2026-11-25T06:00:00Z",
        }
    )

    replica_id: str
    version: str
    started_at: datetime
