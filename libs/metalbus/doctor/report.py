"""One check's outcome (name, status, detail, fix) and what a list of them means: JSON rows and the exit code."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    """Works, but not as a lab usually wants (arm64 loaders absent, cannot prove a port free without root)."""
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    """What to do about it; empty when nothing needs doing."""


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def exit_code(checks: Sequence[Check]) -> int:
    """1 if any check failed (warnings do not fail the preflight), else 0."""
    return 1 if any(check.status is Status.FAIL for check in checks) else 0


def checks_as_json(checks: Sequence[Check]) -> list[dict[str, str]]:
    return [{key: str(value) for key, value in asdict(check).items()} for check in checks]
