"""What commands print: rich tables for people, the API's JSON (``--json``) for programs, one line per event."""

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from metalbus.cli.client import JsonObject

WIDE_OUTPUT_COLUMNS = 160
STATUS_STYLES = {
    "ready": "green",
    "commissioning": "yellow",
    "failed_commissioning": "red",
    "broken": "red",
    "new": "cyan",
}


def stdout_console() -> Console:
    """The terminal's width on a terminal; wide when piped, so ids and addresses are never cut."""
    console = Console(highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, markup=False, width=WIDE_OUTPUT_COLUMNS)
    return console


def show(renderable: RenderableType | str) -> None:
    if isinstance(renderable, str):
        typer.echo(renderable)  # plain text: no markup interpretation of brackets in names
    else:
        stdout_console().print(renderable)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def present(data: Any, as_json: bool, render: Callable[[Any], RenderableType | str]) -> None:
    """The API's JSON with ``--json``, else the rendering of it for people."""
    if as_json:
        emit_json(data)
    else:
        show(render(data))


def emit_json_line(data: Any) -> None:
    typer.echo(json.dumps(data, separators=(",", ":")))


def short_time(value: Any) -> str:
    if not isinstance(value, str):
        return "-" if value is None else str(value)
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def text_of(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def status_text(status: Any) -> Text:
    return Text(text_of(status), style=STATUS_STYLES.get(str(status), ""))


# -- machines ---------------------------------------------------------------------------------------------------
def machines_table(page: JsonObject) -> Table:
    items: list[JsonObject] = page.get("items", [])
    offset, total = int(page.get("offset", 0)), int(page.get("total", len(items)))
    caption = f"machines {offset + 1}-{offset + len(items)} of {total}" if items else f"no machines (of {total})"
    table = Table(caption=caption)
    for column in ("system id", "hostname", "status", "architecture", "power", "boot MAC", "BMC"):
        table.add_column(column, overflow="fold")
    for machine in items:
        table.add_row(
            text_of(machine.get("system_id")),
            text_of(machine.get("hostname")),
            status_text(machine.get("status")),
            text_of(machine.get("architecture")),
            text_of(machine.get("power_type")),
            text_of(machine.get("boot_mac")),
            text_of(machine.get("bmc_address")),
        )
    return table


def machine_details(machine: JsonObject) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    parameters = machine.get("power_parameters") or {}
    rows: list[tuple[str, str | Text]] = [
        ("system id", text_of(machine.get("system_id"))),
        ("hostname", text_of(machine.get("hostname"))),
        ("status", status_text(machine.get("status"))),
        ("status reason", text_of(machine.get("status_reason"))),
        ("architecture", text_of(machine.get("architecture"))),
        ("boot MAC", text_of(machine.get("boot_mac"))),
        ("power type", text_of(machine.get("power_type"))),
        ("power parameters", ", ".join(f"{k}={v}" for k, v in sorted(parameters.items())) or "-"),
        ("BMC address", text_of(machine.get("bmc_address"))),
        ("created", short_time(machine.get("created_at"))),
        ("status changed", short_time(machine.get("status_changed_at"))),
        ("commissioning deadline", short_time(machine.get("commissioning_deadline"))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def results_table(results: list[JsonObject], *, with_output: bool = False) -> RenderableType:
    table = Table(caption=f"{len(results)} script result{'' if len(results) == 1 else 's'}")
    for column in ("script", "exit status", "runtime s", "recorded"):
        table.add_column(column, overflow="fold")
    for result in results:
        runtime = result.get("runtime_s")
        exit_status = result.get("exit_status")
        table.add_row(
            text_of(result.get("name")),
            Text(text_of(exit_status), style="green" if exit_status == 0 else "red"),
            f"{runtime:.2f}" if isinstance(runtime, int | float) else "-",
            short_time(result.get("recorded_at")),
        )
    if not with_output:
        return table
    outputs: list[RenderableType] = [table]
    for result in results:
        for stream in ("stdout", "stderr"):
            content = str(result.get(stream) or "")
            if content:
                outputs += [Text(f"--- {result.get('name')} {stream} ---", style="bold"), Text(content.rstrip("\n"))]
    return Group(*outputs)


def inventory_view(inventory: JsonObject) -> RenderableType:
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    summary.add_row("CPU", f"{text_of(inventory.get('cpu_model'))} x {text_of(inventory.get('cpu_count'))}")
    summary.add_row("CPU MHz", text_of(inventory.get("cpu_speed_mhz")))
    summary.add_row("memory MiB", text_of(inventory.get("memory_mib")))
    parts: list[RenderableType] = [summary]
    devices = inventory.get("block_devices") or []
    if devices:
        disks = Table(title="block devices")
        for column in ("name", "size GiB", "model", "serial"):
            disks.add_column(column, overflow="fold")
        for device in devices:
            size = device.get("size_bytes")
            gib = f"{size / 2**30:.1f}" if isinstance(size, int) else "-"
            disks.add_row(text_of(device.get("name")), gib, text_of(device.get("model")), text_of(device.get("serial")))
        parts.append(disks)
    interfaces = inventory.get("interfaces") or []
    if interfaces:
        nics = Table(title="interfaces")
        for column in ("name", "MAC", "link", "speed Mb/s"):
            nics.add_column(column, overflow="fold")
        for nic in interfaces:
            link = "up" if nic.get("link_up") else "down"
            nics.add_row(text_of(nic.get("name")), text_of(nic.get("mac")), link, text_of(nic.get("speed_mbps")))
        parts.append(nics)
    neighbours = inventory.get("lldp_neighbours") or []
    if neighbours:
        lldp = Table(title="LLDP neighbours")
        for column in ("interface", "chassis", "port", "system"):
            lldp.add_column(column, overflow="fold")
        for item in neighbours:
            lldp.add_row(*(text_of(item.get(k)) for k in ("interface", "chassis_id", "port_id", "system_name")))
        parts.append(lldp)
    return Group(*parts)


# -- subnets, racks, leases -------------------------------------------------------------------------------------
def subnets_table(subnets: list[JsonObject]) -> Table:
    table = Table(caption=f"{len(subnets)} subnet{'' if len(subnets) == 1 else 's'}")
    for column in ("id", "CIDR", "gateway", "DNS", "dynamic range", "managed", "lease s", "domain"):
        table.add_column(column, overflow="fold")
    for subnet in subnets:
        start, end = subnet.get("dynamic_start"), subnet.get("dynamic_end")
        table.add_row(
            text_of(subnet.get("subnet_id")),
            text_of(subnet.get("cidr")),
            text_of(subnet.get("gateway")),
            text_of(subnet.get("dns_servers")),
            f"{start} - {end}" if start and end else "-",
            "yes" if subnet.get("managed") else "no",
            text_of(subnet.get("lease_time_s")),
            text_of(subnet.get("domain")),
        )
    return table


def racks_table(racks: list[JsonObject]) -> Table:
    table = Table(caption=f"{len(racks)} rack{'' if len(racks) == 1 else 's'}")
    for column in ("rack", "service", "host", "version", "health", "last seen", "interfaces", "serves subnets"):
        table.add_column(column, overflow="fold")
    for rack in racks:
        for service in rack.get("services", []):
            healthy = bool(service.get("healthy"))
            table.add_row(
                text_of(rack.get("rack_id")),
                text_of(service.get("service")),
                text_of(service.get("hostname")),
                text_of(service.get("version")),
                Text("healthy" if healthy else "UNHEALTHY", style="green" if healthy else "red"),
                short_time(service.get("last_seen")),
                text_of(service.get("interfaces")),
                text_of(service.get("served_subnet_ids")),
            )
    return table


def leases_table(leases: list[JsonObject]) -> Table:
    table = Table(caption=f"{len(leases)} lease{'' if len(leases) == 1 else 's'}")
    for column in ("IP", "MAC", "subnet", "rack", "state", "expires", "hostname"):
        table.add_column(column, overflow="fold")
    for lease in leases:
        table.add_row(
            text_of(lease.get("ip")),
            text_of(lease.get("mac")),
            text_of(lease.get("subnet_id")),
            text_of(lease.get("rack_id")),
            text_of(lease.get("state")),
            short_time(lease.get("expires_at")),
            text_of(lease.get("hostname")),
        )
    return table
