"""What every region handler module receives: the database, the bus, the outbox, settings and the clock."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from metalbus.bus import Bus
from metalbus.subjects import RequestSubject
from metalbus_region.database import Database
from metalbus_region.outbox import OutboxPublisher
from metalbus_region.settings import RegionSettings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RegionContext:
    settings: RegionSettings
    database: Database
    bus: Bus
    outbox: OutboxPublisher
    clock: Callable[[], datetime] = field(default=utc_now)


# A module's routes: each subject it serves with its handler.
Route = tuple[RequestSubject[Any, Any], Callable[[Any], Awaitable[Any]]]
