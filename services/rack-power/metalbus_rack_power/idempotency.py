"""Remembering the outcome of recent power commands by idempotency key: bounded (LRU) and expiring (TTL).

The region sends one key per power operation and the same key again only when it retries after a lost reply;
the rack then answers the state it reached instead of acting twice. Only successes are remembered: a failed
command may be tried again. Time is injected for tests.
"""

import time
from collections import OrderedDict
from collections.abc import Callable

from metalbus.contracts.power import PowerState


class OutcomeCache:
    def __init__(self, *, capacity: int, ttl_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, PowerState]] = OrderedDict()

    def get(self, key: str) -> PowerState | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, state = entry
        if self._monotonic() - stored_at > self._ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return state

    def put(self, key: str, state: PowerState) -> None:
        self._entries[key] = (self._monotonic(), state)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
