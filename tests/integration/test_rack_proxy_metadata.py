"""The rack's metadata proxy with real clients: cloud-init's MAAS datasource reads, curl posts commissioning results.

Everything is real: a region replica, NATS, PostgreSQL, rack-tftp's HTTP server on 127.0.0.1 with rack-proxy's
metadata app mounted at /MAAS. Machines are set up as the commission action leaves them (COMMISSIONING with a
token). cloud-init is Debian's package, run by the system python3 in a subprocess, unmodified.
"""

import asyncio
import json
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import Forbidden
from metalbus.contracts.metadata import (
    HardwareInventory,
    MetadataStatusReport,
    OAuthCredentials,
    StatusReportEvent,
)
from metalbus.subjects import METADATA_STATUS
from metalbus_rack_proxy.metadata_app import BusMetadataRegion, MetadataApp
from metalbus_rack_tftp.http_boot import serve_http_boot
from metalbus_rack_tftp.sources import FileRefused, OpenedFile, RefusalReason, Requester
from metalbus_region.metadata import VENDOR_DATA, commissioning_script
from tests.conftest import NatsServer
from tests.integration.test_boot import commissioning_machine, database, region, stream_events
from tests.integration.test_metadata import fixture_machine, run_runner, runner_env

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT_TIMEOUT_S = 30


def cloud_init_installed() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = [SYSTEM_PYTHON, "-c", "import cloudinit.sources.DataSourceMAAS"]
    return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0


needs_cloud_init = pytest.mark.skipif(
    not cloud_init_installed(), reason="Debian's cloud-init is not installed (scripts/setup.sh installs it)"
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

# Run by the system python3: cloud-init's own MAAS datasource code reads the seed through its OAuth URL helper.
CLOUD_INIT_READER = """
import json, sys
from cloudinit import url_helper
from cloudinit.sources import DataSourceMAAS
url, consumer_key, token_key, token_secret, version = sys.argv[1:6]
helper = url_helper.OauthUrlHelper(consumer_key=consumer_key, token_key=token_key, token_secret=token_secret,
                                   consumer_secret="")
userdata, metadata, vendordata = DataSourceMAAS.read_maas_seed_url(url, read_file_or_url=helper.readurl, timeout=10,
                                                                     version=version)
print(json.dumps({"user-data": userdata.decode(), "meta-data": metadata,
                  "vendor-data": vendordata}))
"""

CLOUD_INIT_REPORTER = """
import sys
from cloudinit.reporting import events, handlers
endpoint, consumer_key, token_key, token_secret = sys.argv[1:5]
handler = handlers.WebHookHandler(endpoint, consumer_key=consumer_key, token_key=token_key,
                                  token_secret=token_secret, consumer_secret="", timeout=10, retries=0)
handler.publish_event(events.ReportingEvent("start", "init-network", "searching for network datasources"))
handler.publish_event(events.FinishReportingEvent("init-network", "found network data from DataSourceMAAS"))
handler.flush()
"""

INVENTORY = HardwareInventory(cpu_model="QEMU Virtual CPU", cpu_count=2, memory_mib=2048)


class NoFiles:
    """The boot-files side of the HTTP server: nothing to serve in these tests."""

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        raise FileRefused(RefusalReason.NOT_FOUND, f"no file {path}")


@dataclass(frozen=True)
class Rack:
    metadata_url: str
    app: MetadataApp


@asynccontextmanager
async def rack_http(bus: Bus, **app_settings: int) -> AsyncIterator[Rack]:
    app = MetadataApp(BusMetadataRegion(bus, read_timeout_s=3, signal_timeout_s=10), **app_settings)
    server = await serve_http_boot("127.0.0.1", 0, NoFiles(), metadata_app=app, close_timeout=2)
    try:
        yield Rack(f"http://127.0.0.1:{server.port}/MAAS/metadata/", app)
    finally:
        await server.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: str
    body: str


async def curl(*args: str) -> Reply:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", "-D", "/dev/stderr", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    headers = stderr.decode(errors="replace")
    status_line = headers.split("\r\n", 1)[0]
    assert status_line.startswith("HTTP/"), f"curl failed: {headers}"
    return Reply(int(status_line.split()[1]), headers.lower(), stdout.decode(errors="replace"))


def oauth_header(credentials: OAuthCredentials) -> str:
    return (
        'Authorization: OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", '
        f'oauth_consumer_key="{credentials.consumer_key}", oauth_token="{credentials.token_key}", '
        f'oauth_signature="%26{credentials.token_secret}", oauth_nonce="n1", oauth_timestamp="1700000000"'
    )


async def post_signal(url: str, credentials: OAuthCredentials, *form: str) -> Reply:
    arguments = ["-H", oauth_header(credentials), "-F", "op=signal"]
    for field in form:
        arguments += ["-F", field]
    return await curl(*arguments, f"{url}2012-03-01/")


async def read_with_cloud_init(url: str, credentials: OAuthCredentials, version: str) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-c", CLOUD_INIT_READER, url,
        credentials.consumer_key, credentials.token_key, credentials.token_secret, version,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    seed = json.loads(stdout)
    assert isinstance(seed, dict)
    return seed


async def report_with_cloud_init(endpoint: str, credentials: OAuthCredentials) -> None:
    """cloud-init's own reporting webhook (as its MAAS reporting config sets it up) posts a start and a finish."""
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-c", CLOUD_INIT_REPORTER, endpoint,
        credentials.consumer_key, credentials.token_key, credentials.token_secret,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


async def machine_status(conn: asyncpg.Connection, system_id: str) -> str:
    return str(await conn.fetchval("SELECT status FROM machines WHERE system_id = $1", system_id))


async def stored_results(conn: asyncpg.Connection, system_id: str) -> list[tuple[str, int, str, str]]:
    rows = await conn.fetch(
        "SELECT name, exit_status, stdout, stderr FROM commissioning_results WHERE system_id = $1 ORDER BY result_id",
        system_id,
    )
    return [(row["name"], row["exit_status"], row["stdout"], row["stderr"]) for row in rows]


@needs_cloud_init
async def test_stock_cloud_init_reads_instance_id_hostname_keys_and_user_data_through_the_rack(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:01", "node-ci")
        seed = await read_with_cloud_init(rack.metadata_url, credentials, "2012-03-01")
        latest = await read_with_cloud_init(rack.metadata_url, credentials, "latest")
    assert latest == seed
    assert seed["meta-data"] == {"instance-id": system_id, "local-hostname": "node-ci", "public-keys": ""}
    assert seed["user-data"] == commissioning_script()
    # cloud-init loads the vendor-data as YAML: the region's #cloud-config arrived whole.
    assert seed["vendor-data"] == {"ssh_pwauth": False, "disable_root": True, "manage_etc_hosts": True}
    assert VENDOR_DATA.startswith("#cloud-config\n")
    assert rack.app.counters.requests_by_route["meta-data/{item}"] >= 3
    assert rack.app.counters.responses_by_status[200] >= 5


@needs_curl
async def test_results_posted_with_curl_land_in_postgresql_and_ok_makes_the_machine_ready(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    stdout_file, stderr_file = tmp_path / "inventory.out", tmp_path / "inventory.err"
    stdout_file.write_text(INVENTORY.model_dump_json())
    stderr_file.write_text("lldpd not running\n")
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:02", "node-results")
        working = await post_signal(
            rack.metadata_url, credentials, "status=WORKING", "name=metalbus-inventory", "exit_status=0",
            "runtime=0.7", f"metalbus-inventory.out=@{stdout_file}", f"metalbus-inventory.err=@{stderr_file}",
        )  # fmt: skip
        still_commissioning = await machine_status(conn, system_id)
        done = await post_signal(rack.metadata_url, credentials, "status=OK")
        results = await stored_results(conn, system_id)
        status = await machine_status(conn, system_id)
        inventory_cpu = await conn.fetchval("SELECT cpu_model FROM hardware_inventory WHERE system_id = $1", system_id)
    assert (working.status, done.status) == (200, 200)
    assert still_commissioning == "commissioning"
    assert results == [("metalbus-inventory", 0, INVENTORY.model_dump_json(), "lldpd not running\n")]
    assert inventory_cpu == "QEMU Virtual CPU"
    assert status == "ready"
    assert rack.app.counters.signals_forwarded == 2


@needs_curl
async def test_the_user_data_fetched_through_the_rack_and_run_commissions_the_machine_through_the_rack(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    proc, sys = fixture_machine(tmp_path)
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:09")
        user_data = await curl("-H", oauth_header(credentials), f"{rack.metadata_url}latest/user-data")
        (tmp_path / "user-data").write_text(user_data.body)
        env = runner_env(
            proc, sys, METALBUS_METADATA_URL=rack.metadata_url, METALBUS_CONSUMER_KEY=credentials.consumer_key,
            METALBUS_TOKEN_KEY=credentials.token_key, METALBUS_TOKEN_SECRET=credentials.token_secret,
        )  # fmt: skip
        exit_status, _, stderr = await run_runner(tmp_path / "user-data", env=env)
        status = await machine_status(conn, system_id)
        results = await stored_results(conn, system_id)
    assert (exit_status, stderr) == (0, "")
    assert status == "ready"
    assert [(name, code) for name, code, _, _ in results] == [("metalbus-inventory", 0)]
    assert rack.app.counters.signals_forwarded == 2


@needs_curl
async def test_a_failed_script_posted_with_curl_fails_commissioning(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    (tmp_path / "x.err").write_text("disk exploded\n")
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:03")
        reply = await post_signal(
            rack.metadata_url, credentials, "status=WORKING", "name=smartctl", "exit_status=3",
            f"smartctl.err=@{tmp_path / 'x.err'}",
        )  # fmt: skip
        results = await stored_results(conn, system_id)
        status = await machine_status(conn, system_id)
    assert reply.status == 200
    assert results == [("smartctl", 3, "", "disk exploded\n")]
    assert status == "failed_commissioning"


@needs_curl
async def test_unknown_or_wrong_credentials_get_401_and_change_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:04")
        wrong_secret = credentials.model_copy(update={"token_secret": "not-the-secret"})
        unknown_token = credentials.model_copy(update={"token_key": "no-such-token"})
        read_wrong = await curl("-H", oauth_header(wrong_secret), f"{rack.metadata_url}latest/meta-data/instance-id")
        read_unknown = await curl("-H", oauth_header(unknown_token), f"{rack.metadata_url}latest/user-data")
        no_header = await curl(f"{rack.metadata_url}2012-03-01/meta-data/local-hostname")
        signal_wrong = await post_signal(rack.metadata_url, wrong_secret, "status=OK")
        status = await machine_status(conn, system_id)
    for reply in (read_wrong, read_unknown, no_header, signal_wrong):
        assert reply.status == 401, reply
        assert 'www-authenticate: oauth realm="oauth"' in reply.headers
        assert system_id not in reply.body
    assert status == "commissioning"


@needs_cloud_init
@needs_curl
async def test_cloud_init_reporter_events_become_events_of_the_own_machine_and_another_machine_gets_403(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        own_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:05")
        other_id, _ = await commissioning_machine(conn, "52:54:00:00:10:06")
        await report_with_cloud_init(f"{rack.metadata_url}status/{own_id}", credentials)
        events = await stream_events(bus, f"events.cloud-init.{own_id}", StatusReportEvent, expected=2)
        event = '{"event_type": "start", "origin": "cloudinit", "name": "init-local", "description": "x"}'
        other = await curl(
            "-H", oauth_header(credentials), "--data-binary", event, f"{rack.metadata_url}status/{other_id}"
        )
        not_json = await curl("-H", oauth_header(credentials), "-d", "{oops", f"{rack.metadata_url}status/{own_id}")
        status = await machine_status(conn, own_id)
    assert [(e.event_type, e.name, e.description, e.result, e.origin) for e in events] == [
        ("start", "init-network", "searching for network datasources", None, "cloudinit"),
        ("finish", "init-network", "found network data from DataSourceMAAS", "SUCCESS", "cloudinit"),
    ]
    assert all(e.system_id == own_id and e.reported_at is not None for e in events)
    assert other.status == 403
    assert not_json.status == 400
    assert status == "commissioning"  # a progress report changes nothing
    assert rack.app.counters.cloud_init_events == 2


@needs_curl
async def test_an_upload_over_the_limit_gets_413_and_stores_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    big = tmp_path / "big.out"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    async with (
        region(nats_server, database_dsn, bus),
        database(database_dsn) as conn,
        rack_http(bus, max_upload_bytes=64 * 1024) as rack,
    ):
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:07")
        reply = await post_signal(
            rack.metadata_url, credentials, "status=WORKING", "name=big", "exit_status=0", f"big.out=@{big}"
        )
        results = await stored_results(conn, system_id)
    assert reply.status == 413
    assert results == []
    assert rack.app.counters.uploads_refused == 1


@needs_curl
async def test_an_upload_under_the_limit_that_nats_cannot_carry_gets_413(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    control_characters = tmp_path / "noisy.out"
    control_characters.write_bytes(b"\x01" * 300_000)  # 300 kB of body, 1.8 MB as JSON ("\u0001" each)
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        system_id, credentials = await commissioning_machine(conn, "52:54:00:00:10:0a")
        reply = await post_signal(
            rack.metadata_url, credentials, "status=WORKING", "name=noisy", "exit_status=0",
            f"noisy.out=@{control_characters}",
        )  # fmt: skip
        results = await stored_results(conn, system_id)
    assert reply.status == 413
    assert results == []


async def test_the_region_refuses_a_status_report_for_another_machine_or_unknown_credentials(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        _, credentials = await commissioning_machine(conn, "52:54:00:00:10:0b")
        other_id, _ = await commissioning_machine(conn, "52:54:00:00:10:0c")
        unknown = credentials.model_copy(update={"token_secret": "wrong"})
        for asking, about in ((credentials, other_id), (unknown, other_id)):
            report = MetadataStatusReport(credentials=asking, system_id=about, event_type="start")
            with pytest.raises(Forbidden):
                await bus.request(METADATA_STATUS, report, timeout=5)
        stored = await conn.fetchval("SELECT count(*) FROM events WHERE subject LIKE 'events.cloud-init.%'")
    assert stored == 0


@needs_curl
async def test_with_no_region_answering_the_rack_says_503_with_retry_after(bus: Bus) -> None:
    credentials = OAuthCredentials(consumer_key="c", token_key="t", token_secret="s")
    async with rack_http(bus, retry_after_seconds=7) as rack:
        reply = await curl("-H", oauth_header(credentials), f"{rack.metadata_url}latest/meta-data/instance-id")
    assert reply.status == 503
    assert "retry-after: 7" in reply.headers


@needs_curl
async def test_the_commissioning_scripts_tar_holds_the_runner_and_unknown_paths_are_404(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn, rack_http(bus) as rack:
        _, credentials = await commissioning_machine(conn, "52:54:00:00:10:08")
        tar_path = tmp_path / "scripts.tar"
        fetched = await curl(
            "-H",
            oauth_header(credentials),
            "-o",
            str(tar_path),
            f"{rack.metadata_url}latest/maas-commissioning-scripts",
        )
        versions = await curl(rack.metadata_url)
        bad_version = await curl("-H", oauth_header(credentials), f"{rack.metadata_url}2009-04-04/meta-data/")
        bad_item = await curl("-H", oauth_header(credentials), f"{rack.metadata_url}latest/meta-data/ami-id")
    with tarfile.open(tar_path) as archive:
        member = archive.getmember("commissioning.d/00-metalbus-commissioning")
        extracted = archive.extractfile(member)
        assert extracted is not None
        assert extracted.read().decode() == commissioning_script()
        assert member.mode == 0o755
    assert fetched.status == 200
    assert (versions.status, versions.body) == (200, "2012-03-01\nlatest\n")
    assert (bad_version.status, bad_item.status) == (404, 404)
