"""Turn the body of a ``POST <ver>/`` ``op=signal`` into a MetadataSignal, as MAAS lays the form out (pure).

Fields: ``op`` (must be ``signal``), ``status`` (OK, FAILED, WORKING, COMMISSIONING), optional ``error``, and for a
script's outcome ``name``, ``exit_status``, ``runtime`` (seconds) with its files ``<name>.out`` (stdout),
``<name>.err`` (stderr) and ``<name>.yaml`` (the result: a mapping in YAML's JSON form — PyYAML is not a
dependency, and our scripts write JSON). Files are form fields whose
name ends in one of those suffixes; every file must belong to the script ``name`` (without ``name``, the one
script the files name is it). A script needs its ``exit_status``. Bodies are ``multipart/form-data`` (curl
``-F``, the commissioning runner) or ``application/x-www-form-urlencoded`` (a signal without files). Text is
decoded as UTF-8, undecodable bytes replaced. Anything else is BadForm (HTTP 400).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from metalbus.contracts.metadata import MetadataSignal, OAuthCredentials, ScriptResult, SignalStatus
from metalbus_rack_proxy.multipart_form import MultipartError, form_parts

SUFFIXES = {".out": "stdout", ".err": "stderr", ".yaml": "result"}
MAX_FIELDS = 64


class BadForm(ValueError):
    """The signal's body is not a signal MAAS would take; the message says why."""


@dataclass
class SignalForm:
    """The plain fields of a signal form and its script files, by script name then suffix."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def add(self, name: str, value: bytes) -> None:
        if len(self.fields) + sum(map(len, self.files.values())) >= MAX_FIELDS:
            raise BadForm(f"more than {MAX_FIELDS} form fields")
        for suffix in SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                self.files.setdefault(name[: -len(suffix)], {})[suffix] = value
                return
        if name in self.fields:
            raise BadForm(f"form field {name} given twice")
        self.fields[name] = value.decode("utf-8", errors="replace")


def parse_form(content_type: str | None, body: bytes) -> SignalForm:
    """The fields and files of a multipart or url-encoded body."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    form = SignalForm()
    if media_type == "multipart/form-data":
        for name, value in _multipart_parts(content_type or "", body):
            form.add(name, value)
    elif media_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError) as error:
            raise BadForm(f"malformed url-encoded form: {error}") from error
        for name, text in pairs:
            form.add(name, text.encode())
    else:
        raise BadForm(f"content type {media_type or 'missing'}: a signal is multipart/form-data or url-encoded")
    return form


def _multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    try:
        return form_parts(content_type, body)
    except MultipartError as error:
        raise BadForm(str(error)) from error


def signal_from_form(credentials: OAuthCredentials, form: SignalForm) -> MetadataSignal:
    """The MetadataSignal the form stands for (its scripts' results included)."""
    fields = form.fields
    if fields.get("op") != "signal":
        raise BadForm(f"op is {fields.get('op')!r}, only 'signal' is served")
    if "status" not in fields:
        raise BadForm("status is required")
    if fields["status"] not in SignalStatus.__members__.values():
        allowed = ", ".join(status.value for status in SignalStatus)
        raise BadForm(f"status {fields['status'][:40]!r} is not one of {allowed}")
    try:
        return MetadataSignal(
            credentials=credentials,
            status=SignalStatus(fields["status"]),
            error=fields.get("error") or None,
            results=_script_results(fields, form.files),
        )
    except ValueError as error:  # a field out of the model's bounds
        raise BadForm(_describe(error)) from error


def _script_results(fields: Mapping[str, str], files: Mapping[str, Mapping[str, bytes]]) -> list[ScriptResult]:
    name = fields.get("name") or None
    if name is None:
        if not files:
            return []
        if len(files) > 1:
            raise BadForm(f"files of several scripts ({', '.join(sorted(files))}) and no name")
        name = next(iter(files))
    strays = sorted(set(files) - {name})
    if strays:
        raise BadForm(f"files of {', '.join(strays)} posted for script {name}")
    if "exit_status" not in fields:
        raise BadForm(f"script {name} has no exit_status")
    return [_script_result(name, fields, files.get(name, {}))]


def _script_result(name: str, fields: Mapping[str, str], files: Mapping[str, bytes]) -> ScriptResult:
    values: dict[str, Any] = {
        "name": name,
        "exit_status": _integer(fields["exit_status"], "exit_status"),
        "runtime_s": _seconds(fields.get("runtime")),
        "stdout": files.get(".out", b"").decode("utf-8", errors="replace"),
        "stderr": files.get(".err", b"").decode("utf-8", errors="replace"),
        "result": _result_mapping(name, files[".yaml"]) if ".yaml" in files else None,
    }
    return ScriptResult.model_validate(values)


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError as error:
        raise BadForm(f"{what} is not an integer: {text[:40]!r}") from error


def _seconds(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text.strip())
    except ValueError as error:
        raise BadForm(f"runtime is not a number: {text[:40]!r}") from error


def _result_mapping(name: str, content: bytes) -> dict[str, Any]:
    try:
        loaded = json.loads(content.decode("utf-8", errors="replace"))
    except ValueError as error:
        raise BadForm(f"{name}.yaml is not a JSON-form YAML mapping: {str(error)[:200]}") from error
    if not isinstance(loaded, dict):
        raise BadForm(f"{name}.yaml is not a mapping")
    return {str(key): value for key, value in loaded.items()}


def _describe(error: ValueError) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'signal'}: {item['msg']}" for item in error.errors()
        )[:500]
    return str(error)[:500]
