"""Do NATS and the region answer the rack services, with the rack services' own NATS addresses and credentials?"""

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.health import HealthQuery, RegionHealth
from metalbus.contracts.leases import SubnetList, SubnetListQuery
from metalbus.doctor.report import Check, failed, ok, warned
from metalbus.rack_presence import RackServiceSettings
from metalbus.subjects import REGION_HEALTH, SUBNET_LIST

REGION_ROW = "region"


def judge_region(health: RegionHealth) -> Check:
    """A replica answered: its database must answer too, and its schema be at the level this version expects."""
    who = f"{health.replica_id} (version {health.version})"
    if not health.database_reachable:
        return failed(
            REGION_ROW,
            f"{who} answers but cannot reach PostgreSQL: {health.database_error or 'no detail'}",
            "check the region's database_dsn and that PostgreSQL runs (`metalbus status` for the embedded stack)",
        )
    if health.migration_level != health.migration_target:
        return warned(
            REGION_ROW,
            f"{who}: schema at level {health.migration_level}, this version expects {health.migration_target}",
            "run `metalbus db migrate`",
        )
    return ok(REGION_ROW, f"{who} answers; database reachable, schema at level {health.migration_level}")


def judge_region_answers(health: RegionHealth | BaseException, subnets: SubnetList | BaseException, user: str) -> Check:
    """The region's health if this user may ask it; else its answer to a question every rack asks (the subnet
    list, read from PostgreSQL), which proves the queue group and its database answer this rack."""
    if isinstance(health, RegionHealth):
        return judge_region(health)
    if isinstance(subnets, SubnetList):
        return ok(
            REGION_ROW,
            f"answers {SUBNET_LIST.pattern} ({len(subnets.subnets)} subnets){user}; "
            f"{REGION_HEALTH.pattern} unanswered ({health}), so the schema level is not checked",
        )
    return failed(
        REGION_ROW,
        f"no answer{user} on {REGION_HEALTH.pattern} ({health}) nor on {SUBNET_LIST.pattern} ({subnets})",
        "start the region (it serves the queue group on the same NATS) and check its logs",
    )


async def ask_region(bus: Bus, user: str, timeout_s: float) -> Check:
    """Both questions at once, so that a refused one (NATS drops a publish the user may not make, and the
    request just times out) costs no extra wait."""
    health, subnets = await asyncio.gather(
        bus.request(REGION_HEALTH, HealthQuery(), timeout=timeout_s),
        bus.request(SUBNET_LIST, SubnetListQuery(), timeout=timeout_s),
        return_exceptions=True,
    )
    for outcome in (health, subnets):
        if isinstance(outcome, BaseException) and not isinstance(outcome, MetalbusError):
            raise outcome
    return judge_region_answers(health, subnets, user)


def credential_groups(services: Mapping[str, RackServiceSettings]) -> dict[tuple[str, str | None], list[str]]:
    """The rack services grouped by the NATS address and user they connect with (one check per group)."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for name, settings in services.items():
        groups.setdefault((settings.nats_url, settings.nats_user), []).append(name)
    return groups


async def check_one_connection(
    settings: RackServiceSettings, names: list[str], timeout_s: float
) -> tuple[Check, Check | None]:
    """NATS for the services in ``names``, then (if connected) the region's health through that connection."""
    user = f" as {settings.nats_user}" if settings.nats_user else ""
    row = f"NATS for {', '.join(names)}"
    options = replace(
        settings.connect_options("metalbus-doctor"), connect_timeout_s=timeout_s, initial_connect_deadline_s=timeout_s
    )
    try:
        bus = await Bus.connect(options)
    except MetalbusError as error:
        fix = "start NATS or fix the services' NATS_URL / NATS_USER / NATS_PASSWORD; open 4222/tcp to the region"
        return failed(row, f"{settings.nats_url}{user}: {error.message}", fix), None
    try:
        region = await ask_region(bus, user, timeout_s)
    finally:
        await bus.close()
    return ok(row, f"{settings.nats_url}{user}: connected"), region


async def check_bus(services: Mapping[str, RackServiceSettings], timeout_s: float) -> list[Check]:
    """One NATS row per distinct (address, user) of the rack services, then one region row: the answer through
    the first connection that worked."""
    nats_rows: list[Check] = []
    region_rows: list[Check] = []
    for names in credential_groups(services).values():
        nats_row, region_row = await check_one_connection(services[names[0]], names, timeout_s)
        nats_rows.append(nats_row)
        region_rows += [region_row] if region_row is not None else []
    not_asked = failed(REGION_ROW, "not asked: no NATS connection", "fix NATS first")
    return [*nats_rows, region_rows[0] if region_rows else not_asked]
