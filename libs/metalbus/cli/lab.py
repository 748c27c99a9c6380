"""`metalbus lab up|status|down`: qemu VMs with IPMI BMCs on a provisioning network in a network namespace."""

import json
import secrets
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated

import typer

from metalbus.cli.failures import fail
from metalbus.cli.output import show
from metalbus.lab.lab import LabError, LabPaths, LabRecord, bmc_passwords, create_lab, destroy_lab, load_lab
from metalbus.lab.network import LabNetworkError, namespace_exists
from metalbus.lab.topology import DEFAULT_SUBNET, Accelerator, LabSpec, NicModel
from metalbus.stack.config import StackSettings
from metalbus.stack.processes import running_identity

app = typer.Typer(help="A lab of qemu VMs with IPMI BMCs, for the rack to provision.", no_args_is_help=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="Where the stack keeps all its state.")]


def lab_paths(state_dir: Path | None) -> LabPaths:
    return LabPaths(state_dir if state_dir is not None else StackSettings().state_dir)


@app.command("up")
def up(
    vms: Annotated[int, typer.Option("--vms", help="How many VMs.")] = 2,
    uefi: Annotated[int, typer.Option("--uefi", help="How many of them boot UEFI (OVMF); the rest BIOS.")] = 0,
    state_dir: StateDir = None,
    lab_id: Annotated[str | None, typer.Option(help="1-6 lowercase letters/digits; default: random.")] = None,
    subnet: Annotated[
        str, typer.Option(help="The provisioning subnet, /25 or larger (rack .2, BMCs .10 up, VMs .64 up).")
    ] = str(DEFAULT_SUBNET),
    memory: Annotated[int, typer.Option(help="MiB of memory per VM.")] = 512,
    cpus: Annotated[int, typer.Option(help="vCPUs per VM.")] = 1,
    disk: Annotated[int, typer.Option(help="MiB of blank disk per VM.")] = 1024,
    nic: Annotated[NicModel, typer.Option(help="The VMs' NIC model.")] = NicModel.E1000,
    accel: Annotated[Accelerator, typer.Option(help="kvm only if it works on this host.")] = Accelerator.TCG,
) -> None:
    """Create the namespace, bridge, rack interface, VMs (powered off) and their BMCs; print how to reach them."""
    try:
        spec = LabSpec(
            lab_id=lab_id or secrets.token_hex(2),
            vms=vms,
            uefi=uefi,
            subnet=IPv4Network(subnet),
            memory_mib=memory,
            cpus=cpus,
            disk_mib=disk,
            nic=nic,
            accel=accel,
        )
        record = create_lab(spec, lab_paths(state_dir).root)
    except (ValueError, LabError, LabNetworkError, OSError) as error:
        fail(str(error))
    show(f"metalbus: lab {record.lab_id} up in namespace {record.namespace}")
    first, last = record.dynamic_range
    show(f"metalbus: rack interface {record.rack_interface} {record.rack_address} (serve DHCP on it)")
    show(f"metalbus: subnet {record.subnet}, VM addresses {first}-{last}, LLDP neighbour {record.switch_name}")
    show(vm_table(record, lab_paths(state_dir)))


def vm_table(record: LabRecord, paths: LabPaths) -> str:
    """Plain aligned text, never cut to the terminal's width: the passwords must print whole."""
    passwords = bmc_passwords(paths)
    rows = [("name", "MAC", "firmware", "BMC", "username", "password", "power")]
    for vm in record.vms:
        power = "on" if running_identity(vm.machine_pid_file) else "off"
        bmc = f"{vm.bmc_address}:{vm.bmc_port}"
        rows.append((vm.name, vm.mac, vm.firmware, bmc, vm.bmc_username, passwords.get(vm.name, "?"), power))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


@app.command("status")
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (no passwords).")] = False,
) -> None:
    """The lab's VMs, BMCs and power; exits 1 when no lab is recorded or a part of it is gone."""
    paths = lab_paths(state_dir)
    record = load_lab(paths)
    if record is None:
        fail(f"no lab recorded in {paths.root}")
    gone = missing_parts(record)
    if as_json:
        view = record.model_dump(mode="json")
        for vm in view["vms"]:
            vm["power"] = "on" if running_identity(Path(vm["machine_pid_file"])) else "off"
        typer.echo(json.dumps({**view, "missing": gone}, indent=2))
    else:
        show(f"lab {record.lab_id}: namespace {record.namespace}, rack interface {record.rack_interface}")
        show(vm_table(record, paths))
        for part in gone:
            show(f"missing: {part}")
    if gone:
        raise typer.Exit(1)


def missing_parts(record: LabRecord) -> list[str]:
    gone = [] if namespace_exists(record.namespace) else [f"namespace {record.namespace}"]
    gone += [f"ipmi_sim of {vm.name}" for vm in record.vms if running_identity(vm.bmc_pid_file) is None]
    if running_identity(record.advertiser_pid_file) is None:
        gone.append("advertiser (RA, LLDP)")
    return gone


@app.command("down")
def down(state_dir: StateDir = None) -> None:
    """Stop the VMs and BMCs (by pid) and remove the namespace, bridge, taps and the rack interface."""
    try:
        removed = destroy_lab(lab_paths(state_dir).root)
    except (LabNetworkError, OSError) as error:
        fail(f"could not remove the lab: {error}")
    show(f"metalbus: removed {', '.join(removed) if removed else 'nothing (no lab recorded)'}")
