"""Detached child processes owned through pid files that also record the process start time.

The start time guards against pid reuse: a pid file only names a process if both pid and start time match.
"""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int

    def serialise(self) -> str:
        return f"{self.pid} {self.start_ticks}\n"


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def read_pid_file(path: Path) -> ProcessIdentity | None:
    try:
        pid_text, ticks_text = path.read_text().split()
        return ProcessIdentity(int(pid_text), int(ticks_text))
    except (OSError, ValueError):
        return None


def running_identity(path: Path) -> ProcessIdentity | None:
    """The process the pid file names, if that very process is still running."""
    identity = read_pid_file(path)
    if identity is None or process_start_ticks(identity.pid) != identity.start_ticks:
        return None
    return identity


def start_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str],
    user: str | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session, output appended to its log, identity written to its pid file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    ticks = process_start_ticks(child.pid)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(ProcessIdentity(child.pid, ticks or 0).serialise())
    return child


def stop_process(pid_path: Path, *, stop_signal: int = signal.SIGTERM, grace_s: float = 15.0) -> bool:
    """Stop the process a pid file names: the given signal, then SIGKILL after the grace period.

    Returns True if a running process was stopped; removes the pid file either way. Raises ProcessStuck if
    even SIGKILL does not end it within a few seconds (a process stuck in the kernel).
    """
    identity = running_identity(pid_path)
    stopped = identity is not None and (
        _signal_and_wait(identity, stop_signal, grace_s) or _signal_and_wait(identity, signal.SIGKILL, KILL_WAIT_S)
    )
    if identity is not None and not stopped:
        raise ProcessStuck(f"pid {identity.pid} did not exit even after SIGKILL")
    pid_path.unlink(missing_ok=True)
    return identity is not None


KILL_WAIT_S = 5.0


class ProcessStuck(RuntimeError):
    """A process survived SIGKILL for several seconds."""


def _signal_and_wait(identity: ProcessIdentity, sig: int, wait_s: float) -> bool:
    """Send ``sig``; True once the process is gone (within ``wait_s``)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(identity.pid, sig)
    deadline = time.monotonic() + wait_s
    while process_start_ticks(identity.pid) == identity.start_ticks:
        reap(identity.pid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def reap(pid: int) -> None:
    """Collect our own exited child so that it does not linger as a zombie (no-op for others)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
