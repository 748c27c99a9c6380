"""Is each inbound port of the rack services free, or held by the rack service meant to hold it?

``planned_bindings`` (catalogue + settings → what the rack binds) and ``judge_port`` (what was found → a Check)
are pure; ``check_binding`` looks at the kernel's tables and, when nobody holds the port, tries to bind it.
"""

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from metalbus.doctor.rack_config import RackHostSettings
from metalbus.doctor.report import Check, failed, ok, warned
from metalbus.doctor.socket_owners import PortHolder, port_holders
from metalbus.ports import PORTS, PortSpec, Protocol, SettingRef

WILDCARD = "0.0.0.0"


@dataclass(frozen=True)
class Binding:
    """One socket a rack service binds: ``component`` listens on ``address:port/protocol``."""

    spec: PortSpec
    protocol: Protocol
    address: str
    port: int
    variable: str

    @property
    def name(self) -> str:
        return f"port {self.port}/{self.protocol.value} ({self.spec.name})"

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol.value}"


def _address(spec: PortSpec, settings: object) -> str:
    return str(getattr(settings, spec.listen_address.field)) if spec.listen_address is not None else WILDCARD


def planned_bindings(rack: RackHostSettings, ports: Sequence[PortSpec] = PORTS) -> list[Binding]:
    """The rack services' inbound sockets with this host's settings (a port set to 0 is off: no binding)."""
    by_component = rack.by_component()
    bindings: list[Binding] = []
    for spec in ports:
        if not spec.rack_inbound or not isinstance(spec.production, SettingRef):
            continue
        settings = by_component[spec.component]
        if spec.bound_only_with is not None and not getattr(settings, spec.bound_only_with):
            continue
        for port in spec.production.ports_of(settings):
            bindings += [
                Binding(spec, protocol, _address(spec, settings), port, spec.production.variable)
                for protocol in spec.protocols
            ]
    return bindings


def is_component_process(command: str, component: str) -> bool:
    """``python -m metalbus_rack_tftp`` or the ``metalbus-rack-tftp`` console script."""
    module = "metalbus_" + component.replace("-", "_")
    return any(part.endswith((module, "metalbus-" + component)) for part in command.split())


def judge_port(binding: Binding, holders: Sequence[PortHolder], bind_error: OSError | None) -> Check:
    """The verdict on one port from who holds it, or (nobody visible) from our own attempt to bind it."""
    component = binding.spec.component
    move = f"or set {binding.variable} to a free port"
    if holders:
        foreign = [holder for holder in holders if not is_component_process(holder.command, component)]
        if not foreign:
            pids = ", ".join(str(holder.pid) for holder in holders)
            return ok(binding.name, f"{binding.where} held by {component} (pid {pids})")
        holder = foreign[0]
        if holder.pid is None:
            return failed(
                binding.name,
                f"{binding.where} is in use by a process this user cannot see (socket inode {holder.inode})",
                f"run `metalbus doctor` as root to name it, stop it, {move}",
            )
        return failed(
            binding.name,
            f"{binding.where} is in use by pid {holder.pid}: {holder.command}",
            f"stop pid {holder.pid} ({holder.command.split(' ')[0]}) {move}",
        )
    return _judge_bind_attempt(binding, bind_error, move)


def _judge_bind_attempt(binding: Binding, bind_error: OSError | None, move: str) -> Check:
    if bind_error is None:
        return ok(binding.name, f"{binding.where} is free")
    if bind_error.errno == errno.EACCES:
        return warned(
            binding.name,
            f"{binding.where}: not free to this user (ports under 1024 need root or CAP_NET_BIND_SERVICE)",
            f"run doctor and {binding.spec.component} as root, or grant CAP_NET_BIND_SERVICE",
        )
    if bind_error.errno == errno.EADDRNOTAVAIL:
        return failed(
            binding.name,
            f"{binding.address} is not an address of this host",
            "set the listen address of " + binding.spec.component + " to one of this host's addresses",
        )
    if bind_error.errno == errno.EADDRINUSE:
        return failed(binding.name, f"{binding.where} is in use (its owner is not visible)", f"free it {move}")
    return failed(binding.name, f"{binding.where}: cannot bind: {bind_error.strerror}", f"free it {move}")


def try_bind(binding: Binding) -> OSError | None:
    """Bind and release at once; the error is the proof the port is not free. UDP without SO_REUSEADDR (with it,
    two UDP sockets could share the port). TCP with it, as the services' servers bind (asyncio and uvicorn set
    it): without it, connections of the last minute in TIME_WAIT would make a free port look taken."""
    kind = socket.SOCK_DGRAM if binding.protocol is Protocol.UDP else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if binding.protocol is Protocol.TCP:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((binding.address, binding.port))
        except OSError as error:
            return error
    return None


def check_binding(binding: Binding) -> Check:
    holders = port_holders(binding.protocol, binding.address, binding.port)
    return judge_port(binding, holders, None if holders else try_bind(binding))


def idle_ports(rack: RackHostSettings, ports: Sequence[PortSpec] = PORTS) -> list[Check]:
    """Rows for ports a service leaves unbound by its settings (rack-dhcp serving no interface)."""
    by_component = rack.by_component()
    rows = []
    for spec in ports:
        if spec.rack_inbound and spec.bound_only_with is not None and isinstance(spec.production, SettingRef):
            settings = by_component[spec.component]
            if not getattr(settings, spec.bound_only_with):
                numbers = ", ".join(str(port) for port in spec.production.ports_of(settings))
                protocols = "+".join(protocol.value for protocol in spec.protocols)
                prefix = str(type(settings).model_config.get("env_prefix", ""))
                rows.append(
                    ok(
                        f"port {numbers}/{protocols} ({spec.name})",
                        f"not used: {prefix}{spec.bound_only_with.upper()} is empty, {spec.component} binds nothing",
                    )
                )
    return rows


def check_ports(rack: RackHostSettings) -> list[Check]:
    return [check_binding(binding) for binding in planned_bindings(rack)] + idle_ports(rack)
