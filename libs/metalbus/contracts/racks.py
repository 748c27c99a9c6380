"""Rack controllers: each rack service announces itself, heartbeats, and the region lists what it knows."""

from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Interface

from pydantic import Field

from metalbus.contracts.base import Message, examples

RACK_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class RackServiceKind(StrEnum):
    DHCP = "rack-dhcp"
    TFTP = "rack-tftp"
    POWER = "rack-power"
    PROXY = "rack-proxy"


class RackServiceAnnouncement(Message):
    """A rack service says it is up; repeated after every (re)connect to NATS."""

    model_config = examples(
        {
            "schema_version": 1,
            "rack_id": "rack-1",
            "service": "rack-dhcp",
            "hostname": "lab-rack-1",
            "version": "0.1.0",
            "heartbeat_interval_s": 5.0,
            "interfaces": ["10.20.0.2/24", "10.0.0.2/24"],
            "shared_secret": "from-metalbus-up",
        }
    )

    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    service: RackServiceKind
    hostname: str = Field(min_length=1, max_length=255)
    version: str
    heartbeat_interval_s: float = Field(gt=0, le=3600)
    interfaces: list[IPv4Interface] = Field(
        default_factory=list, description="The rack host's addresses with prefix: the networks it reaches."
    )
    shared_secret: str | None = Field(
        default=None, repr=False, description="The shared rack secret the region was given (metalbus up makes one)."
    )


class RackServiceHeartbeat(Message):
    model_config = examples(
        {"schema_version": 1, "rack_id": "rack-1", "service": "rack-tftp", "service_token": "issued-at-announce"}
    )

    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    service: RackServiceKind
    service_token: str | None = Field(default=None, repr=False, description="The identity the announce issued.")


class RackServiceAck(Message):
    """The region's receipt. An announce is answered with the service's own identity (``service_token``), which
    its heartbeats must carry; ``known`` false on a heartbeat means: announce yourself again."""

    model_config = examples({"schema_version": 1, "known": True, "service_token": "issued-at-announce"})

    known: bool
    service_token: str | None = Field(default=None, repr=False)


class RackListQuery(Message):
    model_config = examples({"schema_version": 1})


class RackServiceStatus(Message):
    model_config = examples(
        {
            "schema_version": 1,
            "service": "rack-power",
            "hostname": "lab-rack-1",
            "version": "0.1.0",
            "first_seen": "2026-11-25T06:00:00Z",
            "last_seen": "2026-11-25T06:01:00Z",
            "healthy": True,
            "interfaces": ["10.20.0.2/24"],
        }
    )

    service: RackServiceKind
    hostname: str
    version: str
    first_seen: datetime
    last_seen: datetime
    healthy: bool = Field(description="Heard from within three heartbeat intervals.")
    interfaces: list[IPv4Interface] = Field(default_factory=list)
    served_subnet_ids: list[int] = Field(
        default_factory=list, description="Managed subnets an interface of this service sits on."
    )


class RackStatus(Message):
    model_config = examples(
        {
            "schema_version": 1,
            "rack_id": "rack-1",
            "services": [
                {
                    "service": "rack-power",
                    "hostname": "lab-rack-1",
                    "version": "0.1.0",
                    "first_seen": "2026-11-25T06:00:00Z",
                    "last_seen": "2026-11-25T06:01:00Z",
                    "healthy": True,
                }
            ],
        }
    )

    rack_id: str
    services: list[RackServiceStatus]


class RackList(Message):
    model_config = examples({"schema_version": 1, "racks": []})

    racks: list[RackStatus]


class RackServiceEventKind(StrEnum):
    ANNOUNCED = "announced"
    RETURNED = "returned"
    """Heard from again after its heartbeats had lapsed (it counted as unhealthy meanwhile)."""


class RackServiceEvent(Message):
    """Published on the event stream when a rack service (re)announces itself, or when one whose heartbeats had
    lapsed is heard from again (``returned``): what serves the racks' subnets changed either way."""

    model_config = examples(
        {
            "schema_version": 1,
            "kind": "announced",
            "rack_id": "rack-1",
            "service": "rack-proxy",
            "hostname": "lab-rack-1",
            "at": "2026-11-25T06:00:00Z",
        }
    )

    kind: RackServiceEventKind
    rack_id: str
    service: RackServiceKind
    hostname: str
    at: datetime
