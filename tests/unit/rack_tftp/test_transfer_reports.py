"""Transfer reports: queued without waiting, sent in batches, retried with the same batch id, bounded."""

import asyncio

from metalbus.contracts.boot import BootTransferAck, BootTransferReport
from metalbus.contracts.errors import Unavailable
from metalbus_rack_tftp.transfer_reports import FinishedTransfer, TransferReporter


def finished(path: str, client: str = "10.20.0.101", completed: bool = True) -> FinishedTransfer:
    return FinishedTransfer("tftp", path, client, 100, completed, 0.01)


class Region:
    """Takes reports, or refuses the next ``refusals`` of them."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.attempts: list[BootTransferReport] = []

    async def send(self, report: BootTransferReport) -> BootTransferAck:
        self.attempts.append(report)
        if self.refusals:
            self.refusals -= 1
            raise Unavailable("region away")
        return BootTransferAck(received=len(report.transfers), attributed=1)


async def test_queued_transfers_leave_in_batches_of_at_most_batch_max() -> None:
    region = Region()
    reporter = TransferReporter("rack-1", region.send, batch_max=2)
    for n in range(5):
        reporter.observe(finished(f"file-{n}"))

    assert await reporter.flush()

    assert [[t.path for t in report.transfers] for report in region.attempts] == [
        ["file-0", "file-1"],
        ["file-2", "file-3"],
        ["file-4"],
    ]
    assert (reporter.counters.observed, reporter.counters.reported, reporter.counters.attributed) == (5, 5, 3)


async def test_a_report_the_region_refused_is_sent_again_with_the_same_batch_id() -> None:
    region = Region(refusals=1)
    reporter = TransferReporter("rack-1", region.send)
    reporter.observe(finished("pxelinux.0"))

    assert not await reporter.flush()
    reporter.observe(finished("ldlinux.c32"))
    assert await reporter.flush()

    first, retried, after = region.attempts
    assert first.batch_id == retried.batch_id and first.transfers == retried.transfers
    assert [t.path for t in after.transfers] == ["ldlinux.c32"] and after.batch_id != first.batch_id
    assert reporter.counters.report_failures == 1


async def test_a_full_queue_drops_the_oldest_transfers_and_counts_them() -> None:
    region = Region()
    reporter = TransferReporter("rack-1", region.send, queue_max=3)
    for n in range(5):
        reporter.observe(finished(f"file-{n}"))

    assert await reporter.flush()

    assert [t.path for t in region.attempts[0].transfers] == ["file-2", "file-3", "file-4"]
    assert reporter.counters.dropped == 2


async def test_clients_that_are_not_ipv4_are_counted_not_reported_and_mapped_ones_are_unwrapped() -> None:
    region = Region()
    reporter = TransferReporter("rack-1", region.send)
    reporter.observe(finished("a", client="fe80::1"))
    reporter.observe(finished("b", client="::ffff:10.20.0.7"))

    assert await reporter.flush()

    assert [(t.path, str(t.client_ip)) for t in region.attempts[0].transfers] == [("b", "10.20.0.7")]
    assert reporter.counters.not_ipv4 == 1


async def test_run_sends_within_its_interval_and_flushes_what_is_left_when_stopped() -> None:
    region = Region()
    reporter = TransferReporter("rack-1", region.send, interval_s=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(reporter.run(stop))
    reporter.observe(finished("early"))
    await asyncio.sleep(0.3)
    assert [t.path for r in region.attempts for t in r.transfers] == ["early"]

    reporter.observe(finished("late"))
    stop.set()
    await asyncio.wait_for(running, 5)

    assert [t.path for r in region.attempts for t in r.transfers] == ["early", "late"]
