"""`metalbus up / down / status`: start the stack in order, all or nothing; stop it; report on it."""

import asyncio
import errno
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.stack.binaries import MissingBinary, nats_server_binary, postgres_bin_dir
from metalbus.stack.components import Component, ReadyCheck, planned_components, stack_components
from metalbus.stack.config import StackLayout, StackSettings, load_record, metrics_ports, save_record
from metalbus.stack.nats import stack_client_options
from metalbus.stack.postgres import ClusterError, PostgresCluster, cluster_os_user
from metalbus.stack.probes import ProbeResult, Probes
from metalbus.stack.processes import (
    ProcessIdentity,
    ProcessStuck,
    process_start_ticks,
    running_identity,
    start_detached,
    stop_process,
)


class StackError(RuntimeError):
    """`up` could not bring the stack up; the message is the one-line reason shown to the operator."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    rss_kib: int | None
    probe: ProbeResult
    log: Path


def cluster_for(settings: StackSettings, layout: StackLayout) -> PostgresCluster:
    return PostgresCluster(
        root=layout.postgres_root,
        port=settings.postgres_port,
        host=settings.host,
        settings=tuple(sorted(settings.postgres_settings.items())),
    )


def pid_file_for(component: Component, layout: StackLayout, cluster: PostgresCluster) -> Path:
    return cluster.pid_file if component.check is ReadyCheck.POSTGRES else layout.pid_file(component.name)


def log_file_for(component: Component, layout: StackLayout, cluster: PostgresCluster) -> Path:
    return cluster.log_file if component.check is ReadyCheck.POSTGRES else layout.log_file(component.name)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the servers themselves: a port held only by TIME_WAIT connections is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def preflight(settings: StackSettings, layout: StackLayout) -> None:
    """Everything that can be checked before starting anything: nothing is left half-started."""
    running = [path.stem for path in sorted(layout.run.glob("*.pid")) if running_identity(path)]
    pg_pid = layout.postgres_root / "postgres.pid-identity"
    if running_identity(pg_pid):
        running.append("postgres")
    if running:
        raise StackError(f"stack already running in {layout.root} ({', '.join(running)}); run `metalbus down` first")
    try:
        nats_server_binary(settings.nats_server_binary)
        postgres_bin_dir()
        cluster_os_user()
    except MissingBinary as error:
        raise StackError(str(error)) from None
    ports = {
        "nats": settings.nats_port,
        "nats monitoring": settings.nats_monitor_port,
        "postgres": settings.postgres_port,
        "api": settings.api_port,
    }
    ports |= {f"{component} metrics": port for component, port in metrics_ports(settings).items()}
    if len(set(ports.values())) != len(ports):
        raise StackError(f"two components were given the same port: {ports}")
    for name, port in ports.items():
        if port_in_use(settings.host, port):
            raise StackError(f"port {port} ({name}) is already in use on {settings.host}")


def launch(component: Component, layout: StackLayout, cluster: PostgresCluster) -> subprocess.Popen[bytes]:
    if component.check is ReadyCheck.POSTGRES:
        return cluster.start()
    return start_detached(
        component.argv,
        log_path=layout.log_file(component.name),
        pid_path=layout.pid_file(component.name),
        env=component.env,
        cwd=layout.root,
    )


async def wait_ready(
    component: Component, child: subprocess.Popen[bytes], probes: Probes, timeout_s: float, log: Path
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if child.poll() is not None:
            raise StackError(f"{component.name} exited with {child.returncode}: {last_log_line(log)} (log: {log})")
        result = await probes.probe(component)
        if result.healthy:
            return
        if loop.time() > deadline:
            raise StackError(f"{component.name} not ready after {timeout_s:g}s: {result.detail} (log: {log})")
        await asyncio.sleep(0.2)


async def wait_whole_stack_healthy(probes: Probes, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (result := await probes.whole_stack()).healthy:
        if loop.time() > deadline:
            raise StackError(f"stack not healthy after {timeout_s:g}s: {result.detail}")
        await asyncio.sleep(0.2)


async def bring_up(settings: StackSettings) -> float:
    """Start every component in order and wait for each to be ready; on any failure stop what was started
    and raise StackError. Returns the seconds it took."""
    began = time.monotonic()
    layout = StackLayout(settings.state_dir)
    preflight(settings, layout)
    for directory in (layout.root, layout.logs, layout.run, layout.nats_store):
        directory.mkdir(parents=True, exist_ok=True)
    save_record(layout, settings)
    cluster = cluster_for(settings, layout)
    probes = Probes(settings, cluster, since=datetime.now(UTC))
    started: list[Component] = []
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        try:
            cluster.initialise()
        except (ClusterError, MissingBinary) as error:
            raise StackError(str(error)) from None
        for component in stack_components(settings, layout, cluster):
            log = log_file_for(component, layout, cluster)
            child = launch(component, layout, cluster)
            started.append(component)
            children[component.name] = child
            await wait_ready(component, child, probes, settings.ready_timeout_s, log)
            if component.check is ReadyCheck.NATS:
                url = f"nats://{settings.host}:{settings.nats_port}"
                probes.bus = await Bus.connect(stack_client_options(layout.nats_store, url, "metalbus-up"))
        await wait_whole_stack_healthy(probes, settings.ready_timeout_s)
        exited = [name for name, child in children.items() if child.poll() is not None]
        if exited:
            raise StackError(f"{', '.join(exited)} exited while the stack was starting; see {layout.logs}")
    except BaseException as error:
        # Whatever went wrong (Ctrl-C and SIGTERM included): nothing is left half-started.
        stop_components(started, layout, cluster)
        await close_bus(probes)
        if isinstance(error, StackError | KeyboardInterrupt | asyncio.CancelledError):
            raise
        raise StackError(f"{type(error).__name__}: {error}") from error
    await close_bus(probes)
    return time.monotonic() - began


async def close_bus(probes: Probes) -> None:
    if probes.bus is not None:
        bus, probes.bus = probes.bus, None
        await bus.close()


def stop_components(components: list[Component], layout: StackLayout, cluster: PostgresCluster) -> list[str]:
    """Stop in reverse start order; one stuck process does not keep the others running."""
    stopped, stuck = [], []
    for component in reversed(components):
        try:
            if stop_process(pid_file_for(component, layout, cluster), stop_signal=component.stop_signal):
                stopped.append(component.name)
        except ProcessStuck as error:
            stuck.append(f"{component.name} ({error})")
    if stuck:
        raise StackError(f"could not stop {', '.join(stuck)}")
    return stopped


def recorded_stack(state_dir: Path) -> tuple[StackSettings, StackLayout, PostgresCluster, list[Component]]:
    """What the last `up` in ``state_dir`` planned; needs no binary, password or secret, so `down` and
    `status` work whatever state a failed `up` left."""
    layout = StackLayout(state_dir)
    settings = load_record(layout)
    if settings is None:
        raise StackError(f"no stack has been started in {layout.root}")
    return settings, layout, cluster_for(settings, layout), planned_components(settings)


def bring_down(state_dir: Path) -> list[str]:
    """Stop every component of the stack recorded in ``state_dir``; returns the names stopped."""
    _, layout, cluster, components = recorded_stack(state_dir)
    return stop_components(components, layout, cluster)


def resident_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_tree_rss_kib(identity: ProcessIdentity) -> int | None:
    """RSS of a process plus its direct children (PostgreSQL's backends and helpers)."""
    total = resident_kib(identity.pid)
    if total is None:
        return None
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == identity.pid:
            total += resident_kib(int(child.name)) or 0
    return total


async def inspect(state_dir: Path) -> list[ComponentStatus]:
    settings, layout, cluster, components = recorded_stack(state_dir)
    probes = Probes(settings, cluster)
    report: list[ComponentStatus] = []
    try:
        try:
            url = f"nats://{settings.host}:{settings.nats_port}"
            options = stack_client_options(layout.nats_store, url, "metalbus-status", initial_connect_deadline_s=1.0)
            probes.bus = await Bus.connect(options)
        except MetalbusError:
            probes.bus = None
        for component in components:
            identity = running_identity(pid_file_for(component, layout, cluster))
            log = log_file_for(component, layout, cluster)
            if identity is None:
                report.append(ComponentStatus(component.name, None, None, ProbeResult(False, "not running"), log))
                continue
            probe = await probes.probe(component)
            rss = process_tree_rss_kib(identity) if process_start_ticks(identity.pid) else None
            report.append(ComponentStatus(component.name, identity.pid, rss, probe, log))
    finally:
        await close_bus(probes)
    return report
