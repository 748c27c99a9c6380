"""Every preflight check of a rack host, in the order the table shows them."""

import asyncio

from metalbus.doctor.boot_checks import check_boot_files
from metalbus.doctor.bus_checks import check_bus
from metalbus.doctor.interface_checks import check_bmc_networks, host_links, judge_serve_interfaces
from metalbus.doctor.port_checks import check_ports
from metalbus.doctor.rack_config import RackHostSettings
from metalbus.doctor.report import Check


def run_preflight(rack: RackHostSettings, timeout_s: float) -> list[Check]:
    """Ports, interfaces, boot files, BMC networks, then NATS and the region (each wait bounded by ``timeout_s``)."""
    serve_variable = str(rack.dhcp.model_config.get("env_prefix", "")) + "SERVE_INTERFACES"
    checks = check_ports(rack)
    checks += judge_serve_interfaces(rack.dhcp.serve_interfaces, host_links(), serve_variable)
    checks.append(check_boot_files(rack.tftp.boot_root))
    checks.append(check_bmc_networks(rack.power.interfaces))
    checks += asyncio.run(check_bus(rack.by_component(), timeout_s))
    return checks
