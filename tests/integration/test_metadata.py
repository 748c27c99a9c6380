"""The metadata service against a real region, NATS and PostgreSQL: per-machine tokens, meta-data, result intake.

The test plays rack-proxy: it sends the metadata requests a machine's HTTP calls become. The last tests run the
user-data itself (the commissioning runner, with /bin/sh) against a fixture /proc and /sys, behind a small HTTP
server that turns its posts into signals as the rack's proxy will.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import unquote

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import Forbidden, InvalidTransition, MetalbusError
from metalbus.contracts.machines import MachineAction, MachineEvent, MachineStatus
from metalbus.contracts.metadata import (
    HardwareInventory,
    MetadataItem,
    MetadataRead,
    MetadataReadEvent,
    MetadataSignal,
    OAuthCredentials,
    ResultEvent,
    ScriptResult,
    SignalStatus,
)
from metalbus.subjects import METADATA_READ, METADATA_SIGNAL
from metalbus_region.metadata import commissioning_script
from metalbus_region.tokens import issue_token
from metalbus_region.transitions import apply_action
from tests.conftest import NatsServer
from tests.integration.test_boot import (
    boot,
    commissioning_machine,
    credentials_on,
    database,
    new_machine,
    region,
    set_boot_images,
    stream_events,
)

INVENTORY = HardwareInventory(
    cpu_model="QEMU Virtual CPU version 2.5+",
    cpu_count=2,
    cpu_speed_mhz=2000,
    memory_mib=2048,
    block_devices=[{"name": "vda", "size_bytes": 10737418240, "model": "", "serial": "disk-1"}],
    interfaces=[
        {"name": "eth0", "mac": "52:54:00:00:00:01", "link_up": True, "speed_mbps": 1000},
        {"name": "eth1", "mac": "52:54:00:00:00:02", "link_up": False},
    ],
)


def inventory_result(inventory: HardwareInventory = INVENTORY, **fields: object) -> ScriptResult:
    values: dict[str, object] = {
        "name": "metalbus-inventory",
        "exit_status": 0,
        "stdout": inventory.model_dump_json(),
        "runtime_s": 0.4,
    }
    return ScriptResult.model_validate(values | fields)


async def read(bus: Bus, credentials: OAuthCredentials, item: MetadataItem) -> str:
    value = await bus.request(METADATA_READ, MetadataRead(credentials=credentials, item=item), timeout=5)
    return value.content


async def signal(
    bus: Bus, credentials: OAuthCredentials, status: SignalStatus, *results: ScriptResult, error: str | None = None
) -> MachineStatus:
    message = MetadataSignal(credentials=credentials, status=status, error=error, results=list(results))
    ack = await bus.request(METADATA_SIGNAL, message, timeout=5)
    return ack.status


async def machine_state(conn: asyncpg.Connection, system_id: str) -> tuple[str, str | None, str]:
    row = await conn.fetchrow(
        "SELECT status, status_reason, boot_purpose FROM machines WHERE system_id = $1", system_id
    )
    assert row is not None
    return row["status"], row["status_reason"], row["boot_purpose"]


async def test_credentials_read_only_their_own_machines_items(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        a, a_credentials = await commissioning_machine(conn, "52:54:00:00:00:0a", "node-a")
        b, b_credentials = await commissioning_machine(conn, "52:54:00:00:00:0b", "node-b")
        items = {item: await read(bus, a_credentials, item) for item in MetadataItem}
        b_items = [
            await read(bus, b_credentials, item) for item in (MetadataItem.INSTANCE_ID, MetadataItem.LOCAL_HOSTNAME)
        ]

    assert items[MetadataItem.INSTANCE_ID] == a
    assert items[MetadataItem.LOCAL_HOSTNAME] == "node-a"
    assert items[MetadataItem.PUBLIC_KEYS] == ""
    assert items[MetadataItem.VENDOR_DATA].startswith("#cloud-config\n")
    assert items[MetadataItem.USER_DATA] == commissioning_script()
    assert items[MetadataItem.USER_DATA].startswith("#!/bin/sh\n")
    assert b_items == [b, "node-b"]


async def test_every_read_is_an_event_of_the_machine_that_read_and_a_refused_one_is_none(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:0c", "node-c")
        await read(bus, credentials, MetadataItem.USER_DATA)
        await read(bus, credentials, MetadataItem.LOCAL_HOSTNAME)
        with pytest.raises(Forbidden):
            await read(bus, wrong_secret(credentials), MetadataItem.USER_DATA)
        rows = await conn.fetch(
            "SELECT subject, payload FROM events WHERE subject LIKE 'events.metadata.%' ORDER BY sequence"
        )

    assert [row["subject"] for row in rows] == [f"events.metadata.{system_id}"] * 2
    read_events = [MetadataReadEvent.model_validate_json(row["payload"]) for row in rows]
    assert [(event.system_id, event.item) for event in read_events] == [
        (system_id, MetadataItem.USER_DATA),
        (system_id, MetadataItem.LOCAL_HOSTNAME),
    ]


def wrong_secret(credentials: OAuthCredentials) -> OAuthCredentials:
    return credentials.model_copy(update={"token_secret": credentials.token_secret + "x"})


def wrong_consumer(credentials: OAuthCredentials) -> OAuthCredentials:
    return credentials.model_copy(update={"consumer_key": "someone-else"})


def unknown_token(credentials: OAuthCredentials) -> OAuthCredentials:
    return credentials.model_copy(update={"token_key": "no-such-token"})


async def revoked(conn: asyncpg.Connection, system_id: str, credentials: OAuthCredentials) -> OAuthCredentials:
    await issue_token(conn, system_id, expires_at=None)  # a new token revokes the old ones
    return credentials


async def expired(conn: asyncpg.Connection, system_id: str, credentials: OAuthCredentials) -> OAuthCredentials:
    await conn.execute(
        "UPDATE metadata_tokens SET expires_at = now() - interval '1 second' WHERE system_id = $1", system_id
    )
    return credentials


@pytest.mark.parametrize("spoil", [unknown_token, wrong_secret, wrong_consumer, "revoked", "expired"])
async def test_invalid_credentials_are_forbidden_and_change_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus, spoil: Callable[[OAuthCredentials], OAuthCredentials] | str
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:0a")
        if spoil == "revoked":
            bad = await revoked(conn, system_id, credentials)
        elif spoil == "expired":
            bad = await expired(conn, system_id, credentials)
        else:
            assert callable(spoil)
            bad = spoil(credentials)
        with pytest.raises(Forbidden, match="metadata credentials are not valid"):
            await read(bus, bad, MetadataItem.INSTANCE_ID)
        with pytest.raises(Forbidden):
            await signal(bus, bad, SignalStatus.OK, inventory_result())
        stored = await conn.fetchval("SELECT count(*) FROM commissioning_results")
        state = await machine_state(conn, system_id)

    assert stored == 0
    assert state[0] == "commissioning"


async def test_a_token_always_signals_for_its_own_machine(nats_server: NatsServer, database_dsn: str, bus: Bus) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        a, _ = await commissioning_machine(conn, "52:54:00:00:00:0a")
        b, b_credentials = await commissioning_machine(conn, "52:54:00:00:00:0b")
        ack = await bus.request(
            METADATA_SIGNAL,
            MetadataSignal(credentials=b_credentials, status=SignalStatus.WORKING, results=[inventory_result()]),
        )
        owners = await conn.fetch("SELECT system_id FROM commissioning_results")
        inventories = await conn.fetch("SELECT system_id FROM hardware_inventory")

    assert ack.system_id == b
    assert [row["system_id"] for row in owners] == [b]
    assert [row["system_id"] for row in inventories] == [b]
    assert a != b


async def test_full_inventory_then_ok_makes_the_machine_ready_with_everything_stored_and_published(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        lldp = ScriptResult(name="metalbus-lldp", exit_status=0, stdout="no neighbours", runtime_s=0.1)
        working = await signal(bus, credentials, SignalStatus.WORKING, inventory_result(), lldp)
        final = await signal(bus, credentials, SignalStatus.OK)
        state = await machine_state(conn, system_id)
        inventory = await conn.fetchrow("SELECT * FROM hardware_inventory WHERE system_id = $1", system_id)
        interfaces = await conn.fetch(
            "SELECT name, mac::text, link_up, speed_mbps FROM machine_interfaces WHERE system_id = $1 ORDER BY name",
            system_id,
        )
        results = await conn.fetch("SELECT name, exit_status, stdout, runtime_s FROM commissioning_results ORDER BY 1")
        result_events = await stream_events(bus, f"events.result.{system_id}", ResultEvent, 2)
        machine_events = await stream_events(bus, f"events.machine.{system_id}", MachineEvent, 2)
        with pytest.raises(Forbidden):  # commissioning is over: the token went with it
            await read(bus, credentials, MetadataItem.INSTANCE_ID)

    assert (working, final) == (MachineStatus.COMMISSIONING, MachineStatus.READY)
    assert state == ("ready", None, "local")
    assert inventory is not None
    assert (inventory["cpu_model"], inventory["cpu_count"], inventory["cpu_speed_mhz"], inventory["memory_mib"]) == (
        "QEMU Virtual CPU version 2.5+",
        2,
        2000,
        2048,
    )
    assert json.loads(inventory["block_devices"]) == [
        {"name": "vda", "size_bytes": 10737418240, "model": "", "serial": "disk-1"}
    ]
    assert [tuple(row) for row in interfaces] == [
        ("eth0", "52:54:00:00:00:01", True, 1000),
        ("eth1", "52:54:00:00:00:02", False, None),
    ]
    assert [(r["name"], r["exit_status"], r["runtime_s"]) for r in results] == [
        ("metalbus-inventory", 0, 0.4),
        ("metalbus-lldp", 0, 0.1),
    ]
    assert [(e.name, e.exit_status) for e in result_events] == [("metalbus-inventory", 0), ("metalbus-lldp", 0)]
    assert [(e.action, e.to_status) for e in machine_events] == [
        (MachineAction.COMMISSION, MachineStatus.COMMISSIONING),
        (MachineAction.COMMISSIONING_SUCCEEDED, MachineStatus.READY),
    ]


async def test_a_final_signal_sent_again_after_its_answer_was_lost_gets_the_same_answer_and_changes_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:07")
        await signal(bus, credentials, SignalStatus.WORKING, inventory_result())
        first = await signal(bus, credentials, SignalStatus.OK)
        events_after_first = await conn.fetchval("SELECT count(*) FROM events")
        again = await signal(bus, credentials, SignalStatus.OK)
        events_after_again = await conn.fetchval("SELECT count(*) FROM events")
        with pytest.raises(Forbidden):  # only the very signal that ended the run: not another status
            await signal(bus, credentials, SignalStatus.FAILED)
        with pytest.raises(Forbidden):  # nor a read: the token is gone
            await read(bus, credentials, MetadataItem.INSTANCE_ID)
        deadline = datetime.now(UTC) + timedelta(hours=1)  # a new run: the old token is nothing now
        await apply_action(conn, system_id, MachineAction.COMMISSION, commissioning_deadline=deadline)
        with pytest.raises(Forbidden):
            await signal(bus, credentials, SignalStatus.OK)

    assert (first, again) == (MachineStatus.READY, MachineStatus.READY)
    assert events_after_again == events_after_first


async def test_inventory_in_a_result_object_counts_as_well_as_on_stdout(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        as_object = inventory_result(stdout="", result=INVENTORY.model_dump(mode="json"))
        status = await signal(bus, credentials, SignalStatus.OK, as_object)
        memory = await conn.fetchval("SELECT memory_mib FROM hardware_inventory WHERE system_id = $1", system_id)

    assert (status, memory) == (MachineStatus.READY, 2048)


async def test_a_failing_script_fails_commissioning_naming_the_script_and_its_status(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        failing = ScriptResult(name="metalbus-disk-check", exit_status=3, stderr="bad sector")
        status = await signal(bus, credentials, SignalStatus.WORKING, inventory_result(), failing)
        state = await machine_state(conn, system_id)
        [event] = (await stream_events(bus, f"events.machine.{system_id}", MachineEvent, 2))[1:]

    assert status is MachineStatus.FAILED_COMMISSIONING
    assert state == ("failed_commissioning", "script metalbus-disk-check exited with status 3", "local")
    assert (event.action, event.reason) == (MachineAction.COMMISSIONING_FAILED, state[1])


async def test_a_failed_signal_fails_commissioning_with_its_error_text(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        status = await signal(bus, credentials, SignalStatus.FAILED, error="curtin: no disks found")
        state = await machine_state(conn, system_id)

    assert status is MachineStatus.FAILED_COMMISSIONING
    assert state[:2] == ("failed_commissioning", "the machine reported FAILED: curtin: no disks found")


async def test_ok_without_an_inventory_fails_commissioning(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        status = await signal(bus, credentials, SignalStatus.OK, ScriptResult(name="metalbus-lldp", exit_status=0))
        state = await machine_state(conn, system_id)

    assert status is MachineStatus.FAILED_COMMISSIONING
    assert state[:2] == ("failed_commissioning", "no hardware inventory received")


async def test_an_inventory_from_an_earlier_commissioning_does_not_count_again(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        assert await signal(bus, credentials, SignalStatus.OK, inventory_result()) is MachineStatus.READY
        async with conn.transaction():
            await apply_action(
                conn, system_id, MachineAction.COMMISSION, commissioning_deadline=datetime.now(UTC) + timedelta(hours=1)
            )
            again = await issue_token(conn, system_id, expires_at=None)
        status = await signal(bus, again, SignalStatus.OK)

    assert status is MachineStatus.FAILED_COMMISSIONING


async def test_an_invalid_inventory_fails_commissioning_naming_the_problem(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:00:01")
        broken = inventory_result(stdout='{"cpu_model": "x", "cpu_count": 2, "interfaces": [{"name": "eth0"}]}')
        status = await signal(bus, credentials, SignalStatus.WORKING, broken)
        state = await machine_state(conn, system_id)
        stored = await conn.fetchval("SELECT count(*) FROM hardware_inventory")

    assert status is MachineStatus.FAILED_COMMISSIONING
    assert state[1] is not None
    assert state[1].startswith("metalbus-inventory sent an invalid HardwareInventory")
    assert "memory_mib" in state[1] and "interfaces.0.mac" in state[1]
    assert stored == 0


async def test_ok_for_a_machine_that_is_not_commissioning_is_an_invalid_transition_and_its_results_are_kept(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        system_id = await new_machine(conn, "52:54:00:00:00:01")
        async with conn.transaction():
            credentials = await issue_token(conn, system_id, expires_at=None)
        with pytest.raises(InvalidTransition, match=f"machine {system_id} is new, not commissioning"):
            await signal(bus, credentials, SignalStatus.OK, inventory_result())
        working = await signal(bus, credentials, SignalStatus.WORKING)
        state = await machine_state(conn, system_id)
        results = await conn.fetchval("SELECT count(*) FROM commissioning_results WHERE system_id = $1", system_id)
        [event] = await stream_events(bus, f"events.result.{system_id}", ResultEvent, 1)

    assert working is MachineStatus.NEW
    assert state[0] == "new"
    assert results == 1
    assert event.name == "metalbus-inventory"


# -- the commissioning runner (the user-data), run as the machine runs it ------------------------------------


def fixture_machine(root: Path, *, memory: bool = True) -> tuple[Path, Path]:
    """A /proc and /sys of a small machine: two CPUs, two disks, two NICs, and what the runner must skip."""
    files = {
        "proc/cpuinfo": "".join(
            f'processor\t: {n}\nmodel name\t: Fab "Quoted" CPU \\ v2 @ 2.00GHz\ncpu MHz\t\t: 1999.998\n\n'
            for n in range(2)
        ),
        "proc/cmdline": "BOOT_IMAGE=vmlinuz console=ttyS0\n",
        "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "2400000\n",
        "sys/block/sda/size": "4194304\n",
        "sys/block/sda/device/model": "QEMU HARDDISK   \n",
        "sys/block/sda/device/serial": "QM00001\n",
        "sys/block/vda/size": "20971520\n",
        "sys/block/vda/device/vendor": "0x1af4\n",
        "sys/block/vda/serial": "disk-serial-1\n",
        "sys/block/loop0/size": "0\n",  # virtual: no device/
        "sys/block/sr0/size": "2048\n",
        "sys/block/sr0/device/model": "QEMU DVD-ROM\n",  # optical: skipped
        "sys/class/net/lo/address": "00:00:00:00:00:00\n",  # virtual: no device/
        "sys/class/net/eth0/address": "52:54:00:AA:BB:01\n",
        "sys/class/net/eth0/operstate": "up\n",
        "sys/class/net/eth0/speed": "1000\n",
        "sys/class/net/eth0/device/vendor": "0x1af4\n",
        "sys/class/net/eth1/address": "52:54:00:aa:bb:02\n",
        "sys/class/net/eth1/operstate": "down\n",
        "sys/class/net/eth1/speed": "-1\n",
        "sys/class/net/eth1/device/vendor": "0x8086\n",
        "sys/class/net/ib0/address": "80:00:00:48:fe:80:00:00:00:00:00:00:00:11:22:33:44:55:66:77\n",
        "sys/class/net/ib0/device/vendor": "0x15b3\n",  # InfiniBand: no Ethernet address, skipped
    }
    if memory:
        files["proc/meminfo"] = "MemTotal:        2048000 kB\nMemFree:          100000 kB\n"
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root / "proc", root / "sys"


FIXTURE_INVENTORY = HardwareInventory(
    cpu_model='Fab "Quoted" CPU \\ v2 @ 2.00GHz',
    cpu_count=2,
    cpu_speed_mhz=2400,
    memory_mib=2000,
    block_devices=[
        {"name": "sda", "size_bytes": 4194304 * 512, "model": "QEMU HARDDISK", "serial": "QM00001"},
        {"name": "vda", "size_bytes": 20971520 * 512, "model": "", "serial": "disk-serial-1"},
    ],
    interfaces=[
        {"name": "eth0", "mac": "52:54:00:aa:bb:01", "link_up": True, "speed_mbps": 1000},
        {"name": "eth1", "mac": "52:54:00:aa:bb:02", "link_up": False, "speed_mbps": None},
    ],
)


async def run_runner(script: Path, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "/bin/sh", str(script), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def runner_env(proc: Path | None = None, sys: Path | None = None, **extra: str) -> dict[str, str]:
    """No LLDP capture unless a test names one (this host's tcpdump would listen on its own interfaces)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "METALBUS_LLDP_CAPTURE": "no-such-capture-command", **extra}
    if proc is not None and sys is not None:
        env |= {"METALBUS_PROC": str(proc), "METALBUS_SYS": str(sys)}
    return env


async def test_the_runner_reports_the_fixture_machine_exactly(tmp_path: Path) -> None:
    script = tmp_path / "user-data"
    script.write_text(commissioning_script())
    proc, sys = fixture_machine(tmp_path)

    status, stdout, stderr = await run_runner(script, "inventory", env=runner_env(proc, sys))

    assert (status, stderr) == (0, "")
    assert HardwareInventory.model_validate_json(stdout) == FIXTURE_INVENTORY


TCPDUMP_LLDP_DECODING = Path(__file__).parents[1] / "unit" / "fixtures" / "tcpdump-v-lldp.txt"
"""What Debian's tcpdump 4.99 (``-c 1 -nn -v ether proto 0x88cc``) printed for a frame of the lab's LLDP sender."""


def fake_lldp_capture(directory: Path, interfaces_with_a_neighbour: set[str]) -> Path:
    """A capture command that prints tcpdump's recorded decoding for the interfaces that have a neighbour and
    records every interface it was asked to listen on."""
    command = directory / "fake-tcpdump"
    command.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = -i ] && interface=$2; shift; done\n'
        f'echo "$interface" >>{directory / "listened"}\n'
        f"case $interface in {'|'.join(sorted(interfaces_with_a_neighbour))}) cat {TCPDUMP_LLDP_DECODING} ;; esac\n"
    )
    command.chmod(0o755)
    return command


async def test_the_runner_reports_the_lldp_neighbour_seen_on_each_interface_whose_link_is_up(tmp_path: Path) -> None:
    script = tmp_path / "user-data"
    script.write_text(commissioning_script())
    proc, sys = fixture_machine(tmp_path)
    capture = fake_lldp_capture(tmp_path, {"eth0", "eth1"})

    status, stdout, stderr = await run_runner(
        script, "inventory", env=runner_env(proc, sys, METALBUS_LLDP_CAPTURE=str(capture), METALBUS_LLDP_WAIT_S="5")
    )

    assert (status, stderr) == (0, "")
    assert (tmp_path / "listened").read_text().split() == ["eth0"]  # eth1's link is down
    neighbours = HardwareInventory.model_validate_json(stdout).lldp_neighbours
    assert [n.model_dump(exclude={"schema_version"}) for n in neighbours] == [
        {"interface": "eth0", "chassis_id": "aa:bb:cc:dd:ee:ff", "port_id": "tap-vm1", "system_name": "metalbus-lab"}
    ]


async def test_an_interface_that_hears_no_lldp_frame_has_no_neighbour(tmp_path: Path) -> None:
    script = tmp_path / "user-data"
    script.write_text(commissioning_script())
    proc, sys = fixture_machine(tmp_path)
    capture = fake_lldp_capture(tmp_path, {"eth9"})

    status, stdout, _ = await run_runner(
        script, "inventory", env=runner_env(proc, sys, METALBUS_LLDP_CAPTURE=str(capture), METALBUS_LLDP_WAIT_S="5")
    )

    assert status == 0
    assert (tmp_path / "listened").read_text().split() == ["eth0"]
    assert HardwareInventory.model_validate_json(stdout).lldp_neighbours == []


async def test_the_runner_inventory_of_this_host_is_a_valid_inventory(tmp_path: Path) -> None:
    script = tmp_path / "user-data"
    script.write_text(commissioning_script())

    status, stdout, stderr = await run_runner(script, "inventory", env=runner_env())

    assert (status, stderr) == (0, "")
    inventory = HardwareInventory.model_validate_json(stdout)
    assert inventory.cpu_count >= 1 and inventory.memory_mib >= 1


class FakeRackProxy:
    """Plays the rack's HTTP metadata endpoint for the runner: each POST <ver>/ op=signal becomes a
    MetadataSignal on the bus, with the OAuth PLAINTEXT credentials of its Authorization header."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.posted: list[MetadataSignal] = []
        self.nonces: list[str] = []

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}/MAAS/metadata/"
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head.split("\r\n")[1:] if line)
        }
        body = await reader.readexactly(int(headers["content-length"]))
        try:
            await self.bus.request(METADATA_SIGNAL, self._signal(headers, body), timeout=5)
            answer = "200 OK"
        except MetalbusError as error:
            answer = f"{error.http_status} {error.code.value}"
        writer.write(f"HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    def _signal(self, headers: dict[str, str], body: bytes) -> MetadataSignal:
        oauth = dict(re.findall(r'(\w+)="([^"]*)"', headers["authorization"]))
        assert oauth["oauth_signature_method"] == "PLAINTEXT"
        self.nonces.append(oauth["oauth_nonce"])
        credentials = OAuthCredentials(
            consumer_key=oauth["oauth_consumer_key"],
            token_key=oauth["oauth_token"],
            token_secret=unquote(oauth["oauth_signature"]).split("&", 1)[1],
        )
        form = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
        fields: dict[str, str] = {}
        for part in form.iter_parts():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            fields[str(part.get_param("name", header="content-disposition"))] = payload.decode()
        assert fields["op"] == "signal"
        results = []
        if "name" in fields:
            name = fields["name"]
            results.append(
                ScriptResult(
                    name=name,
                    exit_status=int(fields["exit_status"]),
                    stdout=fields[f"{name}.out"],
                    stderr=fields[f"{name}.err"],
                    runtime_s=float(fields["runtime"]),
                )
            )
        posted = MetadataSignal(credentials=credentials, status=SignalStatus(fields["status"]), results=results)
        self.posted.append(posted)
        return posted


async def test_the_user_data_run_as_the_machine_runs_it_commissions_the_machine_to_ready(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    proc, sys = fixture_machine(tmp_path)
    proxy = FakeRackProxy(bus)
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, proxy.serving() as url:
        await set_boot_images(bus)
        system_id, _ = await commissioning_machine(conn, "52:54:00:aa:bb:01")
        config = await boot(bus, "52:54:00:aa:bb:01")
        (proc / "cmdline").write_text(config.kernel_command_line + "\n")  # the credentials come from here
        user_data = await read(bus, credentials_on(config), MetadataItem.USER_DATA)
        (tmp_path / "user-data").write_text(user_data)

        # The rack address on the command line is not this test's: only the URL is pointed at the fake proxy.
        status, _, stderr = await run_runner(
            tmp_path / "user-data", env=runner_env(proc, sys, METALBUS_METADATA_URL=url)
        )
        state = await machine_state(conn, system_id)
        memory = await conn.fetchval("SELECT memory_mib FROM hardware_inventory WHERE system_id = $1", system_id)
        interfaces = await conn.fetch("SELECT name FROM machine_interfaces WHERE system_id = $1 ORDER BY 1", system_id)

    assert (status, stderr) == (0, "")
    assert [(p.status, [r.name for r in p.results]) for p in proxy.posted] == [
        (SignalStatus.WORKING, ["metalbus-inventory"]),
        (SignalStatus.OK, []),
    ]
    assert HardwareInventory.model_validate_json(proxy.posted[0].results[0].stdout) == FIXTURE_INVENTORY
    assert len(set(proxy.nonces)) == len(proxy.nonces)  # no two requests share a nonce
    assert state == ("ready", None, "local")
    assert memory == 2000
    assert [row["name"] for row in interfaces] == ["eth0", "eth1"]


async def test_a_runner_that_cannot_gather_the_inventory_posts_its_failure_and_commissioning_fails(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    proc, sys = fixture_machine(tmp_path, memory=False)
    proxy = FakeRackProxy(bus)
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, proxy.serving() as url:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:aa:bb:01")
        (tmp_path / "user-data").write_text(await read(bus, credentials, MetadataItem.USER_DATA))
        env = runner_env(
            proc,
            sys,
            METALBUS_METADATA_URL=url,
            METALBUS_CONSUMER_KEY=credentials.consumer_key,
            METALBUS_TOKEN_KEY=credentials.token_key,
            METALBUS_TOKEN_SECRET=credentials.token_secret,
        )
        status, _, _ = await run_runner(tmp_path / "user-data", env=env)
        state = await machine_state(conn, system_id)

    assert status == 1
    [posted] = proxy.posted
    assert (posted.status, posted.results[0].exit_status) == (SignalStatus.WORKING, 1)
    assert "no MemTotal" in posted.results[0].stderr
    assert state[:2] == ("failed_commissioning", "script metalbus-inventory exited with status 1")
