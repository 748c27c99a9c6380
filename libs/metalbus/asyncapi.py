"""An AsyncAPI 3.0 document generated from the subject catalogue, for integrators."""

from typing import Any

from metalbus import __version__
from metalbus.contracts.base import Message
from metalbus.subjects import EVENT_SUBJECTS, REQUEST_SUBJECTS, STREAMS


def _channel_id(pattern: str) -> str:
    return pattern.replace(".", "_").replace("{", "").replace("}", "").replace("-", "_")


def _message_ref(model: type[Message], messages: dict[str, Any], schemas: dict[str, Any]) -> dict[str, str]:
    name = model.__name__
    if name not in messages:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(def_name, definition)
        schemas[name] = schema
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (model.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "examples": [{"payload": example} for example in schema.get("examples", [])],
        }
    return {"$ref": f"#/components/messages/{name}"}


def _parameters(params: tuple[str, ...]) -> dict[str, Any]:
    return {name: {"description": f"the {name.replace('_', ' ')}"} for name in params}


def build_asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for subject in REQUEST_SUBJECTS:
        request_id = _channel_id(subject.pattern)
        reply_id = request_id + "_reply"
        channels[request_id] = {
            "address": subject.pattern,
            "description": subject.summary,
            "messages": {subject.request.__name__: _message_ref(subject.request, messages, schemas)},
        }
        if subject.params:
            channels[request_id]["parameters"] = _parameters(subject.params)
        channels[reply_id] = {
            "address": None,
            "description": f"Reply inbox for {subject.pattern}; errors carry the Metalbus-Error header.",
            "messages": {subject.reply.__name__: _message_ref(subject.reply, messages, schemas)},
        }
        operations[request_id] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{request_id}"},
            "summary": subject.summary,
            "description": f"Queue group: {subject.queue}" if subject.queue else "Every subscriber answers.",
            "reply": {"channel": {"$ref": f"#/channels/{reply_id}"}},
        }
    for event in EVENT_SUBJECTS:
        event_id = _channel_id(event.pattern)
        channels[event_id] = {
            "address": event.pattern,
            "description": event.summary,
            "messages": {event.event.__name__: _message_ref(event.event, messages, schemas)},
        }
        if event.params:
            channels[event_id]["parameters"] = _parameters(event.params)
        operations[event_id] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{event_id}"},
            "summary": event.summary,
        }
    streams = "; ".join(f"{s.name}: {', '.join(s.subjects)} ({s.summary})" for s in STREAMS)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "metalbus",
            "version": __version__,
            "description": "Every NATS subject of metalbus. Events are kept in JetStream streams: " + streams,
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
