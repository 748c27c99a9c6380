"""Settings of rack-proxy: METALBUS_RACK_PROXY_* or the [rack-proxy] table of the METALBUS_CONFIG file.

The machines' metadata (``/MAAS/…`` on port 5248) is served by rack-tftp's HTTP server, which mounts this
package's metadata app: one HTTP server per rack, as on a MAAS rack. rack-proxy itself runs DNS, the syslog
relay and the APT proxy.
"""

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.contracts.dns import DEFAULT_INTERNAL_DOMAIN
from metalbus.rack_presence import RackServiceSettings


class RackProxySettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_PROXY_", extra="ignore")
    SECTION: ClassVar[str] = "rack-proxy"

    listen_address: str = "0.0.0.0"
    # DNS
    dns_port: int = Field(default=53, ge=0, le=65535, description="DNS over UDP and TCP; 0: off.")
    dns_domain: str = Field(default=DEFAULT_INTERNAL_DOMAIN, description="The internal domain this rack answers.")
    dns_upstreams: list[str] = Field(
        default_factory=list, description='Resolvers for other names, "host" or "host:port" (JSON list).'
    )
    dns_zone_refresh_s: float = Field(default=5.0, gt=0, le=3600)
    dns_forward_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # syslog
    syslog_ports: list[int] = Field(
        default_factory=lambda: [514, 5247], description="UDP and TCP ports of the syslog relay (JSON list)."
    )
    syslog_rate_per_source: float = Field(default=200.0, gt=0)
    syslog_burst_per_source: float = Field(default=1000.0, gt=0)
    syslog_batch_max: int = Field(default=200, ge=1, le=5000)
    syslog_batch_interval_s: float = Field(default=0.5, gt=0, le=60)
    syslog_queue_max: int = Field(default=20_000, ge=1)
    # APT
    apt_proxy_port: int = Field(default=8000, ge=0, le=65535, description="APT cache-and-forward proxy; 0: off.")
    apt_cache_dir: Path = Field(
        default=Path("/var/cache/metalbus/apt-proxy"),
        description="Emptied at start; a directory holding other files is refused.",
    )
    apt_cache_max_bytes: int = Field(default=20 * 1024**3, ge=1)
    apt_max_object_bytes: int = Field(default=2 * 1024**3, ge=1)
    apt_index_ttl_s: float = Field(default=60.0, ge=0)
    apt_mirror_url: str | None = Field(default=None, description="Upstream for plain /path requests.")
    apt_upstream_proxy: str | None = None
    apt_upstream_timeout_s: float = Field(default=120.0, gt=0)
