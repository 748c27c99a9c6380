"""The stack's components in start order: how each is launched and what "ready" means for it."""

import os
import signal
import sys
from dataclasses import dataclass, field
from enum import StrEnum

from metalbus.contracts.racks import RackServiceKind
from metalbus.stack.config import StackLayout, StackSettings, rack_secret
from metalbus.stack.nats import nats_server_argv
from metalbus.stack.postgres import PostgresCluster


class ReadyCheck(StrEnum):
    NATS = "nats"
    POSTGRES = "postgres"
    REGION_REPLICA = "region-replica"
    API = "api"
    RACK_SERVICE = "rack-service"


@dataclass(frozen=True)
class Component:
    name: str
    check: ReadyCheck
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    stop_signal: int = signal.SIGTERM


def base_env() -> dict[str, str]:
    """What every component inherits: the basics, plus the operator's METALBUS_* settings and config file
    (the launcher then sets the addresses and ports it chose on top)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env |= {
        name: value
        for name, value in os.environ.items()
        if name.startswith("METALBUS_") and not name.startswith("METALBUS_STACK_")
    }
    return env


def python_module(module: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module)


def stack_components(settings: StackSettings, layout: StackLayout, cluster: PostgresCluster) -> list[Component]:
    nats_url = f"nats://{settings.host}:{settings.nats_port}"
    secret = rack_secret(layout)
    components = [
        Component(
            "nats",
            ReadyCheck.NATS,
            argv=nats_server_argv(
                host=settings.host,
                port=settings.nats_port,
                monitor_port=settings.nats_monitor_port,
                store_dir=layout.nats_store,
                binary=settings.nats_server_binary,
            ),
            env=base_env(),
            ports=(settings.nats_port, settings.nats_monitor_port),
        ),
        Component("postgres", ReadyCheck.POSTGRES, ports=(settings.postgres_port,), stop_signal=signal.SIGINT),
    ]
    for index in range(1, settings.region_replicas + 1):
        components.append(
            Component(
                f"region-{index}",
                ReadyCheck.REGION_REPLICA,
                argv=python_module("metalbus_region"),
                env=base_env()
                | {
                    "METALBUS_REGION_NATS_URL": nats_url,
                    "METALBUS_REGION_DATABASE_DSN": cluster.dsn(),
                    "METALBUS_REGION_REPLICA_ID": f"region-{index}",
                    "METALBUS_REGION_RACK_SHARED_SECRET": secret,
                },
            )
        )
    components.append(
        Component(
            "api",
            ReadyCheck.API,
            argv=python_module("metalbus_api"),
            env=base_env()
            | {
                "METALBUS_API_NATS_URL": nats_url,
                "METALBUS_API_HOST": settings.host,
                "METALBUS_API_PORT": str(settings.api_port),
            },
            ports=(settings.api_port,),
        )
    )
    rack_ports: dict[RackServiceKind, dict[str, int]] = {
        RackServiceKind.DHCP: {"PORT": settings.dhcp_port},
        RackServiceKind.TFTP: {"PORT": settings.tftp_port, "HTTP_PORT": settings.rack_http_port},
        RackServiceKind.POWER: {},
        RackServiceKind.PROXY: {
            "HTTP_PORT": settings.rack_http_port,
            "APT_PROXY_PORT": settings.apt_proxy_port,
            "DNS_PORT": settings.dns_port,
            "SYSLOG_PORT": settings.syslog_port,
        },
    }
    for kind, ports in rack_ports.items():
        prefix = "METALBUS_" + kind.value.upper().replace("-", "_") + "_"
        env = base_env() | {
            prefix + "NATS_URL": nats_url,
            prefix + "RACK_ID": settings.rack_id,
            prefix + "HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
            prefix + "SHARED_SECRET": secret,
        }
        env |= {prefix + name: str(port) for name, port in ports.items()}
        module = "metalbus_" + kind.value.replace("-", "_")
        components.append(Component(kind.value, ReadyCheck.RACK_SERVICE, argv=python_module(module), env=env))
    return components
