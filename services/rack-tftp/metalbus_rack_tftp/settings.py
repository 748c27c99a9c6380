"""Settings of rack-tftp: METALBUS_RACK_TFTP_* or the [rack-tftp] table of the METALBUS_CONFIG file."""

from ipaddress import IPv4Address
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.contracts.boot import RACK_HTTP_PORT, RACK_SYSLOG_PORT
from metalbus.rack_presence import RackServiceSettings
from metalbus_rack_tftp.tftp_server import TftpServerSettings


class RackTftpSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_TFTP_", extra="ignore")
    SECTION: ClassVar[str] = "rack-tftp"

    listen_address: str = Field(default="0.0.0.0", description="IPv4 address TFTP and HTTP boot listen on.")
    port: int = Field(default=69, ge=0, le=65535, description="TFTP (UDP); 0: any free port.")
    http_port: int = Field(
        default=RACK_HTTP_PORT, ge=0, le=65535, description="HTTP boot (and /MAAS); 0: any free port."
    )
    syslog_port: int = Field(
        default=RACK_SYSLOG_PORT,
        ge=0,
        le=65535,
        description="The rack's syslog relay (rack-proxy) port, named on booting machines' command lines; 0: none.",
    )
    boot_root: Path = Field(
        default=Path(".metalbus/boot"), description="Bootloaders and images/ (filled by scripts/boot-files.sh)."
    )
    kernels_over_http: bool = Field(
        default=True, description="Boot configs load kernels over HTTP where the loader can (TFTP otherwise)."
    )
    rack_address: IPv4Address | None = Field(
        default=None, description="This rack's address in boot configs when the reached address is unknown."
    )
    region_timeout_s: float = Field(default=2.0, gt=0, le=30, description="Wait for the region's boot answer.")
    boot_config_ttl_s: float = Field(default=10.0, ge=0, le=3600, description="Cache of the region's answers.")
    boot_config_stale_s: float = Field(
        default=300.0, ge=0, le=86400, description="Serve an expired answer this long while the region is away."
    )
    max_concurrent_transfers: int = Field(default=512, ge=1, le=65536)
    max_blksize: int = Field(default=1468, ge=512, le=65464)
    max_windowsize: int = Field(default=64, ge=1, le=65535)
    retry_timeout_s: float = Field(default=1.0, gt=0, le=255)
    max_retry_timeout_s: float = Field(default=5.0, gt=0, le=255)
    max_retries: int = Field(default=5, ge=0, le=50)
    http_stall_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    metadata_max_upload_bytes: int = Field(
        default=768 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest signal a machine may POST (under NATS's 1 MiB).",
    )
    metadata_read_timeout_s: float = Field(default=5.0, gt=0, le=60)
    metadata_signal_timeout_s: float = Field(default=15.0, gt=0, le=120)

    def tftp_settings(self) -> TftpServerSettings:
        return TftpServerSettings(
            max_concurrent_transfers=self.max_concurrent_transfers,
            max_blksize=self.max_blksize,
            max_windowsize=self.max_windowsize,
            retry_timeout_s=self.retry_timeout_s,
            max_retry_timeout_s=self.max_retry_timeout_s,
            max_retries=self.max_retries,
            open_timeout_s=self.region_timeout_s + 3.0,
        )
