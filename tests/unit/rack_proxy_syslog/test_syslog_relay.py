"""The relay's bookkeeping without sockets: batches, retries with the same batch id, bounded queue, rate limit."""

from datetime import UTC, datetime

from metalbus.contracts.errors import BadRequest, Unavailable
from metalbus.contracts.syslog import SyslogAck, SyslogBatch
from metalbus_rack_proxy.syslog_relay import SyslogRelay, SyslogRelayConfig


class Region:
    """Stands in for the region's intake: records batches, or refuses while ``error`` is set."""

    def __init__(self) -> None:
        self.batches: list[SyslogBatch] = []
        self.error: Exception | None = None

    async def send(self, batch: SyslogBatch) -> SyslogAck:
        self.batches.append(batch)
        if self.error is not None:
            raise self.error
        return SyslogAck(stored=len(batch.messages), attributed=0)


def relay(region: Region, now: list[float], **config: object) -> SyslogRelay:
    return SyslogRelay(
        "rack-1",
        region.send,
        SyslogRelayConfig(**config),  # type: ignore[arg-type]
        clock=lambda: now[0],
        wall_clock=lambda: datetime(2026, 11, 25, 9, 0, tzinfo=UTC),
    )


async def test_queue_is_sent_in_batches_of_at_most_batch_max() -> None:
    region = Region()
    subject = relay(region, [0.0], batch_max=4)
    for number in range(10):
        subject.accept("10.0.0.5", f"<13>line {number}".encode())
    assert await subject.flush()
    assert [len(batch.messages) for batch in region.batches] == [4, 4, 2]
    assert [m.text for b in region.batches for m in b.messages] == [f"line {n}" for n in range(10)]
    assert (subject.counters.relayed, subject.counters.batches_sent) == (10, 3)


async def test_a_failed_batch_is_retried_with_the_same_batch_id() -> None:
    region = Region()
    subject = relay(region, [0.0])
    subject.accept("10.0.0.5", b"<13>hello")
    region.error = Unavailable("region away")
    assert not await subject.flush()
    region.error = None
    assert await subject.flush()
    first, retried = region.batches
    assert first.batch_id == retried.batch_id and first.messages == retried.messages
    assert subject.counters.batch_failures == 1


async def test_a_batch_the_region_rejects_is_counted_and_not_retried_forever() -> None:
    region = Region()
    subject = relay(region, [0.0])
    subject.accept("10.0.0.5", b"<13>hello")
    region.error = BadRequest("no")
    assert await subject.flush()
    assert (len(region.batches), subject.counters.batches_rejected) == (1, 1)


async def test_a_full_queue_drops_the_oldest_lines_and_counts_them() -> None:
    region = Region()
    subject = relay(region, [0.0], queue_max=3, batch_max=100)
    for number in range(5):
        subject.accept("10.0.0.5", f"<13>line {number}".encode())
    assert subject.counters.queue_dropped == 2
    assert await subject.flush()
    assert [m.text for m in region.batches[0].messages] == ["line 2", "line 3", "line 4"]


async def test_rate_limit_refills_with_time_and_is_per_source() -> None:
    region, now = Region(), [0.0]
    subject = relay(region, now, rate_per_source=1.0, burst_per_source=2)
    for _ in range(4):
        subject.accept("10.0.0.5", b"<13>a")
    subject.accept("10.0.0.6", b"<13>other source")
    now[0] = 1.0
    subject.accept("10.0.0.5", b"<13>after a second")
    assert await subject.flush()
    texts = [(str(m.source_ip), m.text) for m in region.batches[0].messages]
    assert texts == [
        ("10.0.0.5", "a"),
        ("10.0.0.5", "a"),
        ("10.0.0.6", "other source"),
        ("10.0.0.5", "after a second"),
        ("10.0.0.5", "2 lines dropped by rate limit"),
    ]
    assert subject.counters.rate_limited == 2


async def test_ipv4_mapped_sources_are_stored_as_ipv4() -> None:
    region = Region()
    subject = relay(region, [0.0])
    subject.accept("::ffff:10.0.0.7", b"<13>mapped")
    assert await subject.flush()
    assert str(region.batches[0].messages[0].source_ip) == "10.0.0.7"
