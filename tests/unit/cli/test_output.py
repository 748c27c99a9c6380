"""What commands print: tables for people, the API's JSON unchanged with --json, one sentence per event."""

import json

import httpx
from typer.testing import CliRunner

from metalbus.cli.event_view import EventRecord, describe_event, record_from_listing, record_from_sse
from metalbus.cli.main import app
from metalbus.cli.sse import ServerSentEvent
from tests.unit.cli.fake_api import BASE_URL, GOOD_KEY, MACHINE, FakeApi, sse_frame

ENVIRON = {"METALBUS_URL": BASE_URL, "METALBUS_API_KEY": GOOD_KEY}


def invoke(fake: FakeApi, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), obj=fake.environment(**ENVIRON), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_machines_list_prints_a_table_row_per_machine_and_the_page_it_is() -> None:
    fake = FakeApi()
    fake.machines["b2b2b2"] = MACHINE | {"system_id": "b2b2b2", "hostname": "node-2", "status": "failed_commissioning"}
    code, stdout, _ = invoke(fake, "machines", "list", "--limit", "1", "--offset", "1")
    assert code == 0
    assert "b2b2b2" in stdout and "node-2" in stdout and "failed_commissioning" in stdout
    assert "x7kq2m" not in stdout
    assert "machines 2-2 of 2" in stdout
    [request] = fake.requests_to("GET", "/api/v1/machines")
    assert dict(request.url.params) == {"offset": "1", "limit": "1"}


def test_json_output_is_the_apis_json_unchanged() -> None:
    fake = FakeApi()
    code, stdout, _ = invoke(fake, "machines", "list", "--json")
    assert code == 0
    assert json.loads(stdout) == {"items": [MACHINE], "total": 1, "offset": 0, "limit": 100}
    code, stdout, _ = invoke(fake, "machines", "show", "x7kq2m", "--json")
    assert json.loads(stdout) == MACHINE


def test_list_filters_travel_as_query_parameters() -> None:
    fake = FakeApi()
    invoke(fake, "machines", "list", "--status", "ready", "--hostname", "node-1", "--arch", "arm64/uefi")
    [request] = fake.requests_to("GET", "/api/v1/machines")
    assert dict(request.url.params) == {
        "status": "ready", "hostname": "node-1", "architecture": "arm64/uefi", "offset": "0", "limit": "100",
    }  # fmt: skip


def test_show_prints_every_field_and_brackets_in_values_literally() -> None:
    fake = FakeApi()
    fake.machines["x7kq2m"]["status_reason"] = "[bold]BMC said[/bold] no"
    code, stdout, _ = invoke(fake, "machines", "show", "x7kq2m")
    assert code == 0
    for expected in ("x7kq2m", "node-1", "52:54:00:12:34:56", "amd64/bios", "manual", "[bold]BMC said[/bold] no"):
        assert expected in stdout


def test_add_asks_for_a_hidden_bmc_password_when_the_power_type_needs_one() -> None:
    fake = FakeApi()
    code, stdout, _ = invoke(
        fake, "machines", "add", "--mac", "52:54:00:aa:bb:cc", "--power-type", "ipmi",
        "--power-address", "10.0.0.21", "--power-user", "admin", stdin="s3cret\n",
    )  # fmt: skip
    assert code == 0
    [request] = fake.requests_to("POST", "/api/v1/machines")
    assert json.loads(request.content) == {
        "architecture": "amd64/bios",
        "boot_mac": "52:54:00:aa:bb:cc",
        "power_type": "ipmi",
        "power_parameters": {"address": "10.0.0.21", "username": "admin"},
        "power_secrets": {"password": "s3cret"},
    }
    assert "s3cret" not in stdout  # hidden input is not echoed, and the reply never carries it
    assert "10.0.0.21" in stdout


def test_the_password_prompt_goes_to_stderr_so_json_output_stays_parseable() -> None:
    fake = FakeApi()
    code, stdout, stderr = invoke(
        fake, "machines", "add", "--mac", "52:54:00:aa:bb:ce", "--power-type", "redfish", "--json", stdin="pw\n"
    )
    assert code == 0
    assert json.loads(stdout)["power_type"] == "redfish"
    assert "redfish password for the BMC" in stderr and "pw" not in stderr.replace("password", "")


def test_add_with_manual_power_asks_nothing() -> None:
    fake = FakeApi()
    code, _, _ = invoke(fake, "machines", "add", "--mac", "52:54:00:aa:bb:cd", "--hostname", "n2", stdin="")
    assert code == 0
    [request] = fake.requests_to("POST", "/api/v1/machines")
    body = json.loads(request.content)
    assert (body["hostname"], body["power_type"], body["power_secrets"]) == ("n2", "manual", {})


def test_power_prints_the_state_and_delete_confirms() -> None:
    fake = FakeApi()
    assert invoke(fake, "machines", "power", "x7kq2m", "query")[1] == "x7kq2m: power off\n"
    [request] = fake.requests_to("POST", "/api/v1/machines/x7kq2m/power")
    assert json.loads(request.content) == {"action": "query"}
    assert invoke(fake, "machines", "delete", "x7kq2m")[1] == "x7kq2m: deleted\n"
    assert "x7kq2m" not in fake.machines


def test_results_with_output_shows_each_scripts_stdout() -> None:
    result = {
        "name": "metalbus-inventory", "exit_status": 0, "stdout": '{"cpu_count": 2}', "stderr": "",
        "result": None, "runtime_s": 1.25, "recorded_at": "2026-11-25T06:01:00Z",
    }  # fmt: skip
    fake = FakeApi(forced={"GET /api/v1/machines/x7kq2m/results": httpx.Response(200, json=[result])})
    code, stdout, _ = invoke(fake, "machines", "results", "x7kq2m", "--output")
    assert code == 0
    assert "metalbus-inventory" in stdout and "1.25" in stdout and "2026-11-25 06:01:00" in stdout
    assert "--- metalbus-inventory stdout ---" in stdout and '{"cpu_count": 2}' in stdout


def test_events_read_as_one_sentence_each() -> None:
    machine = EventRecord(1, "machine", "events.machine.x7kq2m", {
        "system_id": "x7kq2m", "action": "commissioning_failed", "from_status": "commissioning",
        "to_status": "failed_commissioning", "reason": "commissioning timed out",
    })  # fmt: skip
    assert describe_event(machine) == (
        "x7kq2m: commissioning -> failed_commissioning (commissioning_failed): commissioning timed out"
    )
    power = EventRecord(2, "power", None, {"system_id": "x7kq2m", "action": "on", "state": "on", "rack_id": "rack-1"})
    assert describe_event(power) == "x7kq2m: power on -> on via rack-1"
    result = EventRecord(3, "result", None, {"system_id": "x7kq2m", "name": "lldp", "exit_status": 1})
    assert describe_event(result) == "x7kq2m: script lldp exited 1"


def test_listed_and_streamed_events_become_the_same_record() -> None:
    data = {"system_id": "x7kq2m", "to_status": "ready"}
    listed = record_from_listing({"sequence": 5, "subject": "events.machine.x7kq2m", "data": data})
    streamed = record_from_sse(ServerSentEvent("machine", json.dumps(data), "5"))
    assert (listed.sequence, listed.kind, listed.data) == (streamed.sequence, streamed.kind, streamed.data) == (
        5, "machine", data,
    )  # fmt: skip


def test_events_follow_prints_a_line_per_streamed_event_and_stops_after_count() -> None:
    fake = FakeApi(stream_frames=[
        sse_frame(7, "power", {"system_id": "x7kq2m", "action": "off", "state": "off", "rack_id": "rack-1",
                               "at": "2026-11-25T06:00:00Z"}),
        sse_frame(8, "rack", {"rack_id": "rack-1", "service": "rack-dhcp", "kind": "announced", "hostname": "h"}),
    ])  # fmt: skip
    code, stdout, _ = invoke(fake, "events", "--follow", "--id", "x7kq2m", "--count", "2", "--json")
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [(line["sequence"], line["kind"]) for line in lines] == [(7, "power"), (8, "rack")]
    [request] = fake.requests_to("GET", "/api/v1/events/stream")
    assert dict(request.url.params) == {"id": "x7kq2m"}


def test_subnets_add_sends_every_option_and_set_range_patches_only_the_range() -> None:
    subnet = {
        "subnet_id": 3, "cidr": "10.20.0.0/24", "gateway": "10.20.0.1", "dns_servers": ["10.20.0.2", "10.20.0.3"],
        "dynamic_start": "10.20.0.100", "dynamic_end": "10.20.0.199", "managed": True, "lease_time_s": 600,
        "domain": "maas.internal",
    }  # fmt: skip
    fake = FakeApi(
        forced={
            "POST /api/v1/subnets": httpx.Response(201, json=subnet),
            "PATCH /api/v1/subnets/3": httpx.Response(200, json=subnet | {"dynamic_start": "10.20.0.150"}),
        }
    )
    code, stdout, _ = invoke(
        fake, "subnets", "add", "10.20.0.0/24", "--gateway", "10.20.0.1", "--dns", "10.20.0.2", "--dns", "10.20.0.3",
        "--dynamic-start", "10.20.0.100", "--dynamic-end", "10.20.0.199", "--reserved", "10.20.0.150",
    )  # fmt: skip
    assert code == 0
    assert "10.20.0.100 - 10.20.0.199" in stdout
    [created] = fake.requests_to("POST", "/api/v1/subnets")
    assert json.loads(created.content) == {
        "cidr": "10.20.0.0/24", "gateway": "10.20.0.1", "dns_servers": ["10.20.0.2", "10.20.0.3"],
        "dynamic_start": "10.20.0.100", "dynamic_end": "10.20.0.199", "reserved": ["10.20.0.150"], "managed": True,
    }  # fmt: skip
    code, stdout, _ = invoke(fake, "subnets", "set-range", "3", "10.20.0.150", "10.20.0.199")
    assert (code, "10.20.0.150 - 10.20.0.199" in stdout) == (0, True)
    [patched] = fake.requests_to("PATCH", "/api/v1/subnets/3")
    assert json.loads(patched.content) == {"dynamic_start": "10.20.0.150", "dynamic_end": "10.20.0.199"}


def test_an_address_that_is_not_one_is_refused_before_any_request() -> None:
    fake = FakeApi()
    result = CliRunner().invoke(
        app, ["subnets", "add", "10.20.0.0/24", "--gateway", "10.20.0.300"], obj=fake.environment(**ENVIRON)
    )
    assert result.exit_code == 2
    assert "gateway" in result.stderr
    assert fake.seen == []
