"""The pure parts of `metalbus doctor`: socket tables, port verdicts, interfaces, routes, boot files, the table."""

import errno
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv6Address
from pathlib import Path

from rich.console import Console

from metalbus.cli.doctor import checks_table
from metalbus.contracts.errors import Timeout, Unavailable
from metalbus.contracts.health import RegionHealth
from metalbus.contracts.leases import SubnetList
from metalbus.doctor.boot_checks import AMD64, boot_files_for, check_boot_files
from metalbus.doctor.bus_checks import credential_groups, judge_region, judge_region_answers
from metalbus.doctor.interface_checks import (
    judge_bmc_networks,
    judge_serve_interfaces,
    parse_links,
    parse_route,
    peer_in,
)
from metalbus.doctor.port_checks import Binding, is_component_process, judge_port, planned_bindings
from metalbus.doctor.rack_config import RackHostSettings, settings_from_environment
from metalbus.doctor.report import Check, Status, checks_as_json, exit_code
from metalbus.doctor.socket_owners import PortHolder, decode_address, holds, parse_socket_table
from metalbus.ports import PORTS, Protocol
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_rack_power.settings import RackPowerSettings
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_tftp.settings import RackTftpSettings

# Captured on this project's lab host: a UDP socket on 127.0.0.1:6969, a TCP listener on 0.0.0.0:8000 and one
# connection to it, a TCP listener on [::]:5248.
UDP_TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1083: 0100007F:1B39 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6008317 2 0000000043aabbcb 0
"""
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 6008319 2 0000000082923018 100 0 0 10 0
   5: 0100007F:EDE4 0100007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 6008320 2 00000000598d1b21 20 0 0 10 -1
  17: 0100007F:1F40 0100007F:EDE4 01 00000000:00000000 00:00000000 00000000     0        0 0 1 000000009d3419a7 20 0 0 10 -1
"""  # noqa: E501
TCP6_TABLE = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1480 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6008318 1 000000000c3fdf9d 100 0 0 10 0
"""  # noqa: E501
TFTP = next(spec for spec in PORTS if spec.name == "TFTP")


def rack(**overrides: object) -> RackHostSettings:
    base = {"nats_url": "nats://127.0.0.1:4222", "rack_id": "rack-1"}
    return RackHostSettings(
        dhcp=RackDhcpSettings(**base, **overrides.get("dhcp", {})),  # type: ignore[arg-type]
        tftp=RackTftpSettings(**base, **overrides.get("tftp", {})),  # type: ignore[arg-type]
        proxy=RackProxySettings(**base, **overrides.get("proxy", {})),  # type: ignore[arg-type]
        power=RackPowerSettings(**base),  # type: ignore[arg-type]
    )


def tftp_binding(port: int = 69) -> Binding:
    return Binding(TFTP, Protocol.UDP, "0.0.0.0", port, "METALBUS_RACK_TFTP_PORT")


# -- socket tables ----------------------------------------------------------------------------------------------
def test_socket_table_rows_give_address_port_state_and_inode() -> None:
    (entry,) = parse_socket_table(UDP_TABLE, "little")
    assert (entry.address, entry.port, entry.remote_port, entry.inode) == (IPv4Address("127.0.0.1"), 6969, 0, 6008317)
    listener, client, _accepted = parse_socket_table(TCP_TABLE, "little")
    assert (listener.address, listener.port, listener.state) == (IPv4Address("0.0.0.0"), 8000, 0x0A)
    assert (client.port, client.remote_port) == (60900, 8000)
    (v6,) = parse_socket_table(TCP6_TABLE, "little")
    assert (v6.address, v6.port) == (IPv6Address("::"), 5248)


def test_addresses_are_read_in_the_hosts_byte_order() -> None:
    assert decode_address("0100007F", "little") == IPv4Address("127.0.0.1")
    assert decode_address("7F000001", "big") == IPv4Address("127.0.0.1")
    mapped = "0000000000000000FFFF00000100007F"  # ::ffff:127.0.0.1, words little-endian
    assert decode_address(mapped, "little") == IPv4Address("127.0.0.1")


def test_a_socket_holds_a_port_when_listening_on_the_same_or_the_wildcard_address() -> None:
    (udp,) = parse_socket_table(UDP_TABLE, "little")
    assert holds(udp, Protocol.UDP, "127.0.0.1", 6969)
    assert holds(udp, Protocol.UDP, "0.0.0.0", 6969), "binding the wildcard collides with any address"
    assert not holds(udp, Protocol.UDP, "192.0.2.2", 6969), "another specific address is free"
    assert not holds(udp, Protocol.UDP, "127.0.0.1", 69)
    listener, _client, server_side = parse_socket_table(TCP_TABLE, "little")
    assert holds(listener, Protocol.TCP, "192.0.2.2", 8000)
    assert not holds(server_side, Protocol.TCP, "127.0.0.1", 8000), "an accepted connection is not a listener"
    (v6,) = parse_socket_table(TCP6_TABLE, "little")
    assert holds(v6, Protocol.TCP, "0.0.0.0", 5248), "a dual-stack [::] listener takes the IPv4 port too"


# -- port verdicts ----------------------------------------------------------------------------------------------
def test_a_port_held_by_another_program_fails_naming_its_pid_and_command() -> None:
    check = judge_port(tftp_binding(), [PortHolder(11, 4242, "/usr/sbin/in.tftpd --listen")], None)
    assert check.status is Status.FAIL
    assert "pid 4242" in check.detail and "/usr/sbin/in.tftpd --listen" in check.detail
    assert "stop pid 4242 (/usr/sbin/in.tftpd)" in check.fix and "METALBUS_RACK_TFTP_PORT" in check.fix


def test_a_port_held_by_its_own_rack_service_is_ok() -> None:
    holder = PortHolder(11, 777, "/srv/venv/bin/python -m metalbus_rack_tftp")
    check = judge_port(tftp_binding(), [holder], None)
    assert (check.status, check.fix) == (Status.OK, "")
    assert "held by rack-tftp (pid 777)" in check.detail


def test_a_port_held_by_another_metalbus_service_is_not_ours() -> None:
    check = judge_port(tftp_binding(), [PortHolder(11, 778, "python -m metalbus_rack_proxy")], None)
    assert check.status is Status.FAIL


def test_an_invisible_holder_fails_and_says_how_to_name_it() -> None:
    check = judge_port(tftp_binding(), [PortHolder(11, None, "?")], None)
    assert check.status is Status.FAIL and "inode 11" in check.detail and "as root" in check.fix


def test_the_bind_attempt_decides_when_nobody_visible_holds_the_port() -> None:
    assert judge_port(tftp_binding(), [], None).status is Status.OK
    denied = judge_port(tftp_binding(), [], OSError(errno.EACCES, "Permission denied"))
    assert denied.status is Status.WARN and "CAP_NET_BIND_SERVICE" in denied.fix
    in_use = judge_port(tftp_binding(), [], OSError(errno.EADDRINUSE, "Address already in use"))
    assert in_use.status is Status.FAIL
    not_here = judge_port(tftp_binding(), [], OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
    assert not_here.status is Status.FAIL and "not an address of this host" in not_here.detail


def test_our_processes_are_recognised_by_module_or_console_script() -> None:
    assert is_component_process("/usr/bin/python3 -m metalbus_rack_dhcp", "rack-dhcp")
    assert is_component_process("/opt/metalbus/bin/metalbus-rack-dhcp", "rack-dhcp")
    assert not is_component_process("/usr/sbin/dnsmasq --port 0 --dhcp-range metalbus_rack_dhcp_x", "rack-dhcp")


def test_planned_bindings_follow_the_settings_and_skip_ports_that_are_off() -> None:
    bindings = planned_bindings(rack(tftp={"port": 1069, "listen_address": "127.0.0.1"}, proxy={"dns_port": 0}))
    tftp = [b for b in bindings if b.spec.name == "TFTP"]
    assert [(b.address, b.port, b.protocol) for b in tftp] == [("127.0.0.1", 1069, Protocol.UDP)]
    assert not [b for b in bindings if b.spec.name == "DNS"], "a port set to 0 is off"
    syslog = {(b.port, b.protocol) for b in bindings if b.spec.name == "syslog relay"}
    assert syslog == {(514, Protocol.UDP), (514, Protocol.TCP), (5247, Protocol.UDP), (5247, Protocol.TCP)}
    assert not [b for b in bindings if b.spec.name == "DHCP"], "rack-dhcp serving no interface binds nothing"
    serving = planned_bindings(rack(dhcp={"serve_interfaces": ["eth1"], "port": 6767}))
    assert [(b.port, b.protocol) for b in serving if b.spec.name == "DHCP"] == [(6767, Protocol.UDP)]


# -- interfaces and routes --------------------------------------------------------------------------------------
LINKS = b"""[
  {"ifname": "lo", "flags": ["LOOPBACK"], "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
  {"ifname": "ifb0", "flags": ["BROADCAST"], "addr_info": []},
  {"ifname": "eth0", "flags": ["UP"], "addr_info": [
    {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
    {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]}
]"""


def test_serve_interfaces_must_exist_and_have_an_ipv4_address() -> None:
    links = parse_links(LINKS)
    assert links["ifb0"] == [] and links["eth0"] == [IPv4Interface("192.0.2.2/24")]
    missing, bare, good = judge_serve_interfaces(["eth9", "ifb0", "eth0"], links, "METALBUS_RACK_DHCP_SERVE_INTERFACES")
    assert missing.status is Status.FAIL and "no interface eth9" in missing.detail
    assert "METALBUS_RACK_DHCP_SERVE_INTERFACES" in missing.fix
    assert bare.status is Status.FAIL and "no IPv4 address" in bare.detail and "ip addr add" in bare.fix
    assert good.status is Status.OK and "192.0.2.2/24" in good.detail
    (none,) = judge_serve_interfaces([], links, "METALBUS_RACK_DHCP_SERVE_INTERFACES")
    assert none.status is Status.OK and "presence only" in none.detail


def test_routes_are_read_from_ip_route_get() -> None:
    direct = b'[{"dst":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[],"uid":0,"cache":[]}]'
    routed = b'[{"dst":"10.9.9.9","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2"}]'
    assert parse_route(direct) == "dev eth0"
    assert parse_route(routed) == "via 192.0.2.1 dev eth0"
    assert parse_route(b"[]") is None
    assert peer_in(IPv4Interface("10.0.0.1/24")) == IPv4Address("10.0.0.2"), "not the rack's own address"


def test_bmc_networks_need_a_route_and_are_never_probed() -> None:
    bmc, other = IPv4Interface("10.0.0.2/24"), IPv4Interface("10.1.0.2/24")
    routed = judge_bmc_networks([bmc], {bmc: "dev eth1"})
    assert routed.status is Status.OK and "10.0.0.0/24 dev eth1" in routed.detail and "not probed" in routed.detail
    unrouted = judge_bmc_networks([bmc, other], {bmc: "dev eth1", other: None})
    assert unrouted.status is Status.FAIL and "10.1.0.0/24" in unrouted.detail and "10.0.0.0" not in unrouted.detail
    assert judge_bmc_networks([], {}).status is Status.WARN


# -- boot files -------------------------------------------------------------------------------------------------
def test_the_amd64_boot_files_are_what_rack_dhcp_hands_out_and_what_they_load_next() -> None:
    assert boot_files_for(AMD64) == [
        "lpxelinux.0", "ldlinux.c32", "bootx64.efi", "grubx64.efi", "images/bootx64.efi", "images/grubx64.efi",
    ]  # fmt: skip


def test_boot_root_without_the_loaders_fails_and_names_them(tmp_path: Path) -> None:
    assert check_boot_files(tmp_path / "absent").status is Status.FAIL
    (tmp_path / "lpxelinux.0").write_bytes(b"loader")
    partial = check_boot_files(tmp_path)
    assert partial.status is Status.FAIL and "lpxelinux.0" not in partial.detail and "ldlinux.c32" in partial.detail
    assert f"scripts/boot-files.sh {tmp_path}" in partial.fix
    for name in boot_files_for(AMD64):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"loader")
    complete = check_boot_files(tmp_path)
    assert complete.status is Status.OK and "arm64 absent (grubaa64.efi" in complete.detail


# -- NATS, the region -------------------------------------------------------------------------------------------
def region_health(**overrides: object) -> RegionHealth:
    values: dict[str, object] = {
        "replica_id": "region-1",
        "version": "0.1.0",
        "database_reachable": True,
        "database_error": None,
        "migration_level": 7,
        "migration_target": 7,
        "started_at": datetime(2026, 11, 25, tzinfo=UTC),
    }
    return RegionHealth.model_validate(values | overrides)


def test_the_region_is_healthy_only_with_its_database_at_the_expected_schema() -> None:
    assert judge_region(region_health()).status is Status.OK
    no_database = judge_region(region_health(database_reachable=False, database_error="connection refused"))
    assert no_database.status is Status.FAIL and "connection refused" in no_database.detail
    behind = judge_region(region_health(migration_level=6))
    assert behind.status is Status.WARN and behind.fix == "run `metalbus db migrate`"


def test_services_sharing_nats_address_and_user_are_checked_once() -> None:
    settings = rack().by_component()
    settings["rack-power"] = RackPowerSettings(nats_url="nats://127.0.0.1:4222", nats_user="power")
    groups = credential_groups(settings)
    assert groups == {
        ("nats://127.0.0.1:4222", None): ["rack-dhcp", "rack-tftp", "rack-proxy"],
        ("nats://127.0.0.1:4222", "power"): ["rack-power"],
    }


# -- settings, output, exit code --------------------------------------------------------------------------------
def test_embedded_environment_values_are_read_like_the_service_reads_them() -> None:
    environment = {
        "METALBUS_RACK_PROXY_SYSLOG_PORTS": "[15247]",
        "METALBUS_RACK_PROXY_DNS_PORT": "15353",
        "METALBUS_RACK_TFTP_PORT": "1",  # another service's variable: ignored
    }
    proxy = settings_from_environment(RackProxySettings, environment)
    assert (proxy.syslog_ports, proxy.dns_port) == ([15247], 15353)


CHECKS = [
    Check("port 69/udp (TFTP)", Status.FAIL, "0.0.0.0:69/udp is in use by pid 4242: in.tftpd", "stop pid 4242"),
    Check("boot files", Status.OK, "amd64 BIOS and UEFI loaders present"),
    Check("BMC networks", Status.WARN, "this rack announces no network", "give the host an interface"),
]


def test_the_table_shows_each_check_with_its_status_and_fix() -> None:
    console = Console(width=200, record=True)
    console.print(checks_table(CHECKS))
    text = console.export_text()
    failing = next(line for line in text.splitlines() if "port 69/udp (TFTP)" in line)
    assert "FAIL" in failing and "pid 4242" in failing and "stop pid 4242" in failing
    assert "3 checks, 1 failed" in text


def test_exit_code_is_one_only_when_a_check_failed() -> None:
    assert exit_code(CHECKS) == 1
    assert exit_code(CHECKS[1:]) == 0, "a warning alone does not fail the preflight"
    assert checks_as_json(CHECKS[:1]) == [
        {"name": "port 69/udp (TFTP)", "status": "fail", "detail": CHECKS[0].detail, "fix": "stop pid 4242"}
    ]


def test_without_leave_to_ask_the_regions_health_its_answer_to_a_rack_question_proves_it_answers() -> None:
    refused = Timeout("no reply on region.health.get within 3s")
    fallback = judge_region_answers(refused, SubnetList(subnets=[]), " as rack-rack-1")
    assert fallback.status is Status.OK
    assert "answers region.subnets.list (0 subnets)" in fallback.detail and "not checked" in fallback.detail
    assert judge_region_answers(region_health(), refused, "").status is Status.OK
    silent = judge_region_answers(refused, Unavailable("no service is answering on region.subnets.list"), "")
    assert silent.status is Status.FAIL and "no service is answering" in silent.detail
