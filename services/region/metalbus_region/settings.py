"""Region settings: METALBUS_REGION_* or the [region] table of the METALBUS_CONFIG file."""

import os
import socket
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.settings import ServiceSettings


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RegionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_REGION_", extra="ignore")
    SECTION: ClassVar[str] = "region"

    database_dsn: str = Field(
        default="postgresql://metalbus@127.0.0.1:5432/metalbus", json_schema_extra={"secret": True}
    )
    database_pool_max: int = Field(default=10, ge=1, le=200)
    database_timeout_s: float = Field(default=5.0, gt=0)
    replica_id: str = Field(default_factory=default_replica_id, min_length=1)
    max_concurrency: int = Field(default=256, ge=1)
    rack_shared_secret: str | None = Field(
        default=None,
        json_schema_extra={"secret": True},
        description="Racks must present it when they announce themselves; unset accepts any rack (development).",
    )
    reaper_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often each replica looks for machines past their deadline."
    )
    reaper_batch: int = Field(default=100, ge=1, description="Most overdue machines failed in one transaction.")
    outbox_retention_s: float = Field(
        default=3600.0, ge=0, description="Published events stay in PostgreSQL this long (JetStream keeps them)."
    )
    power_request_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="How long one rack may take to answer a power command."
    )
    events_stream_replicas: int = Field(
        default=1, ge=1, le=5, description="NATS servers that keep the events stream (3 in a 3-node cluster)."
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="TCP port of GET /metrics (Prometheus text); 0: no metrics endpoint."
    )
    metrics_address: str = Field(
        default="127.0.0.1", description="Address the metrics endpoint listens on (0.0.0.0: every interface)."
    )
