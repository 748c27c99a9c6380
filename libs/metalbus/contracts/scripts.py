"""Commissioning scripts an operator adds (MAAS's "node scripts" of type commissioning): stored in the region,
chosen per commission call, run by the commissioning environment after the inventory, each result stored."""

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from metalbus.contracts.base import Message, examples

SCRIPT_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_SCRIPT_BYTES = 256 * 1024
DEFAULT_SCRIPT_TIMEOUT_S = 600
RESERVED_SCRIPT_NAMES = frozenset({"metalbus-inventory"})

ScriptName = Annotated[str, Field(pattern=SCRIPT_NAME_PATTERN)]


def _runnable(content: str) -> str:
    if not content.startswith("#!"):
        raise ValueError("a script starts with an interpreter line (#!/bin/sh, #!/usr/bin/env python3, …)")
    if "\x00" in content:
        raise ValueError("a script holds no NUL character")
    if len(content.encode()) > MAX_SCRIPT_BYTES:
        raise ValueError(f"a script is at most {MAX_SCRIPT_BYTES} bytes")
    return content


def _not_reserved(name: str) -> str:
    if name in RESERVED_SCRIPT_NAMES:
        raise ValueError(f"{name} is the region's own script")
    return name


_SCRIPT = {
    "schema_version": 1,
    "name": "smartctl-short",
    "content": "#!/bin/sh\nsmartctl -t short /dev/sda\n",
    "description": "Start a short SMART self-test of the first disk.",
    "timeout_s": 600,
}


class CommissioningScript(Message):
    """Set (create or replace) a script by name; the reply is the stored script."""

    model_config = examples(_SCRIPT)

    name: Annotated[ScriptName, AfterValidator(_not_reserved)]
    content: Annotated[str, AfterValidator(_runnable)]
    description: str = Field(default="", max_length=1000)
    timeout_s: int = Field(default=DEFAULT_SCRIPT_TIMEOUT_S, ge=1, le=24 * 3600)
    updated_at: datetime | None = Field(default=None, description="Set by the region.")


class ScriptQuery(Message):
    model_config = examples({"schema_version": 1, "name": "smartctl-short"})

    name: ScriptName


class ScriptListQuery(Message):
    model_config = examples({"schema_version": 1})


class CommissioningScriptList(Message):
    model_config = examples({"schema_version": 1, "scripts": [_SCRIPT]})

    scripts: list[CommissioningScript]
