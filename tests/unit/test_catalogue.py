"""The subject catalogue is complete, well-formed, and every model on it round-trips through JSON."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from metalbus.contracts.base import Message
from metalbus.subjects import (
    EVENT_SUBJECTS,
    REQUEST_SUBJECTS,
    STREAMS,
    fill_subject,
    wildcard,
)

REPO = Path(__file__).resolve().parents[2]
ALL_MODELS: list[type[Message]] = sorted(
    {s.request for s in REQUEST_SUBJECTS} | {s.reply for s in REQUEST_SUBJECTS} | {e.event for e in EVENT_SUBJECTS},
    key=lambda model: model.__name__,
)
SUBJECT_TOKEN = re.compile(r"^([a-z0-9-]+|\{[a-z_]+\})$")


def test_every_request_subject_has_request_and_reply_models() -> None:
    assert REQUEST_SUBJECTS, "the catalogue is not empty"
    for subject in REQUEST_SUBJECTS:
        assert issubclass(subject.request, Message), subject.pattern
        assert issubclass(subject.reply, Message), subject.pattern
        assert subject.summary


def test_subject_names_are_unique_and_well_formed() -> None:
    patterns = [s.pattern for s in REQUEST_SUBJECTS] + [e.pattern for e in EVENT_SUBJECTS]
    assert len(patterns) == len(set(patterns))
    for pattern in patterns:
        assert all(SUBJECT_TOKEN.match(token) for token in pattern.split(".")), pattern
    for subject in REQUEST_SUBJECTS:
        assert subject.pattern.startswith(("region.", "rack.")), subject.pattern


def test_every_event_subject_is_captured_by_a_stream() -> None:
    captured = [subject for stream in STREAMS for subject in stream.subjects]
    for event in EVENT_SUBJECTS:
        assert event.pattern.startswith("events.")
        assert any(pattern == "events.>" or pattern == wildcard(event.pattern) for pattern in captured)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_model_has_examples_that_round_trip_through_json(model: type[Message]) -> None:
    examples = model.model_json_schema().get("examples")
    assert examples, f"{model.__name__} documents at least one example"
    for example in examples:
        message = model.model_validate(example)
        again = model.from_json_bytes(message.to_json_bytes())
        assert again == message
        assert again.schema_version == model.SCHEMA_VERSION


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_a_message_from_a_newer_schema_version_is_refused(model: type[Message]) -> None:
    example = model.model_json_schema()["examples"][0]
    with pytest.raises(ValidationError, match="newer than the supported"):
        model.model_validate({**example, "schema_version": model.SCHEMA_VERSION + 1})


def test_messages_ignore_unknown_fields_from_newer_senders_and_default_their_version() -> None:
    model = ALL_MODELS[0]
    example = model.model_json_schema()["examples"][0]
    without_version = {k: v for k, v in example.items() if k != "schema_version"}
    parsed = model.model_validate({**without_version, "field_added_later": 1})
    assert parsed.schema_version == model.SCHEMA_VERSION
    assert "field_added_later" not in parsed.model_dump()


@pytest.mark.parametrize("value", ["a.b", "*", ">", "has space", ""])
def test_subject_parameters_must_be_single_tokens(value: str) -> None:
    with pytest.raises(ValueError, match="not a single NATS token"):
        fill_subject("rack.{rack_id}.dhcp", {"rack_id": value})


def test_subject_parameters_must_all_be_given() -> None:
    with pytest.raises(ValueError, match="needs"):
        fill_subject("rack.{rack_id}.dhcp", {})
    assert fill_subject("rack.{rack_id}.dhcp", {"rack_id": "rack-1"}) == "rack.rack-1.dhcp"
    assert wildcard("events.rack.{rack_id}") == "events.rack.*"


def test_no_service_spells_a_subject_inline() -> None:
    # Subjects have three or more tokens; log event names ("rack.announced") have two.
    inline = re.compile(r"""["'](region|rack|events)\.[a-z0-9_{}*>-]+\.""")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for root in ("services", "libs")
        for path in (REPO / root).rglob("*.py")
        if path.name != "subjects.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if inline.search(line)
    ]
    assert offenders == []
