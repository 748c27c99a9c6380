"""Is a component healthy? One probe per kind of component, shared by `up` (waiting) and `status`."""

import asyncio
import socket
from dataclasses import dataclass
from datetime import datetime

import httpx

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.health import ReplicaRollCall
from metalbus.contracts.racks import RackListQuery, RackServiceKind
from metalbus.netns import NamespaceError, NetworkNamespace
from metalbus.stack.components import Component, ReadyCheck
from metalbus.stack.config import StackSettings
from metalbus.stack.postgres import ClusterError, PostgresCluster
from metalbus.subjects import RACK_LIST, REGION_ROLL_CALL


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    detail: str


@dataclass
class Probes:
    settings: StackSettings
    cluster: PostgresCluster
    # Rack services count only if heard from since this time (`up` sets it: a row left by an earlier run of
    # the stack must not pass for a service that just started).
    since: datetime | None = None
    bus: Bus | None = None

    async def probe(self, component: Component) -> ProbeResult:
        try:
            match component.check:
                case ReadyCheck.NATS:
                    return await self._nats()
                case ReadyCheck.POSTGRES:
                    await self.cluster.wait_ready(timeout_s=1.0)
                    return ProbeResult(True, f"accepting connections on {self.settings.postgres_port}")
                case ReadyCheck.REGION_REPLICA:
                    return await self._region_replica(component.name)
                case ReadyCheck.API:
                    return await self._api()
                case ReadyCheck.RACK_SERVICE:
                    assert component.service is not None and component.rack_id is not None
                    return await self._rack_service(component.rack_id, component.service)
                case ReadyCheck.RELAY:
                    assert component.namespace is not None
                    return await self._relay(component.namespace)
        except (httpx.HTTPError, MetalbusError, ClusterError, NamespaceError, OSError, ValueError) as error:
            return ProbeResult(False, f"{type(error).__name__}: {error}")

    async def _nats(self) -> ProbeResult:
        url = f"http://{self.settings.host}:{self.settings.nats_monitor_port}/healthz?js-enabled-only=true"
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(url)
        if response.status_code != 200:
            return ProbeResult(False, f"/healthz answered {response.status_code}")
        return ProbeResult(True, f"JetStream up, clients on {self.settings.nats_port}")

    async def _region_replica(self, replica_id: str) -> ProbeResult:
        if self.bus is None:
            return ProbeResult(False, "no bus connection")
        present = await self.bus.gather(REGION_ROLL_CALL, ReplicaRollCall(), window=0.3)
        if any(reply.replica_id == replica_id for reply in present):
            return ProbeResult(True, "answers the roll call")
        return ProbeResult(False, "does not answer the roll call")

    async def _api(self) -> ProbeResult:
        url = f"http://{self.settings.host}:{self.settings.api_port}/api/v1/health"
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(url)
        overall = response.json().get("status", "?")
        # The api is healthy when it serves the report; what the report says is every other row's business.
        serving = response.status_code in (200, 503) and overall in ("ok", "degraded")
        return ProbeResult(serving, f"serving; GET /api/v1/health: {response.status_code} {overall}")

    async def whole_stack(self) -> ProbeResult:
        """The api's report on NATS, PostgreSQL, the replicas and this stack's own racks. Other racks recorded
        in the database (an earlier rack id, a decommissioned rack) do not hold up this stack."""
        url = f"http://{self.settings.host}:{self.settings.api_port}/api/v1/health"
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                report = (await client.get(url)).json()
        except (httpx.HTTPError, ValueError) as error:
            return ProbeResult(False, f"{type(error).__name__}: {error}")
        racks = {rack.get("rack_id"): rack for rack in report.get("racks", [])}
        problems = [name for name in ("nats", "database") if not report.get(name, {}).get("ok")]
        if len(report.get("replicas", [])) < self.settings.region_replicas:
            problems.append(f"{len(report.get('replicas', []))} of {self.settings.region_replicas} replicas")
        for rack_id in self.settings.rack_ids:
            rack = racks.get(rack_id)
            if rack is None or not all(service.get("healthy") for service in rack.get("services", [])):
                problems.append(f"rack {rack_id}")
        return ProbeResult(not problems, "healthy" if not problems else "not healthy: " + ", ".join(problems))

    async def _rack_service(self, rack_id: str, kind: RackServiceKind) -> ProbeResult:
        if self.bus is None:
            return ProbeResult(False, "no bus connection")
        racks = (await self.bus.request(RACK_LIST, RackListQuery(), timeout=2.0)).racks
        for rack in racks:
            if rack.rack_id != rack_id:
                continue
            for service in rack.services:
                if service.service is kind and (self.since is None or service.last_seen >= self.since):
                    seen = service.last_seen.isoformat(timespec="seconds")
                    return ProbeResult(service.healthy, f"rack {rack.rack_id}, last heartbeat {seen}")
        return ProbeResult(False, f"not announced on rack {rack_id}")

    async def _relay(self, namespace: str) -> ProbeResult:
        """Does the relay accept connections on NATS's port inside its namespace?"""
        probe = NetworkNamespace(namespace).open_socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(probe, ("127.0.0.1", self.settings.nats_port)), 2.0
            )
        except TimeoutError:
            return ProbeResult(False, f"no answer on 127.0.0.1:{self.settings.nats_port} in {namespace}")
        finally:
            probe.close()
        return ProbeResult(True, f"relays 127.0.0.1:{self.settings.nats_port} in namespace {namespace}")
