"""Pid files name a process by pid and start time, so a recycled pid is never mistaken for ours."""

import subprocess
import sys
import time
from pathlib import Path

from metalbus.stack.processes import (
    ProcessIdentity,
    process_start_ticks,
    running_identity,
    start_detached,
    stop_process,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
]


def test_started_process_is_running_until_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    child = start_detached(SLEEPER, log_path=tmp_path / "sleeper.log", pid_path=pid_file, env={})
    identity = running_identity(pid_file)
    assert identity is not None and identity.pid == child.pid
    assert stop_process(pid_file) is True
    assert process_start_ticks(child.pid) is None, "gone, not a zombie"
    assert running_identity(pid_file) is None
    assert not pid_file.exists()


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    bystander = subprocess.Popen(SLEEPER)
    try:
        pid_file = tmp_path / "stale.pid"
        recycled = ProcessIdentity(pid=bystander.pid, start_ticks=(process_start_ticks(bystander.pid) or 0) + 12345)
        pid_file.write_text(recycled.serialise())
        assert running_identity(pid_file) is None
        assert stop_process(pid_file) is False
        assert bystander.poll() is None, "a process that merely reuses the pid is never signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "stubborn.pid", tmp_path / "stubborn.log"
    child = start_detached(STUBBORN, log_path=log, pid_path=pid_file, env={})
    while "ready" not in log.read_text():
        assert child.poll() is None
    began = time.monotonic()
    assert stop_process(pid_file, grace_s=0.3) is True
    assert time.monotonic() - began >= 0.3, "SIGTERM was ignored, so only SIGKILL after the grace ended it"
    assert process_start_ticks(child.pid) is None
