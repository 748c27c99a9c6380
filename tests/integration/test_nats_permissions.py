"""NATS permissions per role, against a real nats-server started with the generated config: each role does its
job, and what it must not do is refused by the server (a permissions violation) and has no effect."""

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from metalbus.bus import Bus, ConnectOptions
from metalbus.contracts.apikeys import ApiKeyCreate
from metalbus.contracts.machines import MachineEvent, MachineStatus
from metalbus.contracts.racks import RackServiceKind
from metalbus.nats_auth import Roles
from metalbus.nats_credentials import Credential, auth_config_file, read_password, role_file, write_nats_credentials
from metalbus.stack.components import Component, ReadyCheck, stack_components
from metalbus.stack.config import StackLayout, StackSettings
from metalbus.stack.nats import nats_server_argv
from metalbus.stack.postgres import PostgresCluster
from metalbus.stack.processes import start_detached, stop_process
from metalbus.subjects import API_KEY_CREATE, EVENT_MACHINE, EVENTS_STREAM
from metalbus_api.app import create_app
from tests.conftest import NatsServer, free_port, wait_for_port
from tests.integration.test_api_auth import api_settings, authorized, in_process
from tests.integration.test_api_machines import manual_node
from tests.integration.test_region import eventually, running_region

RACK_SERVICES = tuple(kind.value for kind in RackServiceKind)
ROLES = Roles(region_replicas=("region-1", "region-2"), rack_ids=("rack-1", "rack-2"), integrator=True)
QUIET_S = 0.3  # how long "nothing arrived" is watched for
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


@dataclass
class SecuredNats(NatsServer):
    """A real nats-server whose users and permissions are the ones `metalbus nats-config` writes."""

    credentials: dict[str, Credential] = field(default_factory=dict)

    def start(self) -> None:
        self.credentials = write_nats_credentials(self.root / "auth", ROLES)
        argv = nats_server_argv(
            host="127.0.0.1", port=self.port, store_dir=self.root / "store", config=auth_config_file(self.root / "auth")
        )
        start_detached(argv, log_path=self.root / "nats.log", pid_path=self.pid_file, env=dict(os.environ))
        wait_for_port(self.port)

    def options_of(self, user: str) -> ConnectOptions:
        credential = self.credentials[user]
        return ConnectOptions(
            servers=(self.url,),
            name=user,
            user=user,
            password=credential.password,
            inbox_prefix=credential.inbox_prefix,
        )


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[SecuredNats]:
    server = SecuredNats(root=tmp_path, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Party:
    """One user's connection, with the errors the server sent it."""

    client: Client
    errors: list[str]

    async def refused(self, subject: str) -> bool:
        """Whether the server reported a permissions violation naming ``subject`` (after a round trip)."""
        await self.client.flush(timeout=2)
        await asyncio.sleep(0.05)  # the -ERR is handled by a callback task
        expected = f'permissions violation for {{}} "{subject.lower()}"'  # nats-py lowercases the -ERR text
        kinds = ("publish to", "subscription to")
        return any(expected.format(kind) in error.lower() for error in self.errors for kind in kinds)


@asynccontextmanager
async def connected(server: SecuredNats, user: str) -> AsyncIterator[Party]:
    errors: list[str] = []

    async def record(error: Exception) -> None:
        errors.append(str(error))

    credential = server.credentials[user]
    client = await nats.connect(
        server.url,
        user=user,
        password=credential.password,
        inbox_prefix=credential.inbox_prefix,
        error_cb=record,
        allow_reconnect=False,
        connect_timeout=2,
    )
    try:
        yield Party(client, errors)
    finally:
        await client.close()


async def answer_pong(msg: Msg) -> None:
    await msg.respond(b"pong")


@dataclass
class Received:
    """What a subscription got; ``keep`` is its callback."""

    messages: list[Msg] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def keep(self, msg: Msg) -> None:
        self.messages.append(msg)
        self.arrived.set()

    async def any_within(self, timeout_s: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True


async def test_a_rack_serves_its_own_power_commands_and_asks_the_region(secured_nats: SecuredNats) -> None:
    async with (
        connected(secured_nats, "rack-rack-1") as rack,
        connected(secured_nats, "region-1") as region,
    ):
        await rack.client.subscribe("rack.rack-1.power.command", queue="rack-power", cb=answer_pong)
        await region.client.subscribe("region.leases.offer", queue="region", cb=answer_pong)
        await rack.client.flush()
        await region.client.flush()

        assert (await region.client.request("rack.rack-1.power.command", b"on", timeout=2)).data == b"pong"
        assert (await rack.client.request("region.leases.offer", b"{}", timeout=2)).data == b"pong"
        assert rack.errors == [] and region.errors == []


async def test_a_rack_cannot_listen_to_another_racks_subjects(secured_nats: SecuredNats) -> None:
    async with (
        connected(secured_nats, "rack-rack-1") as rack,
        connected(secured_nats, "region-1") as region,
    ):
        overheard = Received()

        await rack.client.subscribe("rack.rack-2.>", cb=overheard.keep)
        assert await rack.refused("rack.rack-2.>")
        with pytest.raises(nats.errors.NoRespondersError):
            await region.client.request("rack.rack-2.power.command", b"off", timeout=1)
        assert not await overheard.any_within(QUIET_S)


async def test_a_rack_cannot_impersonate_the_region_nor_publish_events(secured_nats: SecuredNats) -> None:
    async with (
        connected(secured_nats, "rack-rack-1") as rack,
        connected(secured_nats, "api") as api,
        connected(secured_nats, "integrator") as integrator,
    ):
        events = Received()

        await integrator.client.subscribe("events.>", cb=events.keep)
        await integrator.client.flush()
        await rack.client.subscribe("region.machines.get", queue="region", cb=answer_pong)
        await rack.client.subscribe("region.>", cb=answer_pong)
        await rack.client.subscribe("_INBOX.region-1.>", cb=answer_pong)  # the region's replies
        assert await rack.refused("region.machines.get")
        assert await rack.refused("region.>")
        assert await rack.refused("_INBOX.region-1.>")
        with pytest.raises(nats.errors.NoRespondersError):
            await api.client.request("region.machines.get", b"{}", timeout=1)

        await rack.client.publish("events.machine.forged", b"{}")
        assert await rack.refused("events.machine.forged")
        assert not await events.any_within(QUIET_S)


async def test_the_api_cannot_serve_region_subjects(secured_nats: SecuredNats) -> None:
    async with connected(secured_nats, "api") as api, connected(secured_nats, "rack-rack-1") as rack:
        await api.client.subscribe("region.leases.offer", queue="region", cb=answer_pong)
        assert await api.refused("region.leases.offer")
        with pytest.raises(nats.errors.NoRespondersError):
            await rack.client.request("region.leases.offer", b"{}", timeout=1)


async def test_the_integrator_reads_events_but_publishes_and_asks_nothing(secured_nats: SecuredNats) -> None:
    async with (
        connected(secured_nats, "integrator") as integrator,
        connected(secured_nats, "region-1") as region,
    ):
        events = Received()

        await region.client.subscribe("region.health.get", queue="region", cb=answer_pong)
        await integrator.client.subscribe("events.>", cb=events.keep)
        await integrator.client.flush()
        await region.client.publish("events.machine.abc123", b"{}")
        await region.client.flush()
        assert await events.any_within() and events.messages[0].subject == "events.machine.abc123"

        await integrator.client.publish("events.machine.abc123", b"forged")
        assert await integrator.refused("events.machine.abc123")
        with pytest.raises(nats.errors.TimeoutError):  # refused by the server, so nobody ever answers
            await integrator.client.request("region.health.get", b"{}", timeout=QUIET_S)
        assert await integrator.refused("region.health.get")
        assert [msg.data for msg in events.messages] == [b"{}"]


async def test_the_integrator_cannot_make_the_stream_deliver_onto_another_subject(
    secured_nats: SecuredNats,
) -> None:
    region = await Bus.connect(secured_nats.options_of("region-1"))
    try:
        await region.ensure_streams()
        await region.client.jetstream().publish("events.machine.abc123", b"{}")
        async with (
            connected(secured_nats, "integrator") as integrator,
            connected(secured_nats, "rack-rack-1") as rack,
        ):
            delivered = Received()

            await rack.client.subscribe("rack.rack-1.power.command", cb=delivered.keep)
            await rack.client.flush()
            push_to_rack = ConsumerConfig(deliver_subject="rack.rack-1.power.command")
            with pytest.raises(nats.errors.TimeoutError):  # refused by the server: no JetStream reply
                await integrator.client.jetstream(timeout=QUIET_S).add_consumer(EVENTS_STREAM.name, push_to_rack)
            assert await integrator.refused(f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM.name}")
            assert not await delivered.any_within(QUIET_S)
    finally:
        await region.close()


async def test_region_replicas_share_the_queue_group_and_publish_events_into_jetstream(
    secured_nats: SecuredNats,
) -> None:
    replicas = [await Bus.connect(secured_nats.options_of(name)) for name in ROLES.region_replicas]
    try:
        answered_by: list[str] = []
        for name, replica in zip(ROLES.region_replicas, replicas, strict=True):

            async def answer(msg: Msg, name: str = name) -> None:
                answered_by.append(name)
                await msg.respond(b"pong")

            await replica.client.subscribe("region.machines.list", queue="region", cb=answer)
            await replica.client.flush()
        async with connected(secured_nats, "api") as api:
            for _ in range(20):
                await api.client.request("region.machines.list", b"{}", timeout=2)
        assert len(answered_by) == 20 and set(answered_by) == set(ROLES.region_replicas)

        await replicas[0].ensure_streams()
        event = MachineEvent(
            sequence=1, system_id="abc123", action=None, from_status=None, to_status=MachineStatus.NEW, at=NOW
        )
        await replicas[0].publish_event(EVENT_MACHINE, event, system_id="abc123")
        async with connected(secured_nats, "api") as api:
            reader = await api.client.jetstream().subscribe(
                "events.>", stream=EVENTS_STREAM.name, ordered_consumer=True, config=from_the_start()
            )
            msg = await reader.next_msg(timeout=2)
            assert msg.subject == "events.machine.abc123" and api.errors == []
        async with connected(secured_nats, "integrator") as integrator:
            stored = await integrator.client.jetstream().get_msg(EVENTS_STREAM.name, seq=1)
            assert stored.subject == "events.machine.abc123" and integrator.errors == []
    finally:
        for replica in replicas:
            await replica.close()


def from_the_start() -> ConsumerConfig:
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)


async def test_an_api_request_goes_through_a_real_region_replica_under_the_generated_config(
    secured_nats: SecuredNats, database_dsn: str
) -> None:
    region = secured_nats.credentials["region-1"]
    api = secured_nats.credentials["api"]
    async with running_region(
        secured_nats, database_dsn, "region-1", nats_user=region.user, nats_password=region.password
    ):
        admin = await Bus.connect(secured_nats.options_of("admin"))
        try:
            created = await eventually(
                lambda: admin.request(API_KEY_CREATE, ApiKeyCreate(name="perms"), timeout=2), lambda _: True
            )
        finally:
            await admin.close()
        app = create_app(api_settings(secured_nats, nats_user=api.user, nats_password=api.password))
        async with in_process(app, authorized(created.key)) as client:
            made = await client.post("/api/v1/machines", json=manual_node(1))
            assert made.status_code == 201, made.text
            system_id = made.json()["system_id"]
            history = await eventually(
                lambda: client.get("/api/v1/events", params={"kind": "machine", "id": system_id}),
                lambda response: response.status_code == 200 and len(response.json()["events"]) >= 1,
            )
            assert history.json()["events"][0]["subject"] == f"events.machine.{system_id}"


async def test_the_embedded_stack_runs_each_component_as_its_own_user_and_anonymous_clients_as_admin(
    tmp_path: Path,
) -> None:
    settings = StackSettings(state_dir=tmp_path / "state", nats_port=free_port(), rack_id="rack-9", region_replicas=2)
    layout = StackLayout(settings.state_dir)
    cluster = PostgresCluster(root=tmp_path / "pg", port=free_port())
    cluster.home.mkdir()
    cluster.password_file.write_text("unused\n")  # no PostgreSQL here: only its address goes into the env
    components = stack_components(settings, layout, cluster)
    login = {
        "region-1": ("METALBUS_REGION_", "region-1"),
        "region-2": ("METALBUS_REGION_", "region-2"),
        "api": ("METALBUS_API_", "api"),
    } | {kind: (f"METALBUS_{kind.upper().replace('-', '_')}_", "rack-rack-9") for kind in RACK_SERVICES}
    auth_dir = layout.nats_store / "auth"
    for component in components:
        if component.name in login:
            prefix, user = login[component.name]
            assert component.env[prefix + "NATS_USER"] == user
            assert component.env[prefix + "NATS_PASSWORD"] == read_password(role_file(auth_dir, user))
    assert "--config" in next(c for c in components if c.check is ReadyCheck.NATS).argv
    assert again_same_passwords(settings, layout, cluster, components)

    [nats_component] = [c for c in components if c.check is ReadyCheck.NATS]
    pid_file = tmp_path / "nats.pid"
    start_detached(nats_component.argv, log_path=tmp_path / "nats.log", pid_path=pid_file, env=nats_component.env)
    try:
        wait_for_port(settings.nats_port)
        url = f"nats://127.0.0.1:{settings.nats_port}"
        errors: list[str] = []

        async def record(error: Exception) -> None:
            errors.append(str(error).lower())

        anonymous = await nats.connect(url, error_cb=record, allow_reconnect=False, connect_timeout=2)
        try:
            with pytest.raises(nats.errors.NoRespondersError):  # allowed to ask; no region runs here
                await anonymous.request(API_KEY_CREATE.pattern, b"{}", timeout=1)
            await anonymous.subscribe("region.>")
            await anonymous.flush(timeout=2)
            await asyncio.sleep(0.05)
            assert errors == ['nats: permissions violation for subscription to "region.>"']
        finally:
            await anonymous.close()
    finally:
        stop_process(pid_file)


def again_same_passwords(
    settings: StackSettings, layout: StackLayout, cluster: PostgresCluster, first: list[Component]
) -> bool:
    """A second `up` in the same state directory gives every component the password it had."""
    second = stack_components(settings, layout, cluster)
    return [c.env for c in second] == [c.env for c in first]
