"""`metalbus asyncapi` prints a parseable AsyncAPI 3 document naming every subject of the catalogue."""

import json
import subprocess
import sys
from typing import Any

from metalbus.subjects import EVENT_SUBJECTS, REQUEST_SUBJECTS


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for key, value in node.items() if key != "$ref" for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


def asyncapi_document() -> dict[str, Any]:
    printed = subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", "asyncapi"], capture_output=True, check=True, timeout=60
    ).stdout
    document: dict[str, Any] = json.loads(printed)
    return document


def test_document_is_asyncapi_3_with_every_subject_as_a_channel() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {s.pattern for s in REQUEST_SUBJECTS} | {e.pattern for e in EVENT_SUBJECTS} <= addresses
    for subject in REQUEST_SUBJECTS:
        operation = next(op for op in document["operations"].values() if op["summary"] == subject.summary)
        reply_channel = resolve(document, operation["reply"]["channel"]["$ref"])
        assert subject.reply.__name__ in reply_channel["messages"]


def test_every_reference_in_the_document_resolves() -> None:
    document = asyncapi_document()
    refs = all_refs(document)
    assert len(refs) > 10
    for ref in refs:
        assert resolve(document, ref) is not None, ref


def test_message_payload_schemas_carry_the_schema_version_and_examples() -> None:
    document = asyncapi_document()
    for message in document["components"]["messages"].values():
        schema = resolve(document, message["payload"]["$ref"])
        assert "schema_version" in schema["properties"], message["name"]
        assert message["examples"], message["name"]
