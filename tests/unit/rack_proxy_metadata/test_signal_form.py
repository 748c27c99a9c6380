"""How a ``POST <ver>/`` ``op=signal`` body (multipart as curl -F and the runner send it) becomes a MetadataSignal."""

import json

import pytest

from metalbus.contracts.metadata import MetadataSignal, OAuthCredentials, ScriptResult, SignalStatus
from metalbus_rack_proxy.metadata_signal_form import MAX_FIELDS, BadForm, parse_form, signal_from_form

CREDENTIALS = OAuthCredentials(consumer_key="ck1", token_key="tk1", token_secret="ts1")
BOUNDARY = "------------------------d74496d66958873e"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

Part = tuple[str, bytes] | tuple[str, bytes, str]


def multipart(*parts: Part) -> bytes:
    """A body laid out as curl -F lays it out: ``(name, value)`` a field, ``(name, value, filename)`` a file."""
    body = b""
    for part in parts:
        name, value = part[0], part[1]
        body += f"--{BOUNDARY}\r\n".encode()
        if len(part) == 3:
            body += f'Content-Disposition: form-data; name="{name}"; filename="{part[2]}"\r\n'.encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n"
        else:
            body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def signal(*parts: Part) -> MetadataSignal:
    return signal_from_form(CREDENTIALS, parse_form(MULTIPART, multipart(*parts)))


def test_a_script_outcome_with_its_out_err_and_yaml_files_is_one_script_result() -> None:
    posted = signal(
        ("op", b"signal"),
        ("status", b"WORKING"),
        ("name", b"lshw"),
        ("exit_status", b"0"),
        ("runtime", b"1.25"),
        ("lshw.out", b"line 1\r\nline 2\n", "lshw.out"),
        ("lshw.err", b"warning\n", "lshw.err"),
        ("lshw.yaml", json.dumps({"status": "passed", "results": {"disks": 2}}).encode(), "lshw.yaml"),
    )
    assert posted == MetadataSignal(
        credentials=CREDENTIALS,
        status=SignalStatus.WORKING,
        results=[
            ScriptResult(
                name="lshw",
                exit_status=0,
                runtime_s=1.25,
                stdout="line 1\r\nline 2\n",
                stderr="warning\n",
                result={"status": "passed", "results": {"disks": 2}},
            )
        ],
    )


def test_a_final_status_with_an_error_and_no_script_carries_no_results() -> None:
    posted = signal(("op", b"signal"), ("status", b"FAILED"), ("error", b"ran out of disk"))
    assert (posted.status, posted.error, posted.results) == (SignalStatus.FAILED, "ran out of disk", [])


def test_without_a_name_the_one_script_the_files_name_is_the_script() -> None:
    posted = signal(("op", b"signal"), ("status", b"WORKING"), ("exit_status", b"2"), ("dmesg.err", b"oops", "x"))
    assert [(r.name, r.exit_status, r.stderr, r.runtime_s) for r in posted.results] == [("dmesg", 2, "oops", None)]


def test_undecodable_output_is_kept_with_replacement_characters() -> None:
    posted = signal(("op", b"signal"), ("status", b"WORKING"), ("name", b"s"), ("exit_status", b"0"),
                    ("s.out", b"ok \xff\xfe end", "s.out"))  # fmt: skip
    assert posted.results[0].stdout == "ok \N{REPLACEMENT CHARACTER}\N{REPLACEMENT CHARACTER} end"


def test_a_url_encoded_signal_without_files_is_taken_too() -> None:
    form = parse_form("application/x-www-form-urlencoded", b"op=signal&status=OK&error=")
    assert signal_from_form(CREDENTIALS, form) == MetadataSignal(credentials=CREDENTIALS, status=SignalStatus.OK)


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        ([("status", b"OK")], "op is None"),
        ([("op", b"reboot"), ("status", b"OK")], "only 'signal'"),
        ([("op", b"signal")], "status is required"),
        ([("op", b"signal"), ("status", b"DEPLOYED")], "status"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("s.out", b"x", "s.out")], "no exit_status"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"zero")], "not an integer"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"0"), ("runtime", b"soon")],
         "runtime is not a number"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"0"), ("runtime", b"-1")],
         "runtime_s"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"0"), ("t.out", b"x", "t.out")],
         "files of t posted for script s"),
        ([("op", b"signal"), ("status", b"OK"), ("exit_status", b"0"), ("a.out", b"", "a"), ("b.out", b"", "b")],
         "several scripts"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"0"), ("s.yaml", b"- 1", "y")],
         "not a JSON-form YAML mapping"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", b"0"), ("s.yaml", b"[1]", "y")],
         "not a mapping"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s" * 256), ("exit_status", b"0")], "name"),
        ([("op", b"signal"), ("status", b"OK"), ("name", b"s"), ("exit_status", str(2**31).encode())],
         "exit_status"),
        ([("op", b"signal"), ("op", b"signal"), ("status", b"OK")], "given twice"),
        ([("op", b"signal"), ("status", b"OK"), *[(f"f{i}", b"") for i in range(MAX_FIELDS)]], "more than"),
    ],
)  # fmt: skip
def test_forms_that_are_not_a_signal_are_refused_saying_why(parts: list[Part], problem: str) -> None:
    with pytest.raises(BadForm, match=problem):
        signal(*parts)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, b"op=signal"),
        ("application/json", b'{"op": "signal"}'),
        (MULTIPART, b"not a multipart body at all"),
        ("multipart/form-data", multipart(("op", b"signal"))),  # no boundary
        (MULTIPART, f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()),
        ("application/x-www-form-urlencoded", b"op=signal&&status"),
        ("application/x-www-form-urlencoded", "op=sig\u00e9nal".encode()),
    ],
)
def test_bodies_that_are_not_forms_are_refused(content_type: str | None, body: bytes) -> None:
    with pytest.raises(BadForm):
        parse_form(content_type, body)
