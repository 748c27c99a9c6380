"""THE catalogue of metalbus's network ports: one record per port, read by `metalbus doctor` and the README.

Where a setting decides a port, the number is that setting's default (read from the settings class, never
restated here); the few numbers no metalbus setting owns (nats-server's, PostgreSQL's, the BMCs') are data here.
"""

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings

from metalbus.stack.config import StackSettings, metrics_ports
from metalbus_api.settings import ApiSettings
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_rack_power.settings import RackPowerSettings
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_tftp.settings import RackTftpSettings
from metalbus_region.settings import RegionSettings

README_BEGIN_MARKER = "<!-- ports-table:begin -->"
README_END_MARKER = "<!-- ports-table:end -->"
# BMC ports are per machine (power parameters); these are the defaults rack-power uses when a machine names none
# (metalbus_rack_power.ipmi.DEFAULT_PORT, redfish.py; not imported: pyghmi would load with every CLI command).
IPMI_PORT = 623
REDFISH_PORT = 443


class Protocol(StrEnum):
    UDP = "udp"
    TCP = "tcp"


class Direction(StrEnum):
    INBOUND = "inbound"
    """The component listens; peers connect to it."""
    OUTBOUND = "outbound"
    """The component connects out to this port of another host."""


def ports_in(value: object) -> tuple[int, ...]:
    """The port numbers a setting's value holds: a number (0 means off), a list of numbers, or NATS URLs."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a port")
    if isinstance(value, int):
        return () if value == 0 else (value,)
    if isinstance(value, list | tuple):
        return tuple(port for item in value for port in ports_in(item))
    if isinstance(value, str):
        urls = [urlsplit(url.strip()) for url in value.split(",") if url.strip()]
        return tuple(url.port for url in urls if url.port is not None)
    raise TypeError(f"no port in {value!r}")


@dataclass(frozen=True)
class SettingRef:
    """One field of a settings class; its default is the port's default, its variable is how to change it."""

    settings: type[BaseSettings]
    field: str
    variable_name: str | None = None
    """When the field is shared by several services (``nats_url``): how to name the variable in docs."""

    @property
    def variable(self) -> str:
        if self.variable_name is not None:
            return self.variable_name
        return str(self.settings.model_config.get("env_prefix", "")) + self.field.upper()

    def default_ports(self) -> tuple[int, ...]:
        return ports_in(self.settings.model_fields[self.field].get_default(call_default_factory=True))

    def ports_of(self, settings: BaseSettings) -> tuple[int, ...]:
        """The ports this field holds in ``settings`` (an instance of the class, loaded from env/TOML)."""
        if not isinstance(settings, self.settings):
            raise TypeError(f"{type(settings).__name__} is not {self.settings.__name__}")
        return ports_in(getattr(settings, self.field))


@dataclass(frozen=True)
class DerivedPorts:
    """Ports computed from a setting (the embedded stack's metrics ports count up from one base)."""

    ports: tuple[int, ...]
    variable: str


PortSource = SettingRef | DerivedPorts | tuple[int, ...]


def ports_from(source: PortSource | None) -> tuple[int, ...]:
    if source is None:
        return ()
    if isinstance(source, SettingRef):
        return source.default_ports()
    return source.ports if isinstance(source, DerivedPorts) else source


@dataclass(frozen=True)
class PortSpec:
    """One port (or set of ports serving one purpose) of one component."""

    purpose: str
    component: str
    protocols: tuple[Protocol, ...]
    direction: Direction
    production: PortSource
    """A setting whose default is the production port, or the number(s) when no metalbus setting owns it."""
    embedded: PortSource | None = None
    """What `metalbus up` uses (a StackSettings field), when the embedded stack runs this component."""
    listen_address: SettingRef | None = None
    """The setting naming the address an inbound port is bound on (none: every address)."""
    note: str = ""
    bound_only_with: str | None = None
    """A settings field that must be non-empty for the component to bind the port at all (rack-dhcp binds
    its port only on the interfaces it serves)."""

    @property
    def name(self) -> str:
        """The purpose's first words: "DNS" of "DNS (internal domain, forwarding)"."""
        return self.purpose.split(" (")[0].split(":")[0]

    @property
    def production_ports(self) -> tuple[int, ...]:
        return ports_from(self.production)

    @property
    def embedded_ports(self) -> tuple[int, ...]:
        return ports_from(self.embedded)

    @property
    def rack_inbound(self) -> bool:
        """A port a rack host must leave free for (or see held by) its own rack services."""
        return self.component.startswith("rack-") and self.direction is Direction.INBOUND

    @property
    def variables(self) -> tuple[str, ...]:
        sources = (self.production, self.embedded)
        return tuple(source.variable for source in sources if isinstance(source, SettingRef | DerivedPorts))


def _stack(field: str) -> SettingRef:
    return SettingRef(StackSettings, field)


def _metrics(component: str, settings: type[BaseSettings]) -> PortSpec:
    """The /metrics port of a service; in the embedded stack one per process, counted up from one base."""
    embedded = metrics_ports(StackSettings.model_construct())
    own = tuple(port for name, port in embedded.items() if name == component or name.startswith(component + "-"))
    return PortSpec(
        purpose=f"Prometheus `/metrics` of {component}",
        component=component,
        protocols=(Protocol.TCP,),
        direction=Direction.INBOUND,
        production=SettingRef(settings, "metrics_port"),
        embedded=DerivedPorts(own, "METALBUS_STACK_METRICS_PORT_BASE"),
        listen_address=SettingRef(settings, "metrics_address"),
        note="0: off; listens on 127.0.0.1 unless `…_METRICS_ADDRESS` says otherwise",
    )


PORTS: tuple[PortSpec, ...] = (
    PortSpec(
        "NATS clients (every service connects here)",
        "nats-server",
        (Protocol.TCP,),
        Direction.INBOUND,
        SettingRef(RackDhcpSettings, "nats_url", "METALBUS_<SERVICE>_NATS_URL"),
        _stack("nats_port"),
        note="a rack host needs it outbound, to the region's NATS",
    ),
    PortSpec(
        "NATS monitoring", "nats-server", (Protocol.TCP,), Direction.INBOUND, (8222,), _stack("nats_monitor_port")
    ),
    PortSpec(
        "PostgreSQL (only the region connects)",
        "postgresql",
        (Protocol.TCP,),
        Direction.INBOUND,
        (5432,),
        _stack("postgres_port"),
        note="the embedded stack leaves 5432 to a system PostgreSQL",
    ),
    PortSpec(
        "HTTP API", "api", (Protocol.TCP,), Direction.INBOUND, SettingRef(ApiSettings, "port"), _stack("api_port")
    ),
    PortSpec(
        "DHCP",
        "rack-dhcp",
        (Protocol.UDP,),
        Direction.INBOUND,
        SettingRef(RackDhcpSettings, "port"),
        _stack("dhcp_port"),
        note="answers only on `METALBUS_RACK_DHCP_SERVE_INTERFACES` (none in the embedded stack)",
        bound_only_with="serve_interfaces",
    ),
    PortSpec(
        "TFTP",
        "rack-tftp",
        (Protocol.UDP,),
        Direction.INBOUND,
        SettingRef(RackTftpSettings, "port"),
        _stack("tftp_port"),
        SettingRef(RackTftpSettings, "listen_address"),
    ),
    PortSpec(
        "rack HTTP: boot files at the root, `/images/…`, metadata under `/MAAS/…`",
        "rack-tftp",
        (Protocol.TCP,),
        Direction.INBOUND,
        SettingRef(RackTftpSettings, "http_port"),
        _stack("rack_http_port"),
        SettingRef(RackTftpSettings, "listen_address"),
        note="mounts rack-proxy's metadata app",
    ),
    PortSpec(
        "APT cache-and-forward proxy",
        "rack-proxy",
        (Protocol.TCP,),
        Direction.INBOUND,
        SettingRef(RackProxySettings, "apt_proxy_port"),
        _stack("apt_proxy_port"),
        SettingRef(RackProxySettings, "listen_address"),
    ),
    PortSpec(
        "DNS (internal domain, forwarding)",
        "rack-proxy",
        (Protocol.UDP, Protocol.TCP),
        Direction.INBOUND,
        SettingRef(RackProxySettings, "dns_port"),
        _stack("dns_port"),
        SettingRef(RackProxySettings, "listen_address"),
    ),
    PortSpec(
        "syslog relay",
        "rack-proxy",
        (Protocol.UDP, Protocol.TCP),
        Direction.INBOUND,
        SettingRef(RackProxySettings, "syslog_ports"),
        _stack("syslog_port"),
        SettingRef(RackProxySettings, "listen_address"),
    ),
    _metrics("region", RegionSettings),
    _metrics("rack-dhcp", RackDhcpSettings),
    _metrics("rack-tftp", RackTftpSettings),
    _metrics("rack-power", RackPowerSettings),
    _metrics("rack-proxy", RackProxySettings),
    PortSpec("IPMI, to BMCs", "rack-power", (Protocol.UDP,), Direction.OUTBOUND, (IPMI_PORT,), (IPMI_PORT,)),
    PortSpec("Redfish, to BMCs", "rack-power", (Protocol.TCP,), Direction.OUTBOUND, (REDFISH_PORT,), (REDFISH_PORT,)),
)


def _numbers(ports: tuple[int, ...], protocols: tuple[Protocol, ...]) -> str:
    if not ports:
        return "off"
    return ", ".join(str(port) for port in ports) + "/" + "+".join(protocol.value for protocol in protocols)


def render_ports_table(ports: tuple[PortSpec, ...] = PORTS) -> str:
    """The README's ports table (markdown), one row per record."""
    lines = [
        "| purpose | component | direction | production default | embedded default (`up`) | set with | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in ports:
        embedded = _numbers(spec.embedded_ports, spec.protocols) if spec.embedded is not None else "—"
        variables = ", ".join(f"`{variable}`" for variable in spec.variables) or "—"
        cells = (
            spec.purpose,
            spec.component,
            spec.direction.value,
            _numbers(spec.production_ports, spec.protocols),
            embedded,
            variables,
            spec.note or "—",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
