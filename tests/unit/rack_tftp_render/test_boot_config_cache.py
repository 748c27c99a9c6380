"""The rack's cache of boot decisions: TTL, single-flight, invalidation by machine events, stale-if-error."""

import asyncio
from datetime import UTC, datetime
from ipaddress import IPv4Address

import pytest

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose, MachineAction, MachineEvent, MachineStatus
from metalbus_rack_tftp.boot_config_cache import BootConfigCache
from metalbus_rack_tftp.sources import FileRefused, RefusalReason

MAC = "52:54:00:ab:cd:ef"
OTHER_MAC = "52:54:00:00:00:01"
BIOS = Architecture.AMD64_BIOS
RACK = IPv4Address("10.20.0.2")


def decision(system_id: str | None, purpose: BootPurpose = BootPurpose.ENLISTMENT) -> BootConfig:
    network = purpose is not BootPurpose.LOCAL
    return BootConfig(
        system_id=system_id,
        purpose=purpose,
        kernel="images/k" if network else None,
        initrd="images/i" if network else None,
        squashfs=None,
        kernel_command_line=f"metalbus.purpose={purpose.value}" if network else "",
    )


def event(system_id: str, from_status: MachineStatus | None, to_status: MachineStatus) -> MachineEvent:
    return MachineEvent(
        sequence=1,
        system_id=system_id,
        action=None if from_status is None else MachineAction.COMMISSION,
        from_status=from_status,
        to_status=to_status,
        reason=None,
        at=datetime(2026, 11, 25, 8, 0, tzinfo=UTC),
    )


class FakeRegion:
    """Answers from a per-MAC table (or refuses as an unreachable region); counts and can hold requests."""

    def __init__(self) -> None:
        self.answers: dict[str, BootConfig] = {MAC: decision("abc123"), OTHER_MAC: decision("def456")}
        self.asked: list[tuple[str, Architecture, IPv4Address]] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def boot_config(self, mac: str, architecture: Architecture, rack_address: IPv4Address) -> BootConfig:
        self.asked.append((mac, architecture, rack_address))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise FileRefused(RefusalReason.UNAVAILABLE, "no service is answering on region.boot.config")
        return self.answers[mac]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def region() -> FakeRegion:
    return FakeRegion()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(region: FakeRegion, clock: Clock) -> BootConfigCache:
    return BootConfigCache(region.boot_config, ttl_s=10, stale_if_error_s=300, clock=clock)


async def test_an_answer_is_reused_within_the_ttl_and_asked_again_after(
    cache: BootConfigCache, region: FakeRegion, clock: Clock
) -> None:
    first = await cache.boot_config(MAC, BIOS, RACK)
    clock.now += 9.9
    region.answers[MAC] = decision("abc123", BootPurpose.COMMISSIONING)
    assert await cache.boot_config(MAC, BIOS, RACK) == first
    assert len(region.asked) == 1
    clock.now += 0.1
    assert (await cache.boot_config(MAC, BIOS, RACK)).purpose is BootPurpose.COMMISSIONING
    assert len(region.asked) == 2


async def test_mac_architecture_and_rack_address_are_each_part_of_the_key(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    await cache.boot_config(MAC, BIOS, RACK)
    await cache.boot_config(MAC, Architecture.AMD64_UEFI, RACK)
    await cache.boot_config(MAC, BIOS, IPv4Address("10.30.0.2"))
    await cache.boot_config(OTHER_MAC, BIOS, RACK)
    await cache.boot_config(MAC, BIOS, RACK)
    assert len(region.asked) == 4


async def test_concurrent_requests_for_one_mac_share_one_region_request(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.boot_config(MAC, BIOS, RACK)) for _ in range(50)]
    other = asyncio.create_task(cache.boot_config(OTHER_MAC, BIOS, RACK))
    await asyncio.sleep(0)
    region.gate.set()
    answers = await asyncio.gather(*waiters)
    assert {answer.system_id for answer in answers} == {"abc123"}
    assert (await other).system_id == "def456"
    assert sorted(mac for mac, _, _ in region.asked) == [OTHER_MAC, MAC]


async def test_a_shared_failure_reaches_every_waiter_and_the_next_request_asks_again(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.gate, region.down = asyncio.Event(), True
    waiters = [asyncio.create_task(cache.boot_config(MAC, BIOS, RACK)) for _ in range(5)]
    await asyncio.sleep(0)
    region.gate.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, FileRefused) and o.reason is RefusalReason.UNAVAILABLE for o in outcomes)
    region.down = False
    assert (await cache.boot_config(MAC, BIOS, RACK)).system_id == "abc123"
    assert len(region.asked) == 2


async def test_one_waiter_cancelled_does_not_cancel_the_shared_request(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.boot_config(MAC, BIOS, RACK))
    patient = asyncio.create_task(cache.boot_config(MAC, BIOS, RACK))
    await asyncio.sleep(0)
    impatient.cancel()
    region.gate.set()
    assert (await patient).system_id == "abc123"
    assert impatient.cancelled()


async def test_a_machine_event_drops_that_machines_answers_at_once(cache: BootConfigCache, region: FakeRegion) -> None:
    await cache.boot_config(MAC, BIOS, RACK)
    await cache.boot_config(MAC, Architecture.AMD64_UEFI, RACK)
    await cache.boot_config(OTHER_MAC, BIOS, RACK)
    region.answers[MAC] = decision("abc123", BootPurpose.COMMISSIONING)
    cache.on_machine_event(event("abc123", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    assert (await cache.boot_config(MAC, BIOS, RACK)).purpose is BootPurpose.COMMISSIONING
    assert (await cache.boot_config(OTHER_MAC, BIOS, RACK)).system_id == "def456"
    assert [mac for mac, _, _ in region.asked] == [MAC, MAC, OTHER_MAC, MAC]


async def test_an_answer_in_flight_when_its_machine_changes_is_handed_out_but_not_kept(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.boot_config(MAC, BIOS, RACK))
    await asyncio.sleep(0)
    cache.on_machine_event(event("abc123", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    region.gate.set()
    assert (await waiter).purpose is BootPurpose.ENLISTMENT  # what the region said before the change
    assert len(cache) == 0
    region.answers[MAC] = decision("abc123", BootPurpose.COMMISSIONING)
    assert (await cache.boot_config(MAC, BIOS, RACK)).purpose is BootPurpose.COMMISSIONING


async def test_an_event_for_another_machine_during_a_request_does_not_stop_it_being_kept(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.boot_config(MAC, BIOS, RACK))
    await asyncio.sleep(0)
    cache.on_machine_event(event("zzz999", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    region.gate.set()
    await waiter
    assert len(cache) == 1


async def test_a_new_machine_drops_the_anonymous_answers_of_unknown_macs(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    region.answers[MAC] = decision(None, BootPurpose.LOCAL)  # enlistment off: nobody's answer
    await cache.boot_config(MAC, BIOS, RACK)
    cache.on_machine_event(event("abc123", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    assert len(cache) == 1  # a status change of a known machine says nothing about unknown MACs
    cache.on_machine_event(event("abc123", None, MachineStatus.NEW))
    assert len(cache) == 0


async def test_the_creation_event_of_a_machine_keeps_the_answer_that_enlisted_it(
    cache: BootConfigCache, region: FakeRegion
) -> None:
    await cache.boot_config(MAC, BIOS, RACK)  # the region enlisted abc123 while answering
    cache.on_machine_event(event("abc123", None, MachineStatus.NEW))
    await cache.boot_config(MAC, BIOS, RACK)
    assert len(region.asked) == 1


async def test_an_expired_answer_is_served_while_the_region_is_unreachable_up_to_the_stale_limit(
    cache: BootConfigCache, region: FakeRegion, clock: Clock
) -> None:
    first = await cache.boot_config(MAC, BIOS, RACK)
    region.down = True
    clock.now += 299
    assert await cache.boot_config(MAC, BIOS, RACK) == first
    assert cache.served_stale == 1
    clock.now += 1
    with pytest.raises(FileRefused) as refused:
        await cache.boot_config(MAC, BIOS, RACK)
    assert refused.value.reason is RefusalReason.UNAVAILABLE


async def test_an_answer_dropped_by_an_event_is_never_served_stale(
    cache: BootConfigCache, region: FakeRegion, clock: Clock
) -> None:
    await cache.boot_config(MAC, BIOS, RACK)
    cache.on_machine_event(event("abc123", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    region.down = True
    with pytest.raises(FileRefused):
        await cache.boot_config(MAC, BIOS, RACK)


async def test_stale_serving_can_be_turned_off(region: FakeRegion, clock: Clock) -> None:
    cache = BootConfigCache(region.boot_config, ttl_s=10, stale_if_error_s=0, clock=clock)
    await cache.boot_config(MAC, BIOS, RACK)
    region.down, clock.now = True, clock.now + 10
    with pytest.raises(FileRefused):
        await cache.boot_config(MAC, BIOS, RACK)


async def test_the_cache_holds_at_most_max_entries_dropping_the_oldest(region: FakeRegion, clock: Clock) -> None:
    cache = BootConfigCache(region.boot_config, ttl_s=10, stale_if_error_s=300, max_entries=3, clock=clock)
    racks = [IPv4Address(f"10.20.{n}.2") for n in range(5)]
    for rack in racks:
        clock.now += 1
        await cache.boot_config(MAC, BIOS, rack)
    assert len(cache) == 3
    await cache.boot_config(MAC, BIOS, racks[-1])
    await cache.boot_config(MAC, BIOS, racks[0])
    assert [rack for _, _, rack in region.asked] == [*racks, racks[0]]
    cache.on_machine_event(event("abc123", MachineStatus.NEW, MachineStatus.COMMISSIONING))
    assert len(cache) == 0


async def test_close_cancels_the_region_requests_in_flight(cache: BootConfigCache, region: FakeRegion) -> None:
    region.gate = asyncio.Event()  # never set: the region would not answer before shutdown
    waiter = asyncio.create_task(cache.boot_config(MAC, BIOS, RACK))
    await asyncio.sleep(0)
    await asyncio.wait_for(cache.close(), timeout=1)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(cache) == 0
