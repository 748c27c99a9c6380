"""Subjects' models for DHCP leases and subnets: what rack-dhcp asks the region, and the rack's snapshot."""

from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Network

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import IdempotencyKey, IPv4, MacAddress
from metalbus.contracts.errors import ErrorEnvelope

_SUBNET = {
    "schema_version": 1,
    "subnet_id": 1,
    "cidr": "10.20.0.0/24",
    "gateway": "10.20.0.1",
    "dns_servers": ["10.20.0.2"],
    "dynamic_start": "10.20.0.100",
    "dynamic_end": "10.20.0.199",
    "managed": True,
    "lease_time_s": 600,
    "domain": "maas.internal",
}
_LEASE = {
    "schema_version": 1,
    "ip": "10.20.0.100",
    "mac": "52:54:00:12:34:56",
    "subnet_id": 1,
    "rack_id": "rack-1",
    "state": "bound",
    "expires_at": "2026-11-25T06:10:00Z",
    "hostname": "node-1",
}
_OFFER_REQUEST = {
    "schema_version": 1,
    "rack_id": "rack-1",
    "mac": "52:54:00:12:34:56",
    "link_address": "10.20.0.2",
    "requested_ip": None,
    "hostname": None,
}
_COMMIT_REQUEST = {
    "schema_version": 1,
    "rack_id": "rack-1",
    "mac": "52:54:00:12:34:56",
    "ip": "10.20.0.100",
    "hostname": "node-1",
    "idempotency_key": None,
}


class LeaseState(StrEnum):
    OFFERED = "offered"
    BOUND = "bound"
    RELEASED = "released"
    DECLINED = "declined"
    EXPIRED = "expired"


class SubnetCreate(Message):
    model_config = examples({k: v for k, v in _SUBNET.items() if k != "subnet_id"} | {"reserved": []})

    cidr: IPv4Network
    gateway: IPv4 | None = None
    dns_servers: list[IPv4] = Field(default_factory=list)
    dynamic_start: IPv4 | None = None
    dynamic_end: IPv4 | None = None
    managed: bool = True
    lease_time_s: int = Field(default=600, ge=30, le=7 * 24 * 3600)
    domain: str = Field(
        default="maas.internal",
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="DNS domain given to clients (option 15).",
    )
    reserved: list[IPv4] = Field(default_factory=list, description="Never handed out dynamically.")


class Subnet(Message):
    model_config = examples(_SUBNET)

    subnet_id: int
    cidr: IPv4Network
    gateway: IPv4 | None
    dns_servers: list[IPv4]
    dynamic_start: IPv4 | None
    dynamic_end: IPv4 | None
    managed: bool
    lease_time_s: int
    domain: str


class SubnetListQuery(Message):
    model_config = examples({"schema_version": 1})


class SubnetList(Message):
    model_config = examples({"schema_version": 1, "subnets": [_SUBNET]})

    subnets: list[Subnet]


class Lease(Message):
    model_config = examples(_LEASE)

    ip: IPv4
    mac: MacAddress
    subnet_id: int
    rack_id: str
    state: LeaseState
    expires_at: datetime
    hostname: str | None = None


class LeaseOfferRequest(Message):
    """DHCPDISCOVER seen by a rack. ``link_address`` is giaddr (relayed) or the receiving interface's address:
    it selects the subnet. The same MAC gets its previous address back; ``requested_ip`` (option 50) is
    honoured when free."""

    model_config = examples(_OFFER_REQUEST)

    rack_id: str
    mac: MacAddress
    link_address: IPv4
    requested_ip: IPv4 | None = None
    hostname: str | None = None


class LeaseOffer(Message):
    model_config = examples({"schema_version": 1, "lease": _LEASE | {"state": "offered"}, "subnet": _SUBNET})

    lease: Lease
    subnet: Subnet


class LeaseCommitRequest(Message):
    """DHCPREQUEST (selecting or init-reboot) or a renewal: bind ``ip`` to ``mac``; Conflict means NAK."""

    model_config = examples(_COMMIT_REQUEST)

    rack_id: str
    mac: MacAddress
    ip: IPv4
    hostname: str | None = None
    idempotency_key: IdempotencyKey | None = None


MAX_LEASE_BATCH = 1024
"""Most requests one batch may carry; a rack splits a longer queue."""


class LeaseOfferBatch(Message):
    """DHCPDISCOVERs a rack saw at about the same time, decided in one region transaction: outcome *i* answers
    request *i* exactly as a lone ``region.leases.offer`` would (same address rules, same errors)."""

    model_config = examples({"schema_version": 1, "requests": [_OFFER_REQUEST]})

    requests: list[LeaseOfferRequest] = Field(min_length=1, max_length=MAX_LEASE_BATCH)


class LeaseOutcome(Message):
    """One request's answer inside a batch: the lease, or the typed error the request would have got alone."""

    model_config = examples({"schema_version": 1, "lease": _LEASE, "error": None})

    lease: Lease | None = None
    error: ErrorEnvelope | None = None


class LeaseOfferBatchReply(Message):
    """``outcomes`` in request order; ``subnets`` holds each subnet an offered lease belongs to, once."""

    model_config = examples(
        {
            "schema_version": 1,
            "outcomes": [{"schema_version": 1, "lease": _LEASE | {"state": "offered"}, "error": None}],
            "subnets": [_SUBNET],
        }
    )

    outcomes: list[LeaseOutcome]
    subnets: list[Subnet]


class LeaseCommitBatch(Message):
    """DHCPREQUESTs (selecting, init-reboot) bound in one region transaction; a commit is idempotent by nature
    (binding again only moves the expiry), so batched commits skip ``idempotency_key``."""

    model_config = examples({"schema_version": 1, "requests": [_COMMIT_REQUEST]})

    requests: list[LeaseCommitRequest] = Field(min_length=1, max_length=MAX_LEASE_BATCH)


class LeaseCommitBatchReply(Message):
    model_config = examples({"schema_version": 1, "outcomes": [{"schema_version": 1, "lease": _LEASE, "error": None}]})

    outcomes: list[LeaseOutcome]


class LeaseReleaseRequest(Message):
    """DHCPRELEASE (the address is free again) or DHCPDECLINE (someone else uses it: quarantine it)."""

    model_config = examples({"schema_version": 1, "rack_id": "rack-1", "mac": "52:54:00:12:34:56", "ip": "10.20.0.100"})

    rack_id: str
    mac: MacAddress
    ip: IPv4


class LeaseAck(Message):
    model_config = examples({"schema_version": 1, "lease": _LEASE | {"state": "released"}})

    lease: Lease | None = Field(description="The lease as it now is; None if there was nothing to change.")


class RackSnapshotQuery(Message):
    model_config = examples({"schema_version": 1, "rack_id": "rack-1"})

    rack_id: str


class RackSnapshot(Message):
    """Everything a rack needs to keep serving DHCP alone for a while."""

    model_config = examples(
        {"schema_version": 1, "rack_id": "rack-1", "subnets": [_SUBNET], "leases": [_LEASE], "reserved": {}}
    )

    rack_id: str
    subnets: list[Subnet]
    leases: list[Lease]
    reserved: dict[int, list[IPv4]] = Field(description="Reserved addresses per subnet id.")


class LeaseEvent(Message):
    """On ``events.lease.<subnet_id>``: a lease was offered, bound, released, declined or expired."""

    model_config = examples({"schema_version": 1, "sequence": 7, "lease": _LEASE, "at": "2026-11-25T06:00:00Z"})

    sequence: int
    lease: Lease
    at: datetime


class SubnetUpdate(Message):
    """Change a subnet's dynamic range (and options); fields left out (None) stay as they are."""

    model_config = examples(
        {"schema_version": 1, "subnet_id": 1, "dynamic_start": "10.20.0.120", "dynamic_end": "10.20.0.199",
         "gateway": None, "dns_servers": None, "lease_time_s": None, "managed": None}
    )  # fmt: skip

    subnet_id: int
    dynamic_start: IPv4 | None = None
    dynamic_end: IPv4 | None = None
    gateway: IPv4 | None = None
    dns_servers: list[IPv4] | None = None
    lease_time_s: int | None = Field(default=None, ge=30, le=7 * 24 * 3600)
    managed: bool | None = None


class LeaseListQuery(Message):
    model_config = examples({"schema_version": 1, "subnet_id": 1, "mac": None, "active_only": True})

    subnet_id: int | None = None
    mac: MacAddress | None = None
    active_only: bool = Field(default=True, description="Only unexpired offered/bound/declined leases.")


class LeaseList(Message):
    model_config = examples({"schema_version": 1, "leases": [_LEASE]})

    leases: list[Lease]
