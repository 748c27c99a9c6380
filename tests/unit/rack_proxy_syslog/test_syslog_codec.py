"""The syslog codec: real lines from util-linux `logger`, RFC examples, framing, and garbage that is kept raw."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalbus.contracts.syslog import SyslogFormat
from metalbus_rack_proxy.syslog_codec import TcpFramer, parse_line

NOW = datetime(2026, 11, 25, 9, 7, 0, tzinfo=UTC)

# Captured from `logger --server 127.0.0.1 --port P --udp … -t cloud-init -p user.err "hello world"`.
LOGGER_RFC5424 = (
    b'<11>1 2026-11-25T09:06:09.388390+00:00 vm cloud-init - - [timeQuality tzKnown="1" isSynced="0"] hello world'
)
LOGGER_RFC5424_SD = (
    b'<11>1 2026-11-25T09:06:09.396608+00:00 vm cloud-init - m1 [timeQuality tzKnown="1" isSynced="0"]'
    b'[zoo@123 tiger="hungry"] hello world'
)
LOGGER_RFC3164 = b"<11>Nov 25 09:06:09 vm cloud-init: hello world"
# Captured from busybox 1.35 `syslogd -R 127.0.0.1:P` relaying `logger -t metalbus-ephemeral …` (and klogd's
# kernel lines): no HOSTNAME after the timestamp.
BUSYBOX_RELAYED = b"<13>Nov 25 10:48:22 metalbus-ephemeral: running the user-data\n"
BUSYBOX_KERNEL = b"<6>Nov 25 10:48:22 kernel: [    1.526053] Freeing unused decrypted memory: 2036K\n"


def test_logger_rfc5424_line_is_parsed_field_by_field() -> None:
    line = parse_line(LOGGER_RFC5424, NOW)
    assert line.format is SyslogFormat.RFC5424
    assert (line.facility, line.severity) == (1, 3)
    assert line.timestamp == datetime(2026, 11, 25, 9, 6, 9, 388390, tzinfo=UTC)
    assert (line.hostname, line.app_name, line.proc_id, line.msg_id) == ("vm", "cloud-init", None, None)
    assert line.structured_data == '[timeQuality tzKnown="1" isSynced="0"]'
    assert (line.text, line.raw) == ("hello world", None)


def test_consecutive_structured_data_elements_are_kept_together_with_the_msgid() -> None:
    line = parse_line(LOGGER_RFC5424_SD, NOW)
    assert line.msg_id == "m1"
    assert line.structured_data == '[timeQuality tzKnown="1" isSynced="0"][zoo@123 tiger="hungry"]'
    assert line.text == "hello world"


def test_logger_rfc3164_line_gets_this_years_utc_timestamp_and_its_tag() -> None:
    line = parse_line(LOGGER_RFC3164 + b"\n", NOW)
    assert line.format is SyslogFormat.RFC3164
    assert (line.facility, line.severity, line.hostname, line.app_name) == (1, 3, "vm", "cloud-init")
    assert line.timestamp == datetime(2026, 11, 25, 9, 6, 9, tzinfo=UTC)
    assert line.text == "hello world"


@pytest.mark.parametrize(
    ("data", "app_name", "proc_id", "text"),
    [
        (BUSYBOX_RELAYED, "metalbus-ephemeral", None, "running the user-data"),
        (BUSYBOX_KERNEL, "kernel", None, "[    1.526053] Freeing unused decrypted memory: 2036K"),
        (b"<13>Nov 25 10:48:22 udhcpc[42]: lease obtained", "udhcpc", "42", "lease obtained"),
    ],
)
def test_busybox_relayed_lines_without_a_hostname_keep_their_tag(
    data: bytes, app_name: str, proc_id: str | None, text: str
) -> None:
    line = parse_line(data, NOW)
    assert (line.hostname, line.app_name, line.proc_id, line.text) == (None, app_name, proc_id, text)
    assert line.timestamp == datetime(2026, 11, 25, 10, 48, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # RFC 5424 §6.5 examples.
        (
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
            b"\xef\xbb\xbf'su root' failed for lonvick",
            (4, 2, "mymachine.example.com", "su", None, "ID47", None, "'su root' failed for lonvick"),
        ),
        (
            b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
            b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
            (20, 5, "mymachine.example.com", "evntslog", None, "ID47",
             '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
             ""),
        ),
        # An escaped bracket inside a quoted value does not close the element.
        (
            b'<13>1 - host app 42 - [a@1 v="x\\]y"] msg',
            (1, 5, "host", "app", "42", None, '[a@1 v="x\\]y"]', "msg"),
        ),
    ],
)  # fmt: skip
def test_rfc5424_examples(data: bytes, expected: tuple[object, ...]) -> None:
    line = parse_line(data, NOW)
    assert line.format is SyslogFormat.RFC5424
    fields = (line.facility, line.severity, line.hostname, line.app_name, line.proc_id, line.msg_id)
    assert (*fields, line.structured_data, line.text) == expected


def test_rfc3164_december_line_read_in_january_is_last_years() -> None:
    line = parse_line(b"<13>Dec 31 23:59:58 host kernel[0]: tick", datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC))
    assert line.timestamp == datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert (line.app_name, line.proc_id, line.text) == ("kernel", "0", "tick")


def test_rfc3164_without_timestamp_keeps_the_body_as_message() -> None:
    line = parse_line(b"<30>dhclient bound to 10.20.0.101", NOW)
    assert (line.format, line.facility, line.severity) == (SyslogFormat.RFC3164, 3, 6)
    assert line.text == "dhclient bound to 10.20.0.101"


@pytest.mark.parametrize(
    "data",
    [
        b"no priority at all",
        b"<999>1 2026-11-25T09:00:00Z h a - - - too high a PRI",
        b"<13>1 not-a-date h a - - - msg",
        b"<13>1 2026-11-25T09:00:00Z h a - - [unclosed sd",
        b"<13>1 2026-11-25T09:00:00 h a - - - zone missing",
        b"<13>1 short",
        b"\xff\xfe\x00binary\x00",
    ],
)
def test_malformed_lines_are_kept_whole_as_raw(data: bytes) -> None:
    line = parse_line(data, NOW)
    assert line.format is SyslogFormat.RAW
    assert line.raw == line.text and line.text
    assert "\x00" not in line.text


def test_undecodable_bytes_survive_as_escapes() -> None:
    assert parse_line(b"<13>Nov 25 09:06:09 vm app: caf\xe9", NOW).text == "caf\\xe9"


def test_octet_counted_frames_may_hold_newlines_and_arrive_in_pieces() -> None:
    framer = TcpFramer()
    assert framer.feed(b"9 <13>a\nb") == []
    assert framer.feed(b" c5 <13>") == [b"<13>a\nb c"]
    assert framer.feed(b"x") == [b"<13>x"]
    assert framer.finish() == []


def test_newline_frames_and_unterminated_last_line_on_close() -> None:
    framer = TcpFramer()
    assert framer.feed(b"<13>one\r\n<13>two\n<13>thr") == [b"<13>one", b"<13>two"]
    assert framer.feed(b"ee") == []
    assert framer.finish() == [b"<13>three"]


def test_logger_octet_counted_frame() -> None:
    captured = b'93 <13>1 2026-11-25T09:06:09.400591+00:00 vm root - - [timeQuality tzKnown="1" isSynced="0"] one'
    [frame] = TcpFramer().feed(captured)
    assert parse_line(frame, NOW).text == "one"


def test_an_overlong_line_is_cut_into_frames_not_dropped() -> None:
    framer = TcpFramer(max_frame=10)
    assert framer.feed(b"x" * 25) == [b"x" * 10, b"x" * 10]
    assert framer.finish() == [b"x" * 5]


@given(st.binary(max_size=300))
def test_any_bytes_parse_to_a_storable_line(data: bytes) -> None:
    line = parse_line(data, NOW)
    assert "\x00" not in line.text
    if line.format is SyslogFormat.RAW:
        assert line.raw == line.text


@given(
    st.sampled_from([b"<13>1 ", b"<13>1 - h a p m [", b"<0>Nov 25 09:06:09 ", b"<191>", b"12 <1"]),
    st.binary(max_size=200),
)
def test_lines_that_start_well_and_go_wrong_still_parse_to_a_storable_line(start: bytes, rest: bytes) -> None:
    line = parse_line(start + rest, NOW)
    assert "\x00" not in line.text and (line.format is not SyslogFormat.RAW or line.raw == line.text)
    assert line.facility is None or 0 <= line.facility <= 23


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=10), st.integers(min_value=1, max_value=7))
def test_framing_keeps_every_byte_of_newline_free_frames(chunks: list[bytes], split: int) -> None:
    lines = [chunk.replace(b"\n", b"") or b"z" for chunk in chunks]
    lines = [b"<13>" + line.strip(b"\r") + b"." for line in lines]
    stream = b"".join(line + b"\n" for line in lines)
    framer = TcpFramer()
    frames: list[bytes] = []
    for start in range(0, len(stream), split):
        frames += framer.feed(stream[start : start + split])
    frames += framer.finish()
    assert frames == lines
