"""THE catalogue: every NATS subject metalbus uses, the models that travel on it, and its queue group.

Services import subjects from here and never spell them inline. Subject names may hold ``{placeholders}``
(``rack.{rack_id}.…``, ``events.rack.{rack_id}``) filled with :meth:`RequestSubject.format`.
"""

import re
from dataclasses import dataclass, field
from string import Formatter
from typing import Generic, TypeVar

from metalbus.contracts.base import Message
from metalbus.contracts.health import HealthQuery, RegionHealth, ReplicaPresent, ReplicaRollCall
from metalbus.contracts.racks import (
    RackList,
    RackListQuery,
    RackServiceAck,
    RackServiceAnnouncement,
    RackServiceEvent,
    RackServiceHeartbeat,
)

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)
EventT = TypeVar("EventT", bound=Message)

REGION_QUEUE = "region"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _placeholders(pattern: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in Formatter().parse(pattern) if name)


def fill_subject(pattern: str, params: dict[str, str]) -> str:
    """Fill a subject pattern; each value must be one safe NATS token (no dots, spaces or wildcards)."""
    expected = set(_placeholders(pattern))
    if set(params) != expected:
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

# -- events ---------------------------------------------------------------------------------------------
EVENT_RACK_SERVICE = EventSubject(
    "events.rack.{rack_id}",
    RackServiceEvent,
    "A rack service announced itself.",
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
)  # type: ignore[assignment]
EVENT_SUBJECTS: tuple[EventSubject[Message], ...] = (EVENT_RACK_SERVICE,)  # type: ignore[assignment]
STREAMS: tuple[StreamSpec, ...] = (EVENTS_STREAM,)
