"""The host's network side: the interfaces rack-dhcp serves exist and have IPv4 addresses, BMC networks are routed.

The judging functions are pure (iproute2's JSON in, Checks out); ``host_links`` and ``route_to`` run ``ip``,
which only asks the kernel: no packet leaves the host.
"""

import json
import subprocess
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface

from metalbus import host_interfaces
from metalbus.doctor.report import Check, failed, ok, warned
from metalbus.ports import IPMI_PORT, REDFISH_PORT

IP_TIMEOUT_S = 5
Links = Mapping[str, Sequence[IPv4Interface]]


def parse_links(output: bytes) -> dict[str, list[IPv4Interface]]:
    """``ip -j addr show`` → every interface by name with its IPv4 addresses (possibly none)."""
    links: dict[str, list[IPv4Interface]] = {}
    for link in json.loads(output or b"[]"):
        links[link["ifname"]] = [
            IPv4Interface(f"{address['local']}/{address['prefixlen']}")
            for address in link.get("addr_info", [])
            if address.get("family") == "inet"
        ]
    return links


def host_links() -> dict[str, list[IPv4Interface]]:
    try:
        result = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, timeout=IP_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_links(result.stdout)


def judge_serve_interfaces(names: Sequence[str], links: Links, variable: str) -> list[Check]:
    """One row per interface rack-dhcp is told to serve: it must exist and have an IPv4 address."""
    if not names:
        return [ok("DHCP interfaces", f"{variable} is empty: rack-dhcp answers no DHCP (presence only)")]
    rows = []
    for name in names:
        row = f"interface {name}"
        if name not in links:
            known = ", ".join(sorted(links)) or "none"
            rows.append(failed(row, f"no interface {name} on this host (it has: {known})", f"fix {variable}"))
        elif not links[name]:
            rows.append(
                failed(
                    row,
                    f"{name} has no IPv4 address: rack-dhcp cannot answer from it",
                    f"give {name} an address on the subnet it serves (ip addr add <address>/<prefix> dev {name})",
                )
            )
        else:
            rows.append(ok(row, f"{name}: {', '.join(str(address) for address in links[name])}"))
    return rows


def parse_route(output: bytes) -> str | None:
    """``ip -j route get`` → "dev eth0" or "via 10.0.0.1 dev eth0"; None when there is no route."""
    routes = json.loads(output or b"[]")
    if not routes:
        return None
    route = routes[0]
    via = f"via {route['gateway']} " if route.get("gateway") else ""
    return f"{via}dev {route.get('dev', '?')}"


def route_to(address: IPv4Address) -> str | None:
    try:
        result = subprocess.run(
            ["ip", "-j", "route", "get", str(address)], capture_output=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_route(result.stdout) if result.returncode == 0 else None


def judge_bmc_networks(networks: Sequence[IPv4Interface], routes: Mapping[IPv4Interface, str | None]) -> Check:
    """rack-power reaches BMCs on the networks it announces; each must have a route. IPMI (623/udp) and Redfish
    (443/tcp) themselves are not probed: that would send packets to real BMCs."""
    name = f"BMC networks ({IPMI_PORT}/udp, {REDFISH_PORT}/tcp out)"
    if not networks:
        return warned(
            name,
            "this rack announces no network: the region will send it no power command",
            "give the host an IPv4 interface on the BMC network, or set METALBUS_RACK_POWER_INTERFACES",
        )
    unrouted = [network for network in networks if routes.get(network) is None]
    if unrouted:
        listed = ", ".join(str(network.network) for network in unrouted)
        return failed(name, f"no route to {listed}", "add a route or an interface on that network")
    found = "; ".join(f"{network.network} {routes[network]}" for network in networks)
    return ok(name, f"routes: {found} (IPMI and Redfish not probed)")


def peer_in(network: IPv4Interface) -> IPv4Address:
    """An address on ``network`` other than the rack's own (the route to the rack's own address is "local")."""
    for host in network.network.hosts():
        if host != network.ip:
            return host
    return network.ip


def check_bmc_networks(configured: Sequence[IPv4Interface] | None) -> Check:
    networks = host_interfaces.detect() if configured is None else list(configured)
    return judge_bmc_networks(networks, {network: route_to(peer_in(network)) for network in networks})
