"""`machines commission --wait`: commission a machine and follow its events until it leaves COMMISSIONING.

The event stream is opened *before* the commission request, so no status change can slip between the two. Each
event about the machine is handed to ``on_event`` as it arrives. When the stream is idle for ``poll_every_s`` (or
drops), the machine is read directly and the stream resumed from the last event seen (``Last-Event-ID``), so a
missed or late event can only delay the answer, never change it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from metalbus.cli.client import ApiUnreachable, EventStream, JsonObject, MetalbusApi, StreamIdle
from metalbus.cli.event_view import EventRecord, record_from_sse

COMMISSIONING = "commissioning"
READY = "ready"
FAILED_COMMISSIONING = "failed_commissioning"
DEFAULT_POLL_EVERY_S = 5.0
DEFAULT_SETTLE_S = 2.0  # when the commission reply is already final: how long to wait for its events


class Outcome(IntEnum):
    """Also the command's exit status."""

    READY = 0
    FAILED = 1
    TIMED_OUT = 2


@dataclass(frozen=True)
class WatchResult:
    outcome: Outcome
    status: str | None
    reason: str | None
    machine: JsonObject | None = None


def outcome_of_status(status: str | None, reason: str | None, *, aborted: bool = False) -> WatchResult | None:
    """None while still commissioning; READY only when commissioning itself succeeded."""
    if status is None or status == COMMISSIONING:
        return None
    if status == READY and not aborted:
        return WatchResult(Outcome.READY, status, reason)
    if status == FAILED_COMMISSIONING:
        return WatchResult(Outcome.FAILED, status, reason or "commissioning failed")
    return WatchResult(Outcome.FAILED, status, reason or f"commissioning ended: the machine is now {status}")


def outcome_of_event(record: EventRecord) -> WatchResult | None:
    if record.kind != "machine":
        return None
    data = record.data
    if data.get("from_status") != COMMISSIONING:
        return None
    return outcome_of_status(data.get("to_status"), data.get("reason"), aborted=data.get("action") == "abort")


@dataclass
class CommissioningWatch:
    api: MetalbusApi
    system_id: str
    on_event: Callable[[EventRecord], None]
    clock: Callable[[], float] = time.monotonic
    poll_every_s: float = DEFAULT_POLL_EVERY_S
    settle_s: float = DEFAULT_SETTLE_S

    def run(
        self,
        *,
        commissioning_timeout_s: float | None,
        wait_s: float,
        on_commissioned: Callable[[JsonObject], None],
    ) -> WatchResult:
        deadline = self.clock() + wait_s
        machine: JsonObject | None = None
        finished: WatchResult | None = None
        last_event_id: str | None = None
        try:
            with self.api.event_stream(object_id=self.system_id, read_timeout_s=self._idle_s(deadline)) as stream:
                machine = self._commission(commissioning_timeout_s, on_commissioned)
                finished = outcome_of_status(machine.get("status"), machine.get("status_reason"))
                if finished is None:
                    finished = self._follow(stream, deadline)
                else:  # over already (e.g. no rack could power it on): still show the events that led there
                    self._follow(stream, min(deadline, self.clock() + self.settle_s))
                last_event_id = stream.decoder.last_event_id
        except StreamIdle:
            if machine is not None:
                raise
            # The stream did not even send its headers in time: commission anyway, then read and resume.
            self._commission(commissioning_timeout_s, on_commissioned)
        while finished is None:
            machine = self.api.get_machine(self.system_id)
            finished = outcome_of_status(machine.get("status"), machine.get("status_reason"))
            if finished is not None:
                return WatchResult(finished.outcome, finished.status, finished.reason, machine)
            if self.clock() >= deadline:
                return WatchResult(Outcome.TIMED_OUT, machine.get("status"), None, machine)
            try:
                with self.api.event_stream(
                    object_id=self.system_id, last_event_id=last_event_id, read_timeout_s=self._idle_s(deadline)
                ) as stream:
                    finished = self._follow(stream, deadline)
                    last_event_id = stream.decoder.last_event_id
            except (StreamIdle, ApiUnreachable):
                continue  # read the machine again, then retry the stream while time remains
        return WatchResult(finished.outcome, finished.status, finished.reason, self.api.get_machine(self.system_id))

    def _commission(self, timeout_s: float | None, on_commissioned: Callable[[JsonObject], None]) -> JsonObject:
        machine = self.api.commission(self.system_id, timeout_s=timeout_s)
        on_commissioned(machine)
        return machine

    def _idle_s(self, deadline: float) -> float:
        return max(0.05, min(self.poll_every_s, deadline - self.clock()))

    def _follow(self, stream: EventStream, deadline: float) -> WatchResult | None:
        """Events until the machine leaves COMMISSIONING (its result), or None: idle, dropped or out of time."""
        try:
            for event in stream.events():
                record = record_from_sse(event)
                if record.data.get("system_id", self.system_id) != self.system_id:
                    continue
                self.on_event(record)
                finished = outcome_of_event(record)
                if finished is not None or self.clock() >= deadline:
                    return finished
        except (StreamIdle, ApiUnreachable):
            return None
        return None
