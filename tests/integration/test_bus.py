"""The bus helper against a real nats-server: typed request/reply, typed errors, bad input, reconnects."""

import asyncio

import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import ERROR_HEADER, Bus
from metalbus.contracts.base import Message
from metalbus.contracts.errors import BadRequest, ErrorCode, Internal, NotFound, Timeout, Unavailable
from metalbus.subjects import EVENTS_STREAM, EventSubject, RequestSubject
from tests.conftest import NatsServer


class Greeting(Message):
    name: str
    times: int = 1


class Answer(Message):
    text: str
    served_by: str = "one"


GREET = RequestSubject("test.greet", Greeting, Answer, "greets", queue="testers")
BROADCAST = RequestSubject("test.roll-call", Greeting, Answer, "everyone answers", queue=None)
PER_RACK = RequestSubject("test.rack.{rack_id}.greet", Greeting, Answer, "one rack answers", queue=None)
GREETED = EventSubject("events.test.{name}", Answer, "someone was greeted")


async def greet(request: Greeting) -> Answer:
    if request.name == "nobody":
        raise NotFound("no such person: nobody")
    if request.name == "crash":
        raise RuntimeError("handler blew up")
    if request.name == "slow":
        await asyncio.sleep(2)
    return Answer(text=" ".join([f"hello {request.name}"] * request.times))


async def test_request_returns_the_typed_reply(bus: Bus) -> None:
    await bus.serve(GREET, greet)
    reply = await bus.request(GREET, Greeting(name="ada", times=2), timeout=2)
    assert reply == Answer(text="hello ada hello ada")
    assert reply.schema_version == 1


async def test_handler_error_arrives_as_the_same_typed_error(bus: Bus) -> None:
    await bus.serve(GREET, greet)
    with pytest.raises(NotFound, match="no such person: nobody") as caught:
        await bus.request(GREET, Greeting(name="nobody"), timeout=2)
    assert caught.value.retryable is False
    assert caught.value.http_status == 404


async def test_handler_crash_becomes_internal_error_and_service_keeps_answering(bus: Bus) -> None:
    await bus.serve(GREET, greet)
    with pytest.raises(Internal, match="RuntimeError: handler blew up"):
        await bus.request(GREET, Greeting(name="crash"), timeout=2)
    assert (await bus.request(GREET, Greeting(name="bob"), timeout=2)).text == "hello bob"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "Invalid JSON"),
        (b'{"times": 3}', "name: Field required"),
        (b'{"name": "x", "times": "many"}', "times: Input should be a valid integer"),
        (b'{"name": "x", "schema_version": 99}', "newer than the supported 1"),
        (b"", "Invalid JSON"),
    ],
)
async def test_malformed_payload_gets_bad_request_reply_and_service_keeps_answering(
    bus: Bus, payload: bytes, reason: str
) -> None:
    await bus.serve(GREET, greet)
    raw = await bus.client.request(GREET.pattern, payload, timeout=2)
    assert raw.headers is not None
    assert raw.headers[ERROR_HEADER] == ErrorCode.BAD_REQUEST.value
    assert reason in raw.data.decode()
    assert bus.dropped_requests == 1
    with pytest.raises(BadRequest):
        await bus.request(GREET, Greeting.model_construct(name=None, schema_version=1), timeout=2)  # type: ignore[arg-type]
    assert (await bus.request(GREET, Greeting(name="eve"), timeout=2)).text == "hello eve"


async def test_nobody_listening_is_unavailable_and_retryable(bus: Bus) -> None:
    with pytest.raises(Unavailable, match=r"no service is answering on test\.greet") as caught:
        await bus.request(GREET, Greeting(name="ada"), timeout=2)
    assert caught.value.retryable is True


async def test_slow_handler_gives_typed_timeout_after_the_explicit_timeout(bus: Bus) -> None:
    await bus.serve(GREET, greet)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(Timeout, match=r"no reply on test\.greet within 0\.3s"):
        await bus.request(GREET, Greeting(name="slow"), timeout=0.3)
    assert 0.25 < loop.time() - began < 1.5


async def test_slow_request_does_not_hold_up_the_next(bus: Bus) -> None:
    slow_started, release_slow = asyncio.Event(), asyncio.Event()

    async def handler(request: Greeting) -> Answer:
        if request.name == "slow":
            slow_started.set()
            await release_slow.wait()
        return Answer(text=f"hello {request.name}")

    await bus.serve(GREET, handler)
    slow = asyncio.create_task(bus.request(GREET, Greeting(name="slow"), timeout=5))
    await asyncio.wait_for(slow_started.wait(), timeout=2)
    fast = await bus.request(GREET, Greeting(name="quick"), timeout=1)  # answered while "slow" still runs
    assert fast.text == "hello quick"
    assert not slow.done()
    release_slow.set()
    assert (await slow).text == "hello slow"


async def test_queue_group_delivers_each_request_to_exactly_one_member(nats_server: NatsServer) -> None:
    members = [await Bus.connect(nats_server.options(f"member-{i}")) for i in range(3)]
    client = await Bus.connect(nats_server.options("client"))
    served: list[str] = []
    for index, member in enumerate(members):

        async def handler(request: Greeting, me: str = f"m{index}") -> Answer:
            served.append(me)
            return Answer(text=request.name, served_by=me)

        await member.serve(GREET, handler)
    try:
        replies = [await client.request(GREET, Greeting(name=str(i)), timeout=2) for i in range(30)]
        assert len(served) == 30
        assert sorted(r.text for r in replies) == sorted(str(i) for i in range(30))
        assert len(set(served)) > 1, "a queue group spreads requests over its members"
    finally:
        for connected in [*members, client]:
            await connected.drain()


async def test_gather_collects_one_reply_from_every_subscriber(nats_server: NatsServer) -> None:
    members = [await Bus.connect(nats_server.options(f"member-{i}")) for i in range(3)]
    for index, member in enumerate(members):

        async def handler(request: Greeting, me: str = f"m{index}") -> Answer:
            return Answer(text=request.name, served_by=me)

        await member.serve(BROADCAST, handler)
    client = await Bus.connect(nats_server.options("client"))
    try:
        replies = await client.gather(BROADCAST, Greeting(name="all"), window=0.3)
        assert sorted(r.served_by for r in replies) == ["m0", "m1", "m2"]
        assert await client.gather(GREET, Greeting(name="nobody-listens"), window=0.1) == []
    finally:
        for connected in [*members, client]:
            await connected.drain()


async def test_subject_parameters_route_to_the_right_subscriber(bus: Bus) -> None:
    async def rack_a(request: Greeting) -> Answer:
        return Answer(text="a")

    await bus.serve(PER_RACK, rack_a, subscribe_to=PER_RACK.format(rack_id="rack-a"))
    assert (await bus.request(PER_RACK, Greeting(name="x"), timeout=2, rack_id="rack-a")).text == "a"
    with pytest.raises(Unavailable):
        await bus.request(PER_RACK, Greeting(name="x"), timeout=1, rack_id="rack-b")
    with pytest.raises(ValueError, match="not a single NATS token"):
        await bus.request(PER_RACK, Greeting(name="x"), timeout=1, rack_id="rack.*")


async def test_events_are_kept_in_the_jetstream_stream(bus: Bus) -> None:
    await bus.ensure_streams()
    await bus.ensure_streams()  # a second replica starting does the same: no error
    await bus.publish_event(GREETED, Answer(text="hi"), name="ada")
    subscription = await bus.client.jetstream().subscribe(
        "events.test.*", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    message = await subscription.next_msg(timeout=2)
    assert message.subject == "events.test.ada"
    assert Answer.from_json_bytes(message.data) == Answer(text="hi")


async def test_serving_resumes_after_nats_server_is_killed_and_restarted(nats_server: NatsServer) -> None:
    options = nats_server.options("survivor", reconnect_wait_s=0.1)
    server_side = await Bus.connect(options)
    client_side = await Bus.connect(options)
    try:
        await server_side.serve(GREET, greet)
        assert (await client_side.request(GREET, Greeting(name="before"), timeout=2)).text == "hello before"
        nats_server.kill()
        assert not nats_server.running
        with pytest.raises((Unavailable, Timeout)):
            await client_side.request(GREET, Greeting(name="during"), timeout=0.5)
        nats_server.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            try:
                reply = await client_side.request(GREET, Greeting(name="after"), timeout=0.5)
                break
            except (Unavailable, Timeout):
                assert loop.time() < deadline, "service did not come back after the server restarted"
                await asyncio.sleep(0.1)
        assert reply.text == "hello after"
        assert server_side.connected and client_side.connected
    finally:
        await server_side.drain()
        await client_side.drain()


async def test_connect_gives_up_at_its_deadline_with_unavailable() -> None:
    from tests.conftest import free_port

    port = free_port()
    options = NatsServer(root=None, port=port).options("nobody", initial_connect_deadline_s=0.5)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(Unavailable, match=f"cannot connect to NATS at nats://127.0.0.1:{port}"):
        await Bus.connect(options)
    assert loop.time() - began < 3


async def test_a_request_sent_right_after_serve_returns_always_finds_the_server(nats_server: NatsServer) -> None:
    client = await Bus.connect(nats_server.options("client"))
    try:
        for attempt in range(40):
            server = await Bus.connect(nats_server.options(f"server-{attempt}"))
            try:
                await server.serve(GREET, greet)
                assert (await client.request(GREET, Greeting(name=str(attempt)), timeout=2)).text == f"hello {attempt}"
            finally:
                await server.drain()
    finally:
        await client.drain()
