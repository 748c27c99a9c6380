"""Who may publish and subscribe what on NATS, per role, derived from the subject catalogue; rendered as the
``authorization { users = [...] }`` block of a nats-server config.

Roles (one NATS user each): ``region-<n>`` for each region replica, ``api``, ``rack-<rack_id>`` for each rack
(shared by its four services), ``integrator`` (reads events only) and ``admin`` (``metalbus admin`` on the
region host). Every user receives replies on its own inbox prefix ``_INBOX.<user>`` (see
:func:`inbox_prefix_of`); responders answer through ``allow_responses`` (the server lets them publish to the
reply subject of a request they received, once) instead of being allowed to publish to every inbox.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metalbus.subjects import (
    API_KEY_CREATE,
    BOOT_CONFIG,
    BOOT_TRANSFERS,
    DNS_ZONE,
    EVENT_LEASE,
    EVENT_MACHINE,
    EVENT_RACK_SERVICE,
    EVENT_SUBJECTS,
    EVENTS_STREAM,
    LEASE_COMMIT,
    LEASE_COMMIT_BATCH,
    LEASE_DECLINE,
    LEASE_OFFER,
    LEASE_OFFER_BATCH,
    LEASE_RELEASE,
    LEASE_RENEW,
    METADATA_READ,
    METADATA_SIGNAL,
    METADATA_STATUS,
    POWER_OBSERVED,
    POWER_TARGETS,
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    RACK_SNAPSHOT,
    REGION_HEALTH,
    REQUEST_SUBJECTS,
    SUBNET_LIST,
    SYSLOG_INTAKE,
    EventSubject,
    RequestSubject,
    fill_subject_unchecked,
    wildcard,
)

REGION_PREFIX = "region."
RACK_PREFIX = "rack."
API_USER = "api"
INTEGRATOR_USER = "integrator"
ADMIN_USER = "admin"
RESPONSE_WINDOW = "10m"

# What only a rack's services ask the region (rack-dhcp, rack-tftp, rack-power, rack-proxy, and the presence
# every rack service keeps). Every other region subject is the operators' (api, admin).
RACK_ONLY_REQUESTS: tuple[RequestSubject, ...] = (  # type: ignore[type-arg]
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    RACK_SNAPSHOT,
    LEASE_OFFER,
    LEASE_COMMIT,
    LEASE_OFFER_BATCH,
    LEASE_COMMIT_BATCH,
    LEASE_RENEW,
    LEASE_RELEASE,
    LEASE_DECLINE,
    BOOT_CONFIG,
    BOOT_TRANSFERS,
    METADATA_READ,
    METADATA_SIGNAL,
    METADATA_STATUS,
    POWER_TARGETS,
    POWER_OBSERVED,
    SYSLOG_INTAKE,
    DNS_ZONE,
)
# Asked by racks (rack-dhcp learns its subnets) and operators alike.
RACK_REQUESTS: tuple[RequestSubject, ...] = (*RACK_ONLY_REQUESTS, SUBNET_LIST, REGION_HEALTH)  # type: ignore[type-arg]
# Asked only by `metalbus admin` on the region host: the api can check keys but never mint them.
ADMIN_ONLY_REQUESTS: tuple[RequestSubject, ...] = (API_KEY_CREATE,)  # type: ignore[type-arg]
# The events a rack's services follow as plain (core NATS) subscriptions: rack-tftp drops cached boot
# configs on machine events, rack-proxy refreshes its DNS zone on rack, lease and machine events.
RACK_WATCHED_EVENTS: tuple[EventSubject, ...] = (EVENT_MACHINE, EVENT_LEASE, EVENT_RACK_SERVICE)  # type: ignore[type-arg]


@dataclass(frozen=True)
class Permissions:
    """One user's allow lists (nats-server denies everything not allowed) and deny lists (win over allow)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    subscribe_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class NatsUser:
    name: str
    password: str
    permissions: Permissions


@dataclass(frozen=True)
class Roles:
    """Which users a deployment has: its region replicas and racks, and whether integrators may read events."""

    region_replicas: tuple[str, ...] = ("region-1",)
    rack_ids: tuple[str, ...] = ("rack-1",)
    integrator: bool = True

    def user_names(self) -> tuple[str, ...]:
        names = [*self.region_replicas, API_USER, *(rack_user(rack_id) for rack_id in self.rack_ids), ADMIN_USER]
        return (*names, INTEGRATOR_USER) if self.integrator else tuple(names)


def rack_user(rack_id: str) -> str:
    return f"rack-{rack_id}"


def inbox_prefix_of(user: str) -> str:
    """Where a user receives replies: its own, so that nobody else may subscribe to them."""
    return f"_INBOX.{user}"


def own_inbox(user: str) -> str:
    return inbox_prefix_of(user) + ".>"


def region_served() -> tuple[str, ...]:
    """Every subject the region's replicas serve: the catalogue's ``region.…`` request subjects."""
    return tuple(s.pattern for s in REQUEST_SUBJECTS if s.pattern.startswith(REGION_PREFIX))


def rack_served(rack_id: str) -> tuple[str, ...]:
    """Every subject one rack serves: the catalogue's ``rack.{rack_id}.…`` subjects filled with its id."""
    return tuple(
        fill_subject_unchecked(s.pattern, {"rack_id": rack_id})
        for s in REQUEST_SUBJECTS
        if s.pattern.startswith(RACK_PREFIX)
    )


def every_rack_served() -> tuple[str, ...]:
    """What the region asks racks (``rack.*.power.command``): any rack, named by the machine's BMC."""
    return tuple(wildcard(s.pattern) for s in REQUEST_SUBJECTS if s.pattern.startswith(RACK_PREFIX))


def event_wildcards(events: Iterable[EventSubject] = EVENT_SUBJECTS) -> tuple[str, ...]:  # type: ignore[type-arg]
    return tuple(wildcard(e.pattern) for e in events)


def patterns(requests: Iterable[RequestSubject]) -> tuple[str, ...]:  # type: ignore[type-arg]
    return tuple(s.pattern for s in requests)


def operator_requests() -> tuple[str, ...]:
    """What the api asks the region: every region subject that is neither a rack's nor admin-only."""
    excluded = set(patterns(RACK_ONLY_REQUESTS)) | set(patterns(ADMIN_ONLY_REQUESTS))
    return tuple(subject for subject in region_served() if subject not in excluded)


def stream_reader_api(stream: str) -> tuple[str, ...]:
    """The JetStream API calls that read a stream through consumers, and nothing that changes the stream:
    create/inspect/delete consumers (nats-py names them ``CONSUMER.CREATE.<stream>[.<name>[.<filter>]]``),
    pull the next messages, look up the stream, and answer flow control (ordered push consumers).
    Only for our own api: a push consumer's deliver subject is not checked against its creator's
    permissions, so whoever may create consumers can have the stream's events delivered onto any subject."""
    api = "$JS.API"
    return (
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",
    )


def stream_owner_api(stream: str) -> tuple[str, ...]:
    """What a region replica needs of JetStream besides publishing events (whose acknowledgements come back
    on its own inbox): create the stream, or update it when its settings changed."""
    return (f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}", f"$JS.API.STREAM.INFO.{stream}")


def region_permissions(replica: str) -> Permissions:
    return Permissions(
        publish=(*every_rack_served(), *event_wildcards(), *stream_owner_api(EVENTS_STREAM.name)),
        subscribe=(*region_served(), own_inbox(replica)),
        allow_responses=True,
    )


def api_permissions() -> Permissions:
    # commission_wait follows one machine's events with a core subscription; history and live event streams
    # go through consumers of the stream, delivered to the api's own inbox.
    return Permissions(
        publish=(*operator_requests(), *stream_reader_api(EVENTS_STREAM.name)),
        subscribe=(own_inbox(API_USER), *event_wildcards((EVENT_MACHINE,))),
    )


def rack_permissions(rack_id: str) -> Permissions:
    user = rack_user(rack_id)
    return Permissions(
        publish=patterns(RACK_REQUESTS),
        subscribe=(*rack_served(rack_id), own_inbox(user), *event_wildcards(RACK_WATCHED_EVENTS)),
        allow_responses=True,
    )


def stream_message_api(stream: str) -> tuple[str, ...]:
    """Read a stream one stored message at a time (by sequence, or the last on a subject), and its info."""
    api = "$JS.API"
    return (f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}", f"{api}.DIRECT.GET.{stream}")


def integrator_permissions() -> Permissions:
    """Live events by core subscription, and replay by fetching stored messages by sequence. Not consumers:
    a push consumer delivers to whatever subject its creator names, without the creator's publish
    permissions being checked, so a consumer-creating integrator could push events onto rack subjects."""
    return Permissions(
        publish=stream_message_api(EVENTS_STREAM.name),
        subscribe=(*EVENTS_STREAM.subjects, own_inbox(INTEGRATOR_USER)),
    )


def admin_permissions(other_users: Sequence[str]) -> Permissions:
    """Every region request. Replies on any inbox but another user's: `metalbus admin` may connect without
    credentials (the embedded stack's ``no_auth_user``) and then uses nats-py's default ``_INBOX.<random>``."""
    return Permissions(
        publish=region_served(),
        subscribe=("_INBOX.>",),
        subscribe_deny=tuple(own_inbox(user) for user in other_users if user != ADMIN_USER),
    )


def permissions_of(user: str, roles: Roles) -> Permissions:
    if user in roles.region_replicas:
        return region_permissions(user)
    if user == API_USER:
        return api_permissions()
    if user == INTEGRATOR_USER:
        return integrator_permissions()
    if user == ADMIN_USER:
        return admin_permissions(roles.user_names())
    for rack_id in roles.rack_ids:
        if user == rack_user(rack_id):
            return rack_permissions(rack_id)
    raise ValueError(f"no role has a user named {user!r}")


def users_for(roles: Roles, passwords: dict[str, str]) -> list[NatsUser]:
    return [NatsUser(name, passwords[name], permissions_of(name, roles)) for name in roles.user_names()]


def render_permissions(permissions: Permissions) -> dict[str, object]:
    rendered: dict[str, object] = {
        "publish": {"allow": list(permissions.publish)},
        "subscribe": {"allow": list(permissions.subscribe)},
    }
    if permissions.subscribe_deny:
        rendered["subscribe"] = {"allow": list(permissions.subscribe), "deny": list(permissions.subscribe_deny)}
    if permissions.allow_responses:
        # One reply per request received, within the longest a handler may take (the api waits up to 600 s
        # for a power command through a rack); nats-server's default window is 2 minutes.
        rendered["allow_responses"] = {"max": 1, "expires": RESPONSE_WINDOW}
    return rendered


def render_authorization(users: Sequence[NatsUser], *, no_auth_user: str | None = None) -> str:
    """The nats-server config text: an ``authorization`` block (JSON values are valid nats-server config),
    plus ``no_auth_user`` when clients without credentials should act as that user."""
    lines = ["# Generated by metalbus (nats_auth.py) from the subject catalogue; regenerated on every run.", ""]
    if no_auth_user is not None:
        if no_auth_user not in {user.name for user in users}:
            raise ValueError(f"no_auth_user {no_auth_user!r} is not one of the users")
        lines.append(f"no_auth_user: {json.dumps(no_auth_user)}")
    lines.append("authorization {")
    lines.append("  users = [")
    for user in users:
        entry = {"user": user.name, "password": user.password, "permissions": render_permissions(user.permissions)}
        lines.append("    " + json.dumps(entry))
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
