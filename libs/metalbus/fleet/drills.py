"""Failure drills: a part of the embedded stack fails in the middle of a boot storm, and the storm must still end
with every machine READY, no address leased to two machines and no result lost.

Each drill is one fault injected into a running stack (its state directory) and, where the fault is an outage,
the repair that follows after ``outage_s``: kill -9 one region replica (the other carries on; nothing restarts
it), stop nats-server and start it again (same store: JetStream keeps its streams), stop PostgreSQL and start it
again (fast shutdown: sessions are cut), kill -9 the four services of one of the two racks serving the subnet
(the site then has two; the machines' firmware boots from the network again after a failed boot), and lose 5 %
of the frames in each direction on the rack's interface
(nftables ``numgen random`` on the netdev ingress and egress hooks; this kernel has no sch_netem). ``run_drill``
runs one storm with one drill and returns the storm, the checks and how long after the fault the last machine
became READY.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from metalbus.fleet.storm import StormChecks, StormRun, StormSite, commission_storm, create_machines, storm_checks
from metalbus.stack.components import Component, stack_components
from metalbus.stack.config import StackLayout
from metalbus.stack.launcher import StackError, launch, log_file_for, pid_file_for, recorded_stack, wait_ready
from metalbus.stack.postgres import PostgresCluster
from metalbus.stack.probes import Probes
from metalbus.stack.processes import running_identity, stop_process

NFT_TIMEOUT_S = 10.0


class Drill(StrEnum):
    NONE = "none"
    KILL_REGION_REPLICA = "kill-region-replica"
    RESTART_NATS = "restart-nats"
    RESTART_POSTGRES = "restart-postgres"
    LOSE_PACKETS = "lose-5%-packets"
    KILL_RACK = "kill-one-of-two-racks"

    @property
    def racks(self) -> int:
        """How many racks serve the machines' subnet in this drill's site."""
        return 2 if self is Drill.KILL_RACK else 1


@dataclass(frozen=True)
class DrillResult:
    drill: Drill
    run: StormRun
    checks: StormChecks
    fault_at_s: float
    """Seconds after the first commission call that the fault was injected."""

    @property
    def recovered_after_s(self) -> float | None:
        """From the fault until the last machine was READY (None: not every machine became READY)."""
        if self.run.ready_after_s is None:
            return None
        return max(self.run.ready_after_s - self.fault_at_s, 0.0)

    @property
    def stuck(self) -> int:
        return self.run.count - self.run.ready - self.run.statuses.get("failed_commissioning", 0)

    @property
    def zero_loss(self) -> bool:
        no_loss = not self.checks.lost_results and not self.checks.mismatches and self.checks.duplicate_leases == 0
        return no_loss and self.run.ready == self.run.count


async def run_drill(
    site: StormSite, drill: Drill, *, fault_after_s: float, outage_s: float, deadline_s: float
) -> DrillResult:
    """Create the site's machines, commission them all, inject ``drill`` ``fault_after_s`` into the storm."""
    system_ids = await create_machines(site)
    started = time.monotonic()
    storm = asyncio.create_task(commission_storm(site, system_ids, deadline_s=deadline_s, started=started))
    await asyncio.sleep(fault_after_s)
    fault_at = time.monotonic() - started
    async with injected(site, drill, outage_s):
        run = await storm
    return DrillResult(drill, run, await storm_checks(site, system_ids), fault_at)


@contextlib.asynccontextmanager
async def injected(site: StormSite, drill: Drill, outage_s: float) -> AsyncIterator[None]:
    """The fault; outages are repaired after ``outage_s`` while the block runs, packet loss lasts as long as it."""
    repair: asyncio.Task[None] | None = None
    match drill:
        case Drill.NONE:
            pass
        case Drill.KILL_REGION_REPLICA:
            kill_component(site.state_dir, "region-1")
        case Drill.RESTART_NATS:
            repair = asyncio.create_task(outage(site.state_dir, "nats", outage_s))
        case Drill.RESTART_POSTGRES:
            repair = asyncio.create_task(outage(site.state_dir, "postgres", outage_s))
        case Drill.LOSE_PACKETS:
            await lose_frames(site.rack_interface, percent=5)
        case Drill.KILL_RACK:
            kill_rack(site.state_dir, site.settings.rack_ids[-1])
    try:
        yield
    finally:
        if repair is not None:
            await repair
        if drill is Drill.LOSE_PACKETS:
            await stop_losing_frames(site.rack_interface)


def kill_component(state_dir: Path, name: str) -> None:
    """SIGKILL, no goodbye: the process's sockets close, its in-flight requests are lost."""
    _, layout, cluster, components = recorded_stack(state_dir)
    _sigkill(next(c for c in components if c.name == name), layout, cluster)


def kill_rack(state_dir: Path, rack_id: str) -> None:
    """kill -9 every service of rack ``rack_id`` at once (its host stays up: connections to it are refused)."""
    _, layout, cluster, components = recorded_stack(state_dir)
    for component in components:
        if component.service is not None and component.rack_id == rack_id:
            _sigkill(component, layout, cluster)


def _sigkill(component: Component, layout: StackLayout, cluster: PostgresCluster) -> None:
    identity = running_identity(pid_file_for(component, layout, cluster))
    if identity is None:
        raise StackError(f"{component.name} is not running")
    os.kill(identity.pid, signal.SIGKILL)


async def outage(state_dir: Path, name: str, outage_s: float) -> None:
    """Stop component ``name`` as an operator would (its stop signal), keep it down ``outage_s``, start it again
    with the command line and environment the stack gave it, and wait until it serves."""
    settings, layout, cluster, _ = recorded_stack(state_dir)
    component = next(c for c in stack_components(settings, layout, cluster) if c.name == name)
    await asyncio.to_thread(stop_process, pid_file_for(component, layout, cluster), stop_signal=component.stop_signal)
    await asyncio.sleep(outage_s)
    child = launch(component, layout, cluster)
    log = log_file_for(component, layout, cluster)
    await wait_ready(component, child, Probes(settings, cluster), settings.ready_timeout_s, log)  # as `up` waits


def _loss_table(interface: str) -> str:
    return f"metalbus_drill_{interface}"


async def lose_frames(interface: str, *, percent: int) -> None:
    """Drop ``percent`` % of the frames ``interface`` receives and of those it sends (both netdev hooks)."""
    drop = f"numgen random mod 100 < {percent} drop"
    chains = "\n".join(
        f" chain {hook} {{\n  type filter hook {hook} device {interface} priority 0;\n  {drop}\n }}"
        for hook in ("ingress", "egress")
    )
    await _nft(f"table netdev {_loss_table(interface)} {{\n{chains}\n}}\n")


async def stop_losing_frames(interface: str) -> None:
    with contextlib.suppress(StackError):
        await _nft(f"delete table netdev {_loss_table(interface)}\n")


async def _nft(script: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "nft", "-f", "-", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(script.encode()), NFT_TIMEOUT_S)
    if process.returncode:
        raise StackError(f"nft refused the drill's rules: {output.decode(errors='replace').strip()}")
