"""What the commissioning runner's exit status tells the ephemeral environment after a post went wrong: 75 when the
metadata service never answered (its rack died: the environment reboots and boots from the network again), 3 when
the service refused the post (final: the environment powers off). Run with curl as on this host, and with busybox
alone (its wget, sed, awk, …) as in the ephemeral image."""

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from metalbus_region.metadata import commissioning_script
from tests.conftest import free_port
from tests.integration.test_metadata import fixture_machine, run_runner, runner_env

RACK_SILENT, REFUSED = 75, 3
BUSYBOX = shutil.which("busybox")


@pytest.fixture(params=["curl", "busybox"])
def client_path(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """PATH for the runner: the host's (curl), or a directory of busybox applets and nothing else."""
    if request.param == "curl":
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        return None
    if BUSYBOX is None:
        pytest.skip("busybox is not installed")
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    subprocess.run([BUSYBOX, "--install", "-s", str(applets)], check=True)  # every applet, as the image has them
    return str(applets)


@asynccontextmanager
async def refusing_metadata_service() -> AsyncIterator[tuple[str, list[str]]]:
    """Answers every request with 401, as the region does for credentials it does not know."""
    seen: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        await request.read()
        return web.Response(status=401, text="unknown credentials")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/MAAS/metadata/", seen
    finally:
        await runner.cleanup()


async def run_against(url: str, tmp_path: Path, client_path: str | None) -> tuple[int, str]:
    script = tmp_path / "user-data"
    script.write_text(commissioning_script())
    proc, sys = fixture_machine(tmp_path)
    env = runner_env(
        proc, sys, METALBUS_METADATA_URL=url, METALBUS_CONSUMER_KEY="ck", METALBUS_TOKEN_KEY="tk",
        METALBUS_TOKEN_SECRET="ts",
    )  # fmt: skip
    if client_path is not None:
        env["PATH"] = client_path
    status, _, stderr = await run_runner(script, env=env)
    return status, stderr


async def test_a_metadata_service_that_never_answers_ends_the_run_with_75(
    tmp_path: Path, client_path: str | None
) -> None:
    nobody_listens = f"http://127.0.0.1:{free_port()}/MAAS/metadata/"
    status, stderr = await run_against(nobody_listens, tmp_path, client_path)
    assert status == RACK_SILENT, stderr[-1000:]


async def test_a_metadata_service_that_refuses_the_post_ends_the_run_with_3_at_once(
    tmp_path: Path, client_path: str | None
) -> None:
    async with refusing_metadata_service() as (url, seen):
        status, stderr = await run_against(url, tmp_path, client_path)
    assert status == REFUSED, stderr[-1000:]
    assert seen == ["POST /MAAS/metadata/2012-03-01/"]  # a refusal is final: not tried again
