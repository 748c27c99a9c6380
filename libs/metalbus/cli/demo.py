"""`metalbus demo`: boot files, a lab of qemu VMs, the stack serving DHCP on it, and every VM commissioned to READY
through the API, with live progress and the inventory table at the end."""

import asyncio
import contextlib
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from metalbus.cli.admin import request_key, stack_connect_options
from metalbus.contracts.errors import MetalbusError
from metalbus.lab.lab import LabError, LabPaths, LabRecord, VmRecord, bmc_passwords, create_lab, destroy_lab, load_lab
from metalbus.lab.network import LabNetworkError
from metalbus.lab.topology import DEFAULT_SUBNET, LabSpec
from metalbus.stack.config import StackLayout, StackSettings, load_record
from metalbus.stack.launcher import StackError, bring_down, bring_up
from metalbus.stack.processes import running_identity

REPOSITORY = Path(__file__).resolve().parents[3]
SCRIPTS = REPOSITORY / "scripts"
IMAGE_DIR = "images/amd64/ephemeral"
KERNEL_PARAMS = "console=ttyS0 panic=-1"
ARCHITECTURES = ("amd64/bios", "amd64/uefi")
PURPOSES = ("commissioning", "enlistment")
SETTLED = {"READY", "FAILED_COMMISSIONING"}
POLL_S = 1.0
BUILD_TIMEOUT_S = 600

console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console.width = 160  # a pipe or a log: the table prints whole


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass
class Progress:
    """What each machine's status was last seen as, and when commissioning started and ended."""

    started: float = field(default_factory=time.monotonic)
    status: dict[str, str] = field(default_factory=dict)
    settled_after: dict[str, float] = field(default_factory=dict)

    def see(self, name: str, machine: dict[str, Any]) -> None:
        status = str(machine["status"]).upper()
        if self.status.get(name) == status:
            return
        elapsed = time.monotonic() - self.started
        reason = f" ({machine['status_reason']})" if machine.get("status_reason") else ""
        previous = self.status.get(name, "-")
        console.print(f"[{elapsed:6.1f}s] {name}: {previous} -> {status}{reason}")
        self.status[name] = status
        if status in SETTLED:
            self.settled_after[name] = elapsed


# --- steps -------------------------------------------------------------------------------------------------------


def run_script(name: str, target: Path) -> None:
    """The project's boot-file scripts are idempotent: quick when nothing changed."""
    try:
        subprocess.run(
            ["bash", str(SCRIPTS / name), str(target)],
            check=True,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as error:
        raise DemoError(f"{name} failed: {(error.stderr or '').strip()[-2000:]}") from None
    except subprocess.TimeoutExpired:
        raise DemoError(f"{name} did not finish in {BUILD_TIMEOUT_S}s") from None


def build_boot_files(layout: StackLayout) -> None:
    run_script("boot-files.sh", layout.boot_root)
    run_script("build-ephemeral.sh", layout.boot_root / IMAGE_DIR)


def fresh_lab(spec: LabSpec, state_dir: Path) -> LabRecord:
    """A lab left by an earlier run of this state directory is removed first."""
    if load_lab(LabPaths(state_dir)) is not None:
        destroy_lab(state_dir)
    try:
        return create_lab(spec, state_dir)
    except (ValueError, LabError, LabNetworkError, OSError) as error:
        raise DemoError(f"could not create the lab: {error}") from None


def stack_running(layout: StackLayout) -> bool:
    return any(running_identity(path) for path in layout.run.glob("*.pid"))


async def start_stack(state_dir: Path, rack_interface: str) -> StackSettings:
    """`up` with rack-dhcp on port 67 of the lab's rack interface; a stack already running here is restarted."""
    layout = StackLayout(state_dir)
    if stack_running(layout):
        console.print("metalbus: restarting the stack running in this state directory (to serve the lab)")
        bring_down(state_dir)
    settings = StackSettings(state_dir=state_dir, dhcp_port=67, dhcp_interfaces=[rack_interface])
    try:
        seconds = await bring_up(settings)
    except StackError as error:
        raise DemoError(f"the stack did not come up: {error}") from None
    console.print(f"metalbus: stack up in {seconds:.1f}s (API http://{settings.host}:{settings.api_port})")
    return settings


async def api_key(settings: StackSettings) -> str:
    name = f"demo-{secrets.token_hex(4)}"
    try:
        created = await request_key(stack_connect_options(settings.state_dir), name)
    except MetalbusError as error:
        raise DemoError(f"could not create an API key: {error.message}") from None
    return created.key


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
    """One API call; any status but 2xx (or one of ``ok``) is a DemoError naming the call."""
    response = await client.request(method, f"/api/v1{path}", json=body)
    if response.is_success or response.status_code in ok:
        return response.json() if response.content else None
    raise DemoError(f"{method} {path}: {response.status_code} {response.text[:500]}")


def rack_ip(record: LabRecord) -> str:
    """The rack's address on the lab subnet, without the prefix length the record gives it."""
    return str(IPv4Interface(record.rack_address).ip)


async def serve_lab_subnet(client: httpx.AsyncClient, record: LabRecord) -> None:
    first, last = record.dynamic_range
    body = {"cidr": record.subnet, "dynamic_start": first, "dynamic_end": last, "dns_servers": [rack_ip(record)]}
    existing = [s for s in await call(client, "GET", "/subnets") if s["cidr"] == record.subnet]
    if existing:
        patch = {"dynamic_start": first, "dynamic_end": last, "managed": True}
        await call(client, "PATCH", f"/subnets/{existing[0]['subnet_id']}", patch)
    else:
        await call(client, "POST", "/subnets", body)


async def register_boot_resources(client: httpx.AsyncClient) -> None:
    for architecture in ARCHITECTURES:
        for purpose in PURPOSES:
            resource = {
                "architecture": architecture,
                "purpose": purpose,
                "kernel": f"{IMAGE_DIR}/vmlinuz",
                "initrd": f"{IMAGE_DIR}/initrd.img",
                "kernel_params": KERNEL_PARAMS,
            }
            await call(client, "PUT", "/boot-resources", resource)


def machine_fields(vm: VmRecord, password: str) -> dict[str, Any]:
    return {
        "architecture": "amd64/uefi" if vm.firmware == "uefi" else "amd64/bios",
        "boot_mac": vm.mac,
        "power_type": "ipmi",
        "power_parameters": {"address": vm.bmc_address, "port": vm.bmc_port, "username": vm.bmc_username},
        "power_secrets": {"password": password},
    }


async def enrol(client: httpx.AsyncClient, vm: VmRecord, password: str) -> str:
    """The VM's machine (made once, its BMC settings refreshed on later runs); returns its system id."""
    fields = machine_fields(vm, password)
    page = await call(client, "GET", f"/machines?hostname={vm.name}")
    if page["items"]:
        machine = page["items"][0]
        if machine["status"] == "commissioning":
            await call(client, "POST", f"/machines/{machine['system_id']}/abort", {"reason": "demo restarted"})
        await call(client, "PATCH", f"/machines/{machine['system_id']}", fields)
        return str(machine["system_id"])
    created = await call(client, "POST", "/machines", {"hostname": vm.name, **fields})
    return str(created["system_id"])


async def commission_all(client: httpx.AsyncClient, machines: dict[str, str], timeout_s: float) -> Progress:
    progress = Progress()
    for name, system_id in machines.items():
        progress.see(name, await call(client, "POST", f"/machines/{system_id}/commission", {}))
    deadline = progress.started + timeout_s
    while time.monotonic() < deadline and set(progress.status.values()) - SETTLED:
        await asyncio.sleep(POLL_S)
        for name, system_id in machines.items():
            if progress.status.get(name) not in SETTLED:
                progress.see(name, await call(client, "GET", f"/machines/{system_id}"))
    return progress


async def inventory_table(client: httpx.AsyncClient, machines: dict[str, str], record: LabRecord) -> Table:
    table = Table(title="Inventory (from the API)")
    for heading in ("name", "MAC", "firmware", "cores", "memory MiB", "disk GB", "NIC MAC", "status"):
        table.add_column(heading)
    vms = {vm.name: vm for vm in record.vms}
    for name, system_id in machines.items():
        machine = await call(client, "GET", f"/machines/{system_id}")
        inventory = await call(client, "GET", f"/machines/{system_id}/inventory", ok=(404,))
        cores = memory = disk = nics = "-"
        if inventory and "cpu_count" in inventory:
            cores, memory = str(inventory["cpu_count"]), str(inventory["memory_mib"])
            disk = " ".join(f"{d['size_bytes'] / 1e9:.1f}" for d in inventory["block_devices"]) or "-"
            nics = " ".join(i["mac"] for i in inventory["interfaces"]) or "-"
        row = (name, vms[name].mac, vms[name].firmware, cores, memory, disk, nics, machine["status"].upper())
        table.add_row(*row)
    return table


# --- the whole run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    state_dir: Path
    vms: int
    uefi: int
    timeout_s: float
    lab_id: str
    subnet: IPv4Network


async def run(options: DemoOptions) -> bool:
    """Every step in order; True when every machine ended READY."""
    layout = StackLayout(options.state_dir)
    console.print("metalbus: building the boot files and the commissioning environment ...")
    build_boot_files(layout)
    spec = LabSpec(lab_id=options.lab_id, vms=options.vms, uefi=options.uefi, subnet=options.subnet)
    record = fresh_lab(spec, options.state_dir)
    console.print(f"metalbus: lab {record.lab_id}: {len(record.vms)} VMs on {record.subnet} ({record.rack_interface})")
    settings = await start_stack(options.state_dir, record.rack_interface)
    headers = {"Authorization": f"Bearer {await api_key(settings)}"}
    base_url = f"http://{settings.host}:{settings.api_port}"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        await serve_lab_subnet(client, record)
        await register_boot_resources(client)
        passwords = bmc_passwords(LabPaths(options.state_dir))
        machines = {vm.name: await enrol(client, vm, passwords[vm.name]) for vm in record.vms}
        console.print(f"metalbus: commissioning {', '.join(machines)} (powered on over IPMI) ...")
        progress = await commission_all(client, machines, options.timeout_s)
        console.print(await inventory_table(client, machines, record))
    for name in machines:
        seconds = progress.settled_after.get(name)
        took = f"{seconds:.1f} s" if seconds is not None else f"not settled after {options.timeout_s:g} s"
        console.print(f"metalbus: {name}: commission call to {progress.status.get(name, '?')}: {took}")
    return all(status == "READY" for status in progress.status.values()) and len(progress.status) == len(machines)


def tear_down_everything(state_dir: Path) -> None:
    removed = destroy_lab(state_dir)
    console.print(f"metalbus: removed {', '.join(removed) if removed else 'no lab'}")
    if load_record(StackLayout(state_dir)) is not None:
        stopped = bring_down(state_dir)
        console.print(f"metalbus: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")


def interrupted(signum: int, _: object) -> None:
    raise KeyboardInterrupt  # SIGTERM like Ctrl-C


def demo(
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where the stack keeps all its state.")] = None,
    vms: Annotated[int, typer.Option("--vms", help="How many VMs.", min=1)] = 2,
    uefi: Annotated[int, typer.Option("--uefi", help="How many of them boot UEFI.", min=0)] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for commissioning.")] = 600,
    lab_id: Annotated[str, typer.Option("--lab-id", help="1-6 lowercase letters/digits.")] = "demo",
    subnet: Annotated[str, typer.Option("--subnet", help="The lab's provisioning subnet.")] = str(DEFAULT_SUBNET),
    down: Annotated[bool, typer.Option("--down", help="Tear down the demo's lab and stack, then exit.")] = False,
) -> None:
    """Build the boot files, create a lab of qemu VMs, start the stack serving it, commission every VM to READY
    through the API, and print their inventory. Exits 0 when all are READY. Ctrl-C removes the lab."""
    directory = (state_dir if state_dir is not None else StackSettings().state_dir).resolve()
    if down:
        tear_down_everything(directory)
        return
    if uefi > vms:
        raise typer.BadParameter("--uefi cannot exceed --vms")
    signal.signal(signal.SIGTERM, interrupted)
    options = DemoOptions(directory, vms, uefi, timeout, lab_id, IPv4Network(subnet))
    try:
        all_ready = asyncio.run(run(options))
    except KeyboardInterrupt:
        console.print("metalbus: interrupted; removing the lab (the stack keeps running: `metalbus down` stops it)")
        with contextlib.suppress(LabNetworkError, OSError):
            destroy_lab(directory)
        raise typer.Exit(130) from None
    except (DemoError, httpx.HTTPError, LabNetworkError) as error:
        console.print(f"metalbus: demo failed: {error}")
        console.print("metalbus: `metalbus demo --down` removes what it left (the lab, the stack)")
        raise typer.Exit(1) from None
    state = f" --state-dir {directory}" if state_dir is not None else ""
    console.print(f"metalbus: the lab and the stack keep running; stop them: `metalbus demo --down{state}`")
    raise typer.Exit(0 if all_ready else 1)
