"""The stack's components in start order: how each is launched and what "ready" means for it."""

import json
import os
import signal
import sys
from dataclasses import dataclass, field, replace
from enum import StrEnum

from metalbus.contracts.racks import RackServiceKind
from metalbus.nats_auth import API_USER, rack_user
from metalbus.stack.config import StackLayout, StackSettings, metrics_ports, rack_secret
from metalbus.stack.nats import nats_login_env, nats_server_argv, stack_auth_config, stack_nats_credentials
from metalbus.stack.postgres import PostgresCluster


class ReadyCheck(StrEnum):
    NATS = "nats"
    POSTGRES = "postgres"
    REGION_REPLICA = "region-replica"
    API = "api"
    RACK_SERVICE = "rack-service"
    RELAY = "relay"


@dataclass(frozen=True)
class Component:
    name: str
    check: ReadyCheck
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    stop_signal: int = signal.SIGTERM
    service: RackServiceKind | None = None
    rack_id: str | None = None
    """The rack a rack service or a relay belongs to."""
    namespace: str | None = None
    """The network namespace it runs in (an extra rack's); None: the stack's own."""


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


def planned_components(settings: StackSettings) -> list[Component]:
    """Every component in start order, without how to launch it: enough for status and down."""
    plan = [
        Component("nats", ReadyCheck.NATS, ports=(settings.nats_port, settings.nats_monitor_port)),
        Component("postgres", ReadyCheck.POSTGRES, ports=(settings.postgres_port,), stop_signal=signal.SIGINT),
    ]
    plan += [Component(f"region-{i}", ReadyCheck.REGION_REPLICA) for i in range(1, settings.region_replicas + 1)]
    plan.append(Component("api", ReadyCheck.API, ports=(settings.api_port,)))
    plan += [
        Component(kind.value, ReadyCheck.RACK_SERVICE, service=kind, rack_id=settings.rack_id)
        for kind in RackServiceKind
    ]
    for rack in settings.extra_racks:
        plan.append(
            Component(f"nats-relay@{rack.rack_id}", ReadyCheck.RELAY, rack_id=rack.rack_id, namespace=rack.namespace)
        )
        plan += [
            Component(
                f"{kind.value}@{rack.rack_id}",
                ReadyCheck.RACK_SERVICE,
                service=kind,
                rack_id=rack.rack_id,
                namespace=rack.namespace,
            )
            for kind in RackServiceKind
        ]
    return plan


def in_namespace(namespace: str | None, argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: the pid stays the program's own)."""
    return argv if namespace is None else ("ip", "netns", "exec", namespace, *argv)


def rack_service_ports(settings: StackSettings, kind: RackServiceKind) -> dict[str, int]:
    return {
        RackServiceKind.DHCP: {"PORT": settings.dhcp_port, "HTTP_PORT": settings.rack_http_port},
        RackServiceKind.TFTP: {
            "PORT": settings.tftp_port,
            "HTTP_PORT": settings.rack_http_port,
            "SYSLOG_PORT": settings.syslog_port,  # named on booting machines' command lines
        },
        RackServiceKind.POWER: {},
        RackServiceKind.PROXY: {"APT_PROXY_PORT": settings.apt_proxy_port, "DNS_PORT": settings.dns_port},
    }[kind]


def stack_components(settings: StackSettings, layout: StackLayout, cluster: PostgresCluster) -> list[Component]:
    """The planned components with their command lines and environments, ready to launch."""
    nats_url = f"nats://{settings.host}:{settings.nats_port}"
    secret = rack_secret(layout)
    replicas = [c.name for c in planned_components(settings) if c.check is ReadyCheck.REGION_REPLICA]
    credentials = stack_nats_credentials(layout.nats_store, replicas, settings.rack_ids)
    metrics_port_of = metrics_ports(settings)
    extra_racks = {rack.rack_id: rack for rack in settings.extra_racks}

    def with_launch(component: Component) -> Component:
        match component.check:
            case ReadyCheck.NATS:
                argv = nats_server_argv(
                    host=settings.host,
                    port=settings.nats_port,
                    monitor_port=settings.nats_monitor_port,
                    store_dir=layout.nats_store,
                    binary=settings.nats_server_binary,
                    config=stack_auth_config(layout.nats_store),
                )
                return replace(component, argv=argv, env=base_env())
            case ReadyCheck.POSTGRES:
                return component  # PostgresCluster starts it
            case ReadyCheck.REGION_REPLICA:
                env = {
                    "METALBUS_REGION_NATS_URL": nats_url,
                    "METALBUS_REGION_DATABASE_DSN": cluster.dsn(),
                    "METALBUS_REGION_REPLICA_ID": component.name,
                    "METALBUS_REGION_RACK_SHARED_SECRET": secret,
                    "METALBUS_REGION_METRICS_PORT": str(metrics_port_of.get(component.name, 0)),
                }
                env |= nats_login_env("METALBUS_REGION_", credentials[component.name])
                return replace(component, argv=python_module("metalbus_region"), env=base_env() | env)
            case ReadyCheck.API:
                env = {
                    "METALBUS_API_NATS_URL": nats_url,
                    "METALBUS_API_HOST": settings.host,
                    "METALBUS_API_PORT": str(settings.api_port),
                }
                env |= nats_login_env("METALBUS_API_", credentials[API_USER])
                return replace(component, argv=python_module("metalbus_api"), env=base_env() | env)
            case ReadyCheck.RELAY:
                assert component.namespace is not None
                relay = ("--namespace", component.namespace, "--port", str(settings.nats_port))
                argv = (*python_module("metalbus.stack.namespace_relay"), *relay, "--to-host", settings.host)
                return replace(component, argv=argv, env=base_env())
            case ReadyCheck.RACK_SERVICE:
                assert component.service is not None and component.rack_id is not None
                kind, rack_id = component.service, component.rack_id
                extra = extra_racks.get(rack_id)
                prefix = "METALBUS_" + kind.value.upper().replace("-", "_") + "_"
                # An extra rack reaches NATS through its relay, on its own namespace's loopback.
                nats_host = settings.host if extra is None else "127.0.0.1"
                env = {
                    prefix + "NATS_URL": f"nats://{nats_host}:{settings.nats_port}",
                    prefix + "RACK_ID": rack_id,
                    prefix + "HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
                    prefix + "SHARED_SECRET": secret,
                    prefix + "METRICS_PORT": str(metrics_port_of.get(component.name, 0)),
                }
                env |= {prefix + name: str(port) for name, port in rack_service_ports(settings, kind).items()}
                env |= nats_login_env(prefix, credentials[rack_user(rack_id)])
                if kind is RackServiceKind.DHCP:
                    interfaces = settings.dhcp_interfaces if extra is None else extra.dhcp_interfaces
                    env[prefix + "SERVE_INTERFACES"] = json.dumps(interfaces)
                if kind is RackServiceKind.TFTP:
                    env[prefix + "BOOT_ROOT"] = str(layout.boot_root)
                if kind is RackServiceKind.PROXY:
                    env[prefix + "SYSLOG_PORTS"] = json.dumps([settings.syslog_port])
                    cache = "apt-cache" if extra is None else f"apt-cache-{rack_id}"
                    env[prefix + "APT_CACHE_DIR"] = str(layout.root / cache)
                module = "metalbus_" + kind.value.replace("-", "_")
                argv = in_namespace(component.namespace, python_module(module))
                return replace(component, argv=argv, env=base_env() | env)

    return [with_launch(component) for component in planned_components(settings)]
