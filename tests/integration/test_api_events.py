"""Events for integrators through the api: history pages after a stream sequence, and a live SSE stream that
delivers a change another client makes, resumes from Last-Event-ID and lets go of its consumer."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from metalbus.subjects import EVENTS_STREAM
from tests.conftest import NatsServer
from tests.integration.test_api_auth import ApiStack, api_stack, authorized, served
from tests.integration.test_api_machines import create, error_of, manual_node
from tests.integration.test_region import eventually


async def machine_events(stack: ApiStack, count: int, **params: Any) -> list[dict[str, Any]]:
    """The machine events once ``count`` of them are in the stream (the outbox publishes just after commit)."""
    response = await eventually(
        lambda: stack.client.get("/api/v1/events", params={"kind": "machine", **params}),
        lambda r: len(r.json()["events"]) >= count,
    )
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_history_returns_the_events_after_a_sequence_by_kind_and_id(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        first, second = [await create(stack, manual_node(n)) for n in (1, 2)]
        created = await machine_events(stack, 2)
        assert [(e["subject"], e["data"]["to_status"]) for e in created] == [
            (f"events.machine.{first['system_id']}", "new"),
            (f"events.machine.{second['system_id']}", "new"),
        ]
        assert created[0]["sequence"] < created[1]["sequence"]

        after_first = (await stack.client.get("/api/v1/events", params={"after": created[0]["sequence"]})).json()
        assert [e["data"]["system_id"] for e in after_first["events"]] == [second["system_id"]]
        one = (await stack.client.get("/api/v1/events", params={"limit": 1})).json()["events"]
        assert [e["sequence"] for e in one] == [created[0]["sequence"]]
        by_id = (await stack.client.get("/api/v1/events", params={"id": second["system_id"]})).json()["events"]
        assert [e["sequence"] for e in by_id] == [created[1]["sequence"]]
        assert (await stack.client.get("/api/v1/events", params={"kind": "lease"})).json() == {"events": []}
        beyond = {"after": created[1]["sequence"]}
        assert (await stack.client.get("/api/v1/events", params=beyond)).json() == {"events": []}
        assert (
            error_of(await stack.client.get("/api/v1/events", params={"kind": "weather"}), 422)["fields"][0]["field"]
            == "query.kind"
        )
        assert (
            error_of(await stack.client.get("/api/v1/events", params={"id": "a.b"}), 422)["fields"][0]["field"]
            == "query.id"
        )
        # Every page read its own consumer, and deleted it.
        info = await stack.bus.client.jetstream().stream_info(EVENTS_STREAM.name)
        assert info.state.consumer_count == 0


async def sse_frames(response: httpx.Response) -> AsyncIterator[str]:
    """Each frame of an SSE response (the text between blank lines)."""
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            yield frame


def parse_frame(frame: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in frame.split("\n"))


async def consumer_count(stack: ApiStack) -> int:
    info = await stack.bus.client.jetstream().stream_info(EVENTS_STREAM.name)
    return int(info.state.consumer_count)


async def test_a_change_made_by_another_client_arrives_on_an_open_stream(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn, event_stream_keepalive_s=0.3) as stack:
        machine = await create(stack, manual_node(1))
        await machine_events(stack, 1)
        async with (
            served(stack.app) as url,
            httpx.AsyncClient(base_url=url, headers=authorized(stack.key), timeout=10) as client,
        ):
            async with client.stream("GET", "/api/v1/events/stream", params={"kind": "machine"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                frames = sse_frames(response)
                assert await anext(frames) == ": connected"
                assert await consumer_count(stack) == 1
                # Another client marks the machine broken through the api.
                other = await stack.client.post(f"/api/v1/machines/{machine['system_id']}/mark-broken", json={})
                assert other.status_code == 200
                frame = await asyncio.wait_for(anext(frames), timeout=10)
                while frame == ": keepalive":
                    frame = await asyncio.wait_for(anext(frames), timeout=10)
                fields = parse_frame(frame)
                assert fields["event"] == "machine"
                data = json.loads(fields["data"])
                assert (data["system_id"], data["from_status"], data["to_status"]) == (
                    machine["system_id"],
                    "new",
                    "broken",
                )
                assert int(fields["id"]) > 0
                # Nothing else happens: keepalives keep the connection open.
                assert await asyncio.wait_for(anext(frames), timeout=5) == ": keepalive"
            # The client went away (the server still runs): its consumer goes with it.
            await eventually(lambda: consumer_count(stack), lambda count: count == 0, timeout=5)
            assert len(stack.app.state.event_streams) == 0


async def test_a_stream_resumes_after_its_last_event_id_and_open_streams_are_bounded(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn, event_streams_max=1) as stack:
        first, second = [await create(stack, manual_node(n)) for n in (1, 2)]
        created = await machine_events(stack, 2)
        async with (
            served(stack.app) as url,
            httpx.AsyncClient(base_url=url, headers=authorized(stack.key), timeout=10) as client,
            client.stream(
                "GET", "/api/v1/events/stream", headers={"Last-Event-ID": str(created[0]["sequence"])}
            ) as response,
        ):
            frames = sse_frames(response)
            assert await anext(frames) == ": connected"
            fields = parse_frame(await asyncio.wait_for(anext(frames), timeout=10))
            assert (fields["id"], fields["event"]) == (str(created[1]["sequence"]), "machine")
            assert json.loads(fields["data"])["system_id"] == second["system_id"]
            # A second stream would pass the api's bound.
            refused = await client.get("/api/v1/events/stream")
            assert error_of(refused, 503)["code"] == "unavailable"
            assert refused.headers["retry-after"] == "2"
        assert first["system_id"] != second["system_id"]
