"""`metalbus subnets …`: list subnets, add one, change its dynamic range."""

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any

import typer

from metalbus.cli.output import present, subnets_table
from metalbus.cli.session import JsonOption, ProfileOption, api_session

app = typer.Typer(help="Subnets the racks serve DHCP on.", no_args_is_help=True)


@app.command("list")
def list_subnets(ctx: typer.Context, profile: ProfileOption = None, as_json: JsonOption = False) -> None:
    """Every subnet with its dynamic range."""
    with api_session(ctx, profile) as api:
        subnets = api.list_subnets()
    present(subnets, as_json, subnets_table)


@app.command("add")
def add_subnet(
    ctx: typer.Context,
    cidr: Annotated[str, typer.Argument(help="The network, e.g. 10.20.0.0/24.")],
    gateway: Annotated[str | None, typer.Option(help="Default gateway handed out by DHCP.")] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="DNS server (repeat for several).")] = None,
    dynamic_start: Annotated[str | None, typer.Option(help="First address of the dynamic range.")] = None,
    dynamic_end: Annotated[str | None, typer.Option(help="Last address of the dynamic range.")] = None,
    reserved: Annotated[list[str] | None, typer.Option("--reserved", help="Never hand out (repeatable).")] = None,
    unmanaged: Annotated[bool, typer.Option("--unmanaged", help="metalbus does not serve DHCP here.")] = False,
    lease_time: Annotated[int | None, typer.Option(min=30, help="Lease time in seconds.")] = None,
    domain: Annotated[str | None, typer.Option(help="DNS domain of the subnet.")] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a subnet (and its dynamic range)."""
    body: dict[str, Any] = {
        "cidr": str(_parsed(IPv4Network, cidr, "CIDR")),
        "gateway": _address(gateway, "gateway"),
        "dns_servers": [_address(server, "DNS server") for server in dns or []],
        "dynamic_start": _address(dynamic_start, "dynamic start"),
        "dynamic_end": _address(dynamic_end, "dynamic end"),
        "reserved": [_address(address, "reserved address") for address in reserved or []],
        "managed": not unmanaged,
        "lease_time_s": lease_time,
        "domain": domain,
    }
    with api_session(ctx, profile) as api:
        subnet = api.create_subnet({key: value for key, value in body.items() if value is not None})
    present(subnet, as_json, lambda one: subnets_table([one]))


@app.command("set-range")
def set_range(
    ctx: typer.Context,
    subnet_id: Annotated[int, typer.Argument(help="The subnet's id (see `subnets list`).")],
    start: Annotated[str, typer.Argument(help="First address of the dynamic range.")],
    end: Annotated[str, typer.Argument(help="Last address of the dynamic range.")],
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a subnet's dynamic range."""
    body = {"dynamic_start": _address(start, "start"), "dynamic_end": _address(end, "end")}
    with api_session(ctx, profile) as api:
        subnet = api.update_subnet(subnet_id, body)
    present(subnet, as_json, lambda one: subnets_table([one]))


def _parsed(kind: type[IPv4Address] | type[IPv4Network], value: str, what: str) -> IPv4Address | IPv4Network:
    try:
        return kind(value)
    except ValueError as error:
        raise typer.BadParameter(f"{what}: {error}") from error


def _address(value: str | None, what: str) -> str | None:
    return None if value is None else str(_parsed(IPv4Address, value, what))
