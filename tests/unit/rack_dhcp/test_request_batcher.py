"""RequestBatcher: concurrent calls share batch requests; every caller gets its own answer."""

import asyncio

import pytest

from metalbus.contracts.errors import Conflict, Unavailable
from metalbus_rack_dhcp.request_batcher import RequestBatcher, StaleRequest, answer_by


class Recorder:
    """A batch sender that records each batch and answers ``n * 10`` (or a Conflict for negative ``n``)."""

    def __init__(self, *, delay_s: float = 0.0, fail_with: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.most_in_flight = 0
        self._in_flight = 0

    async def send(self, requests: list[int]) -> list[int | BaseException]:
        self.batches.append(requests)
        self._in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self._in_flight -= 1
        if self.fail_with is not None:
            raise self.fail_with
        return [Conflict(f"no {n}") if n < 0 else n * 10 for n in requests]


async def test_a_lone_call_goes_out_alone_and_at_once() -> None:
    recorder = Recorder()
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1)

    assert await asyncio.wait_for(batcher.submit(3), 1) == 30
    assert recorder.batches == [[3]]


async def test_calls_made_in_the_same_turn_share_one_batch_and_get_their_own_answers() -> None:
    recorder = Recorder()
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1)

    answers = await asyncio.gather(*(batcher.submit(n) for n in range(5)))

    assert answers == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


async def test_calls_arriving_while_batches_are_in_flight_wait_and_leave_together() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = RequestBatcher(recorder.send, max_batch=100, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch is on its way

    later = await asyncio.gather(*(batcher.submit(n) for n in range(2, 7)), first)

    assert later == [20, 30, 40, 50, 60, 10]
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]


async def test_batches_are_cut_at_max_batch_and_at_most_max_in_flight_travel_at_once() -> None:
    recorder = Recorder(delay_s=0.02)
    batcher = RequestBatcher(recorder.send, max_batch=3, max_in_flight=2)

    answers = await asyncio.gather(*(batcher.submit(n) for n in range(10)))

    assert answers == [n * 10 for n in range(10)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 3, 1]
    assert sorted(n for batch in recorder.batches for n in batch) == list(range(10))
    assert recorder.most_in_flight == 2


async def test_one_request_refused_inside_a_batch_fails_only_its_caller() -> None:
    batcher = RequestBatcher(Recorder().send, max_batch=10, max_in_flight=1)

    answers = await asyncio.gather(batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True)

    assert answers[0] == 10 and answers[2] == 20
    assert isinstance(answers[1], Conflict) and answers[1].message == "no -1"


async def test_a_failed_batch_reaches_every_caller_in_it_and_the_next_batch_goes_out() -> None:
    recorder = Recorder(fail_with=Unavailable("region away"))
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1)

    answers = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    recorder.fail_with = None

    assert all(isinstance(answer, Unavailable) for answer in answers)
    assert await batcher.submit(3) == 30


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1)
    impatient = asyncio.ensure_future(asyncio.wait_for(batcher.submit(1), 0.01))
    patient = asyncio.ensure_future(batcher.submit(2))

    with pytest.raises(TimeoutError):
        await impatient
    assert await patient == 20
    await batcher.close()


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestBatcher(Recorder().send, max_batch=0, max_in_flight=1)


async def test_a_call_still_queued_after_its_callers_deadline_is_never_sent() -> None:
    now = [10.0]
    recorder = Recorder(delay_s=0.05)
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1, clock=lambda: now[0])

    async def call(n: int, deadline: float | None) -> int:
        answer_by(deadline)
        return await batcher.submit(n)

    first = asyncio.ensure_future(call(1, 10.5))
    await asyncio.sleep(0.01)  # the first batch is on its way: the next calls queue behind it
    queued = [
        asyncio.ensure_future(call(2, 10.5)),
        asyncio.ensure_future(call(3, None)),
        asyncio.ensure_future(call(4, 11.0)),
    ]
    await asyncio.sleep(0)
    now[0] = 10.6  # the first batch came back late: call 2's caller no longer waits for an answer

    answers = await asyncio.gather(first, *queued, return_exceptions=True)

    assert answers[0] == 10 and isinstance(answers[1], StaleRequest) and answers[2:] == [30, 40]
    assert recorder.batches == [[1], [3, 4]]
    assert batcher.stale == 1


async def test_a_call_already_sent_is_answered_even_after_its_deadline() -> None:
    now = [10.0]
    recorder = Recorder(delay_s=0.02)
    batcher = RequestBatcher(recorder.send, max_batch=10, max_in_flight=1, clock=lambda: now[0])

    async def call() -> int:
        answer_by(10.1)
        submitted = asyncio.ensure_future(batcher.submit(5))
        await asyncio.sleep(0.005)
        now[0] = 11.0
        return await submitted

    assert await call() == 50
