"""Value types shared by several contract areas: MAC and IPv4 addresses, system ids, architectures, idempotency keys."""

import functools
import re
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

T = TypeVar("T")

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def normalise_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF`` / ``aabbccddeeff`` / ``aa:bb:…`` → ``aa:bb:cc:dd:ee:ff``."""
    if _CANONICAL_MAC.fullmatch(value):
        return value  # already canonical, as every MAC metalbus itself writes: one regex call, no rebuilding
    lowered = value.strip().lower()
    if not _MAC.match(lowered):
        raise ValueError(f"not a MAC address: {value!r}")
    digits = lowered.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


MacAddress = Annotated[
    str,
    AfterValidator(normalise_mac),
    WithJsonSchema(
        {
            "type": "string",
            # The same set as the validator, spelt without a back-reference (OpenAPI tools do not take them).
            "pattern": "^(([0-9A-Fa-f]{2}:){5}|([0-9A-Fa-f]{2}-){5})[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{12}$",
            "description": "aa:bb:cc:dd:ee:ff, aa-bb-…, or aabbccddeeff; answered as aa:bb:cc:dd:ee:ff.",
        }
    ),
]


@functools.lru_cache(maxsize=1 << 16)
def _parsed_ipv4(text: str) -> IPv4Address:
    return IPv4Address(text)


def _known_ipv4(value: object) -> object:
    """A dotted quad parsed before is answered with the same (immutable) ``IPv4Address``: parsing one costs ≈ 3 µs,
    and a DHCP storm names the same few thousand addresses over and over. Anything else, an invalid string
    included, goes on to pydantic's own IPv4Address validation unchanged (same rules, same errors)."""
    if type(value) is str:
        try:  # not contextlib.suppress: building its context manager costs more than the cached lookup
            return _parsed_ipv4(value)
        except ValueError:
            return value
    return value


IPv4 = Annotated[IPv4Address, BeforeValidator(_known_ipv4)]
"""An ``IPv4Address`` field whose repeated values are parsed once (at most 65,536 remembered)."""

SystemId = Annotated[str, Field(pattern=r"^[a-z0-9]{6}$", description="MAAS-style six-character machine id.")]
IdempotencyKey = Annotated[
    str,
    Field(
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Repeat a command with the same key and it is applied once; the first reply is returned.",
    ),
]


class Architecture(StrEnum):
    """Boot architectures, as MAAS names them; DHCP option 93 maps onto these."""

    AMD64_BIOS = "amd64/bios"
    AMD64_UEFI = "amd64/uefi"
    ARM64_UEFI = "arm64/uefi"


def without_nul_characters(value: T) -> T:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it anywhere in a JSON value (keys and strings)."""
    pending: list[object] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("NUL characters (U+0000) are not allowed")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(without_nul_characters)]
"""A JSON object that PostgreSQL can store (no U+0000 in keys or strings)."""
TextMap = Annotated[dict[str, str], AfterValidator(without_nul_characters)]
"""String keys and values that PostgreSQL can store (no U+0000)."""
