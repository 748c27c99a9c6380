"""The lab's network: namespace, provisioning bridge, the rack's veth, one tap per VM; and their removal.

Everything is made with iproute2. The bridge forwards at once (``forward_delay 0 stp_state 0``) and carries the
BMC addresses; the rack's end of the veth pair stays in the root namespace so that rack-dhcp (which binds to an
interface name) serves the VMs and rack-power reaches the BMCs through it. Removal is idempotent: deleting the
namespace takes the bridge, the taps and the veth pair (both ends) with it.
"""

import subprocess
from pathlib import Path

from metalbus.lab.topology import LabPlan

COMMAND_TIMEOUT_S = 10.0


class LabNetworkError(RuntimeError):
    """An ``ip`` command failed."""


def run_ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise LabNetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def create_network(plan: LabPlan) -> None:
    """Build the namespace and its links; raises LabNetworkError (the caller removes what was made)."""
    inside = ("-n", plan.namespace)
    run_ip("netns", "add", plan.namespace)
    run_ip(*inside, "link", "set", "lo", "up")
    run_ip(*inside, "link", "add", plan.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
    run_ip("link", "add", plan.rack_interface, "type", "veth", "peer", "name", plan.lab_veth)
    run_ip("link", "set", plan.lab_veth, "netns", plan.namespace)
    run_ip(*inside, "link", "set", plan.lab_veth, "master", plan.bridge)
    for vm in plan.vms:
        run_ip(*inside, "tuntap", "add", "dev", vm.tap, "mode", "tap")
        run_ip(*inside, "link", "set", vm.tap, "master", plan.bridge)
    prefix = plan.spec.subnet.prefixlen
    for vm in plan.vms:
        run_ip(*inside, "address", "add", f"{vm.bmc_address}/{prefix}", "dev", plan.bridge)
    for device in (plan.lab_veth, *(vm.tap for vm in plan.vms), plan.bridge):
        run_ip(*inside, "link", "set", device, "up")
    run_ip("address", "add", plan.rack_interface_cidr, "dev", plan.rack_interface)
    run_ip("link", "set", plan.rack_interface, "up")


def remove_network(namespace: str, rack_interface: str) -> list[str]:
    """Delete the namespace and the rack's veth end if they exist; the names of what was removed."""
    removed = []
    if namespace_exists(namespace):
        run_ip("netns", "delete", namespace)
        removed.append(namespace)
    if link_exists(rack_interface):  # normally goes with its peer; left over if never moved into the namespace
        try:
            run_ip("link", "delete", rack_interface)
        except LabNetworkError:
            if link_exists(rack_interface):  # else: the kernel removed it with its peer meanwhile
                raise
        removed.append(rack_interface)
    return removed


def namespace_exists(namespace: str) -> bool:
    return Path("/run/netns", namespace).exists()


def link_exists(name: str, namespace: str | None = None) -> bool:
    where = ("-n", namespace) if namespace else ()
    done = subprocess.run(
        ["ip", *where, "link", "show", "dev", name], capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    return done.returncode == 0
