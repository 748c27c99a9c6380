"""Remember the region's boot decisions per (MAC, architecture, rack address) for a short time.

A boot storm must not become a region storm: a loader asks for several names in a row (pxelinux's chain, GRUB's
bootstrap then its config, TFTP retransmits, an HTTP retry), and a rack of machines powered on together asks at
once. So:

- an answer is reused for ``ttl_s`` (default 10 s) — the rack address is part of the key because the answer's
  command line holds the metadata URL on that address;
- concurrent requests for one key share one region request (single-flight); its failure reaches them all;
- a machine event (``events.machine.<system_id>``: it started commissioning, was aborted, …) drops that
  machine's answers at once, and an answer in flight when the event arrives is handed to its waiters but not
  kept; the event of a machine's creation instead drops the anonymous answers (no system id: enlistment was
  off), since that MAC may now be known — an answer naming the new machine is already newer than its creation;
- when the region cannot answer (``FileRefused(UNAVAILABLE)``), an expired answer no older than
  ``stale_if_error_s`` (default 300 s; 0 turns it off) is served instead, so a machine rebooting during a short
  region or NATS outage boots as it did a moment ago (the architecture's "racks keep serving from their cache").
  An answer dropped by an event is never served stale.

Pure apart from the asyncio tasks of single-flight: the clock is injected and the region is any async callable.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import structlog

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import MachineEvent
from metalbus_rack_tftp.sources import TRANSIENT_REFUSALS, FileRefused

log = structlog.get_logger("metalbus.rack_tftp.cache")

DEFAULT_TTL_S = 10.0
DEFAULT_STALE_IF_ERROR_S = 300.0
DEFAULT_MAX_ENTRIES = 10_000

FetchBootConfig = Callable[[str, Architecture, IPv4Address], Awaitable[BootConfig]]
CacheKey = tuple[str, Architecture, IPv4Address]


@dataclass(frozen=True)
class _Entry:
    config: BootConfig
    fetched_at: float


class BootConfigCache:
    """``boot_config(mac, architecture, rack_address)``: the region's answer, from memory when fresh enough."""

    def __init__(
        self,
        fetch: FetchBootConfig,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        stale_if_error_s: float = DEFAULT_STALE_IF_ERROR_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.stale_if_error_s = stale_if_error_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[CacheKey, _Entry] = {}
        self._keys_of_machine: dict[str | None, set[CacheKey]] = {}
        self._in_flight: dict[CacheKey, asyncio.Task[BootConfig]] = {}
        self._invalidations = 0
        self._invalidated_at: dict[str | None, int] = {}  # only while fetches are in flight
        self.region_requests = 0
        self.served_stale = 0

    async def boot_config(self, mac: str, architecture: Architecture, rack_address: IPv4Address) -> BootConfig:
        key = (mac, architecture, rack_address)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at < self.ttl_s:
            return entry.config
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._ask_region(key, started_after=self._invalidations))
            task.add_done_callback(_consume_outcome)
            self._in_flight[key] = task
        try:
            return await asyncio.shield(task)
        except FileRefused as refusal:
            if refusal.reason not in TRANSIENT_REFUSALS:
                raise
            return self._stale_or_raise(key, refusal)

    def on_machine_event(self, event: MachineEvent) -> None:
        """Forget what the region said about this machine; for a machine just created, about unknown MACs."""
        if event.from_status is None:
            # Any answer naming this machine was given after it was created (often: it was enlisted by that
            # very answer), so only the anonymous answers are out of date.
            self.invalidate_machine(None)
        else:
            self.invalidate_machine(event.system_id)

    def invalidate_machine(self, system_id: str | None) -> None:
        self._invalidations += 1
        if self._in_flight:
            self._invalidated_at[system_id] = self._invalidations
        for key in self._keys_of_machine.pop(system_id, set()):
            self._entries.pop(key, None)

    async def close(self) -> None:
        """Cancel the region requests in flight (their waiters get CancelledError); for shutdown."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._entries)

    async def _ask_region(self, key: CacheKey, *, started_after: int) -> BootConfig:
        """The region's answer, kept unless its machine changed after ``started_after`` (an invalidation count)."""
        self.region_requests += 1
        try:
            config = await self._fetch(*key)
            if self._invalidated_at.get(config.system_id, -1) <= started_after:
                self._store(key, config)
            return config
        finally:
            del self._in_flight[key]
            if not self._in_flight:
                self._invalidated_at.clear()

    def _store(self, key: CacheKey, config: BootConfig) -> None:
        previous = self._entries.get(key)
        if previous is not None and previous.config.system_id != config.system_id:
            self._keys_of_machine.get(previous.config.system_id, set()).discard(key)
        self._entries[key] = _Entry(config, self._clock())
        self._keys_of_machine.setdefault(config.system_id, set()).add(key)
        if len(self._entries) > self.max_entries:
            self._evict()

    def _evict(self) -> None:
        """Drop what can no longer be served (past the stale window), then the oldest, down to the bound."""
        now = self._clock()
        keep_s = max(self.ttl_s, self.stale_if_error_s)
        by_age = sorted(self._entries.items(), key=lambda item: item[1].fetched_at)
        for key, entry in by_age:
            if len(self._entries) <= self.max_entries and now - entry.fetched_at < keep_s:
                break
            del self._entries[key]
            self._keys_of_machine.get(entry.config.system_id, set()).discard(key)

    def _stale_or_raise(self, key: CacheKey, refusal: FileRefused) -> BootConfig:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry.fetched_at >= self.stale_if_error_s:
            raise refusal
        self.served_stale += 1
        log.warning("boot_config.served_stale", mac=key[0], system_id=entry.config.system_id, reason=refusal.message)
        return entry.config


def _consume_outcome(task: "asyncio.Task[BootConfig]") -> None:
    """Retrieve a shared request's failure even when every waiter was cancelled (no "never retrieved" noise)."""
    if not task.cancelled():
        task.exception()
