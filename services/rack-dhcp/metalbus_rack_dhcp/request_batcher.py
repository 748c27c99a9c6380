"""Coalesce concurrent calls into batches: one batch request carries every call made meanwhile.

A call made while nothing is queued goes out on the next turn of the event loop, alone: an idle server adds no
delay. Under load, calls arriving while ``max_in_flight`` batches are on their way queue up and leave together
when one returns, so the batch size follows the load by itself (no timer, no tuning). Each caller gets its own
result or exception; an exception of the whole batch (the region away, a timeout) reaches every caller in it.

A caller may carry a deadline (``answer_by``, set in its task's context): a call still queued when its deadline
has passed is not sent; its caller gets ``StaleRequest`` instead. A call already sent is always answered.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

SendBatch = Callable[[list[RequestT]], Awaitable[Sequence[ResultT | BaseException]]]
"""Sends one batch; answers one result or exception per request, in request order."""

_DEADLINE: ContextVar[float | None] = ContextVar("request_batcher_deadline", default=None)


class StaleRequest(Exception):
    """The call waited in the queue past its caller's deadline and was never sent."""


def answer_by(deadline: float | None) -> None:
    """Calls made from now on in this task (its context) are dropped from the queue after ``deadline``, on the
    batcher's clock; None: no deadline."""
    _DEADLINE.set(deadline)


class RequestBatcher(Generic[RequestT, ResultT]):
    def __init__(
        self,
        send: SendBatch[RequestT, ResultT],
        *,
        max_batch: int,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._queue: list[tuple[RequestT, asyncio.Future[ResultT], float | None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self.batches_sent = 0
        self.requests_sent = 0
        self.stale = 0

    async def submit(self, request: RequestT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future, _DEADLINE.get()))
        self._schedule_flush()
        return await future

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and len(self._in_flight) < self._max_in_flight:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queue and len(self._in_flight) < self._max_in_flight:
            batch = self._fresh(self._queue[: self._max_batch], self._clock())
            del self._queue[: self._max_batch]
            if batch:
                task = asyncio.create_task(self._send_batch(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._batch_done)

    def _fresh(
        self, queued: list[tuple[RequestT, asyncio.Future[ResultT], float | None]], now: float
    ) -> list[tuple[RequestT, asyncio.Future[ResultT]]]:
        """The calls still worth sending; those past their deadline get ``StaleRequest``."""
        fresh = []
        for request, future, deadline in queued:
            if future.done():
                continue  # its caller gave up waiting
            if deadline is not None and now > deadline:
                self.stale += 1
                future.set_exception(StaleRequest())
                continue
            fresh.append((request, future))
        return fresh

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._queue:
            self._schedule_flush()

    async def _send_batch(self, batch: list[tuple[RequestT, asyncio.Future[ResultT]]]) -> None:
        self.batches_sent += 1
        self.requests_sent += len(batch)
        try:
            results = await self._send([request for request, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} requests was answered with {len(results)} results")
        except Exception as error:  # noqa: BLE001  # the whole batch failed: every caller hears why, whatever it is
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller gave up waiting
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait for the batches on their way (callers still waiting get their answers)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
