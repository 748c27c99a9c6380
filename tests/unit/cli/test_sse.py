"""Server-Sent Events decoding: what the API's event stream sends becomes whole events, keep-alives vanish."""

from metalbus.cli.sse import ServerSentEvent, SseDecoder, decode_lines


def test_frames_become_events_with_their_id_kind_and_data() -> None:
    lines = [
        ": connected", "",
        "id: 41", "event: machine", 'data: {"to_status":"commissioning"}', "",
        ": keepalive", "",
        "id: 42", "event: result", "data: {\"name\":\"x\"}", "",
    ]  # fmt: skip
    assert list(decode_lines(lines)) == [
        ServerSentEvent("machine", '{"to_status":"commissioning"}', "41"),
        ServerSentEvent("result", '{"name":"x"}', "42"),
    ]


def test_multi_line_data_is_joined_and_one_leading_space_dropped() -> None:
    assert list(decode_lines(["data:a", "data:  b", "", "data: c\r\n", "\r\n"])) == [
        ServerSentEvent("message", "a\n b", None),
        ServerSentEvent("message", "c", None),
    ]


def test_the_last_id_is_remembered_for_resuming_even_across_events_without_one() -> None:
    decoder = SseDecoder(last_event_id="7")
    events = list(decode_lines(["data: x", "", "id: 9", "data: y", "", "data: z", ""], decoder))
    assert [e.id for e in events] == ["7", "9", "9"]
    assert decoder.last_event_id == "9"


def test_an_event_without_data_is_not_dispatched_and_an_unfinished_one_is_held() -> None:
    assert list(decode_lines(["event: machine", "", "id: 3", "data: partial"])) == []
