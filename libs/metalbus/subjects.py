"""THE catalogue: every NATS subject metalbus uses, the models that travel on it, and its queue group.

Services import subjects from here and never spell them inline. Subject names may hold ``{placeholders}``
(``rack.{rack_id}.…``, ``events.rack.{rack_id}``) filled with :meth:`RequestSubject.format`.
"""

import functools
import re
from dataclasses import dataclass, field
from string import Formatter
from typing import Generic, TypeVar

from metalbus.contracts.apikeys import ApiKeyCheck, ApiKeyCreate, ApiKeyCreated, ApiKeyIdentity
from metalbus.contracts.base import Message
from metalbus.contracts.boot import (
    BootConfig,
    BootConfigQuery,
    BootResource,
    BootResourceList,
    BootResourceListQuery,
    BootTransferAck,
    BootTransferEvent,
    BootTransferReport,
)
from metalbus.contracts.dns import DnsZone, DnsZoneQuery
from metalbus.contracts.health import HealthQuery, RegionHealth, ReplicaPresent, ReplicaRollCall
from metalbus.contracts.leases import (
    Lease,
    LeaseAck,
    LeaseCommitBatch,
    LeaseCommitBatchReply,
    LeaseCommitRequest,
    LeaseEvent,
    LeaseList,
    LeaseListQuery,
    LeaseOffer,
    LeaseOfferBatch,
    LeaseOfferBatchReply,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    RackSnapshot,
    RackSnapshotQuery,
    Subnet,
    SubnetCreate,
    SubnetList,
    SubnetListQuery,
    SubnetUpdate,
)
from metalbus.contracts.machines import (
    Machine,
    MachineActionRequest,
    MachineCreate,
    MachineDeleted,
    MachineEvent,
    MachineList,
    MachineListQuery,
    MachineQuery,
    MachineUpdate,
)
from metalbus.contracts.metadata import (
    HardwareInventory,
    MetadataRead,
    MetadataReadEvent,
    MetadataSignal,
    MetadataStatusReport,
    MetadataValue,
    ResultEvent,
    ScriptResultList,
    SignalAck,
    StatusReportAck,
    StatusReportEvent,
)
from metalbus.contracts.power import (
    MachinePowerRequest,
    PowerCommand,
    PowerEvent,
    PowerObservation,
    PowerObservationAck,
    PowerResult,
    PowerTargets,
    PowerTargetsQuery,
)
from metalbus.contracts.racks import (
    RackList,
    RackListQuery,
    RackServiceAck,
    RackServiceAnnouncement,
    RackServiceEvent,
    RackServiceHeartbeat,
)
from metalbus.contracts.scripts import (
    CommissioningScript,
    CommissioningScriptList,
    ScriptListQuery,
    ScriptQuery,
)
from metalbus.contracts.syslog import SyslogAck, SyslogBatch, SyslogEvent

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)
EventT = TypeVar("EventT", bound=Message)

REGION_QUEUE = "region"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


@functools.cache  # the catalogue's patterns, a few dozen: parsed once each, not on every event recorded
def _placeholders(pattern: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in Formatter().parse(pattern) if name)


@functools.cache
def _placeholder_set(pattern: str) -> frozenset[str]:
    return frozenset(_placeholders(pattern))


def fill_subject(pattern: str, params: dict[str, str]) -> str:
    """Fill a subject pattern; each value must be one safe NATS token (no dots, spaces or wildcards)."""
    expected = _placeholder_set(pattern)
    if params.keys() != expected:
        raise ValueError(f"subject {pattern!r} needs {sorted(expected)}, got {sorted(params)}")
    for name, value in params.items():
        if not _TOKEN.match(value):
            raise ValueError(f"subject parameter {name}={value!r} is not a single NATS token")
    return pattern.format(**params)


def wildcard(pattern: str) -> str:
    """The subscription that matches every filling of a pattern: each placeholder becomes ``*``."""
    return fill_subject_unchecked(pattern, {name: "*" for name in _placeholders(pattern)})


def fill_subject_unchecked(pattern: str, params: dict[str, str]) -> str:
    return pattern.format(**params)


@dataclass(frozen=True)
class RequestSubject(Generic[RequestT, ReplyT]):
    """A request/reply subject: who serves it (queue group or every subscriber) and what travels."""

    pattern: str
    request: type[RequestT]
    reply: type[ReplyT]
    summary: str
    queue: str | None = REGION_QUEUE
    params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _placeholders(self.pattern))

    def format(self, **params: str) -> str:
        if not self.params and not params:
            return self.pattern  # the common case, on every request: no parsing
        return fill_subject(self.pattern, params)


@dataclass(frozen=True)
class EventSubject(Generic[EventT]):
    """An event subject, captured by the JetStream stream so integrators can replay it."""

    pattern: str
    event: type[EventT]
    summary: str
    params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _placeholders(self.pattern))

    def format(self, **params: str) -> str:
        return fill_subject(self.pattern, params)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    summary: str


# -- region: health -------------------------------------------------------------------------------------
REGION_HEALTH = RequestSubject(
    "region.health.get",
    HealthQuery,
    RegionHealth,
    "Any one region replica reports its version, database reachability and migration level.",
)
REGION_ROLL_CALL = RequestSubject(
    "region.replicas.roll-call",
    ReplicaRollCall,
    ReplicaPresent,
    "Every region replica answers (no queue group); gather the replies to count replicas.",
    queue=None,
)

# -- region: racks --------------------------------------------------------------------------------------
RACK_ANNOUNCE = RequestSubject(
    "region.racks.announce",
    RackServiceAnnouncement,
    RackServiceAck,
    "A rack service announces itself after connecting; the region records it and emits an event.",
)
RACK_HEARTBEAT = RequestSubject(
    "region.racks.heartbeat",
    RackServiceHeartbeat,
    RackServiceAck,
    "A rack service is still alive; known=false asks it to announce itself again.",
)
RACK_LIST = RequestSubject(
    "region.racks.list",
    RackListQuery,
    RackList,
    "Every rack the region knows, with each service's last heartbeat and health.",
)

# -- region: machines -----------------------------------------------------------------------------------
MACHINE_CREATE = RequestSubject(
    "region.machines.create",
    MachineCreate,
    Machine,
    "Add a machine (status NEW); BMC secrets are kept apart.",
)
MACHINE_GET = RequestSubject("region.machines.get", MachineQuery, Machine, "One machine by system id.")
MACHINE_LIST = RequestSubject("region.machines.list", MachineListQuery, MachineList, "Machines, by status.")
MACHINE_ACTION = RequestSubject(
    "region.machines.action",
    MachineActionRequest,
    Machine,
    "commission / abort / mark_broken / mark_fixed; a status that does not allow it is invalid_transition.",
)

MACHINE_UPDATE = RequestSubject(
    "region.machines.update", MachineUpdate, Machine, "Change hostname, architecture, boot MAC or power settings."
)
MACHINE_DELETE = RequestSubject(
    "region.machines.delete", MachineQuery, MachineDeleted, "Remove a machine (not while it is commissioning)."
)
MACHINE_POWER = RequestSubject(
    "region.machines.power",
    MachinePowerRequest,
    PowerResult,
    "Power a machine on/off/cycle or query it, through a rack that reaches its BMC.",
)
MACHINE_INVENTORY = RequestSubject(
    "region.machines.inventory", MachineQuery, HardwareInventory, "What commissioning learnt about a machine."
)
MACHINE_RESULTS = RequestSubject(
    "region.machines.results", MachineQuery, ScriptResultList, "A machine's commissioning script results."
)

# -- region: API keys (asked by the api and by `metalbus admin`) ----------------------------------------
API_KEY_CREATE = RequestSubject(
    "region.apikeys.create", ApiKeyCreate, ApiKeyCreated, "Make an API key; the whole key is shown only here."
)
API_KEY_CHECK = RequestSubject(
    "region.apikeys.check", ApiKeyCheck, ApiKeyIdentity, "Whose key is this? forbidden if nobody's."
)

# -- region: subnets and leases (asked by rack-dhcp) ----------------------------------------------------
SUBNET_CREATE = RequestSubject("region.subnets.create", SubnetCreate, Subnet, "Add a subnet and its ranges.")
SUBNET_LIST = RequestSubject("region.subnets.list", SubnetListQuery, SubnetList, "Every subnet.")
SUBNET_UPDATE = RequestSubject(
    "region.subnets.update", SubnetUpdate, Subnet, "Change a subnet's dynamic range and options."
)
LEASE_LIST = RequestSubject("region.leases.list", LeaseListQuery, LeaseList, "Leases, by subnet or MAC.")
LEASE_OFFER = RequestSubject(
    "region.leases.offer", LeaseOfferRequest, LeaseOffer, "DHCPDISCOVER: reserve an address for a MAC."
)
LEASE_COMMIT = RequestSubject(
    "region.leases.commit", LeaseCommitRequest, Lease, "DHCPREQUEST: bind the address; conflict means NAK."
)
LEASE_OFFER_BATCH = RequestSubject(
    "region.leases.offer.batch",
    LeaseOfferBatch,
    LeaseOfferBatchReply,
    "Many DHCPDISCOVERs in one transaction; each outcome is what region.leases.offer would answer.",
)
LEASE_COMMIT_BATCH = RequestSubject(
    "region.leases.commit.batch",
    LeaseCommitBatch,
    LeaseCommitBatchReply,
    "Many DHCPREQUESTs in one transaction; an outcome's conflict error means NAK.",
)
LEASE_RENEW = RequestSubject(
    "region.leases.renew", LeaseCommitRequest, Lease, "Extend a bound lease; not_found/conflict means NAK."
)
LEASE_RELEASE = RequestSubject(
    "region.leases.release", LeaseReleaseRequest, LeaseAck, "DHCPRELEASE: the address is free again."
)
LEASE_DECLINE = RequestSubject(
    "region.leases.decline",
    LeaseReleaseRequest,
    LeaseAck,
    "DHCPDECLINE: the address is in use; quarantine it.",
)
RACK_SNAPSHOT = RequestSubject(
    "region.racks.snapshot",
    RackSnapshotQuery,
    RackSnapshot,
    "Everything one rack needs to keep serving DHCP alone for a while.",
)

# -- region: boot decisions (asked by rack-tftp) --------------------------------------------------------
BOOT_CONFIG = RequestSubject(
    "region.boot.config",
    BootConfigQuery,
    BootConfig,
    "What a PXE-booting MAC boots (unknown MACs are enlisted as NEW machines).",
)
BOOT_RESOURCE_SET = RequestSubject(
    "region.boot.resources.set", BootResource, BootResource, "Set the kernel/initrd/squashfs of arch+purpose."
)
BOOT_RESOURCE_LIST = RequestSubject(
    "region.boot.resources.list", BootResourceListQuery, BootResourceList, "Every boot resource."
)
BOOT_TRANSFERS = RequestSubject(
    "region.boot.transfers",
    BootTransferReport,
    BootTransferAck,
    "A rack reports the boot files (TFTP, HTTP) it sent; each one a machine fetched becomes an event.",
)
EVENT_BOOT_TRANSFER = EventSubject(
    "events.boot.{system_id}",
    BootTransferEvent,
    "A rack sent a machine a boot file (bootloader, config, kernel, initrd) over TFTP or HTTP.",
)

# -- region: commissioning scripts (operators') -----------------------------------------------------------
SCRIPT_SET = RequestSubject(
    "region.scripts.set",
    CommissioningScript,
    CommissioningScript,
    "Add or replace a commissioning script by name (a commission call may then choose it).",
)
SCRIPT_LIST = RequestSubject(
    "region.scripts.list", ScriptListQuery, CommissioningScriptList, "Every commissioning script, by name."
)
SCRIPT_DELETE = RequestSubject(
    "region.scripts.delete",
    ScriptQuery,
    CommissioningScript,
    "Remove a commissioning script (refused while a commissioning machine has chosen it).",
)

# -- region: metadata (asked by rack-proxy on behalf of a machine) ---------------------------------------
METADATA_READ = RequestSubject(
    "region.metadata.read", MetadataRead, MetadataValue, "A meta-data item for the token's own machine."
)
METADATA_SIGNAL = RequestSubject(
    "region.metadata.signal",
    MetadataSignal,
    SignalAck,
    "Script results and the final OK/FAILED of the token's own machine.",
)
METADATA_STATUS = RequestSubject(
    "region.metadata.status",
    MetadataStatusReport,
    StatusReportAck,
    "An event of cloud-init's MAAS reporter (status/<system_id>) for the token's own machine: recorded as an event.",
)

# -- region: power polling (asked by each rack's rack-power) -------------------------------------------
POWER_TARGETS = RequestSubject(
    "region.power.targets",
    PowerTargetsQuery,
    PowerTargets,
    "The machines whose BMC the asking rack reaches (ipmi, redfish), with their power parameters, to poll.",
)
POWER_OBSERVED = RequestSubject(
    "region.power.observed",
    PowerObservation,
    PowerObservationAck,
    "A rack saw a machine's power state change; the region records it and emits a power event.",
)

# -- region: DNS zones (asked by rack-proxy) --------------------------------------------------------------
DNS_ZONE = RequestSubject(
    "region.dns.zone",
    DnsZoneQuery,
    DnsZone,
    "The internal DNS zone a rack-proxy serves: subnet names to healthy racks, hostnames to bound leases.",
)
# (DNS subjects go here)

# -- region: syslog (relayed by rack-proxy) ---------------------------------------------------------------
SYSLOG_INTAKE = RequestSubject(
    "region.syslog.intake",
    SyslogBatch,
    SyslogAck,
    "A rack relays a batch of syslog lines; each is stored, attributed to a machine by its source's bound lease.",
)
EVENT_SYSLOG = EventSubject(
    "events.syslog.{system_id}",
    SyslogEvent,
    "A machine logged lines (one summary per relayed batch; the lines are in PostgreSQL); system_id 'unknown' "
    "for lines no machine could be found for.",
)
# (syslog subjects go here)

# -- racks (served by one rack) -------------------------------------------------------------------------
RACK_POWER_COMMAND = RequestSubject(
    "rack.{rack_id}.power.command",
    PowerCommand,
    PowerResult,
    "Power a machine on/off/cycle or query it through the BMC this rack reaches.",
    queue="rack-power",
)

# -- events ---------------------------------------------------------------------------------------------
EVENT_RACK_SERVICE = EventSubject(
    "events.rack.{rack_id}",
    RackServiceEvent,
    "A rack service announced itself, or was heard from again after its heartbeats had lapsed.",
)

EVENT_MACHINE = EventSubject("events.machine.{system_id}", MachineEvent, "A machine changed status.")
EVENT_LEASE = EventSubject("events.lease.{subnet_id}", LeaseEvent, "A lease changed state.")
EVENT_POWER = EventSubject("events.power.{system_id}", PowerEvent, "A machine was powered on/off or queried.")
EVENT_RESULT = EventSubject("events.result.{system_id}", ResultEvent, "A commissioning script result was stored.")
EVENT_METADATA_READ = EventSubject(
    "events.metadata.{system_id}", MetadataReadEvent, "A machine read a metadata item (user-data, its hostname, …)."
)
EVENT_CLOUD_INIT = EventSubject(
    "events.cloud-init.{system_id}", StatusReportEvent, "A machine's cloud-init reported a stage's start or finish."
)

EVENTS_STREAM = StreamSpec(
    name="METALBUS_EVENTS",
    subjects=("events.>",),
    max_age_s=7 * 24 * 3600,
    summary="Every metalbus event, kept a week, for integrators to replay.",
)

REQUEST_SUBJECTS: tuple[RequestSubject[Message, Message], ...] = (
    REGION_HEALTH,
    REGION_ROLL_CALL,
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    RACK_LIST,
    MACHINE_CREATE,
    MACHINE_GET,
    MACHINE_LIST,
    MACHINE_ACTION,
    MACHINE_UPDATE,
    MACHINE_DELETE,
    MACHINE_POWER,
    MACHINE_INVENTORY,
    MACHINE_RESULTS,
    API_KEY_CREATE,
    API_KEY_CHECK,
    SUBNET_CREATE,
    SUBNET_LIST,
    SUBNET_UPDATE,
    LEASE_LIST,
    LEASE_OFFER,
    LEASE_COMMIT,
    LEASE_OFFER_BATCH,
    LEASE_COMMIT_BATCH,
    LEASE_RENEW,
    LEASE_RELEASE,
    LEASE_DECLINE,
    RACK_SNAPSHOT,
    BOOT_CONFIG,
    BOOT_RESOURCE_SET,
    BOOT_RESOURCE_LIST,
    BOOT_TRANSFERS,
    SCRIPT_SET,
    SCRIPT_LIST,
    SCRIPT_DELETE,
    METADATA_READ,
    METADATA_SIGNAL,
    METADATA_STATUS,
    POWER_TARGETS,
    POWER_OBSERVED,
    DNS_ZONE,
    # (DNS request subjects go here)
    SYSLOG_INTAKE,
    # (syslog request subjects go here)
    RACK_POWER_COMMAND,
)  # type: ignore[assignment]
EVENT_SUBJECTS: tuple[EventSubject[Message], ...] = (
    EVENT_RACK_SERVICE,
    EVENT_MACHINE,
    EVENT_LEASE,
    EVENT_POWER,
    EVENT_RESULT,
    EVENT_CLOUD_INIT,
    EVENT_METADATA_READ,
    EVENT_BOOT_TRANSFER,
    EVENT_SYSLOG,
    # (syslog event subjects go here)
)  # type: ignore[assignment]
STREAMS: tuple[StreamSpec, ...] = (EVENTS_STREAM,)
