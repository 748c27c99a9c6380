"""The IPMI driver against OpenIPMI's ipmi_sim on loopback: it agrees with ipmitool, sets PXE, refuses bad
credentials as Forbidden, gives up on a dead BMC within its timeout without holding up other BMCs, and powers on
many BMCs at once through the rack service with bounded parallelism."""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, Forbidden, Unavailable
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerAction, PowerCommand, PowerState
from metalbus.subjects import RACK_POWER_COMMAND
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.ipmi import IpmiDriver
from metalbus_rack_power.retry import RetryPolicy
from metalbus_rack_power.service import run_rack_power
from metalbus_rack_power.settings import RackPowerSettings
from tests.conftest import NatsServer
from tests.integration.ipmi_sim_bmc import SimulatedBmc, free_udp_ports, simulated_bmcs

PASSWORD = "ipmi-Pa55word-7f3c"
MANY_BMCS = 50
WORKERS = 8


@pytest.fixture
def bmcs(tmp_path: Path) -> Iterator[list[SimulatedBmc]]:
    with simulated_bmcs(tmp_path, 2, PASSWORD) as running:
        yield running


@pytest.fixture
def driver() -> Iterator[IpmiDriver]:
    ipmi = IpmiDriver(max_workers=4, timeout_s=3.0, retry=RetryPolicy(retries=0))
    yield ipmi
    ipmi.close()


def bmc_of(sim: SimulatedBmc, password: str = PASSWORD, **parameters: object) -> Bmc:
    return Bmc(PowerType.IPMI, {**sim.parameters, **parameters}, {"password": password})


async def test_driver_and_ipmitool_agree_on_power_state(bmcs: list[SimulatedBmc], driver: IpmiDriver) -> None:
    sim = bmcs[0]
    assert await driver.query(bmc_of(sim)) is PowerState.OFF
    assert "Chassis Power is off" in sim.ipmitool("chassis", "power", "status")

    await driver.on(bmc_of(sim))
    assert await driver.query(bmc_of(sim)) is PowerState.ON
    assert "Chassis Power is on" in sim.ipmitool("chassis", "power", "status")
    assert sim.machine_pid() is not None, "the simulated machine runs"

    await driver.off(bmc_of(sim))
    assert await driver.query(bmc_of(sim)) is PowerState.OFF
    assert "Chassis Power is off" in sim.ipmitool("chassis", "power", "status")
    assert sim.machine_pid() is None


async def test_ipmitool_power_on_is_seen_by_the_driver(bmcs: list[SimulatedBmc], driver: IpmiDriver) -> None:
    assert "Up/On" in bmcs[1].ipmitool("chassis", "power", "on")
    assert await driver.query(bmc_of(bmcs[1])) is PowerState.ON
    assert await driver.query(bmc_of(bmcs[0])) is PowerState.OFF, "the other BMC is untouched"


async def test_default_cipher_suite_17_falls_back_to_3_on_a_bmc_without_17(
    bmcs: list[SimulatedBmc], driver: IpmiDriver
) -> None:
    # ipmi_sim has no cipher suite 17 (ipmitool needs -C 3 against it): the default must still log in.
    assert await driver.query(bmc_of(bmcs[0])) is PowerState.OFF
    assert driver.negotiated[f"127.0.0.1:{bmcs[0].port}"] == 3
    assert await driver.query(bmc_of(bmcs[1], cipher_suite=3)) is PowerState.OFF
    with pytest.raises(BadRequest, match="cipher suite 1 "):
        await driver.query(bmc_of(bmcs[0], cipher_suite=1))


async def test_boot_device_pxe_is_set_over_ipmi(bmcs: list[SimulatedBmc], driver: IpmiDriver) -> None:
    assert bmcs[0].boot_device() is None
    await driver.set_boot_pxe(bmc_of(bmcs[0]))
    assert bmcs[0].boot_device() == "pxe"


async def test_wrong_password_is_forbidden_without_the_password(bmcs: list[SimulatedBmc], driver: IpmiDriver) -> None:
    wrong = "not-the-Pa55word-91"
    with pytest.raises(Forbidden) as refused:
        await driver.on(bmc_of(bmcs[0], password=wrong))
    assert refused.value.message == "BMC 127.0.0.1 refused the credentials"
    assert wrong not in repr(refused.value) and PASSWORD not in repr(refused.value)
    assert refused.value.__suppress_context__, "the pyghmi cause is not chained into logged tracebacks"
    assert bmcs[0].machine_pid() is None


async def test_dead_bmc_is_unavailable_within_the_timeout_while_others_keep_working(
    bmcs: list[SimulatedBmc], driver: IpmiDriver
) -> None:
    (dead_port,) = free_udp_ports(1)
    dead = Bmc(PowerType.IPMI, {"address": "127.0.0.1", "port": dead_port, "username": "admin"}, {"password": "x"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    dead_call = asyncio.create_task(driver.on(dead))

    for sim in bmcs:  # meanwhile, the live BMCs answer
        await driver.on(bmc_of(sim))
        assert await driver.query(bmc_of(sim)) is PowerState.ON
    assert not dead_call.done(), "the live BMCs were served while the dead one was still being waited for"

    with pytest.raises(Unavailable, match=f"127.0.0.1:{dead_port} did not answer"):
        await dead_call
    # Given up at the 3 s call timeout, not before; the upper bound only says "not hanging" (a loaded CI machine
    # stretches it: speed belongs to bench/power.py).
    assert 2.5 <= loop.time() - started < 10.0


async def test_transient_failure_is_retried_with_backoff(tmp_path: Path) -> None:
    # The BMC starts answering only after the first attempt timed out: one retry carries the call through.
    (port,) = free_udp_ports(1)
    sim = SimulatedBmc(name="late", port=port, directory=tmp_path / "late", password=PASSWORD)
    ipmi = IpmiDriver(max_workers=2, timeout_s=1.0, retry=RetryPolicy(retries=3, backoff_s=0.2))
    try:
        call = asyncio.create_task(ipmi.on(bmc_of(sim)))
        await asyncio.sleep(1.2)
        assert not call.done()
        sim.start()
        await asyncio.wait_for(call, timeout=15)
        assert sim.machine_pid() is not None
    finally:
        ipmi.close()
        sim.stop()


async def test_many_bmcs_powered_on_at_once_through_the_rack_service(
    tmp_path: Path, nats_server: NatsServer, bus: Bus
) -> None:
    settings = RackPowerSettings(
        nats_url=nats_server.url,
        rack_id="rack-ipmi",
        heartbeat_interval_s=60,
        poll_interval_s=3600,
        max_bmc_workers=WORKERS,
        ipmi_timeout_s=10,
        request_timeout_s=1,
    )
    stop = asyncio.Event()
    with simulated_bmcs(tmp_path, MANY_BMCS, PASSWORD) as sims:
        ready: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        service = asyncio.create_task(run_rack_power(settings, stop, commands_ready=ready))  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(ready, timeout=10)
            results = await asyncio.gather(
                *(
                    bus.request(
                        RACK_POWER_COMMAND,
                        PowerCommand(
                            system_id=f"m{index:05d}",
                            action=PowerAction.ON,
                            power_type=PowerType.IPMI,
                            parameters=sim.parameters,
                            secrets=sim.secrets,
                            boot_from_network=True,
                        ),
                        timeout=60,
                        rack_id="rack-ipmi",
                    )
                    for index, sim in enumerate(sims)
                )
            )
            ipmi_threads = [thread for thread in threading.enumerate() if thread.name.startswith("ipmi")]
        finally:
            stop.set()
            await asyncio.wait_for(service, timeout=15)
        assert [result.state for result in results] == [PowerState.ON] * MANY_BMCS
        assert all(sim.machine_pid() is not None for sim in sims), "every simulated machine runs"
        assert all(sim.boot_device() == "pxe" for sim in sims), "PXE was set before each power on"
        assert 1 <= len(ipmi_threads) <= WORKERS, "parallelism bounded by max_bmc_workers"
