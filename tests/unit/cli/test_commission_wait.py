"""`machines commission --wait`: live progress from the event stream; exit 0 READY, 1 FAILED, 2 out of time."""

import json
from typing import Any

import httpx
from typer.testing import CliRunner

from metalbus.cli.client import MetalbusApi
from metalbus.cli.commission_watch import CommissioningWatch, Outcome
from metalbus.cli.event_view import EventRecord
from metalbus.cli.main import app
from tests.unit.cli.fake_api import BASE_URL, GOOD_KEY, MACHINE, FakeApi, sse_frame

ENVIRON = {"METALBUS_URL": BASE_URL, "METALBUS_API_KEY": GOOD_KEY}


def machine_event(sequence: int, source: str, target: str, action: str, reason: str | None = None) -> bytes:
    data: dict[str, Any] = {
        "sequence": sequence, "system_id": "x7kq2m", "action": action, "from_status": source,
        "to_status": target, "reason": reason, "at": "2026-11-25T06:00:00Z",
    }  # fmt: skip
    return sse_frame(sequence + 100, "machine", data)


COMMISSIONING = machine_event(1, "new", "commissioning", "commission")


def invoke(fake: FakeApi, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["machines", "commission", "x7kq2m", "--wait", *args], obj=fake.environment(**ENVIRON)
    )
    return result.exit_code, result.stdout, result.stderr


def test_a_failed_commissioning_is_followed_live_and_exits_1_with_the_reason() -> None:
    fake = FakeApi(stream_frames=[
        COMMISSIONING,
        sse_frame(102, "power", {"system_id": "x7kq2m", "action": "on", "state": "unknown", "rack_id": None,
                                 "error": "manual power: switch it on yourself"}),
        machine_event(3, "commissioning", "failed_commissioning", "commissioning_failed", "commissioning timed out"),
    ])  # fmt: skip
    code, stdout, stderr = invoke(fake, "--timeout", "2")
    assert code == 1
    assert stderr == "metalbus: x7kq2m is failed_commissioning: commissioning timed out\n"
    lines = stdout.splitlines()
    assert lines[0].startswith("x7kq2m: commissioning (deadline 2026-11-25 06:30:00); waiting up to 62 s")
    assert "x7kq2m: new -> commissioning (commission)" in lines[1]
    assert "x7kq2m: power on -> unknown error: manual power: switch it on yourself" in lines[2]
    assert "commissioning -> failed_commissioning (commissioning_failed): commissioning timed out" in lines[3]
    assert [(r.method, r.url.path) for r in fake.seen[:2]] == [
        ("GET", "/api/v1/events/stream"),  # subscribed first: no event can slip in before it
        ("POST", "/api/v1/machines/x7kq2m/commission"),
    ]
    assert json.loads(fake.seen[1].content) == {"timeout_s": 2.0}
    assert dict(fake.seen[0].url.params) == {"id": "x7kq2m"}


def test_ready_exits_0_after_showing_the_script_results() -> None:
    fake = FakeApi(stream_frames=[
        COMMISSIONING,
        sse_frame(102, "result", {"system_id": "x7kq2m", "name": "metalbus-inventory", "exit_status": 0}),
        machine_event(3, "commissioning", "ready", "commissioning_succeeded"),
    ])  # fmt: skip
    code, stdout, stderr = invoke(fake)
    assert (code, stderr) == (0, "")
    assert "script metalbus-inventory exited 0" in stdout
    assert stdout.endswith("x7kq2m: ready\n")


def test_an_abort_while_waiting_is_not_success() -> None:
    fake = FakeApi(stream_frames=[COMMISSIONING, machine_event(2, "commissioning", "ready", "abort")])
    code, _, stderr = invoke(fake)
    assert code == 1
    assert stderr == "metalbus: x7kq2m is ready: commissioning ended: the machine is now ready\n"


def test_events_about_other_machines_are_ignored() -> None:
    other = machine_event(2, "commissioning", "ready", "commissioning_succeeded").replace(b"x7kq2m", b"other1")
    fake = FakeApi(
        stream_frames=[other, machine_event(3, "commissioning", "failed_commissioning", "commissioning_failed")]
    )
    code, stdout, _ = invoke(fake)
    assert code == 1
    assert "other1" not in stdout


def test_a_missed_event_is_caught_by_reading_the_machine_when_the_stream_is_idle() -> None:
    fake = FakeApi(stream_idle_after_frames=True)
    original = fake.handle

    def finish_on_first_read(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v1/machines/x7kq2m":
            fake.machines["x7kq2m"].update(status="failed_commissioning", status_reason="no power")
        return original(request)

    fake.handle = finish_on_first_read  # type: ignore[method-assign]
    code, _, stderr = invoke(fake, "--wait-timeout", "30")
    assert (code, stderr) == (1, "metalbus: x7kq2m is failed_commissioning: no power\n")


def test_still_commissioning_when_the_wait_ends_exits_2() -> None:
    fake = FakeApi(stream_frames=[COMMISSIONING], stream_idle_after_frames=True)
    code, _, stderr = invoke(fake, "--wait-timeout", "0.05")
    assert (code, stderr) == (2, "metalbus: x7kq2m still commissioning after waiting 0.05 s\n")


def test_the_watch_resumes_the_stream_from_the_last_event_it_saw() -> None:
    now = [0.0]
    fake = FakeApi(stream_frames=[COMMISSIONING], stream_idle_after_frames=True)
    seen: list[EventRecord] = []

    def idle_costs_time(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/events/stream":
            now[0] += 4.0  # each stream that then goes idle takes a poll interval of the clock
        return FakeApi.handle(fake, request)

    with MetalbusApi(BASE_URL, GOOD_KEY, transport=httpx.MockTransport(idle_costs_time)) as api:
        watch = CommissioningWatch(api, "x7kq2m", on_event=seen.append, clock=lambda: now[0], poll_every_s=4.0)
        result = watch.run(commissioning_timeout_s=None, wait_s=10.0, on_commissioned=lambda _: None)
    assert result.outcome is Outcome.TIMED_OUT
    streams = fake.requests_to("GET", "/api/v1/events/stream")
    assert [r.headers.get("last-event-id") for r in streams] == [None, "101", "101"]
    assert len(fake.requests_to("GET", "/api/v1/machines/x7kq2m")) == 3
    assert [record.sequence for record in seen] == [101]  # resumed after it, so shown once


def test_a_reply_that_is_already_final_still_shows_the_events_that_led_there() -> None:
    failed = dict(MACHINE) | {"status": "failed_commissioning", "status_reason": "no healthy rack reaches BMC 10.0.0.5"}
    fake = FakeApi(
        forced={"POST /api/v1/machines/x7kq2m/commission": httpx.Response(200, json=failed)},
        stream_frames=[
            COMMISSIONING,
            machine_event(2, "commissioning", "failed_commissioning", "commissioning_failed", "no healthy rack"),
        ],
    )
    code, stdout, stderr = invoke(fake)
    assert code == 1
    assert stderr == "metalbus: x7kq2m is failed_commissioning: no healthy rack reaches BMC 10.0.0.5\n"
    assert stdout.splitlines()[0] == "x7kq2m: failed_commissioning"
    assert "new -> commissioning (commission)" in stdout
    assert "commissioning -> failed_commissioning (commissioning_failed): no healthy rack" in stdout
